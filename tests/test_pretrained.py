"""Pretrained from a local file: real ImageNet weights recognise real bird photos offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from PIL import Image

from birdray.model.factory import create_model
from birdray.model.preprocess import build_transform, resolve_data_config
from birdray.model.weights import TIMM_ARCH, convert_lite0


def _foolbox_birds() -> list[tuple[Path, int]]:
    """foolbox ships ImageNet JPEGs named imagenet_<index>_<label>.jpg (GUIDE §5)."""
    spec = importlib.util.find_spec("foolbox")
    assert spec and spec.submodule_search_locations, "pip install --no-deps foolbox==3.3.4"
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    names = ("imagenet_14_129.jpg", "imagenet_15_99.jpg", "imagenet_17_22.jpg")
    return [(data / n, int(n.split("_")[2].split(".")[0])) for n in names]


def test_converted_lite0_weights_classify_real_birds(tmp_path):
    weights = convert_lite0(tmp_path / "lite0.safetensors")
    imagenet = create_model(TIMM_ARCH, num_classes=1000, pretrained_file=str(weights)).eval()
    cfg = resolve_data_config(imagenet)
    assert cfg["mean"] == [0.5, 0.5, 0.5]  # the model's own data config, not ImageNet's usual
    transform = build_transform(cfg, training=False)
    hits = 0
    for path, label in _foolbox_birds():
        x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            top5 = imagenet(x).topk(5).indices[0].tolist()
        hits += label in top5
    assert hits == 3
    # and the same file starts a 200-class CUB model: backbone loaded, fresh head
    cub = create_model(TIMM_ARCH, num_classes=200, pretrained_file=str(weights))
    assert cub.get_classifier().out_features == 200
    assert torch.equal(cub.conv_stem.weight, imagenet.conv_stem.weight)
