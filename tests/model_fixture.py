"""Small real model packages for consumer tests (untrained unless a test trains one)."""

from __future__ import annotations

from pathlib import Path

import torch

from birdray.model.factory import create_model
from birdray.model.package import PackageMetadata, save_package
from birdray.model.preprocess import resolve_data_config


def make_package(
    out: Path,
    arch: str = "test_resnet",
    num_classes: int = 4,
    image_size: int = 64,
    seed: int = 0,
    temperature: float = 1.0,
) -> Path:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes)
    meta = PackageMetadata(
        arch=arch,
        num_classes=num_classes,
        class_names=[f"{i + 1:03d}.Species_{i + 1}" for i in range(num_classes)],
        data_config=resolve_data_config(model, image_size),
        image_size=image_size,
        temperature=temperature,
        metrics={"val_top1": 0.5},
        run_id=f"test-{seed}",
    )
    return save_package(out, model, meta)
