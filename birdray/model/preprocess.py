"""The one preprocessing path: the model's own timm data config, used by every consumer.

Training augmentation, evaluation, batch scoring, Serve and explanations all call
``build_transform`` with the data config stored in the model package, so mean/std, interpolation,
resize and crop can never drift between the place a model learns and the places it is used.
"""

from __future__ import annotations

# First, before torch/timm: the thread-safe import of the stack (see _stack.py).
from birdray.model import _stack  # noqa: F401

# isort: split
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.data import create_transform, resolve_model_data_config

from birdray.images import DEFAULT_MAX_PIXELS, DecodedImage, decode_image


def resolve_data_config(model: torch.nn.Module, image_size: int | None = None) -> dict[str, Any]:
    """timm's data config for the model, at ``image_size`` when given (e.g. 448 for fine-tunes)."""
    args = {"input_size": (3, image_size, image_size)} if image_size else {}
    cfg = resolve_model_data_config(model, args=args)
    return _plain(cfg)


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy (tuples to lists) that timm accepts back unchanged."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def build_transform(
    data_config: dict[str, Any], training: bool, uint8: bool = False, **train_kwargs: Any
):
    """timm's transform for this data config: augmentation when training, resize+crop otherwise.

    ``uint8=True`` stops before normalising (timm's prefetcher mode): the pipeline ships 4x
    smaller uint8 tensors and ``normalize_uint8`` finishes the job on the training device.
    """
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    return create_transform(
        use_prefetcher=uint8,
        input_size=cfg["input_size"],
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg.get("crop_pct", 0.875),
        crop_mode=cfg.get("crop_mode", "center"),
        is_training=training,
        **(train_kwargs if training else {}),
    )


def decode_side(data_config: dict[str, Any]) -> int:
    """The shortest side a photo needs for the eval transform (it resizes the short side to this).

    A JPEG decodes at 1/2, 1/4 or 1/8 scale while both sides stay at least this long (libjpeg's
    DCT scaling, Pillow's ``draft``): a 12-megapixel phone photo for a 224-px model costs a
    third of a full decode, and the model sees the same picture (a few levels per pixel apart).
    """
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct", 0.875) or 1.0
    return math.ceil(max(height, width) / min(crop_pct, 1.0))


def decode_for_model(
    data: bytes, data_config: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """The one decode of a photo a model will classify (Serve, scoring, evaluation, validation):
    as strict as a full decode, at the smallest JPEG scale the eval transform allows, so every
    place that answers for a photo sees the same pixels."""
    return decode_image(data, max_pixels, min_side=decode_side(data_config))


def normalize_uint8(batch: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    """uint8 NCHW (from ``build_transform(uint8=True)``) to the float input the model expects."""
    mean = torch.tensor(data_config["mean"], device=batch.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(data_config["std"], device=batch.device).view(1, -1, 1, 1) * 255.0
    return (batch.float() - mean) / std


@dataclass(frozen=True)
class CropGeometry:
    """Where the eval transform's output pixels come from in the original image.

    The eval path is "resize the short side to ``scale_size``, centre-crop ``size``". Explanations
    need the inverse to draw attribution maps on the original photo.
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


def eval_geometry(data_config: dict[str, Any], width: int, height: int) -> CropGeometry:
    """Geometry of timm's eval transform (crop_mode 'center') for an image of this size."""
    _, out_h, out_w = data_config["input_size"]
    crop_pct = data_config.get("crop_pct", 0.875) or 1.0
    mode = data_config.get("crop_mode", "center")
    if mode != "center":
        raise ValueError(f"crop_mode {mode!r} is not supported by the geometry inverse")
    scale_size = math.floor(out_h / crop_pct)
    # timm: Resize(int) resizes the short side to scale_size, keeping aspect ratio
    short = min(width, height)
    new_w = int(scale_size * width / short) if width > height else scale_size
    new_h = int(scale_size * height / short) if height > width else scale_size
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    return CropGeometry(width, height, new_w / width, new_h / height, left, top, out_w, out_h)
