"""Faithfulness tests for attribution maps, each with a stated pass criterion.

Removing scattered random pixels destroys an image faster than removing one region of the same
area, and filling removed pixels with a constant adds edges the model reacts to; a deletion curve
compared with random pixels therefore judges the removal, not the map. These tests avoid both:

* removal works on cells of a ``cells x cells`` grid (the map's granularity: Grad-CAM's map is
  4x4 to 7x7), ranked by the attribution mass they hold;
* removed pixels are imputed from their neighbours (ROAD, Rong et al. 2022: each removed pixel is
  the 8-neighbour weighted average, 1/6 direct and 1/12 diagonal, plus noise 0.01), so a removed
  region looks like smooth background rather than a grey hole;
* **MoRF vs LeRF**: removing the most relevant cells first must lower the explained class's
  probability faster than removing the least relevant first: per image AUC_MoRF - AUC_LeRF,
  pass when the bootstrap 95% CI over images lies below 0;
* **MoRF vs random regions**: the same, against random *contiguous* cell sets of the same count;
* **model randomisation** (Adebayo et al. 2018): maps of a copy of the model whose last stage and
  classifier are re-initialised must not resemble the trained model's: Spearman rho per image,
  pass when the CI's upper bound is below ``SANITY_THRESHOLD``.

Fewer than ``MIN_IMAGES`` images give no verdict ("too few images"): the interval would be wider
than the effects it should separate.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SANITY_THRESHOLD = 0.5
MIN_IMAGES = 20
ROAD_NOISE = 0.01


def cell_index(h: int, w: int, cells: int) -> np.ndarray:
    """The grid cell (row-major id) of every pixel of an h x w input."""
    rows, cols = (np.arange(h) * cells) // h, (np.arange(w) * cells) // w
    return rows[:, None] * cells + cols[None, :]


def cell_relevance(input_map: np.ndarray, cells: int) -> np.ndarray:
    """Attribution mass per cell (``cells * cells`` values)."""
    index = cell_index(*input_map.shape, cells)
    return np.bincount(index.ravel(), weights=input_map.ravel(), minlength=cells * cells)


def ranked_cells(relevance: np.ndarray, rng: np.random.Generator, most_first: bool) -> np.ndarray:
    """Cells by relevance (ties, e.g. Grad-CAM's zeros, broken at random: no raster order)."""
    return np.lexsort((rng.random(len(relevance)), -relevance if most_first else relevance))


def random_region_order(cells: int, rng: np.random.Generator) -> np.ndarray:
    """All cells in an order whose every prefix is one 4-connected region, grown at random."""
    seed = int(rng.integers(cells * cells))
    order, taken, frontier = [seed], {seed}, set()
    while len(order) < cells * cells:
        r, c = divmod(order[-1], cells)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= rr < cells and 0 <= cc < cells and rr * cells + cc not in taken:
                frontier.add(rr * cells + cc)
        nxt = sorted(frontier)[int(rng.integers(len(frontier)))]
        frontier.discard(nxt)
        taken.add(nxt)
        order.append(nxt)
    return np.array(order)


def _pyramid_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A first guess for unknown pixels: the mean of known ones at ever coarser scales."""
    if x.shape[-1] <= 1 and x.shape[-2] <= 1:
        return x * known
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse = F.avg_pool2d(x * known, 2, ceil_mode=True) / weight.clamp_min(1e-8)
    filled = _pyramid_fill(coarse, (weight > 0).to(x.dtype))
    up = F.interpolate(filled, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x * known + up * (1 - known)


def _neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """ROAD's 8-neighbour weights (1/6 direct, 1/12 diagonal), zero outside the image."""
    p = F.pad(x, (1, 1, 1, 1))
    direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return direct / 6 + diagonal / 12


def road_impute(
    x: torch.Tensor,
    removed: torch.Tensor,
    generator: torch.Generator | None = None,
    iterations: int = 8,
    noise: float = ROAD_NOISE,
) -> torch.Tensor:
    """Replace ``removed`` pixels (B x 1 x H x W, 1 = removed) of ``x`` (B x C x H x W).

    ROAD's linear imputation makes every removed pixel the weighted mean of its 8 neighbours;
    that linear system is solved approximately here: a coarse-to-fine mean of the kept pixels as
    first guess (within ~2% of the range of the exact solution on a ramp), then a few Jacobi
    sweeps of ROAD's weights (each sweep is cheap, convergence is slow: a full solve would cost
    more than the model's forward passes). Noise goes on removed pixels only; kept ones stay.
    """
    known = 1.0 - removed.to(x.dtype)
    norm = _neighbour_mean(torch.ones_like(x[:1, :1]))  # fewer neighbours at the image border
    out = _pyramid_fill(x, known)
    for _ in range(iterations):
        out = x * known + (_neighbour_mean(out) / norm) * (1 - known)
    jitter = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    return out + noise * jitter * (1 - known)


def removal_curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    input_map: np.ndarray,
    target: int,
    fractions: list[float],
    cells: int,
    rng: np.random.Generator,
    regions: int = 2,
    chunk: int = 8,
) -> dict[str, list[float]]:
    """Probability of ``target`` as cells go (ROAD-imputed): MoRF, LeRF, random regions (mean)."""
    h, w = input_map.shape
    relevance = cell_relevance(input_map, cells)
    orders = [ranked_cells(relevance, rng, True), ranked_cells(relevance, rng, False)]
    orders += [random_region_order(cells, rng) for _ in range(regions)]
    index = torch.from_numpy(cell_index(h, w, cells)).to(x.device)
    masks = []
    for order in orders:
        for frac in fractions:
            gone = torch.zeros(cells * cells, dtype=x.dtype, device=x.device)
            gone[torch.from_numpy(order[: round(frac * cells * cells)]).to(x.device)] = 1
            masks.append(gone[index])
    removed = torch.stack(masks)[:, None]
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    with torch.no_grad():
        batch = road_impute(x.expand(len(masks), -1, -1, -1), removed, gen)
        logits = torch.cat(
            [model(batch[i : i + chunk]).float() for i in range(0, len(batch), chunk)]
        )
    probs = torch.softmax(logits, dim=-1)[:, target].cpu().numpy().reshape(len(orders), -1)
    return {
        "morf_prob": probs[0].tolist(),
        "lerf_prob": probs[1].tolist(),
        "region_prob": probs[2:].mean(axis=0).tolist(),
    }


