"""Pick the explanation method by measurement, and remember the choice with the model package.

``explain-eval`` measures every method on the same images; this module lays the numbers side by
side (faithfulness pass/fail and effect size, the sanity check's rank correlation, the pointing
game, the contrastive ground truth where the data has one, seconds per image) and picks the
default by ``RULE``, applied to those numbers only. The table and the choice are written to
``explain/methods.json`` (+ ``methods.md``) in the package or its explanation record; Serve's
``/v1/explain`` (and the dashboard through it) uses ``default_method`` when a request names none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from birdray.explain.parts import EXPLAIN_DIR

METHODS_FILE = "methods.json"
FALLBACK_METHOD = "gradcam"  # a package never evaluated: the cheapest method
FAITH_TESTS = ("morf_vs_lerf", "morf_vs_random_region")
RULE = (
    "1) passes the model-randomisation sanity check; 2) most faithfulness tests passed "
    "(MoRF vs LeRF, MoRF vs random regions); 3) largest MoRF-vs-LeRF effect "
    "(AUC_LeRF - AUC_MoRF, 3 decimals); 4) largest fraction of sibling pairs meeting the "
    "contrastive goal (when measured); 5) largest pointing-game lift over chance (near a part); "
    "6) fewest seconds per image"
)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def method_row(method: str, result: dict[str, Any], contrastive: dict[str, Any]) -> dict[str, Any]:
    """One method's measured numbers (NaN where a number could not be measured)."""
    faith = result["faithfulness"]
    tests = faith["tests"]
    auc = faith.get("auc") or {}
    sanity = tests.get("model_randomisation", {})
    pairs = (contrastive.get("methods") or {}).get(method) if contrastive.get("available") else None
    part, part_chance = _num(result.get("pointing_part")), _num(result.get("pointing_part_chance"))
    return {
        "method": method,
        "images": result["images"],
        "faithfulness": {t: tests[t]["verdict"] for t in FAITH_TESTS if t in tests},
        "faithfulness_passed": sum(bool(tests.get(t, {}).get("passed")) for t in FAITH_TESTS),
        "effect_morf_vs_lerf": _num(auc.get("lerf_prob")) - _num(auc.get("morf_prob")),
        "effect_morf_vs_region": _num(auc.get("region_prob")) - _num(auc.get("morf_prob")),
        "sanity_rho": _num(sanity.get("mean")),
        "sanity": sanity.get("verdict", "not run"),
        "sanity_passed": bool(sanity.get("passed")),
        "pointing_part": part,
        "pointing_part_chance": part_chance,
        "pointing_lift": part - part_chance,
        "contrastive_fraction": _num(pairs["fraction_meeting_goal"]) if pairs else math.nan,
        "seconds_per_image": _num(result.get("seconds_per_image")),
    }


def _key(row: dict[str, Any]) -> tuple:
    """``RULE`` as a sort key (larger is better; NaN counts as worst)."""

    def val(x: float) -> float:
        return -math.inf if math.isnan(x) else x

    return (
        row["sanity_passed"], row["faithfulness_passed"],
        round(val(row["effect_morf_vs_lerf"]), 3), val(row["contrastive_fraction"]),
        val(row["pointing_lift"]), -val(row["seconds_per_image"]),
    )  # fmt: skip


def choose_method(rows: list[dict[str, Any]]) -> str:
    """The best-measured method by ``RULE`` (first in table order on a complete tie)."""
    return max(rows, key=_key)["method"]


def compare_methods(summary: dict[str, Any]) -> dict[str, Any]:
    """The method table, the rule and the chosen default, from an ``explain-eval`` summary."""
    contrastive = summary.get("contrastive") or {}
    rows = [method_row(m, r, contrastive) for m, r in summary["methods"].items()]
    chosen = choose_method(rows)
    why = (
        "a measured choice"
        if rows[[r["method"] for r in rows].index(chosen)]["sanity_passed"]
        else "no method passed the sanity check: the choice is the least bad, not a trusted one"
    )
    return {"default": chosen, "rule": RULE, "note": why, "table": rows,
            "model_version": summary.get("model_version")}  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(comparison: dict[str, Any]) -> str:
    """The table as Markdown (what a person reads in the package or the README)."""
    head = (
        "method",
        "MoRF vs LeRF",
        "MoRF vs region",
        "effect (LeRF-MoRF AUC)",
        "sanity",
        "sanity rho",
        "pointing (part)",
        "chance",
        "contrastive pairs",
        "s / image",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comparison["table"]:
        f = r["faithfulness"]
        default = r["method"] == comparison["default"]
        name = f"**{r['method']}** (default)" if default else r["method"]
        cells = (
            name,
            f.get("morf_vs_lerf", "not run"),
            f.get("morf_vs_random_region", "not run"),
            r["effect_morf_vs_lerf"],
            r["sanity"],
            r["sanity_rho"],
            r["pointing_part"],
            r["pointing_part_chance"],
            r["contrastive_fraction"],
            r["seconds_per_image"],
        )
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")  # fmt: skip
    lines += ["", f"Default: **{comparison['default']}** ({comparison['note']}).",
              f"Rule: {comparison['rule']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def load_comparison(package_path: str | Path) -> dict[str, Any] | None:
    """``explain/methods.json`` of a package (None if it was never compared)."""
    path = Path(package_path) / EXPLAIN_DIR / METHODS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def default_method(package_path: str | Path, known: tuple[str, ...] | None = None) -> str:
    """The package's measured default method; ``FALLBACK_METHOD`` if none is stored (or it is
    not one this code knows)."""
    comparison = load_comparison(package_path)
    chosen = (comparison or {}).get("default")
    if not chosen or (known is not None and chosen not in known):
        return FALLBACK_METHOD
    return str(chosen)
