"""Attribution maps: right place in the original photo, every method on real architectures."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from birdray.explain import METHODS, explain, find_gradcam_layer
from birdray.explain.attribution import to_original
from birdray.model.crop import eval_geometry
from birdray.model.preprocess import resolve_data_config

FAST = {"steps": 8, "nt_samples": 4, "internal_batch_size": 8}


class RedSpotNet(torch.nn.Module):
    """A hand-built CNN whose class-0 logit counts bright red pixels; class 1 is a constant.

    Its gradient is non-zero only where red is bright, so a correct map must sit on the red patch.
    """

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.features[0].bias.fill_(-0.5)  # normalised red > 0.5: only the patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.pool(self.features(x)).flatten(1) * 100.0
        return torch.cat([score, torch.full_like(score, 0.01)], dim=1)


def _config(crop_pct: float) -> dict:
    return {
        "input_size": [3, 64, 64], "interpolation": "bilinear", "mean": [0.5] * 3,
        "std": [0.5] * 3, "crop_pct": crop_pct, "crop_mode": "center",
    }  # fmt: skip


def _planted(width: int, height: int, box: tuple[int, int, int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.repeat(rng.integers(0, 60, (height, width, 1)), 3, axis=2).astype(np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = (255, 0, 0)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("size", "box", "crop_pct"),
    [
        ((300, 180), (180, 100, 200, 120), 0.875),  # wide
        ((160, 280), (40, 150, 60, 170), 0.95),  # tall, resnet-style crop
        ((240, 150), (60, 4, 80, 24), 1.0),  # patch at the top edge, no crop margin
    ],
)
def test_planted_patch_peak_lands_on_patch_in_original_pixels(method, size, box, crop_pct):
    cfg = _config(crop_pct)
    image = _planted(*size, box)
    exp = explain(RedSpotNet().eval(), cfg, image, method, **FAST)
    assert exp.predicted == 0 and exp.target == 0
    assert exp.attribution.shape == (size[1], size[0])
    assert exp.attribution.dtype == np.float32
    assert exp.attribution.min() >= 0 and exp.attribution.sum() == pytest.approx(1.0, abs=1e-4)
    x, y = exp.peak()
    x0, y0, x1, y1 = box
    assert x0 - 3 <= x < x1 + 3 and y0 - 3 <= y < y1 + 3, (x, y)
    near = exp.attribution[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6].sum()
    assert near > 0.6, near


def test_pixels_cropped_away_get_no_attribution():
    cfg = _config(0.875)
    image = _planted(300, 180, (180, 100, 200, 120))
    exp = explain(RedSpotNet().eval(), cfg, image, "gradcam")
    geometry = eval_geometry(cfg, 300, 180)
    left, _ = geometry.to_original(np.array(0.0), np.array(0.0))
    right, _ = geometry.to_original(np.array(64.0), np.array(64.0))
    assert exp.attribution[:, : int(left) - 1].sum() == 0.0
    assert exp.attribution[:, int(np.ceil(right)) + 1 :].sum() == 0.0


def test_to_original_moves_a_point_where_the_geometry_says():
    cfg = _config(0.875)
    geometry = eval_geometry(cfg, 400, 250)
    point = np.zeros((64, 64), dtype=np.float32)
    point[10, 50] = 1.0
    mapped = to_original(point, geometry)
    assert mapped.shape == (250, 400)
    y, x = np.unravel_index(int(mapped.argmax()), mapped.shape)
    ex, ey = geometry.to_original(np.array(50.5), np.array(10.5))
    assert abs(x + 0.5 - float(ex)) <= 1.5 and abs(y + 0.5 - float(ey)) <= 1.5


def test_requested_class_and_bad_class():
    cfg = _config(0.875)
    image = _planted(120, 90, (50, 40, 60, 50))
    exp = explain(RedSpotNet().eval(), cfg, image, "saliency", target=1, **FAST)
    assert exp.target == 1 and exp.predicted == 0
    assert exp.empty  # class 1 is a constant: no evidence anywhere, map is uniform over the crop
    assert exp.attribution.sum() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="not a class"):
        explain(RedSpotNet().eval(), cfg, image, "gradcam", target=7)
    with pytest.raises(ValueError, match="unknown method"):
        explain(RedSpotNet().eval(), cfg, image, "lime")


def test_explain_works_inside_inference_mode_and_restores_training_flag():
    model = RedSpotNet().train()
    with torch.inference_mode():
        exp = explain(model, _config(0.875), _planted(100, 80, (40, 30, 55, 45)), "gradcam")
    assert exp.attribution.sum() == pytest.approx(1.0, abs=1e-4)
    assert model.training


def test_overlay_is_a_png_of_the_original_size_and_regions_rank_the_patch_first():
    image = _planted(300, 180, (180, 100, 200, 120))
    exp = explain(RedSpotNet().eval(), _config(0.875), image, "gradcam")
    png = exp.overlay_png(image, boxes=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(png))
    decoded.load()
    assert decoded.size == image.size and decoded.format == "PNG"
    assert np.asarray(decoded).std() > 0
    regions = exp.regions(3)
    assert 1 <= len(regions) <= 3
    top = regions[0]
    assert {"x", "y", "w", "h", "share"} <= set(top)
    assert top["x"] <= 190 <= top["x"] + top["w"] and top["y"] <= 110 <= top["y"] + top["h"]
    assert top["share"] > 0.5
    assert all(a["share"] >= 0 for a in regions)


def _execution_order(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_a, n=n: order.append(n))
        for n, m in model.named_modules()
        if n
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "efficientnet_b0"])
def test_every_method_runs_on_real_architectures(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5).eval()
    cfg = resolve_data_config(model, 224)
    name, layer = find_gradcam_layer(model, (3, 224, 224))
    # the layer is the last conv stage: its output is what global pooling consumes ...
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(x)
    handle.remove()
    assert captured["out"].shape == features.shape and features.shape[-1] == 7
    # ... and no convolution runs after it
    order = _execution_order(model, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    last_conv = max(order.index(c) for c in convs)
    assert order.index(name) >= last_conv
    assert {"resnet50": "layer4", "densenet121": "features.norm5"}.get(arch, name) == name
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 330, 3), np.uint8))
    for method in METHODS:
        exp = explain(model, cfg, image, method, **FAST)
        assert exp.attribution.shape == (200, 330)
        assert np.isfinite(exp.attribution).all() and exp.attribution.min() >= 0
        assert exp.attribution.sum() == pytest.approx(1.0, abs=1e-3)
        assert not exp.empty or method.startswith("gradcam")
        png = Image.open(io.BytesIO(exp.overlay_png(image)))
        assert png.size == image.size


def test_regions_are_disjoint_blobs_ranked_by_mass():
    from birdray.explain.render import top_regions

    yy, xx = np.mgrid[:200, :300]
    tall_narrow = 2.0 * np.exp(-((xx - 60) ** 2 + (yy - 50) ** 2) / (2 * 8**2))
    low_wide = 1.5 * np.exp(-((xx - 220) ** 2 + (yy - 150) ** 2) / (2 * 12**2))  # more mass
    attr = (tall_narrow + low_wide).astype(np.float32)
    regions = top_regions(attr / attr.sum(), k=3)
    assert len(regions) == 2
    wide, narrow = regions
    assert wide["x"] <= 220 < wide["x"] + wide["w"] and wide["y"] <= 150 < wide["y"] + wide["h"]
    assert (
        narrow["x"] <= 60 < narrow["x"] + narrow["w"]
        and narrow["y"] <= 50 < narrow["y"] + narrow["h"]
    )
    assert wide["share"] > narrow["share"] > 0.1 and wide["share"] + narrow["share"] <= 1.0
    assert narrow["x"] + narrow["w"] <= wide["x"] or wide["y"] >= narrow["y"] + narrow["h"]
