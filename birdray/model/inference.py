"""Calibrated predictions from a model package: the forward pass every consumer shares.

Serve, batch scoring and evaluation all turn images into calibrated top-k species here, so the
confidence a user sees is the same number wherever they look (logits / temperature, softmax).
"""

from __future__ import annotations

# First, before torch/timm: the thread-safe import of the stack (see _stack.py).
from birdray.model import _stack  # noqa: F401

# isort: split
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from birdray.model.factory import autocast_dtype, pick_device, prepare_for_device, set_threads
from birdray.model.package import ModelPackage, load_package
from birdray.model.preprocess import build_transform, normalize_uint8


@dataclass(frozen=True)
class Prediction:
    label: int
    species: str
    confidence: float
    top_k: list[dict[str, Any]]  # [{"label", "species", "probability"}]


class Predictor:
    """A loaded package on a device, with its own eval transform and calibration."""

    def __init__(
        self,
        package: ModelPackage | str,
        device: str | None = None,
        num_threads: int | None = None,
        amp: bool = False,
        channels_last: bool = True,
    ):
        set_threads(num_threads)
        self.package = load_package(package) if isinstance(package, str) else package
        self.metadata = self.package.metadata
        self.device = torch.device(device) if device else pick_device()
        self.channels_last = channels_last
        self.model = prepare_for_device(self.package.model, self.device, channels_last).eval()
        self.amp_dtype = autocast_dtype(self.device, amp)
        self.transform = build_transform(self.metadata.data_config, training=False)

    @property
    def version(self) -> str:
        return self.metadata.version or self.metadata.content_hash[:12]

    def from_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW eval crops (scoring's and Serve's decode) to the model's input, on its
        device: the bytes travel, a quarter of the floats, and are normalised where the model
        runs, so a GPU box's CPUs (its bottleneck: BENCHMARKS.md, GPU) skip that arithmetic."""
        pixels = pixels.to(self.device, non_blocking=True)
        return normalize_uint8(pixels, self.metadata.data_config, self.channels_last)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in images])

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                out = self.model(batch)
        else:
            out = self.model(batch)
        return out.float().cpu()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / float(self.metadata.temperature or 1.0), dim=-1)

    def predict_tensor(self, batch: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        return self.to_predictions(self.probabilities(self.logits(batch)), top_k)

    def predict_images(self, images: list[Image.Image], top_k: int = 5) -> list[Prediction]:
        return self.predict_tensor(self.preprocess(images), top_k)

    def to_predictions(self, probs: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        names = self.metadata.class_names
        k = max(1, min(int(top_k), probs.shape[-1]))
        values, indices = probs.topk(k, dim=-1)
        out = []
        for vals, idxs in zip(values.numpy(), indices.numpy(), strict=True):
            top = [
                {"label": int(i), "species": names[int(i)], "probability": float(v)}
                for v, i in zip(vals, idxs, strict=True)
            ]
            out.append(Prediction(top[0]["label"], top[0]["species"], top[0]["probability"], top))
        return out
