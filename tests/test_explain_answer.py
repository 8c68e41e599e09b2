"""``explain.answer``: the reliability verdict and the profile comparison, from stored numbers."""

from __future__ import annotations

from birdray.explain.answer import _profile_difference, reliability

PASSED = {"morf_vs_lerf": "pass: ...", "morf_vs_random_region": "pass: ..."}


def test_reliability_follows_explain_evals_verdicts():
    table = [
        {"method": "gradcam", "sanity_passed": True, "faithfulness": PASSED},
        {"method": "saliency", "sanity_passed": True,
         "faithfulness": {**PASSED, "morf_vs_lerf": "fail: LeRF not above MoRF"}},
        {"method": "integrated_gradients", "sanity_passed": False, "faithfulness": PASSED},
    ]  # fmt: skip
    comparison = {"default": "gradcam", "table": table}
    assert reliability(comparison, "gradcam")["status"] == "reliable"
    saliency = reliability(comparison, "saliency")
    assert saliency["status"] == "unreliable" and saliency["failed"] == ["morf_vs_lerf"]
    assert "may not show what the model used" in saliency["message"]
    ig = reliability(comparison, "integrated_gradients")
    assert ig["status"] == "unreliable" and ig["failed"] == ["model_randomisation"]
    # a method (or a model) never evaluated is a hint, not evidence
    assert reliability(comparison, "gradcam_early")["status"] == "unverified"
    assert reliability(None, "gradcam")["status"] == "unverified"


def test_profile_difference_puts_the_answers_own_parts_first():
    profiles = {"classes": {0: {"crown": 0.4, "tail": 0.1}, 1: {"crown": 0.1, "tail": 0.5}}}
    rows = _profile_difference(profiles, 0, 1)
    assert [r["part"] for r in rows] == ["crown", "tail"]
    assert rows[0] == {"part": "crown", "species_share": 0.4, "runner_up_share": 0.1}
    assert _profile_difference(profiles, 0, 7) == [] and _profile_difference(None, 0, 1) == []
