"""What ``explain-eval`` leaves with the model package, and the lines it prints.

``explain/`` holds ``summary.json``, a plot per method and test, ``part_profiles.json`` (what
Serve shows for uploads), ``methods.json`` / ``methods.md`` (the method table and the measured
default, ``compare.py``) and ``contrastive.json`` / ``contrastive.png`` (sibling ground truth,
``contrastive.py``) and ``part_locator.json`` (where parts are on an upload, ``locate.py``). A
registry version gets them as an explanation record beside it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.explain.compare import METHODS_FILE, markdown_table
from birdray.explain.contrastive import contrastive_lines
from birdray.explain.faithfulness import verdict_lines
from birdray.explain.locate import LOCATOR_FILE
from birdray.explain.parts import EXPLAIN_DIR, PROFILES_FILE

BEST = "best"  # --profile-method: the measured default's profile


def _write_json(path: Path, data: Any) -> Path:
    """Atomic (``storage``'s writer): Serve may be reading the previous file meanwhile."""
    storage.write_bytes_atomic(path, json.dumps(data, indent=2).encode())
    return path


def write_results(package: Path, summary: dict[str, Any], profile_method: str) -> dict[str, str]:
    """``explain/summary.json``, plots, part profiles, the method table and the contrast table."""
    from birdray.explain.render import contrastive_plot, deletion_plot, part_share_plot

    out = package / EXPLAIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    locator = summary.get("part_locator") or {}
    if locator.get("prototypes"):  # the big arrays get a file of their own; the numbers stay
        numbers = {k: v for k, v in locator.items() if k not in ("prototypes", "thresholds")}
        summary = {**summary, "part_locator": numbers}
    files = {"summary": str(_write_json(out / "summary.json", summary))}
    if locator.get("prototypes"):
        files["part_locator"] = str(_write_json(out / LOCATOR_FILE, locator))
    for method, result in summary["methods"].items():
        curve = deletion_plot(result["deletion"], method, out / f"deletion_{method}.png")
        files[f"deletion_{method}"] = str(curve)
        if summary["part_names"]:
            bars = part_share_plot(result, method, out / f"part_shares_{method}.png")
            files[f"parts_{method}"] = str(bars)
    comparison = summary.get("comparison")
    if comparison:
        files["methods"] = str(_write_json(out / METHODS_FILE, comparison))
        (out / "methods.md").write_text(markdown_table(comparison))
        files["methods_md"] = str(out / "methods.md")
    contrast = summary.get("contrastive")
    if contrast is not None:
        files["contrastive"] = str(_write_json(out / "contrastive.json", contrast))
        if contrast.get("available"):
            files["contrastive_plot"] = str(contrastive_plot(contrast, out / "contrastive.png"))
    if not summary["part_names"]:  # no profiles to show uploads against
        return files
    methods = summary["methods"]
    wanted = (comparison or {}).get("default") if profile_method == BEST else profile_method
    chosen = wanted if wanted in methods else next(iter(methods))
    result = methods[chosen]
    profiles = {
        "method": chosen, "radius": summary["radius"], "model_version": summary["model_version"],
        "chance": result["part_area_share"],
        "classes": {str(k): v for k, v in result["per_class"].items()},
    }  # fmt: skip
    files["part_profiles"] = str(_write_json(out / PROFILES_FILE, profiles))
    return files


def record(registry: str, version: str, summary: dict, profile_method: str) -> dict[str, Any]:
    """Write the results as an explanation record of ``version`` (works for buckets too)."""
    from birdray.registry import local_copy, record_explanation

    with tempfile.TemporaryDirectory(prefix="birdray-explain-") as staging:
        written = write_results(Path(staging), summary, profile_method)
        uri = record_explanation(registry, version, Path(staging) / EXPLAIN_DIR)
    package = local_copy(registry, version)  # the view consumers load now has explain/
    files = {k: str(package / EXPLAIN_DIR / Path(v).name) for k, v in written.items()}
    return {"package": str(package), "record": uri, "files": files}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth printing, method by method, then the contrast and the chosen default."""
    out: dict[str, Any] = {}
    for method, r in summary["methods"].items():
        top = sorted(r["part_share"].items(), key=lambda kv: -kv[1])[:3]
        out[method] = {
            "deletion_auc": f"{r['deletion']['auc']['deletion_correct']:.3f} "
                            f"(random {r['deletion']['auc']['random_correct']:.3f})",
            "faithfulness": verdict_lines(r["faithfulness"]),
        }  # fmt: skip
        if r["pointing_bbox"] is None:
            out[method]["part_scores"] = "skipped: this dataset has no part annotations"
            continue
        out[method].update({
            "pointing_bbox": f"{r['pointing_bbox']:.3f} (chance {r['pointing_bbox_chance']:.3f})",
            "pointing_part": f"{r['pointing_part']:.3f} (chance {r['pointing_part_chance']:.3f})",
            "top_parts": {p: round(s, 3) for p, s in top},
        })  # fmt: skip
    locator = summary.get("part_locator") or {}
    if locator.get("available"):
        pck = locator.get("pck")
        out["part_locator"] = (
            f"parts located on photos without annotations: {pck:.0%} within the part radius "
            f"on {locator['pck_images']} held-out images; part recognition "
            f"{locator['recognition_held_out']:.0%} (chance {locator['recognition_chance']:.0%})"
            if pck is not None
            else f"fitted on {locator['images']} images; {locator.get('pck_note', '')}"
        )
    if "contrastive" in summary:
        out["contrastive"] = contrastive_lines(summary["contrastive"])
    if summary.get("comparison"):
        c = summary["comparison"]
        out["default_method"] = f"{c['default']} ({c['note']}; rule: {c['rule']})"
    return out
