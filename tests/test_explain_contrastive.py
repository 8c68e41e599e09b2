"""Contrastive ground truth: "why this species and not its sibling" against the generator's record.

Sibling species differ in one known part. The trained-model test explains logit(species) -
logit(sibling) on every test image of the pair in the shared ``trained_package`` (40 images;
separating part: the breast) and checks that the true separating part gets more of that map than
of a deliberately wrong map (the same map shifted by half the image, so it keeps its shape and
mass but no longer sits on the bird's parts). Last-stage Grad-CAM (a 4x4 map at 128 px) reaches
only about 1.1x, which is why it is not tested here.

Why every image: per image, Grad-CAM one stage early gives the breast 0x to 12x its area share,
so a mean over a few images is mostly sampling noise. The test once used the first 12 images:
over fourteen fixture trainings that read 1.9x (a clean-clone CI failure), 2.5x twice, 2.6x and
up to 4.6x, and within one model, 12 of its 40 images drawn at random spanned 2.6x-5.6x (5th-95th
percentile). Over all 40 images, nine fixture trainings gave 3.8x-4.8x (median 4.2x), and
Integrated Gradients 3.8x-4.4x over four (on 12 images it had read 4.1x-4.6x over six);
the explain job's own table takes up to 60 images (``contrast_images``). A part tied at zero
ranks last (``separating_score``): a map that misses the bird must not rank a part first by name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from birdray.data.cub import read_cub
from birdray.explain import explain
from birdray.explain.contrastive import (
    GOAL_RATIO,
    Contrast,
    contrastive_explain,
    contrastive_lines,
    load_siblings,
    separating_score,
    summarize_pairs,
)
from birdray.images import decode_image
from birdray.model.package import load_package
from tests.test_explain_trained import _sibling_test_rows


def _manifest(root) -> dict:
    cub = read_cub(root)
    return {"class_names": cub.class_names, "source": {"root": str(cub.root)}}


def test_siblings_come_from_the_generator_and_real_cub_has_none(synth_root, tmp_path):
    manifest = _manifest(synth_root)
    siblings, source = load_siblings(manifest)
    assert source.endswith("synthetic_species.json")
    assert siblings, "6 generated classes include one sibling pair"
    for label, pair in siblings.items():
        assert siblings[pair["sibling"]]["sibling"] == label  # pairs go both ways
        assert pair["parts"] and len(pair["traits"]) == 1
    real = {"class_names": manifest["class_names"], "source": {"root": str(tmp_path)}}
    none, reason = load_siblings(real)
    assert none == {} and "real CUB" in reason
    assert load_siblings({"class_names": []})[0] == {}


def test_contrast_wrapper_explains_the_logit_difference_and_keeps_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    x = torch.randn(3, 3, 2, 2)
    out, logits = Contrast(model, 2)(x), model(x)
    assert torch.allclose(out[:, 0], logits[:, 0] - logits[:, 2])
    assert torch.allclose(out[:, 2], torch.zeros(3))
    assert torch.allclose(out.softmax(-1), logits.softmax(-1), atol=1e-6)
    assert not Contrast(model, 1).training  # the wrapper keeps the model's mode


def test_separating_rank_puts_a_part_the_map_misses_last_not_first_by_name():
    names = ["back", "beak", "breast", "crown"]  # "back" sorts first
    bbox = [100.0, 50.0, 200.0, 150.0]
    parts = [[120.0, 70.0, 1], [280.0, 60.0, 1], [180.0, 140.0, 1], [150.0, 60.0, 1]]
    off_bird = np.zeros((240, 360), dtype=np.float32)
    off_bird[220:, :20] = 1.0 / (20 * 20)  # all mass in a corner, away from every part
    missed = separating_score(off_bird, parts, bbox, names, ["back"])
    assert missed["share"] == 0.0 and missed["rank"] == missed["visible_parts"] == 4.0
    on_back = off_bird * 0
    on_back[65:75, 115:125] = 1.0 / 100  # all mass on the back
    hit = separating_score(on_back, parts, bbox, names, ["back"])
    assert hit["share"] > 0.9 and hit["rank"] == 1.0
    assert separating_score(on_back, parts, bbox, names, ["breast"])["rank"] == 4.0


def test_pair_summary_counts_only_pairs_that_meet_the_goal():
    def rows(label, sibling, share, area, ranks):
        return [{"method": "m", "label": label, "sibling": sibling, "parts": ["crown"],
                 "share": share, "area_share": area, "rank": r} for r in ranks]  # fmt: skip

    table = pd.DataFrame(
        rows(0, 1, 0.30, 0.05, [1, 2, 5])  # 6x chance, median rank 2: meets the goal
        + rows(1, 0, 0.08, 0.05, [1, 1, 1])  # top rank but only 1.6x chance: does not
        + rows(2, 3, 0.40, 0.05, [4, 5, 6])  # 8x chance but median rank 5: does not
        + rows(3, 2, np.nan, np.nan, [np.nan])  # separating part never visible: left out
    )
    names = ["001.A", "002.B", "003.C", "004.D"]
    result = summarize_pairs(table, names)["methods"]["m"]
    assert result["pairs_total"] == 3 and result["pairs_meeting_goal"] == 1
    assert result["fraction_meeting_goal"] == pytest.approx(1 / 3)
    first = result["pairs"][0]
    assert first["species"] == "001.A" and first["sibling"] == "002.B"
    assert first["ratio"] == pytest.approx(6.0) and first["median_rank"] == 2.0
    assert [p["meets_goal"] for p in result["pairs"]] == [True, False, False]
    line = contrastive_lines({"available": True, "methods": {"m": result}})["m"]
    assert line.startswith("1/3 sibling pairs meet the goal (33%")
    unavailable = contrastive_lines({"available": False, "reason": "no sibling ground truth"})
    assert "no sibling ground truth" in unavailable["all"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1800)  # the shared trained model; this test itself takes well under a minute
@pytest.mark.parametrize("method", ["gradcam_early", "integrated_gradients"])
def test_contrastive_map_puts_its_mass_on_the_separating_part(trained_package, method):
    package = load_package(trained_package.package)
    model, config = package.model, package.metadata.data_config
    manifest = {"class_names": package.metadata.class_names,
                "source": {"root": str(trained_package.source / "CUB_200_2011")}}  # fmt: skip
    siblings, _ = load_siblings(manifest)
    rows, part_names, _ = _sibling_test_rows(trained_package)
    true, shifted = [], []
    for row in rows:  # all of them: one image's ratio ranges 0x-12x (module docstring)
        pair = siblings[row["label"]]
        image = decode_image(row["image"]).image
        exp = contrastive_explain(model, config, image, row["label"], pair["sibling"], method,
                                  steps=16)  # fmt: skip
        assert exp.predicted == explain(model, config, image, "gradcam").predicted
        h, w = exp.attribution.shape
        moved = np.roll(exp.attribution, (h // 2, w // 2), axis=(0, 1))
        scores = [separating_score(m, row["parts"], row["bbox"], part_names, pair["parts"])
                  for m in (exp.attribution, moved)]  # fmt: skip
        if scores[0] is None:
            continue
        for out, s in zip((true, shifted), scores, strict=True):
            out.append((s["share"], s["area_share"], s["rank"]))
    assert len(true) >= 30
    t, s = np.array(true), np.array(shifted)
    ratio = t[:, 0].mean() / t[:, 1].mean()
    print(f"{method}: separating part share {t[:, 0].mean():.3f} ({ratio:.1f}x its area share), "
          f"median rank {np.median(t[:, 2])}; shifted map {s[:, 0].mean():.3f}, rank "
          f"{np.median(s[:, 2])}")  # fmt: skip
    assert ratio > GOAL_RATIO  # the true map: well above chance on the part that differs
    assert t[:, 0].mean() > 2 * s[:, 0].mean() and np.median(t[:, 2]) < np.median(s[:, 2])
