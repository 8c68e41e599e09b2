"""``birdray evaluate`` scores its report split and val through one actor pool (one model load):
each split must still get exactly its own rows, its own labels and the logits scoring it alone
gives, and the temperature must be fitted on val alone."""

from __future__ import annotations

import json

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


# ---- --exclude-ids and calibration, through the CLI, on a dataset without a val split --------


@pytest.fixture(scope="module")
def no_val(ray_cluster, tmp_path_factory):
    """(dataset without a val split, an untrained package of its classes with temperature 1.7,
    the test split's ids)."""
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.data.manifest import load_manifest
    from birdray.synth.job import SynthConfig, generate
    from tests.model_fixture import make_package

    root = tmp_path_factory.mktemp("noval")
    synth = SynthConfig(out=str(root / "src"), classes=3, per_class=6, seed=2, min_side=64,
                        max_side=80, workers=1)  # fmt: skip
    dataset = root / "ds"
    run_ingest(IngestConfig(source=str(generate(synth)), out=str(dataset), val_fraction=0.0))
    manifest = load_manifest(dataset)
    assert "val" not in manifest["splits"]
    package = make_package(root / "pkg", num_classes=3, temperature=1.7,
                           class_names=manifest["class_names"])  # fmt: skip
    return dataset, package, sorted(_labels(dataset, "test"))


def _evaluate(argv: list[str], capsys) -> tuple[int, str, str]:
    from birdray.cli import main

    code = main(["evaluate", *argv])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_exclude_ids_take_commas_and_spaces_and_report_ids_not_in_the_split(
    no_val, tmp_path, capsys
):
    """Before: ``12,34`` was one token that is not all digits, so nothing was excluded."""
    dataset, package, ids = no_val
    ids_file = tmp_path / "overlaps.txt"
    # as Excel's "CSV UTF-8" saves it: a byte-order mark before the first id
    ids_file.write_text(f"\ufeff{ids[0]},{ids[1]}\n# ImageNet overlaps\n{ids[2]} {ids[3]}, 99999\n")
    out = tmp_path / "eval"
    argv = ["--model", str(package), "--dataset", str(dataset), "--exclude-ids", str(ids_file)]
    code, printed, err = _evaluate([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["excluded"], metrics["exclude_ids_not_in_split"]) == (4, 1)
    assert "--exclude-ids: 1 of 5 ids are not in the 'test' split" in printed
    assert np.asarray(metrics["confusion_matrix"]).sum() == len(ids) - 4  # really left out


def test_no_val_split_says_calibration_was_skipped(no_val, tmp_path, capsys):
    """Before: the model's old temperature was kept without a word, like a fresh fit."""
    dataset, package, _ = no_val
    out = tmp_path / "eval"
    argv = ["--model", str(package), "--dataset", str(dataset), "--out", str(out)]
    code, printed, err = _evaluate(argv, capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"].startswith("skipped: no val split in ")
    assert metrics["temperature"] == pytest.approx(1.7)
    assert "evaluate: calibration skipped: no val split" in printed
    assert json.loads(printed[printed.index("{") :])["calibration"] == metrics["calibration"]


@pytest.mark.parametrize(
    "text, token, line",
    [("1 2\n3;4\n", "3;4", 2), ("5\n\n 6, x7", "x7", 3), ("²", "²", 1), ("-3", "-3", 1)],
)
def test_a_token_that_is_no_id_is_one_line_before_scoring(
    no_val, tmp_path, monkeypatch, capsys, text, token, line
):
    """Before: such tokens were dropped silently (and '²' passed ``isdigit`` then crashed)."""
    import birdray.evaluate.job as job

    monkeypatch.setattr(job, "init_ray", lambda *a, **k: pytest.fail("scoring started"))
    dataset, package, _ = no_val
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(text)
    argv = ["--model", str(package), "--dataset", str(dataset), "--exclude-ids", str(ids_file)]
    code, _, err = _evaluate(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--exclude-ids: {ids_file} line {line}: {token!r} is not an image id" in err


def test_excluding_every_image_is_an_error_never_nan_metrics(no_val, tmp_path, monkeypatch, capsys):
    """Before: test_top1 NaN went into the package's metrics (or the registry)."""
    import birdray.evaluate.job as job
    from birdray.model.package import read_metadata

    dataset, package, ids = no_val
    ids_file = tmp_path / "all.txt"
    ids_file.write_text(",".join(map(str, ids)))
    argv = ["--model", str(package), "--dataset", str(dataset), "--exclude-ids", str(ids_file)]
    real_init = job.init_ray
    monkeypatch.setattr(job, "init_ray", lambda *a, **k: pytest.fail("scoring started"))
    code, _, err = _evaluate(argv, capsys)  # the pre-flight: before anything is scored
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"excludes all {len(ids)} images of the 'test' split" in err
    assert "nothing left to evaluate" in err

    monkeypatch.setattr(job, "init_ray", real_init)  # the job's own guard, without the CLI
    before = read_metadata(package).metrics
    with pytest.raises(ValueError, match="nothing left to evaluate"):
        job.run_evaluation(EvaluateConfig(model=str(package), dataset=str(dataset),
                                          exclude_ids=str(ids_file)))  # fmt: skip
    assert read_metadata(package).metrics == before and not (package / "eval").exists()
