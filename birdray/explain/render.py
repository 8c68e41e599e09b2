"""What a person looks at: the heat map over the photo, and the few regions that carry it.

The overlay is drawn at the photo's own size (the map is already in original pixels), so it can
be laid over the upload in a browser without any rescaling. Regions come from a coarse grid of
attribution mass: the connected blobs above half the peak, boxed, ranked by the mass they hold.
"""

from __future__ import annotations

import io
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from birdray import storage

GRID = 96  # cells on the long side of the grid regions are found on


def heat_colors(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """RGB uint8 colours for a 0..1 map (matplotlib's colormap, no pyplot state)."""

    return (colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def overlay_png(
    image: Image.Image,
    attribution: np.ndarray,
    alpha: float = 0.55,
    regions: list[dict[str, Any]] | None = None,
    colormap: str = "jet",
    labels: list[dict[str, Any]] | None = None,
) -> bytes:
    """PNG bytes: ``image`` with the map blended in where it is strong (same size as ``image``);
    ``labels`` (``{part, x, y}``) are drawn as named dots: the parts, not only a heat map."""
    if attribution.shape != (image.height, image.width):
        h, w = attribution.shape
        raise ValueError(f"map is {w}x{h}, image is {image.width}x{image.height}")
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    peak = float(attribution.max())
    heat = attribution / peak if peak > 0 else np.zeros_like(attribution)
    # weak attribution leaves the photo visible; strong attribution shows the colour
    weight = (alpha * np.sqrt(heat))[..., None]
    blended = photo * (1.0 - weight) + heat_colors(heat, colormap).astype(np.float32) * weight
    out = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")
    if regions:
        draw = ImageDraw.Draw(out)
        width = max(1, round(min(out.size) / 150))
        for rank, box in enumerate(regions, 1):
            x0, y0, x1, y1 = box["x"], box["y"], box["x"] + box["w"] - 1, box["y"] + box["h"] - 1
            draw.rectangle([x0, y0, x1, y1], outline="white", width=width)
            draw.text((x0 + 2 * width, y0 + width), str(rank), fill="white")
    if labels:
        _draw_labels(out, labels)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _draw_labels(image: Image.Image, labels: list[dict[str, Any]]) -> None:
    """A dot and the part's name per label, black-outlined white text (readable on any heat)."""
    draw = ImageDraw.Draw(image)
    r = max(2, round(min(image.size) / 80))
    for label in labels:
        x, y = float(label["x"]), float(label["y"])
        draw.ellipse([x - r, y - r, x + r, y + r], fill="white", outline="black")
        draw.text((x + r + 1, y - r), str(label["part"]), fill="white", stroke_width=1,
                  stroke_fill="black")  # fmt: skip


def coarse_mass(attribution: np.ndarray, grid: int = GRID) -> tuple[np.ndarray, int]:
    """Attribution mass per cell of a grid with ``grid`` cells on the long side; cell size."""
    cell = max(1, int(np.ceil(max(attribution.shape) / grid)))
    t = torch.from_numpy(np.ascontiguousarray(attribution, dtype=np.float32))[None, None]
    mass = F.avg_pool2d(t, cell, stride=cell, ceil_mode=True) * cell * cell
    return mass[0, 0].numpy(), cell


def _smooth(grid: np.ndarray, size: int = 5) -> np.ndarray:
    """Box blur over a few cells, so noisy maps (SmoothGrad, IG) form blobs rather than specks."""
    t = torch.from_numpy(grid)[None, None]
    return F.avg_pool2d(t, size, stride=1, padding=size // 2, count_include_pad=False)[0, 0].numpy()


def _component(inside: np.ndarray, free: np.ndarray, seed: tuple[int, int]) -> list:
    """4-connected cells of ``inside`` reachable from ``seed``; marks them as no longer free."""
    rows, cols = inside.shape
    cells, queue = [], deque([seed])
    free[seed] = False
    while queue:
        r, c = queue.popleft()
        cells.append((r, c))
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < rows and 0 <= nc < cols and free[nr, nc] and inside[nr, nc]:
                free[nr, nc] = False
                queue.append((nr, nc))
    return cells


def top_regions(attribution: np.ndarray, k: int = 3, level: float = 0.5) -> list[dict[str, Any]]:
    """Up to ``k`` disjoint boxes, strongest first: blobs where the map is >= ``level`` x its peak.

    ``share`` is the attribution mass of the blob itself; ``peak`` its strongest point.
    """
    height, width = attribution.shape
    mass, cell = coarse_mass(attribution)
    values = _smooth(mass)
    top = float(values.max())
    if top <= 0:
        return []
    inside = values >= level * top
    free = inside.copy()
    blobs = []
    for flat in np.argsort(-values, axis=None):
        seed = np.unravel_index(int(flat), values.shape)
        if not inside[seed]:
            break  # sorted: every remaining cell is below the level
        if free[seed]:
            cells = np.array(_component(inside, free, (int(seed[0]), int(seed[1]))))
            blobs.append((float(mass[cells[:, 0], cells[:, 1]].sum()), seed, cells))
    regions = []
    for share, (r, c), cells in sorted(blobs, key=lambda b: -b[0])[:k]:
        y0, x0 = cells.min(axis=0) * cell
        y1, x1 = np.minimum((cells.max(axis=0) + 1) * cell, (height, width))
        peak = {
            "x": min(width - 1, int((c + 0.5) * cell)),
            "y": min(height - 1, int((r + 0.5) * cell)),
        }
        regions.append({
            "x": int(x0), "y": int(y0), "w": int(x1 - x0), "h": int(y1 - y0),
            "share": share, "peak": peak,
        })  # fmt: skip
    return regions


def _figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def part_share_plot(result: dict[str, Any], method: str, path: str | Path) -> Path:
    """Bars: mean attribution share per part, next to its area share (what chance would give)."""
    parts = sorted(result["part_share"], key=lambda p: -result["part_share"][p])
    fig = _figure(8, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    pos = np.arange(len(parts))
    ax.bar(pos - 0.2, [result["part_share"][p] for p in parts], 0.4, label="attribution share")
    ax.bar(pos + 0.2, [result["part_area_share"].get(p, 0.0) for p in parts], 0.4,
           label="area share (chance)", color="0.6")  # fmt: skip
    ax.set_xticks(pos, parts, rotation=45, ha="right")
    ax.set_ylabel("share of attribution mass")
    ax.set_title(f"{method}: where the attribution goes ({result['images']} images)")
    ax.legend()
    return _save(fig, path)


def deletion_plot(deletion: dict[str, Any], method: str, path: str | Path) -> Path:
    """Accuracy as most-attributed pixels are removed first, against random removal."""
    fig = _figure(6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    fractions = deletion["fractions"]
    auc = deletion["auc"]
    ax.plot(fractions, deletion["deletion_correct"], "o-",
            label=f"most attributed first (AUC {auc['deletion_correct']:.2f})")  # fmt: skip
    ax.plot(fractions, deletion["random_correct"], "s--", color="0.4",
            label=f"random pixels (AUC {auc['random_correct']:.2f})")  # fmt: skip
    ax.set_xlabel("fraction of pixels removed")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{method}: deletion curve (faithfulness)")
    ax.legend()
    return _save(fig, path)


def contrastive_plot(contrastive: dict[str, Any], path: str | Path) -> Path:
    """Bars per sibling pair and method: separating part's share / its area share (goal line)."""
    from birdray.explain.contrastive import GOAL_RATIO

    methods = contrastive["methods"]
    pairs = [f"{p['species'].split('.')[-1]} vs {p['sibling'].split('.')[-1]}"
             for p in next(iter(methods.values()))["pairs"]]  # fmt: skip
    fig = _figure(max(6.0, 0.9 * len(pairs) + 3), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    for i, (method, r) in enumerate(methods.items()):
        by_pair = {f"{p['species'].split('.')[-1]} vs {p['sibling'].split('.')[-1]}": p
                   for p in r["pairs"]}  # fmt: skip
        bars = ax.bar(
            np.arange(len(pairs)) + (i - (len(methods) - 1) / 2) * width,
            [by_pair[p]["ratio"] if p in by_pair else 0.0 for p in pairs],
            width,
            label=f"{method} ({r['pairs_meeting_goal']}/{r['pairs_total']} meet goal)",
        )
        ranks = [f"#{by_pair[p]['median_rank']:g}" if p in by_pair else "" for p in pairs]
        ax.bar_label(bars, ranks, fontsize=6)  # the separating part's median rank
    ax.axhline(GOAL_RATIO, color="0.3", ls="--", label=f"goal {GOAL_RATIO:g}x chance")
    ax.axhline(1.0, color="0.6", ls=":", label="chance")
    ax.set_xticks(np.arange(len(pairs)), pairs, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("part share / area share (#rank)")
    ax.set_ylim(
        0,
        1.4
        * max(
            [GOAL_RATIO]
            + [p["ratio"] for r in methods.values() for p in r["pairs"] if np.isfinite(p["ratio"])]
        ),
    )
    ax.set_title("why this species and not its sibling (contrastive maps)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    storage.write_bytes_atomic(path, buf.getvalue())  # one atomic writer (unique temp names)
    return path
