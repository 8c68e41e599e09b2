"""Explanations of the served model: attribution maps, part scores, overlays, evaluation."""

from birdray.explain.attribution import METHODS, Explanation, explain, find_gradcam_layer
from birdray.explain.parts import load_part_profiles, part_shares, score_parts, species_profile

__all__ = [
    "METHODS",
    "Explanation",
    "explain",
    "find_gradcam_layer",
    "load_part_profiles",
    "part_shares",
    "score_parts",
    "species_profile",
]
