"""Attribution maps for the exact model that made a prediction, in the photo's own pixels.

The map is computed with Captum on the model package's network and its own eval transform
(``build_transform``), so what is explained is the forward pass Serve and scoring run. Grad-CAM
hooks the last spatial feature map, found by watching one forward pass, so any timm CNN works
without a per-architecture table. The map is then carried back through the resize and centre
crop (``eval_geometry``) onto the original image: pixels the crop cut away get zero, because the
model never saw them.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from birdray.explain.methods import METHODS
from birdray.explain.parts import find_peak
from birdray.model._stack import interrupt_ends_ray_worker
from birdray.model.crop import CropGeometry, eval_geometry
from birdray.model.preprocess import build_transform

with interrupt_ends_ray_worker():  # captum's first import can be cut short by a task cancel too
    import torch
    import torch.nn.functional as F
    from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency

BASELINES = ("blur", "black", "white", "mean")
_LAYER_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


@dataclass
class Explanation:
    """One attribution map for one class of one image, plus what the model predicted."""

    method: str
    target: int
    attribution: np.ndarray  # original H x W, float32, >= 0, sums to 1
    predicted: int
    probabilities: np.ndarray  # softmax(logits / temperature) over classes
    input_attribution: np.ndarray  # the same map on the model's input grid (sums to 1)
    geometry: CropGeometry
    seconds: float
    layer: str | None = None  # Grad-CAM's layer
    empty: bool = False  # the method gave no positive evidence: map is uniform over the crop
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.predicted])

    @property
    def target_probability(self) -> float:
        return float(self.probabilities[self.target])

    def peak(self) -> tuple[int, int]:
        """(x, y) of the attribution peak in original pixels (lightly smoothed)."""

        return find_peak(self.attribution)

    def overlay_png(self, image: Image.Image, alpha: float = 0.55, boxes: int = 0) -> bytes:
        """PNG of the heat map over ``image`` at the image's own size."""
        from birdray.explain.render import overlay_png

        regions = self.regions(boxes) if boxes else []
        return overlay_png(image, self.attribution, alpha=alpha, regions=regions)

    def regions(self, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` strongest regions: ``{x, y, w, h, share}`` in original pixels."""
        from birdray.explain.render import top_regions

        return top_regions(self.attribution, k)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description without the map itself."""
        x, y = self.peak()
        return {
            "method": self.method, "target": self.target, "predicted": self.predicted,
            "confidence": self.confidence, "target_probability": self.target_probability,
            "peak": {"x": x, "y": y}, "layer": self.layer, "empty": self.empty,
            "seconds": round(self.seconds, 4), "settings": self.settings,
            "image": {"width": self.geometry.orig_w, "height": self.geometry.orig_h},
        }  # fmt: skip


def find_gradcam_layer(
    model: torch.nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)
) -> tuple[str, torch.nn.Module]:
    """The module that outputs the last spatial feature map (what global pooling consumes).

    One probe forward pass records every module's output; the last 4D map with more than one
    spatial cell is the final conv stage's output. Of the modules returning that very tensor
    (``layer4`` and its last block, say), timm's ``feature_info`` name wins when it is one of
    them (``features.norm5`` for DenseNet), else the outermost (``bn2`` after EfficientNet's
    ``conv_head``).
    """
    cached = _LAYER_CACHE.get(model)
    if cached is not None:
        return cached, model.get_submodule(cached)
    spatial = _spatial_outputs(model, input_size)
    final = spatial[-1][1]
    candidates = [n for n, out in spatial if out is final]
    info = getattr(model, "feature_info", None)
    named = (
        {f.get("module") for f in info if isinstance(f, dict)} if isinstance(info, list) else set()
    )
    preferred = [n for n in candidates if n in named]
    name = preferred[-1] if preferred else candidates[-1]
    _LAYER_CACHE[model] = name
    return name, model.get_submodule(name)


def find_early_layer(
    model: torch.nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)
) -> tuple[str, torch.nn.Module]:
    """The stage before the last (timm's ``feature_info[-2]``): a map at twice the resolution.

    Grad-CAM there (``gradcam_early``) can separate neighbouring parts that the last stage's
    4x4-7x7 map blurs together. Without ``feature_info``: the last module whose output is
    spatially larger than the final map (the final map itself when there is none).
    """
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and len(info) >= 2 and isinstance(info[-2], dict):
        name = info[-2].get("module")
        if name:
            return name, model.get_submodule(name)
    spatial = _spatial_outputs(model, input_size)
    size = spatial[-1][1].shape[-2:].numel()
    larger = [n for n, out in spatial if out.shape[-2:].numel() > size]
    name = larger[-1] if larger else find_gradcam_layer(model, input_size)[0]
    return name, model.get_submodule(name)


def _spatial_outputs(
    model: torch.nn.Module, input_size: tuple[int, ...]
) -> list[tuple[str, torch.Tensor]]:
    """Every module's 4D output with more than one spatial cell, in forward order (one probe)."""
    outputs: list[tuple[str, torch.Tensor]] = []

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                outputs.append((name, output))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    spatial = [(n, out) for n, out in outputs if out.shape[-1] * out.shape[-2] > 1]
    if not spatial:
        raise ValueError("no module outputs a spatial feature map: Grad-CAM needs a CNN")
    return spatial


def _axis_weights(n_orig: int, scale: float, offset: int, n_in: int) -> np.ndarray:
    """Bilinear weights (n_orig x n_in) taking one axis of the input grid to original pixels."""
    centre = (np.arange(n_orig) + 0.5) * scale - offset - 0.5  # input-pixel coordinate
    inside = (centre >= -0.5) & (centre <= n_in - 0.5)  # outside: cropped away, never seen
    c = np.clip(centre, 0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (c - i0).astype(np.float32)
    weights = np.zeros((n_orig, n_in), dtype=np.float32)
    rows = np.arange(n_orig)
    np.add.at(weights, (rows, i0), 1.0 - frac)
    np.add.at(weights, (rows, i1), frac)
    weights[~inside] = 0.0
    return weights


def to_original(input_map: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Undo resize + centre crop: a map on the model's input grid → original H x W."""
    h_in, w_in = input_map.shape
    wy = _axis_weights(geometry.orig_h, geometry.scale_y, geometry.top, h_in)
    wx = _axis_weights(geometry.orig_w, geometry.scale_x, geometry.left, w_in)
    return (wy @ input_map.astype(np.float32) @ wx.T).astype(np.float32)


def _normalise(values: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clip negatives and scale to sum 1; no evidence at all becomes uniform over ``support``."""
    values = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, None)
    total = float(values.sum())
    if total > 0 and np.isfinite(total):
        return values / total, False
    support = support.astype(np.float32)
    return support / max(float(support.sum()), 1.0), True


def pixel_value(data_config: dict[str, Any], value: float) -> torch.Tensor:
    """A constant RGB value (0..1) in the model's normalised space, shape (1, 3, 1, 1)."""
    mean = torch.tensor(data_config["mean"], dtype=torch.float32)
    std = torch.tensor(data_config["std"], dtype=torch.float32)
    return ((value - mean) / std).view(1, -1, 1, 1)


def make_baseline(x: torch.Tensor, data_config: dict[str, Any], kind: str) -> torch.Tensor:
    """An Integrated Gradients baseline: a blurred copy, black/white pixels, or the data mean.

    Blur is the default: a black baseline makes IG blind to black feathers (x - baseline = 0
    there), which on generated siblings differing only in a black breast put the map's share
    on the breast below chance; the blurred copy keeps colours and removes only detail.
    """
    if kind == "black":
        return pixel_value(data_config, 0.0).to(x).expand_as(x).contiguous()
    if kind == "white":
        return pixel_value(data_config, 1.0).to(x).expand_as(x).contiguous()
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = max(3, (min(x.shape[-2:]) // 8) | 1)
        return gaussian_blur(x, kernel_size=[size, size], sigma=size / 3.0)
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


def attribute(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    method: str,
    data_config: dict[str, Any],
    steps: int = 32,
    baseline: str = "blur",
    internal_batch_size: int = 8,
    nt_samples: int = 8,
    nt_stdev: float = 0.15,
    layer: str | None = None,
) -> tuple[np.ndarray, str | None]:
    """A non-negative map on the input grid (h x w) for ``target``; and Grad-CAM's layer name."""
    if method in ("gradcam", "gradcam_early"):
        find = find_gradcam_layer if method == "gradcam" else find_early_layer
        name, module = (
            (layer, model.get_submodule(layer)) if layer else find(model, tuple(x.shape[1:]))
        )
        cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return cam[0, 0].clamp_min(0).detach().cpu().numpy(), name
    if method == "saliency":
        # SmoothGrad: noise with stdev a fraction of the input's range (Smilkov et al.: 10-20%)
        stdev = float(nt_stdev * (x.max() - x.min()).item())
        grads = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=nt_samples,
            nt_samples_batch_size=internal_batch_size, stdevs=stdev, target=target,
        )  # fmt: skip
        return grads[0].abs().amax(dim=0).detach().cpu().numpy(), None
    if method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(
            x, baselines=make_baseline(x, data_config, baseline), target=target,
            n_steps=steps, internal_batch_size=internal_batch_size,
        )  # fmt: skip
        # evidence *for* the class, like Grad-CAM's ReLU; the channel sum is the pixel's total
        return attr[0].sum(dim=0).clamp_min(0).detach().cpu().numpy(), None
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def explain(
    model: torch.nn.Module,
    data_config: dict[str, Any],
    image: Image.Image,
    method: str = "gradcam",
    target: int | None = None,
    *,
    temperature: float = 1.0,
    **kw: Any,
) -> Explanation:
    """Explain ``model``'s score for ``target`` (default: its prediction) on ``image``.

    ``kw``: ``steps``, ``baseline`` (IG: blur | black | white | mean), ``nt_samples``,
    ``nt_stdev`` (SmoothGrad), ``internal_batch_size``, ``layer`` (Grad-CAM module name,
    found automatically otherwise). Captum hooks the model while it runs: do not explain on one
    model object from several threads at once.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    started = time.perf_counter()
    image = image if image.mode == "RGB" else image.convert("RGB")
    geometry = eval_geometry(data_config, image.width, image.height)
    device = next(model.parameters()).device
    x = build_transform(data_config, training=False)(image).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        # callers may sit inside inference_mode (Serve, Predictor): gradients must be on here
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            with torch.no_grad():
                logits = model(x).float()
            probs = torch.softmax(logits[0] / float(temperature or 1.0), dim=-1).cpu().numpy()
            predicted = int(probs.argmax())
            target = predicted if target is None else int(target)
            if not 0 <= target < probs.shape[0]:
                raise ValueError(
                    f"class {target} is not a class of this model (0..{len(probs) - 1})"
                )
            input_map, layer = attribute(model, x, target, method, data_config, **kw)
    finally:
        model.train(was_training)
    seen = np.ones_like(input_map)
    input_attr, empty = _normalise(input_map, seen)
    orig, _ = _normalise(to_original(input_attr, geometry), to_original(seen, geometry) > 0)
    settings = {k: v for k, v in kw.items() if isinstance(v, (int, float, str))}
    return Explanation(
        method=method, target=target, attribution=orig, predicted=predicted,
        probabilities=probs, input_attribution=input_attr, geometry=geometry,
        seconds=time.perf_counter() - started, layer=layer, empty=empty, settings=settings,
    )  # fmt: skip
