"""An explanation a birder can read: the parts behind a prediction, and "why not the runner-up".

For one photo (no annotations) this turns an attribution map into parts: the part locator
(``locate.py``) puts the 15 CUB parts on the photo, the map's mass is shared out among the parts
found (against each part's area: chance), and the runner-up species gets a contrastive map,
logit(answer) - logit(runner-up), scored the same way: the parts where the two species differ for
this model. The species' typical profiles from ``explain-eval`` are set side by side. The verdict
of ``explain-eval``'s faithfulness tests for the method comes with it, so a UI can say when the
explanation is not to be taken as fact. Serve's ``/v1/explain`` returns this, the dashboard
shows it.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from PIL import Image

from birdray.explain.attribution import Explanation
from birdray.explain.contrastive import contrastive_explain
from birdray.explain.locate import feature_map, locate, located_extent
from birdray.explain.parts import score_parts, species_profile
from birdray.explain.render import overlay_png

TOP_PARTS = 3


def reliability(comparison: dict[str, Any] | None, method: str) -> dict[str, Any]:
    """``reliable`` / ``unreliable`` / ``unverified`` for ``method`` on this model, and why."""
    rows = {r["method"]: r for r in (comparison or {}).get("table", [])}
    row = rows.get(method)
    if row is None:
        return {"status": "unverified", "failed": [],
                "message": f"{method} was not evaluated for this model (run birdray explain-eval): "
                           "treat the map as a hint, not as evidence"}  # fmt: skip
    failed = [t for t, verdict in row["faithfulness"].items() if not verdict.startswith("pass")]
    if not row["sanity_passed"]:
        failed.append("model_randomisation")
    if failed:
        return {"status": "unreliable", "failed": failed,
                "message": f"{method} failed {', '.join(failed)} for this model in explain-eval: "
                           "this map may not show what the model used"}  # fmt: skip
    return {"status": "reliable", "failed": [],
            "message": f"{method} passed explain-eval's faithfulness and sanity tests"}  # fmt: skip


def _ranked(attribution: np.ndarray, located: list[dict], bbox: list[float], names: list[str],
            radius: float) -> list[dict[str, Any]]:  # fmt: skip
    score = score_parts(attribution, [(p["x"], p["y"], p["visible"]) for p in located], bbox,
                        names, radius)  # fmt: skip
    return [{"part": n, "share": s, "chance": score.area_shares[n]} for n, s in score.ranking()]


def _png(image: Image.Image, attribution: np.ndarray, located: list[dict] | None) -> str:
    labels = [p for p in located or [] if p["visible"]]
    return base64.b64encode(overlay_png(image, attribution, labels=labels)).decode("ascii")


def _profile_difference(profiles: dict | None, label: int, other: int) -> list[dict[str, Any]]:
    """Parts by how much more the answer's typical profile leans on them than the runner-up's."""
    mine, theirs = species_profile(profiles, label), species_profile(profiles, other)
    if not mine or not theirs:
        return []
    rows = [{"part": p, "species_share": mine.get(p, 0.0), "runner_up_share": theirs.get(p, 0.0)}
            for p in mine]  # fmt: skip
    return sorted(rows, key=lambda r: r["runner_up_share"] - r["species_share"])


def answer_in_parts(
    model: torch.nn.Module,
    data_config: dict[str, Any],
    image: Image.Image,
    result: Explanation,
    class_names: list[str],
    locator: dict[str, Any] | None,
    profiles: dict[str, Any] | None,
    comparison: dict[str, Any] | None,
    **kw: Any,
) -> dict[str, Any]:
    """``parts``, the overlay with part labels, ``contrast`` and ``reliability`` for ``result``
    (an explanation of ``image``);
    ``kw`` goes to the contrastive map's method (the same settings as ``result``'s)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    located: list[dict] | None = None
    parts: dict[str, Any] = {
        "available": False,
        "top": [],
        "reason": "this model has no part locator yet (run explain-eval on a dataset with "
        "part annotations)",
    }
    if locator:
        feats, geometry = feature_map(model, data_config, image)
        located = locate(feats, geometry, locator)
        bbox = located_extent(located, image.width, image.height)
        names, radius = locator["part_names"], locator["radius"]
        ranked = _ranked(result.attribution, located, bbox, names, radius)
        pck = locator.get("pck")
        accuracy = (
            f"{pck:.0%} land near the true part on held-out photos"
            if pck is not None
            else "accuracy not measured"
        )
        parts = {
            "available": True,
            "located": located,
            "top": ranked[:TOP_PARTS],
            "ranking": ranked,
            "pck": pck,
            "note": f"parts located from the model's own features; {accuracy}",
        }
    contrast: dict[str, Any] = {"available": False, "reason": "a model with one class"}
    probs = np.asarray(result.probabilities)
    if len(probs) > 1:
        other = next(int(c) for c in np.argsort(-probs) if int(c) != result.target)
        cmap = contrastive_explain(
            model, data_config, image, result.target, other, result.method, **kw
        )
        contrast = {
            "available": True,
            "runner_up": {
                "label": other,
                "species": class_names[other],
                "probability": float(probs[other]),
            },
            "overlay_png_base64": _png(image, cmap.attribution, located),
            "top": (
                _ranked(cmap.attribution, located, bbox, names, radius)[:TOP_PARTS]
                if located
                else []
            ),
            "profile_difference": _profile_difference(profiles, result.target, other),
            "empty": cmap.empty,
        }
    return {
        "parts": parts,
        "overlay_png_base64": _png(image, result.attribution, located),  # labelled parts
        "contrast": contrast,
        "reliability": reliability(comparison, result.method),
    }
