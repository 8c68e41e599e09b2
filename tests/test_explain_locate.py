"""The part locator finds parts on photos without annotations, well above chance.

On a model trained on generated birds: prototypes fitted on the train split's annotated parts,
then parts located on test photos as if they were uploads (annotations hidden), scored against
the hidden annotations (PCK at explain-eval's part radius). The same prototypes with their part
names shuffled set the chance level: a locator that located nothing would score about that.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest

from birdray.data.manifest import load_manifest
from birdray.explain.locate import feature_map, fit_locator, locate, part_features, pck
from birdray.images import decode_image
from birdray.model.package import load_package

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(1800)]

RADIUS = 0.1  # explain-eval's default part radius


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
