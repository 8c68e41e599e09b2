"""Choosing the explanation method by measurement: the table, the rule, and where it is stored."""

from __future__ import annotations

import json
import math

import pytest

from birdray.explain.compare import (
    FALLBACK_METHOD,
    METHODS_FILE,
    choose_method,
    compare_methods,
    default_method,
    markdown_table,
)


def _result(passed=(False, False), sanity=True, morf=0.5, lerf=0.6, part=0.3, seconds=0.1):
    def test(ok):
        return {"passed": ok, "verdict": "pass" if ok else "fail", "mean": 0.1}

    tests = {"morf_vs_lerf": test(passed[0]), "morf_vs_random_region": test(passed[1]),
             "model_randomisation": {**test(sanity), "mean": 0.2 if sanity else 0.9}}  # fmt: skip
    return {
        "images": 30, "seconds_per_image": seconds, "pointing_part": part,
        "pointing_part_chance": 0.1,
        "faithfulness": {"tests": tests,
                         "auc": {"morf_prob": morf, "lerf_prob": lerf, "region_prob": 0.55}},
    }  # fmt: skip


def test_each_step_of_the_rule_decides_when_the_earlier_ones_tie():
    cases = [
        # sanity first: a method whose maps survive randomising the model explains nothing
        ({"a": _result(passed=(True, True), sanity=False), "b": _result()}, "b"),
        # then the number of faithfulness tests passed
        ({"a": _result(passed=(True, False)), "b": _result(passed=(True, True))}, "b"),
        # then the MoRF-vs-LeRF effect size (LeRF AUC - MoRF AUC)
        ({"a": _result(morf=0.5, lerf=0.6), "b": _result(morf=0.4, lerf=0.6)}, "b"),
        # then the pointing game's lift over chance
        ({"a": _result(part=0.5), "b": _result(part=0.3)}, "a"),
        # then speed
        ({"a": _result(seconds=2.0), "b": _result(seconds=0.05)}, "b"),
    ]
    for methods, expected in cases:
        comparison = compare_methods({"methods": methods})
        assert comparison["default"] == expected, (methods, comparison["table"])
        assert [r["method"] for r in comparison["table"]] == list(methods)
    # the contrastive ground truth decides before pointing, when it was measured
    contrast = {"available": True, "methods": {"a": {"fraction_meeting_goal": 0.2},
                                               "b": {"fraction_meeting_goal": 0.8}}}  # fmt: skip
    summary = {"methods": {"a": _result(part=0.5), "b": _result(part=0.3)},
               "contrastive": contrast}  # fmt: skip
    comparison = compare_methods(summary)
    assert comparison["default"] == "b"
    rows = {r["method"]: r for r in comparison["table"]}
    assert rows["b"]["contrastive_fraction"] == 0.8
    assert rows["a"]["effect_morf_vs_lerf"] == pytest.approx(0.1)
    assert rows["a"]["pointing_lift"] == pytest.approx(0.4)


def test_untested_numbers_count_as_worst_and_the_table_says_so():
    missing = _result()
    missing["faithfulness"]["auc"] = {"morf_prob": None, "lerf_prob": None, "region_prob": None}
    missing["pointing_part"] = None
    comparison = compare_methods({"methods": {"x": missing, "y": _result()}})
    assert comparison["default"] == "y"
    assert math.isnan(comparison["table"][0]["effect_morf_vs_lerf"])
    text = markdown_table(comparison)
    assert "| **y** (default) |" in text and "n/a" in text and "Rule:" in text
    assert "no method passed" not in comparison["note"]
    lost = compare_methods({"methods": {"x": _result(sanity=False)}})
    assert "no method passed the sanity check" in lost["note"]


def test_default_method_is_read_from_the_package_with_a_fallback(tmp_path):
    assert default_method(tmp_path) == FALLBACK_METHOD  # never evaluated
    (tmp_path / "explain").mkdir()
    table = [{"method": "saliency"}, {"method": "integrated_gradients"}]
    (tmp_path / "explain" / METHODS_FILE).write_text(
        json.dumps({"default": "integrated_gradients", "table": table})
    )
    assert default_method(tmp_path) == "integrated_gradients"
    assert default_method(tmp_path, ("gradcam", "saliency")) == FALLBACK_METHOD  # unknown here
    assert choose_method([{"method": "a", **_row()}, {"method": "b", **_row(seconds=0.01)}]) == "b"


def _row(seconds: float = 1.0) -> dict:
    return {"sanity_passed": True, "faithfulness_passed": 1, "effect_morf_vs_lerf": 0.1,
            "contrastive_fraction": math.nan, "pointing_lift": 0.1,
            "seconds_per_image": seconds}  # fmt: skip
