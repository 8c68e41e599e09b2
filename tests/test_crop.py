"""The Pillow eval crop gives timm's eval transform byte for byte, and needs no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from birdray.model.crop import covered, eval_crop, uint8_eval_transform
from birdray.model.preprocess import build_transform

SIZES = [(500, 375), (375, 500), (128, 128), (147, 147), (146, 300), (64, 48), (31, 77), (2001, 9)]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients plus noise: resampling filters give different bytes on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y) % 256], -1)
    noise = rng.integers(-40, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _config(size: int, interpolation: str, crop_pct: float | None, crop_mode: str | None) -> dict:
    return {
        "input_size": [3, size, size],
        "interpolation": interpolation,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos", "box"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0, None])
@pytest.mark.parametrize("crop_mode", ["center", "squash", None])
@pytest.mark.parametrize("size", [64, 224])
def test_pillow_crop_is_timms_eval_transform(interpolation, crop_pct, crop_mode, size):
    cfg = _config(size, interpolation, crop_pct, crop_mode)
    assert covered(cfg)
    reference = build_transform(cfg, training=False, uint8=True)
    for seed, (width, height) in enumerate(SIZES):
        image = _photo(width, height, seed)
        expected = reference(image).numpy()
        got = eval_crop(image, cfg)
        assert got.dtype == np.uint8 and got.shape == expected.shape == (3, size, size)
        assert np.array_equal(got, expected), (width, height)
        assert got.flags.c_contiguous and got.flags.writeable


@pytest.mark.parametrize(
    "change",
    [
        {"crop_mode": "border"},  # pads with the mean colour: timm's own transform
        {"crop_pct": 1.15},  # scales below the crop: padding again
        {"input_size": [3, 96, 128]},  # non-square: timm's ResizeKeepRatio
    ],
)
def test_configs_outside_the_pillow_crop_get_timms_transform(change):
    cfg = {**_config(128, "bicubic", 0.875, "center"), **change}
    assert not covered(cfg)
    image = _photo(300, 200, 1)
    expected = build_transform(cfg, training=False, uint8=True)(image).numpy()
    assert np.array_equal(uint8_eval_transform(cfg)(image), expected)


def test_crop_and_scorings_decode_tasks_never_import_torch(tmp_path):
    """A scoring decode task run in a fresh interpreter: crops made, torch and timm not loaded;
    nor by Serve's ingress modules (an ingress beside a model deployment needs no torch)."""
    photo = tmp_path / "bird.jpg"
    _photo(500, 375, 3).save(photo, quality=90)
    code = f"""
import json, sys
import pyarrow as pa
from birdray.scoring.sources import Source
from birdray.scoring.decode import prepare_batch
import birdray.serve.app, birdray.serve.ingress, birdray.serve.uploads
cfg = {_config(128, "bicubic", 0.875, "center")!r}
batch = pa.table({{"path": [{str(photo)!r}, "/nonexistent.jpg"], "file_size": [0, 0]}})
out = prepare_batch(batch, Source("folder", {str(tmp_path)!r}, ""), json.dumps(cfg), 0, 10**8)
assert out["pixels"].shape == (2, 3, 128, 128) and out["pixels"][0].any(), out["error"]
assert out["error"][0] == "" and out["error"][1].startswith("missing"), out["error"]
loaded = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print("loaded:", loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout, result.stdout
