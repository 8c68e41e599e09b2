"""Part shares and the pointing game on maps whose right answer is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from birdray.explain import load_part_profiles, part_shares, score_parts, species_profile
from birdray.explain.parts import find_peak, part_label_map

NAMES = ["beak", "crown", "breast", "tail", "left eye"]
BBOX = [100.0, 50.0, 200.0, 150.0]  # x, y, w, h; sqrt(w h) ~ 173 -> radius 0.1 ~ 17 px
PARTS = [
    {"x": 110.0, "y": 80.0, "visible": True},  # beak
    {"x": 150.0, "y": 60.0, "visible": True},  # crown
    {"x": 180.0, "y": 140.0, "visible": True},  # breast
    {"x": 0.0, "y": 0.0, "visible": False},  # tail (CUB writes invisible parts as 0 0 0)
    [135.0, 70.0, 1],  # left eye, as a plain [x, y, visible] triple
]


def _blob(shape, x, y, sigma, weight=1.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return weight * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def test_shares_sum_to_at_most_one_and_rank_the_strongest_part_first():
    shape = (240, 360)
    attr = _blob(shape, 180, 140, 6, 3.0) + _blob(shape, 150, 60, 6, 1.0) + 0.01
    attr = (attr / attr.sum()).astype(np.float32)
    shares = part_shares(attr, PARTS, BBOX, NAMES, radius=0.1)
    assert set(shares) == set(NAMES)
    assert shares["tail"] == 0.0  # invisible
    assert 0.0 < sum(shares.values()) <= 1.0 + 1e-6
    score = score_parts(attr, PARTS, BBOX, NAMES, radius=0.1)
    ranking = [name for name, _ in score.ranking()]
    assert ranking[:2] == ["breast", "crown"] and "tail" not in ranking
    assert score.shares["breast"] > 2 * score.shares["crown"] > 0
    # a uniform map gives every part exactly its area share: the chance level
    uniform = np.full(shape, 1.0 / (shape[0] * shape[1]), dtype=np.float32)
    flat = score_parts(uniform, PARTS, BBOX, NAMES, radius=0.1)
    for name in NAMES:
        assert flat.shares[name] == pytest.approx(flat.area_shares[name], rel=1e-4)
    assert flat.area_shares["breast"] == pytest.approx(np.pi * 17.3**2 / uniform.size, rel=0.1)


def test_overlapping_parts_split_pixels_instead_of_double_counting():
    labels = part_label_map((240, 360), PARTS, BBOX, radius=0.3)  # disks overlap a lot
    owners = set(np.unique(labels).tolist())
    assert owners == {-1, 0, 1, 2, 4}  # tail invisible: owns nothing
    # a pixel between beak and eye belongs to the nearer one
    assert labels[80, 112] == 0 and labels[70, 133] == 4
    uniform = np.full((240, 360), 1.0 / (240 * 360), dtype=np.float32)
    assert sum(part_shares(uniform, PARTS, BBOX, NAMES, radius=0.3).values()) <= 1.0 + 1e-6


def test_radius_scales_with_the_bird():
    small = part_label_map((240, 360), PARTS, BBOX, radius=0.1)
    big_box = [BBOX[0], BBOX[1], BBOX[2] * 2, BBOX[3] * 2]
    large = part_label_map((240, 360), PARTS, big_box, radius=0.1)
    assert (large >= 0).sum() > 3 * (small >= 0).sum()


def test_pointing_game_hits_and_misses_with_chance_levels():
    shape = (240, 360)
    on_crown = _blob(shape, 151, 61, 4)
    hit = score_parts(on_crown / on_crown.sum(), PARTS, BBOX, NAMES)
    assert hit.peak == (151, 61)
    assert hit.peak_in_bbox and hit.peak_near_part and hit.nearest_part == "crown"
    assert hit.bbox_area_share == pytest.approx(200 * 150 / (240 * 360))
    assert 0 < hit.parts_area_share < hit.bbox_area_share
    in_box_far_from_parts = _blob(shape, 280, 180, 4)
    mid = score_parts(in_box_far_from_parts / in_box_far_from_parts.sum(), PARTS, BBOX, NAMES)
    assert mid.peak_in_bbox and not mid.peak_near_part and mid.nearest_part is None
    background = _blob(shape, 20, 220, 4)
    miss = score_parts(background / background.sum(), PARTS, BBOX, NAMES)
    assert not miss.peak_in_bbox and not miss.peak_near_part
    as_dict = hit.to_dict()
    assert as_dict["pointing"]["peak_in_bbox"] is True
    assert as_dict["ranking"][0]["part"] == "crown"


def test_peak_ignores_a_single_hot_pixel_next_to_a_broad_blob():
    shape = (200, 200)
    attr = _blob(shape, 60, 140, 8)
    attr[20, 20] = attr.max() * 1.5  # lone spike (e.g. saliency noise)
    assert find_peak(attr) == (60, 140)


def test_part_profiles_round_trip(tmp_path):
    assert load_part_profiles(tmp_path) is None
    (tmp_path / "explain").mkdir()
    (tmp_path / "explain" / "part_profiles.json").write_text(
        json.dumps({"method": "gradcam", "classes": {"3": {"crown": 0.1, "breast": 0.4}}})
    )
    profiles = load_part_profiles(tmp_path)
    assert profiles["method"] == "gradcam"
    assert profiles["classes"][3]["breast"] == 0.4
    assert list(species_profile(profiles, 3)) == ["breast", "crown"]
    assert species_profile(profiles, 4) is None and species_profile(None, 3) is None
