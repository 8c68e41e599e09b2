"""Where a photo's bird parts are, without annotations: part prototypes in the model's own features.

An upload has no CUB part clicks, so answering "which parts drove this" needs the parts located
first. ``explain-eval`` learns one prototype per part: the mean of the L2-normalised feature
vectors of the model's second-to-last stage (``find_early_layer``: twice the final map's
resolution) at that part's annotated location, over the evaluated images. On a new photo a part
is where the feature map is most similar to its prototype, and it is shown only when that
similarity reaches the part's threshold (a low percentile of the similarities at true locations).
How often a located part lands within the scoring radius of the annotation (PCK) is measured on
images the prototypes were not fitted on and travels with the prototypes, so the UI can say how
far to trust the labels. No training, no extra model: the features the classifier already has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from birdray import storage
from birdray.data.manifest import read_split
from birdray.explain.attribution import find_early_layer
from birdray.explain.parts import EXPLAIN_DIR, part_radius, part_xyv
from birdray.images import decode_image
from birdray.model.crop import CropGeometry, eval_geometry
from birdray.model.preprocess import build_transform
from birdray.resources import watched

LOCATOR_FILE = "part_locator.json"
THRESHOLD_PERCENTILE = 20.0  # a part is "there" when it looks at least this much like itself
MEASURE_TIMEOUT_S = 300.0  # the held-out PCK task: bounded like every other wait on Ray


def feature_map(
    model: torch.nn.Module, data_config: dict[str, Any], image: Image.Image
) -> tuple[np.ndarray, CropGeometry]:
    """(C, h, w) unit-length feature vectors of the early stage, and the eval crop's geometry."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    _, module = find_early_layer(model, tuple(data_config["input_size"]))
    device = next(model.parameters()).device
    x = build_transform(data_config, training=False)(image).unsqueeze(0).to(device)
    grabbed: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    feats = F.normalize(grabbed[0][0].float(), dim=0)
    return feats.cpu().numpy(), eval_geometry(data_config, image.width, image.height)


def _cell(geometry: CropGeometry, shape: tuple[int, int], x: float, y: float) -> tuple[int, int]:
    """(row, col) of the feature cell over original pixel (x, y); (-1, -1) if cropped away."""
    xi, yi = geometry.from_original(np.float64(x), np.float64(y))
    if not (0 <= xi < geometry.size_w and 0 <= yi < geometry.size_h):
        return -1, -1
    h, w = shape
    return int(yi * h / geometry.size_h), int(xi * w / geometry.size_w)


def part_features(feats: np.ndarray, geometry: CropGeometry, parts: Any) -> np.ndarray:
    """(P, C): the feature vector under each visible part; NaN rows for hidden or cropped ones."""
    out = np.full((len(parts), feats.shape[0]), np.nan, dtype=np.float32)
    for i, part in enumerate(parts):
        x, y, visible = part_xyv(part)
        row, col = _cell(geometry, feats.shape[1:], x, y)
        if visible and row >= 0:
            out[i] = feats[:, row, col]
    return out


