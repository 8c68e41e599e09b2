"""The part locator finds parts on photos without annotations, well above chance.

Unit tests plant parts in a feature map. On a model trained on generated birds: prototypes fitted
on the train split's annotated parts, then parts located on test photos as if they were uploads
(annotations hidden), scored against the hidden annotations (PCK at explain-eval's part radius).
The same prototypes with their part names shuffled set the chance level: a locator that located
nothing would score about that.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest

from birdray.data.manifest import load_manifest
from birdray.explain.locate import feature_map, fit_locator, locate, part_features, pck
from birdray.images import decode_image
from birdray.model.crop import CropGeometry
from birdray.model.package import load_package

RADIUS = 0.1  # explain-eval's default part radius
GRID = CropGeometry(80, 80, 1.0, 1.0, 0, 0, 80, 80)  # an 80 px photo, no resize or crop


def _planted(where: dict[int, tuple[int, int]], channels: int = 8) -> np.ndarray:
    """A (C, 8, 8) unit feature map: background channel 0, part p's channel at its cell."""
    feats = np.zeros((channels, 8, 8), dtype=np.float32)
    feats[0] = 1.0
    for p, (row, col) in where.items():
        feats[:, row, col] = 0.0
        feats[p + 1, row, col] = 1.0
    return feats


def test_prototypes_find_planted_parts_and_hide_absent_ones():
    names = ["beak", "tail", "leg"]
    where = {0: (1, 2), 1: (6, 5), 2: (4, 4)}
    samples = [
        part_features(_planted(where), GRID, [(20, 12, True), (55, 65, True), (0, 0, False)])
        for _ in range(4)
    ]
    locator = fit_locator(np.stack(samples), np.arange(4), names, RADIUS)
    assert locator["samples_per_part"] == {"beak": 4, "tail": 4, "leg": 0}
    assert locator["thresholds"][2] is None  # never seen: never shown
    assert locator["recognition_held_out"] == 1.0
    found = {p["part"]: p for p in locate(_planted(where), GRID, locator)}
    assert (found["beak"]["x"], found["beak"]["y"]) == (25.0, 15.0)  # the cell's centre
    assert (found["tail"]["x"], found["tail"]["y"]) == (55.0, 65.0)
    assert found["beak"]["visible"] and found["tail"]["visible"] and not found["leg"]["visible"]
    # scored against annotations: beak within the radius, tail far off, a hidden part shown
    truth = [(24, 14, True), (5, 5, True), (40, 40, False)]
    located = [found["beak"], found["tail"], {**found["leg"], "visible": True}]
    assert pck(located, truth, [0, 0, 80, 80], RADIUS) == (1, 2, 1)


def test_a_part_cropped_away_gives_no_sample():
    cropped = CropGeometry(100, 80, 1.0, 1.0, 10, 0, 80, 80)  # 10 px cut off left and right
    feats = _planted({0: (0, 0)})
    assert np.isnan(part_features(feats, cropped, [(5, 5, True)])).all()
    assert not np.isnan(part_features(feats, cropped, [(15, 5, True)])).any()


def _rows(trained, split: str, limit: int) -> tuple[list[dict], list[str]]:
    manifest = load_manifest(trained.dataset)
    shards = pads.dataset(
        trained.dataset / manifest["shards_dir"], format="parquet", partitioning="hive"
    )
    table = shards.to_table(
        columns=["image_id", "image", "bbox", "parts"], filter=pads.field("split") == split
    )
    return table.to_pylist()[:limit], manifest["part_names"]


def _pck(model, data_config, rows, locator) -> float:
    hits = visible = 0
    for row in rows:
        feats, geometry = feature_map(model, data_config, decode_image(row["image"]).image)
        h, v, _ = pck(locate(feats, geometry, locator), row["parts"], row["bbox"], RADIUS)
        hits, visible = hits + h, visible + v
    return hits / visible


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_parts_are_located_on_unannotated_photos_well_above_chance(trained_package):
    package = load_package(trained_package.package)
    model, data_config = package.model.eval(), package.metadata.data_config
    train, names = _rows(trained_package, "train", 120)
    samples, ids = [], []
    for row in train:
        feats, geometry = feature_map(model, data_config, decode_image(row["image"]).image)
        samples.append(part_features(feats, geometry, row["parts"]))
        ids.append(row["image_id"])
    locator = fit_locator(np.stack(samples), np.array(ids), names, RADIUS)
    assert len(locator["prototypes"]) == len(names) == 15
    # held-out recognition: the feature under a part is most like that part's prototype
    assert locator["recognition_held_out"] >= 3 * locator["recognition_chance"], locator

    test, _ = _rows(trained_package, "test", 40)
    measured = _pck(model, data_config, test, locator)
    rng = np.random.default_rng(0)
    shuffled = {**locator, "prototypes": [locator["prototypes"][i] for i in rng.permutation(15)]}
    chance = _pck(model, data_config, test, shuffled)
    print(f"PCK {measured:.2f} vs shuffled prototypes {chance:.2f}")
    assert measured >= max(2 * chance, chance + 0.15), (measured, chance)
