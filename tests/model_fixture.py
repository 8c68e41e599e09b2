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
    class_names: list[str] | None = None,  # a dataset's, to evaluate on it
) -> Path:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes)
    meta = PackageMetadata(
        arch=arch,
        num_classes=num_classes,
        class_names=class_names or [f"{i + 1:03d}.Species_{i + 1}" for i in range(num_classes)],
        data_config=resolve_data_config(model, image_size),
        image_size=image_size,
        temperature=temperature,
        metrics={"val_top1": 0.5},
        run_id=f"test-{seed}",
    )
    return save_package(out, model, meta)


def fit_test_locator(package: Path) -> dict:
    """A part locator fitted the way explain-eval fits one, on a few random photos with 15
    parts on a diagonal (what Serve and the dashboard load from ``explain/part_locator.json``)."""
    import numpy as np
    from PIL import Image

    from birdray.explain.locate import feature_map, fit_locator, part_features
    from birdray.model.package import load_package

    loaded = load_package(package)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(4):
        image = Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
        parts = [(10 + 7 * i, 20 + 4 * i, True) for i in range(15)]
        feats, geometry = feature_map(loaded.model.eval(), loaded.metadata.data_config, image)
        samples.append(part_features(feats, geometry, parts))
    names = [f"part {i}" for i in range(15)]
    return fit_locator(np.stack(samples), np.arange(4), names, 0.1)