def _prototypes(samples: np.ndarray) -> np.ndarray:
    """(P, C) unit mean of each part's samples (zeros for a part never seen)."""
    seen = np.isfinite(samples[..., 0])
    sums = np.where(seen[..., None], samples, 0.0).sum(axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def recognition(samples: np.ndarray, prototypes: np.ndarray) -> float:
    """Share of visible part samples whose most similar prototype is their own part's."""
    hits = total = 0
    for p in range(samples.shape[1]):
        rows = samples[:, p][np.isfinite(samples[:, p, 0])]
        if len(rows):
            hits += int(((rows @ prototypes.T).argmax(axis=1) == p).sum())
            total += len(rows)
    return hits / total if total else float("nan")


def fit_locator(
    samples: np.ndarray, image_ids: np.ndarray, part_names: list[str], radius: float
) -> dict[str, Any]:
    """Prototypes and thresholds from ``samples`` (N, P, C); part recognition measured on the
    odd image ids with prototypes of the even ones, so the number is not the fit's own."""
    even = image_ids % 2 == 0
    held_out = recognition(samples[~even], _prototypes(samples[even])) if even.any() else np.nan
    prototypes = _prototypes(samples)
    similarity = np.einsum("npc,pc->np", np.nan_to_num(samples), prototypes)
    similarity[~np.isfinite(samples[..., 0])] = np.nan
    counts = np.isfinite(similarity).sum(axis=0)
    seen = counts > 0
    thresholds = np.full(len(part_names), np.inf)  # a part never seen is never shown
    if seen.any():
        thresholds[seen] = np.nanpercentile(similarity[:, seen], THRESHOLD_PERCENTILE, axis=0)
    return {
        "part_names": list(part_names),
        "radius": radius,
        "images": int(len(samples)),
        "samples_per_part": dict(zip(part_names, counts.tolist(), strict=True)),
        "recognition_held_out": float(held_out),
        "recognition_chance": 1.0 / max(1, len(part_names)),
        "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds],
        "prototypes": np.round(prototypes, 5).tolist(),
    }


def locate(feats: np.ndarray, geometry: CropGeometry, locator: dict[str, Any]) -> list[dict]:
    """Every part's best-matching place in original pixels, its similarity and whether it is
    shown (similarity at or above the part's threshold)."""
    prototypes = np.asarray(locator["prototypes"], dtype=np.float32)
    c, h, w = feats.shape
    similarity = prototypes @ feats.reshape(c, h * w)  # (P, h*w)
    out = []
    for p, name in enumerate(locator["part_names"]):
        best = int(similarity[p].argmax())
        row, col = divmod(best, w)
        xi = (col + 0.5) * geometry.size_w / w
        yi = (row + 0.5) * geometry.size_h / h
        x, y = geometry.to_original(np.float64(xi), np.float64(yi))
        threshold = locator["thresholds"][p]
        score = float(similarity[p, best])
        shown = threshold is not None and score >= threshold
        out.append({"part": name, "x": float(x), "y": float(y), "similarity": score,
                    "visible": bool(shown)})  # fmt: skip
    return out


def located_extent(located: list[dict], width: int, height: int) -> list[float]:
    """A stand-in for the missing bird box (it sets the part radius): the shown parts' extent,
    at least a third of the photo's sides, the whole photo when no part is shown."""
    shown = [(p["x"], p["y"]) for p in located if p["visible"]]
    if len(shown) < 2:
        return [0.0, 0.0, float(width), float(height)]
    xs, ys = zip(*shown, strict=True)
    w, h = max(max(xs) - min(xs), width / 3), max(max(ys) - min(ys), height / 3)
    return [min(xs), min(ys), float(w), float(h)]


def pck(located: list[dict], parts: Any, bbox: Any, radius: float) -> tuple[int, int, int]:
    """(hits, visible, false_shows): shown parts within the radius of their annotation, the
    annotated visible parts, and parts shown although the annotation says hidden."""
    r = part_radius(bbox, radius)
    hits = visible = false = 0
    for found, part in zip(located, parts, strict=True):
        x, y, seen = part_xyv(part)
        if seen:
            visible += 1
            hits += int(found["visible"] and np.hypot(found["x"] - x, found["y"] - y) <= r)
        else:
            false += int(found["visible"])
    return hits, visible, false


def load_part_locator(package_path: str | Path) -> dict[str, Any] | None:
    """The package's locator (written by ``explain-eval``), or None before any evaluation."""
    path = storage.join(str(package_path), EXPLAIN_DIR, LOCATOR_FILE)
    try:
        return json.loads(storage.read_bytes(path))
    except (FileNotFoundError, OSError, ValueError):
        return None


def fit_and_measure(
    rows: Any, dataset: str, split: str, files: dict[str, bytes], part_names: list[str],
    radius: float, cfg: dict[str, Any], images: int = 40,
) -> dict[str, Any]:  # fmt: skip
    """The locator from explain-eval's rows (``part_features`` per image), and its PCK measured
    in one Ray task on up to ``images`` odd-id images with a locator fitted on the even ids."""
    import ray

    sampled = rows[rows["part_features"].map(len) > 0]
    if sampled.empty:
        return {"available": False, "reason": "no image with part annotations was explained"}
    ids = sampled["image_id"].to_numpy()
    samples = np.stack(
        [
            np.asarray(f, dtype=np.float32).reshape(len(part_names), -1)
            for f in sampled["part_features"]
        ]
    )
    locator = fit_locator(samples, ids, part_names, radius)
    even = ids % 2 == 0
    if not even.any() or even.all():
        return {**locator, "available": True, "pck": None,
                "pck_note": "too few images to hold any out"}  # fmt: skip
    held_out = set(ids[~even].tolist()[:images])
    fitted_on_even = fit_locator(samples[even], ids[even], part_names, radius)
    task = ray.remote(_measure).options(num_cpus=cfg.get("actor_cpus", 0.5),
                                        num_gpus=cfg.get("num_gpus") or None)  # fmt: skip

    def measured() -> Iterator[dict[str, Any]]:
        test = (
            read_split(dataset, split, ["image_id", "image", "bbox", "parts"], list_once=True)
            .filter(lambda row: int(row["image_id"]) in held_out)
            .take(images)
        )
        yield ray.get(task.remote(files, fitted_on_even, test, cfg.get("threads", 1)))

    # a task that gets no CPU ends with Ray's pending demand instead of waiting forever
    result = next(watched(measured(), MEASURE_TIMEOUT_S, "part locator measurement"))
    return {**locator, "available": True, **result}


def _measure(
    files: dict[str, bytes], locator: dict[str, Any], rows: list[dict], threads: int
) -> dict[str, Any]:
    """PCK of ``locator`` on ``rows`` (their annotations are the truth), in a Ray task."""
    from birdray.model.factory import pick_device, set_threads
    from birdray.model.package import load_package_files

    set_threads(threads)
    package = load_package_files(files, verified=True)  # package_files checked
    model = package.model.to(pick_device(False)).eval()
    hits = visible = false = hidden = 0
    for row in rows:
        image = decode_image(bytes(row["image"])).image
        feats, geometry = feature_map(model, package.metadata.data_config, image)
        located = locate(feats, geometry, locator)
        h, v, f = pck(located, list(row["parts"]), list(row["bbox"]), locator["radius"])
        hits, visible, false = hits + h, visible + v, false + f
        hidden += len(located) - v
    return {
        "pck": hits / visible if visible else None,
        "pck_images": len(rows),
        "false_show_rate": false / hidden if hidden else None,
        "pck_note": "shown parts within the part radius of the annotation, on images the "
        "prototypes were not fitted on",
    }
