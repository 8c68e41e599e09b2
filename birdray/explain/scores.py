"""The numbers ``explain-eval`` computes: per image (deletion curves, the pointing game, part
shares) and per method (their means, each beside its chance level, and the faithfulness tests)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from birdray.explain.faithfulness import summarize_faithfulness
from birdray.explain.parts import score_parts


def deletion_curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    input_map: np.ndarray,
    label: int,
    fractions: list[float],
    rng: np.random.Generator,
    chunk: int = 8,
) -> dict[str, list[float]]:
    """Correct/probability of ``label`` as the top-attributed vs random pixels are removed.

    Removed pixels are set to 0 in normalised space, i.e. the data config's mean colour.
    Ties in the map (IG's zeros) are broken at random so no raster order sneaks in.
    """
    h, w = input_map.shape
    n = h * w
    ranked = np.lexsort((rng.random(n), -input_map.ravel()))
    orders = {"deletion": ranked, "random": rng.permutation(n)}
    inputs = []
    for order in orders.values():
        for frac in fractions:
            keep = torch.ones(n, dtype=x.dtype, device=x.device)
            keep[torch.from_numpy(order[: round(frac * n)]).to(x.device)] = 0
            inputs.append(x[0] * keep.view(1, h, w))
    batch = torch.stack(inputs)
    with torch.no_grad():
        logits = torch.cat(
            [model(batch[i : i + chunk]).float() for i in range(0, len(batch), chunk)]
        )
    probs = torch.softmax(logits, dim=-1)[:, label].cpu().numpy()
    correct = (logits.argmax(dim=-1) == label).float().cpu().numpy()
    k = len(fractions)
    return {
        "deletion_correct": correct[:k].tolist(), "random_correct": correct[k:].tolist(),
        "deletion_prob": probs[:k].tolist(), "random_prob": probs[k:].tolist(),
    }  # fmt: skip


def part_scores(attribution, parts, bbox, part_names: list[str], cfg: dict) -> dict[str, Any]:
    """Pointing game and part shares; NaN / empty where the image has no box and parts (own
    photos), so the deletion curves still get measured."""
    if not bbox:
        nan = float("nan")
        return {"shares": [], "area_shares": [], "peak_in_bbox": nan, "peak_near_part": nan,
                "bbox_chance": nan, "parts_chance": nan}  # fmt: skip
    score = score_parts(attribution, parts, bbox, part_names, cfg["radius"])
    seen = [score.visible[p] for p in part_names]
    return {
        "shares": _masked(score.shares, part_names, seen),
        "area_shares": _masked(score.area_shares, part_names, seen),
        "peak_in_bbox": score.peak_in_bbox, "peak_near_part": score.peak_near_part,
        "bbox_chance": score.bbox_area_share, "parts_chance": score.parts_area_share,
    }  # fmt: skip


def _masked(values: dict[str, float], names: list[str], seen: list[bool]) -> list[float]:
    """Per-part values in manifest order, NaN where the part is not visible (left out of means)."""
    return [values[p] if v else np.nan for p, v in zip(names, seen, strict=True)]


def _by_part(values: np.ndarray, part_names: list[str]) -> dict[str, float]:
    return {p: float(v) for p, v in zip(part_names, values, strict=True) if np.isfinite(v)}


def summarize_method(
    rows: pd.DataFrame, part_names: list[str], fractions: list[float], cfg: dict | None = None
) -> dict:
    """One method's aggregate numbers (each with its chance level, or a pass/fail test); without
    part annotations the pointing and part numbers are None and the part dicts empty."""
    c = cfg or {}
    if not part_names:
        rows = rows.assign(shares=[[]] * len(rows), area_shares=[[]] * len(rows))
    shares = np.stack(rows["shares"].to_numpy()).reshape(len(rows), len(part_names))
    areas = np.stack(rows["area_shares"].to_numpy()).reshape(len(rows), len(part_names))
    curves = {k: np.stack(rows[k].to_numpy()).mean(axis=0) for k in
              ("deletion_correct", "random_correct", "deletion_prob", "random_prob")}  # fmt: skip
    with warnings.catch_warnings():  # a part never visible in a class: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        share, area = np.nanmean(shares, axis=0), np.nanmean(areas, axis=0)
        per_class = {
            int(label): _by_part(np.nanmean(shares[idx], axis=0), part_names)
            for label, idx in rows.groupby("label").indices.items()
        }
    auc = {k: float(np.trapezoid(v, fractions) / (fractions[-1] - fractions[0] or 1.0))
           for k, v in curves.items()}  # fmt: skip
    return {
        "images": len(rows),
        "accuracy": float((rows["predicted"] == rows["label"]).mean()),
        "seconds_per_image": float(rows["seconds"].mean()),
        **{
            f"pointing_{name}": float(rows[col].mean()) if part_names else None
            for name, col in (
                ("bbox", "peak_in_bbox"),
                ("bbox_chance", "bbox_chance"),
                ("part", "peak_near_part"),
                ("part_chance", "parts_chance"),
            )
        },
        "part_share": _by_part(share, part_names),
        "part_area_share": _by_part(area, part_names),
        "per_class": per_class,
        "deletion": {
            "fractions": list(fractions),
            **{k: v.tolist() for k, v in curves.items()},
            "auc": auc,  # descriptive: random pixels are a biased baseline (see faithfulness)
        },
        "faithfulness": summarize_faithfulness(
            rows, fractions, c.get("cells", 8), c.get("seed", 0), c.get("sanity", True)
        ),
    }
