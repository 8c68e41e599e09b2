"""Faithfulness tests with pass/fail: ROAD imputation, random regions, MoRF vs LeRF, sanity check.

The unit tests run on synthetic arrays (milliseconds). The trained-model test explains real test
images of the shared ``trained_package``: its Grad-CAM must pass MoRF vs LeRF and the
model-randomisation check, and the same maps inverted must fail MoRF vs LeRF; otherwise the test
could not tell a faithful map from a wrong one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import torch

from birdray.explain import explain
from birdray.explain.faithfulness import (
    MIN_IMAGES,
    cell_index,
    cell_relevance,
    random_region_order,
    randomize_top,
    rank_correlation,
    removal_curves,
    road_impute,
    summarize_faithfulness,
    verdict_lines,
)


def _ramp(h: int = 48, w: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xx / w, yy / h, (xx + yy) / (h + w)]).float()[None]


def test_road_imputation_continues_the_surroundings_and_keeps_the_rest():
    x = _ramp()
    removed = torch.zeros(1, 1, *x.shape[-2:])
    removed[..., 12:36, 16:48] = 1  # a large contiguous hole
    out = road_impute(x, removed, torch.Generator().manual_seed(0), noise=0.0)
    hole = removed.bool().expand_as(x)
    assert torch.equal(out[~hole], x[~hole])  # kept pixels untouched
    error = (out - x).abs()[hole].max().item()
    constant = (x.mean() - x).abs()[hole].max().item()  # what a constant fill would be off by
    assert error < 0.05 < constant
    noisy = road_impute(x, removed, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[~hole], x[~hole])
    assert 0.005 < (noisy - out)[hole].std().item() < 0.02  # ROAD's noise, on removed pixels
    # nothing kept: the fill is the normalised mean colour (0), not NaN
    assert torch.equal(road_impute(x, torch.ones_like(removed), noise=0.0), torch.zeros_like(x))


def test_random_regions_are_contiguous_permutations_and_cells_sum_the_map():
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = random_region_order(6, rng)
        assert sorted(order.tolist()) == list(range(36))
        for k in range(2, 36):  # every prefix: each new cell touches one already taken
            r, c = divmod(int(order[k - 1]), 6)
            taken = {divmod(int(v), 6) for v in order[: k - 1]}
            assert taken & {(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)}
    m = np.random.default_rng(1).random((50, 70))
    relevance = cell_relevance(m, 8)
    assert relevance.shape == (64,) and relevance.sum() == pytest.approx(m.sum())
    index = cell_index(50, 70, 8)
    assert relevance[index[0, 0]] == pytest.approx(m[:7, :9].sum())


def test_verdicts_need_enough_images_and_a_ci_below_the_bound():
    fractions = [0.0, 0.5, 1.0]
    rng = np.random.default_rng(0)

    def rows(n: int, gap: float) -> pd.DataFrame:
        lerf = np.column_stack([np.ones(n), 0.8 + 0.1 * rng.random(n), np.zeros(n)])
        morf = lerf - np.column_stack([np.zeros(n), np.full(n, gap), np.zeros(n)])
        rho = rng.random(n) * 0.2
        return pd.DataFrame(
            {"morf_prob": list(morf), "lerf_prob": list(lerf), "region_prob": list(lerf),
             "sanity_rho": rho}
        )  # fmt: skip

    good = summarize_faithfulness(rows(MIN_IMAGES, 0.3), fractions, cells=4)["tests"]
    assert all(t["verdict"] == "pass" and t["passed"] for t in good.values())
    assert good["morf_vs_lerf"]["ci95"][1] < 0 and good["morf_vs_lerf"]["images"] == MIN_IMAGES
    bad = summarize_faithfulness(rows(MIN_IMAGES, -0.3), fractions, cells=4)["tests"]
    assert bad["morf_vs_lerf"]["verdict"] == "fail" and not bad["morf_vs_lerf"]["passed"]
    few = summarize_faithfulness(rows(MIN_IMAGES - 1, 0.3), fractions, cells=4)
    assert all(t["verdict"].startswith("too few") for t in few["tests"].values())
    assert verdict_lines(few)["morf_vs_lerf"].startswith("TOO FEW IMAGES")
    assert verdict_lines(summarize_faithfulness(rows(30, 0.3), fractions, 4))[
        "model_randomisation"
    ].startswith("PASS")
    assert np.isnan(rank_correlation(np.ones((4, 4)), np.eye(4)))  # a flat map has no ranking


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_trained_gradcam_passes_and_its_inverse_fails(trained_package):
    """Grad-CAM of the trained model: faithful and model-dependent; the inverted map is not."""
    from birdray.data.manifest import load_manifest
    from birdray.images import decode_image
    from birdray.model.package import load_package
    from birdray.model.preprocess import build_transform

    package = load_package(trained_package.package)
    model, config = package.model.eval(), package.metadata.data_config
    shards = pads.dataset(
        trained_package.dataset / load_manifest(trained_package.dataset)["shards_dir"],
        format="parquet", partitioning="hive",
    )  # fmt: skip
    table = shards.to_table(columns=["image_id", "image", "label"],
                            filter=pads.field("split") == "test").sort_by("image_id")  # fmt: skip
    rows = table.slice(0, MIN_IMAGES + 4).to_pylist()
    assert len(rows) == MIN_IMAGES + 4
    randomized = randomize_top(model, tuple(config["input_size"]))
    transform, fractions = build_transform(config, training=False), [0.0, 0.1, 0.25, 0.5, 0.75]
    real, inverted = [], []
    for row in rows:
        image = decode_image(row["image"]).image
        x = transform(image).unsqueeze(0)
        exp = explain(model, config, image, "gradcam", row["label"])
        rng = np.random.default_rng(row["image_id"])
        curves = removal_curves(model, x, exp.input_attribution, exp.target, fractions, 8, rng, 1)
        rand = explain(randomized, config, image, "gradcam", row["label"])
        rho = rank_correlation(exp.input_attribution, rand.input_attribution)
        real.append({**curves, "sanity_rho": rho})
        flipped = exp.input_attribution.max() - exp.input_attribution
        inverted.append(removal_curves(model, x, flipped, exp.target, fractions, 8, rng, 1))
    good = summarize_faithfulness(pd.DataFrame(real), fractions, 8)
    wrong = summarize_faithfulness(pd.DataFrame(inverted), fractions, 8)
    print(verdict_lines(good), verdict_lines(wrong))
    assert good["tests"]["morf_vs_lerf"]["verdict"] == "pass"
    assert good["tests"]["model_randomisation"]["verdict"] == "pass"
    assert wrong["tests"]["morf_vs_lerf"]["verdict"] == "fail"
    assert wrong["tests"]["morf_vs_random_region"]["verdict"] == "fail"
