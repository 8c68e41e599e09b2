"""The eval transform's geometry and its uint8 crop, in Pillow and numpy, without torch.

timm's eval transform for the data configs birdray's models carry is "resize (the short side, or
both sides for ``squash``) to ``input_size / crop_pct``, centre-crop ``input_size``, to uint8
CHW". Those are two Pillow calls. Doing them here, with the same sizes, rounding and resampling
filter torchvision passes to Pillow, gives the same bytes as ``build_transform(..., uint8=True)``
(``tests/test_crop.py`` compares them over sizes, filters, crop modes and percentages) while the
processes that only prepare pixels (batch scoring's and evaluation's decode tasks, Serve's
ingress) never import torch and timm: ~3 s of CPU per new worker process on a 2-core machine.
A config outside that shape (``border`` crops, ``crop_pct`` above 1, non-square inputs) gets
timm's own transform, so every config keeps exactly timm's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from birdray.images import DEFAULT_MAX_PIXELS, DecodedImage, decode_image

DEFAULT_CROP_PCT = 0.875  # timm's, for a config whose crop_pct is missing or None
# timm's interpolation names -> the Pillow filters torchvision hands to Image.resize
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def crop_pct(data_config: dict[str, Any]) -> float:
    return data_config.get("crop_pct") or DEFAULT_CROP_PCT


def decode_side(data_config: dict[str, Any]) -> int:
    """The shortest side a photo needs for the eval transform (it resizes the short side to this).

    A JPEG decodes at 1/2, 1/4 or 1/8 scale while both sides stay at least this long (libjpeg's
    DCT scaling, Pillow's ``draft``): a 12-megapixel phone photo for a 224-px model costs a
    third of a full decode, and the model sees the same picture (a few levels per pixel apart).
    """
    _, height, width = data_config["input_size"]
    return math.ceil(max(height, width) / min(crop_pct(data_config), 1.0))


def decode_for_model(
    data: bytes,
    data_config: dict[str, Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    whole: bool = True,
) -> DecodedImage:
    """The one decode of a photo a model will classify (Serve, scoring, evaluation, validation):
    as strict as a full decode, at the smallest JPEG scale the eval transform allows, so every
    place that answers for a photo sees the same pixels (``whole``: see ``decode_image``)."""
    return decode_image(data, max_pixels, min_side=decode_side(data_config), whole=whole)


@dataclass(frozen=True)
class CropGeometry:
    """Where the eval transform's output pixels come from in the original image.

    The eval path is "resize to ``new_w`` x ``new_h``, centre-crop ``size``". Explanations need
    the inverse to draw attribution maps on the original photo; the uint8 crop uses it forwards.
    """

    orig_w: int
    orig_h: int
    scale_x: float  # resized / original, per axis (timm rounds the long side down)
    scale_y: float
    left: int  # crop offset in resized pixels
    top: int
    size_w: int
    size_h: int

    def to_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x + self.left) / self.scale_x, (y + self.top) / self.scale_y

    def from_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x * self.scale_x - self.left, y * self.scale_y - self.top


def _resized(data_config: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """The size timm's eval resize gives this image (crop_mode ``center`` or ``squash``)."""
    _, out_h, _ = data_config["input_size"]
    mode = data_config.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise ValueError(f"crop_mode {mode!r} is not supported by the crop geometry")
    scale_size = math.floor(out_h / crop_pct(data_config))
    if mode == "squash":
        new_w = new_h = scale_size
    else:  # torchvision's Resize(int): the short side to scale_size, the long side rounded down
        short = min(width, height)
        new_w = int(scale_size * width / short) if width > height else scale_size
        new_h = int(scale_size * height / short) if height > width else scale_size
    return new_w, new_h


def eval_geometry(data_config: dict[str, Any], width: int, height: int) -> CropGeometry:
    """Geometry of timm's eval transform (crop_mode ``center`` or ``squash``) for this image."""
    _, out_h, out_w = data_config["input_size"]
    new_w, new_h = _resized(data_config, width, height)
    left = int(round((new_w - out_w) / 2.0))  # torchvision's CenterCrop rounding
    top = int(round((new_h - out_h) / 2.0))
    return CropGeometry(width, height, new_w / width, new_h / height, left, top, out_w, out_h)


def covered(data_config: dict[str, Any]) -> bool:
    """Whether the Pillow crop reproduces timm's eval transform for this config."""
    _, out_h, out_w = data_config["input_size"]
    return (
        out_h == out_w
        and (data_config.get("crop_mode") or "center") in ("center", "squash")
        and crop_pct(data_config) <= 1.0
        and data_config.get("interpolation", "bilinear") in _FILTERS
    )


def eval_crop(image: Image.Image, data_config: dict[str, Any]) -> np.ndarray:
    """The eval transform of an RGB image as uint8 CHW (a config ``covered`` accepts)."""
    g = eval_geometry(data_config, image.width, image.height)
    size = _resized(data_config, image.width, image.height)
    if size != image.size:  # torchvision skips the resize when the size already matches
        image = image.resize(size, _FILTERS[data_config.get("interpolation", "bilinear")])
    crop = image.crop((g.left, g.top, g.left + g.size_w, g.top + g.size_h))
    return np.ascontiguousarray(np.asarray(crop).transpose(2, 0, 1))


def uint8_eval_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], np.ndarray]:
    """RGB image -> uint8 CHW array, exactly what ``build_transform(cfg, False, uint8=True)``
    gives; in Pillow when the config is ``covered``, through timm (and torch) otherwise."""
    if covered(data_config):
        return lambda image: eval_crop(image, data_config)
    from birdray.model.preprocess import build_transform

    transform = build_transform(data_config, training=False, uint8=True)
    return lambda image: transform(image).numpy()
