"""``birdray evaluate`` scores its report split and val through one actor pool (one model load):
each split must still get exactly its own rows, its own labels and the logits scoring it alone
gives, and the temperature must be fitted on val alone."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest

from birdray.data.manifest import split_path
from birdray.evaluate.job import EvaluateConfig, score_splits
from birdray.evaluate.metrics import fit_temperature

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _labels(dataset, split: str) -> dict[int, int]:
    table = pads.dataset(split_path(dataset, split), format="parquet").to_table(
        columns=["image_id", "label"]
    )
    return dict(zip(table["image_id"].to_pylist(), table["label"].to_pylist(), strict=True))


def test_one_stream_scores_each_split_with_its_own_rows_labels_and_logits(trained_package):
    package, dataset = trained_package.package, str(trained_package.dataset)
    cfg = EvaluateConfig(model=str(package), dataset=dataset)
    both = score_splits(package, dataset, ["test", "val"], cfg)
    assert set(both) == {"test", "val"}
    for split, scored in both.items():
        expected = _labels(dataset, split)
        ids = scored["image_id"].tolist()
        assert ids == sorted(expected), split  # every row of the split once, no other split's
        assert scored["label"].tolist() == [expected[i] for i in ids], split
        assert scored["logits"].shape == (len(ids), 6) and np.isfinite(scored["logits"]).all()
    assert not set(both["test"]["image_id"].tolist()) & set(both["val"]["image_id"].tolist())

    alone = score_splits(package, dataset, ["val"], cfg)["val"]  # the split scored by itself
    assert alone["image_id"].tolist() == both["val"]["image_id"].tolist()
    np.testing.assert_allclose(alone["logits"], both["val"]["logits"], atol=1e-4)
    # the fixture's `birdray evaluate` fitted its temperature on val's logits, not test's
    on_val = fit_temperature(both["val"]["logits"], both["val"]["label"])
    on_test = fit_temperature(both["test"]["logits"], both["test"]["label"])
    assert trained_package.eval_summary["temperature"] == pytest.approx(on_val, rel=1e-3)
    assert abs(on_val - on_test) > 1e-3  # the check above could tell the two apart
