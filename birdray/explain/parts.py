"""Score an attribution map against CUB part annotations: part shares and the pointing game.

Each visible part owns the pixels within ``radius × sqrt(bbox w × bbox h)`` of it (a radius
relative to the bird's size, so big and small birds are scored alike); where two parts' disks
overlap, the nearer part owns the pixel, so shares never double count and sum to at most 1.
A part's *area share* (its pixels over the image) is what a uniformly random map would give it:
the chance level every share is compared with. The same holds for the pointing game: a random
point lands in the box with probability box area / image area.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PROFILES_FILE = "part_profiles.json"
EXPLAIN_DIR = "explain"


def part_xyv(part: Any) -> tuple[float, float, bool]:
    if isinstance(part, dict):
        return float(part["x"]), float(part["y"]), bool(part["visible"])
    x, y, v = part
    return float(x), float(y), bool(v)


def part_radius(bbox: Any, radius: float) -> float:
    """Pixels: ``radius`` times the geometric mean of the box sides."""
    _, _, w, h = (float(v) for v in bbox)
    return max(1.0, radius * float(np.sqrt(max(w, 1.0) * max(h, 1.0))))


def part_label_map(
    shape: tuple[int, int], parts: Any, bbox: Any, radius: float = 0.1
) -> np.ndarray:
    """H x W int map: index of the nearest visible part within the radius, -1 elsewhere."""
    height, width = shape
    labels = np.full(shape, -1, dtype=np.int16)
    points = [(i, *part_xyv(p)[:2]) for i, p in enumerate(parts) if part_xyv(p)[2]]
    if not points:
        return labels
    r = part_radius(bbox, radius)
    xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
    x0, x1 = max(0, int(xs.min() - r)), min(width, int(np.ceil(xs.max() + r)) + 1)
    y0, y1 = max(0, int(ys.min() - r)), min(height, int(np.ceil(ys.max() + r)) + 1)
    if x0 >= x1 or y0 >= y1:
        return labels
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dist = np.stack([(gx - x) ** 2 + (gy - y) ** 2 for x, y in zip(xs, ys, strict=True)])
    nearest = dist.argmin(axis=0)
    within = dist.min(axis=0) <= r * r
    index = np.array([p[0] for p in points], dtype=np.int16)
    labels[y0:y1, x0:x1] = np.where(within, index[nearest], -1)
    return labels


def part_shares(
    attribution: np.ndarray,
    parts: Any,
    bbox: Any,
    part_names: list[str],
    radius: float = 0.1,
) -> dict[str, float]:
    """Share of the map's mass near each part (every name; 0.0 for parts not visible)."""
    labels = part_label_map(attribution.shape, parts, bbox, radius)
    flat = labels.ravel() + 1
    sums = np.bincount(flat, weights=attribution.ravel(), minlength=len(part_names) + 1)
    return {name: float(sums[i + 1]) for i, name in enumerate(part_names)}


def find_peak(attribution: np.ndarray, smooth: float = 0.02) -> tuple[int, int]:
    """(x, y) of the maximum after a box blur of ``smooth`` × the short side (not a lone pixel)."""
    size = max(1, round(smooth * min(attribution.shape))) | 1
    t = torch.from_numpy(np.ascontiguousarray(attribution, dtype=np.float32))[None, None]
    blurred = F.avg_pool2d(t, size, stride=1, padding=size // 2, count_include_pad=False)[0, 0]
    y, x = np.unravel_index(int(torch.argmax(blurred)), blurred.shape)
    return int(x), int(y)


def in_box(x: float, y: float, bbox: Any) -> bool:
    bx, by, bw, bh = (float(v) for v in bbox)
    return bx <= x + 0.5 <= bx + bw and by <= y + 0.5 <= by + bh


@dataclass
class PartScore:
    """An image's map scored against its annotations (parts in the manifest's order)."""

    shares: dict[str, float]
    area_shares: dict[str, float]  # chance level of each share
    visible: dict[str, bool]
    peak: tuple[int, int]
    peak_in_bbox: bool
    peak_near_part: bool
    nearest_part: str | None  # the part owning the peak pixel, if any
    bbox_area_share: float  # chance of peak_in_bbox
    parts_area_share: float  # chance of peak_near_part

    def ranking(self) -> list[tuple[str, float]]:
        """Visible parts, most attributed first."""
        names = [n for n, v in self.visible.items() if v]
        return sorted(((n, self.shares[n]) for n in names), key=lambda item: -item[1])

    def to_dict(self) -> dict[str, Any]:
        ranking = [
            {"part": n, "share": s, "chance": self.area_shares[n]} for n, s in self.ranking()
        ]
        return {
            "ranking": ranking,
            "peak": {"x": self.peak[0], "y": self.peak[1]},
            "pointing": {
                "peak_in_bbox": self.peak_in_bbox, "peak_near_part": self.peak_near_part,
                "nearest_part": self.nearest_part, "bbox_chance": self.bbox_area_share,
                "parts_chance": self.parts_area_share,
            },
        }  # fmt: skip


def score_parts(
    attribution: np.ndarray,
    parts: Any,
    bbox: Any,
    part_names: list[str],
    radius: float = 0.1,
    peak: tuple[int, int] | None = None,
) -> PartScore:
    """Part shares, their chance levels and the pointing game for one map."""
    labels = part_label_map(attribution.shape, parts, bbox, radius)
    n = len(part_names)
    flat = labels.ravel() + 1
    mass = np.bincount(flat, weights=attribution.ravel(), minlength=n + 1)
    area = np.bincount(flat, minlength=n + 1) / float(labels.size)
    x, y = find_peak(attribution) if peak is None else peak
    owner = int(labels[y, x])
    _, _, bw, bh = (float(v) for v in bbox)
    return PartScore(
        shares={name: float(mass[i + 1]) for i, name in enumerate(part_names)},
        area_shares={name: float(area[i + 1]) for i, name in enumerate(part_names)},
        visible={name: part_xyv(p)[2] for name, p in zip(part_names, parts, strict=True)},
        peak=(x, y),
        peak_in_bbox=in_box(x, y, bbox),
        peak_near_part=owner >= 0,
        nearest_part=part_names[owner] if owner >= 0 else None,
        bbox_area_share=min(1.0, bw * bh / float(labels.size)),
        parts_area_share=float(area[1:].sum()),
    )


def load_part_profiles(package_path: str | Path) -> dict[str, Any] | None:
    """``explain/part_profiles.json`` of a package, class labels as ints; None if not evaluated."""
    path = Path(package_path) / EXPLAIN_DIR / PROFILES_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["classes"] = {int(k): v for k, v in data.get("classes", {}).items()}
    return data


def species_profile(profiles: dict[str, Any] | None, label: int) -> dict[str, float] | None:
    """One species' typical part shares, strongest first (None when there is none)."""
    if not profiles:
        return None
    profile = profiles["classes"].get(int(label))
    return dict(sorted(profile.items(), key=lambda kv: -kv[1])) if profile else None