def randomize_top(model: torch.nn.Module, input_size: tuple[int, ...], seed: int = 0):
    """A copy of ``model`` with its last stage and everything after it re-initialised.

    The last stage is timm's last ``feature_info`` module (``layer4``, ``blocks.6``); the layers
    after it in the forward pass (``conv_head``, ``bn2``, the classifier) go too. Without
    ``feature_info`` the last quarter of the parameterised layers is re-initialised.
    """
    clone = copy.deepcopy(model).eval()
    seen: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_a, n=n: seen.append(n))
        for n, m in clone.named_modules()
        if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            clone(torch.zeros(1, *input_size, device=next(clone.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    order = list(dict.fromkeys(seen))
    info = getattr(clone, "feature_info", None)
    last = info[-1].get("module") if isinstance(info, list) and info else None
    start = next((i for i, n in enumerate(order) if last and n.startswith(f"{last}.")), None)
    start = start if start is not None else len(order) - max(1, len(order) // 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in order[start:]:
            module = clone.get_submodule(name)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    return clone


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho of two maps; NaN when either is constant (no ranking to compare)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def bootstrap_ci(
    values: np.ndarray, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval of the mean, resampling images."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return (
        float(values.mean()),
        float(np.percentile(means, tail)),
        float(np.percentile(means, 100 - tail)),
    )


def _auc(curves: np.ndarray, fractions: list[float]) -> np.ndarray:
    """Per-image area under each curve, normalised by the fraction range."""
    return np.trapezoid(curves, fractions, axis=-1) / ((fractions[-1] - fractions[0]) or 1.0)


def _test(values: np.ndarray, bound: float, statistic: str, seed: int) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    criterion = f"upper end of the 95% bootstrap CI < {bound:g}"
    out: dict[str, Any] = {"statistic": statistic, "images": len(values), "criterion": criterion}
    if len(values) < MIN_IMAGES:  # the mean is still reported (no interval, no verdict)
        mean = float(values.mean()) if len(values) else None
        return {**out, "mean": mean, "passed": False, "verdict": f"too few images (< {MIN_IMAGES})"}
    mean, lo, hi = bootstrap_ci(values, seed)
    passed = hi < bound
    return {**out, "mean": mean, "ci95": [lo, hi], "passed": bool(passed),
            "verdict": "pass" if passed else "fail"}  # fmt: skip


def summarize_faithfulness(
    rows: Any, fractions: list[float], cells: int, seed: int = 0, sanity: bool = True
) -> dict[str, Any]:
    """The three tests over the images that have removal curves (``rows``: a DataFrame)."""
    rows = rows[rows["morf_prob"].map(lambda v: v is not None and len(v) > 0)]
    curves = {k: np.stack(rows[k].to_numpy()) if len(rows) else np.zeros((0, len(fractions)))
              for k in ("morf_prob", "lerf_prob", "region_prob")}  # fmt: skip
    auc = {k: _auc(v, fractions) for k, v in curves.items()}
    tests = {
        "morf_vs_lerf": _test(
            auc["morf_prob"] - auc["lerf_prob"], 0.0, "AUC_MoRF - AUC_LeRF", seed
        ),
        "morf_vs_random_region": _test(
            auc["morf_prob"] - auc["region_prob"], 0.0, "AUC_MoRF - AUC_random_region", seed
        ),
    }
    if sanity and "sanity_rho" in rows:  # constant maps have no ranking: left out (NaN)
        rho = rows["sanity_rho"].to_numpy(dtype=np.float64)
        tests["model_randomisation"] = _test(
            rho, SANITY_THRESHOLD, "Spearman rho(trained map, top layers re-initialised)", seed
        )
    return {
        "images": int(len(rows)), "cells": cells, "fractions": list(fractions),
        "imputation": f"ROAD noisy linear (8-neighbour mean, noise {ROAD_NOISE})",
        "curves": {k: v.mean(axis=0).tolist() if len(v) else [] for k, v in curves.items()},
        "auc": {k: float(v.mean()) if len(v) else None for k, v in auc.items()},
        "tests": tests,
    }  # fmt: skip


def verdict_lines(faithfulness: dict[str, Any]) -> dict[str, str]:
    """One printable line per test: verdict, mean, interval, images."""
    lines = {}
    for name, t in faithfulness["tests"].items():
        if "ci95" not in t:
            lines[name] = f"{t['verdict'].upper()}: {t['statistic']} (n={t['images']})"
            continue
        lo, hi = t["ci95"]
        lines[name] = (f"{t['verdict'].upper()}: {t['statistic']} = {t['mean']:+.3f}, "
                       f"95% CI [{lo:+.3f}, {hi:+.3f}], n={t['images']}; pass if "
                       f"{t['criterion']}")  # fmt: skip
    return lines
