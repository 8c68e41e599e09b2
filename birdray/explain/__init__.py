"""Explanations of the served model: attribution maps, part scores, overlays, evaluation.

Names are resolved on first use (PEP 562): a job that only needs ``METHODS`` (``birdray score``'s
flags) must not pay for importing torch, timm and Captum (~3 s on 2 cores) in its driver.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "METHODS": "birdray.explain.methods",
    "Explanation": "birdray.explain.attribution",
    "explain": "birdray.explain.attribution",
    "find_gradcam_layer": "birdray.explain.attribution",
    "load_part_profiles": "birdray.explain.parts",
    "part_shares": "birdray.explain.parts",
    "score_parts": "birdray.explain.parts",
    "species_profile": "birdray.explain.parts",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'birdray.explain' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
