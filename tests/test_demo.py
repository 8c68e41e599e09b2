"""``birdray.demo_stages``'s printed pieces that are not a job's own output."""

from __future__ import annotations

import json

import pandas as pd

from birdray.demo_stages import one_sibling_pair
from birdray.explain.contrastive import summarize_pairs

NAMES = ["001.Red_Tit", "002.Blue_Tit", "003.Wren"]


def _write(package, contrast) -> None:
    (package / "explain").mkdir(parents=True)
    (package / "explain" / "contrastive.json").write_text(json.dumps(contrast))


def test_one_sibling_pair_is_spelled_out_from_the_measured_table(tmp_path):
    pair = {"method": "gradcam", "label": 0, "sibling": 1, "parts": ["crown"], "area_share": 0.05}
    measured = ((0.30, 1), (0.20, 2), (0.10, 4))
    rows = pd.DataFrame([{**pair, "share": share, "rank": rank} for share, rank in measured])
    _write(tmp_path, summarize_pairs(rows, NAMES))
    line = one_sibling_pair(tmp_path)
    assert "why Red Tit and not its sibling Blue Tit" in line
    assert "(crown) holds 20.0% of the map vs 5.0% of the area (4.0x)" in line
    assert "median rank 2" in line and "over 3 images: goal met" in line


def test_no_pair_measured_says_why(tmp_path):
    _write(tmp_path, {"available": False, "reason": "no part annotations"})
    assert one_sibling_pair(tmp_path) == "  contrastive: not measured (no part annotations)"
    assert "no result" in one_sibling_pair(tmp_path / "missing")
