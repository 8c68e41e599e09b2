"""The Models page under ``AppTest``, from a real registry, Tune report and evaluation report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from birdray.registry import local_copy, promote, register
from birdray.tune.report import COLUMNS, write_report
from tests.dashboard_fixtures import no_exceptions, texts
from tests.model_fixture import make_package

PAGE = "views/models.py"


def trial_row(trial: str, arch: str, top1: float) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(
        trial=trial,
        arch=arch,
        lr=0.01,
        val_top1=top1,
        val_top5=min(1.0, top1 + 0.2),
        best_epoch=2,
        epochs=3,
        status="finished",
        error="",
    )
    return row


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    """A Tune report written by the sweep's own writer (two trials, three epochs each)."""
    root = tmp_path_factory.mktemp("tune")
    rows = [trial_row("t1", "resnet18", 0.62), trial_row("t2", "test_resnet", 0.41)]
    curves = {
        r["trial"]: [
            {
                "trial": r["trial"],
                "arch": r["arch"],
                "epoch": e,
                "val_top1": r["val_top1"] * e / 3,
                "val_top5": None,
                "val_loss": 1.0 / e,
                "train_loss": 1.2 / e,
            }
            for e in (1, 2, 3)
        ]
        for r in rows
    }
    report = root / "sweep-a" / "report"
    write_report(rows, curves, report)
    summary = {"best_trial": "t1", "arch": "resnet18", "val_top1": 0.62}
    (report / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("models_page")
    registry = str(root / "registry")
    for seed in (0, 1):
        register(registry, make_package(root / f"pkg{seed}", seed=seed), {"run": f"run{seed}"})
    promote(registry, "v0001")
    promote(registry, "v0002")
    return registry


@pytest.mark.timeout(300)
def test_registry_and_tune_comparison(small_registry, sweep_root, app_test):
    at = app_test(PAGE, BIRDRAY_REGISTRY=small_registry, BIRDRAY_SWEEP_DIR=sweep_root)
    no_exceptions(at)
    version = at.selectbox(key="model_version")
    assert version.options == ["v0001", "v0002 (production)"] and version.value == "v0002"
    infos = texts(at, "info")
    assert any("no evaluation report yet" in i for i in infos)  # said, not hidden or faked
    assert any("No explainability evaluation" in i for i in infos)
    tables = [t.value for t in at.dataframe]
    trials = next(t for t in tables if "trial" in t.columns)
    assert trials["trial"].tolist() == ["t1", "t2"]
    assert trials["val_top1"].tolist() == [0.62, 0.41]
    assert any("Winner: trial **t1** (resnet18)" in s for s in texts(at, "success"))
    versions = next(t for t in tables if "version" in t.columns)
    assert versions["version"].tolist() == ["v0001", "v0002"]
    assert versions["production"].tolist() == [False, True]
    assert any("v0001 → v0002" in str(c.value) for c in at.caption)


def test_an_unreadable_production_version_is_said_and_the_rest_still_works(
    small_registry, sweep_root, app_test, tmp_path
):
    """Production's ``calibration.json`` corrupt: the Production tab showed v0001's report
    without a word that production is v0002 and cannot be read. Now it says so; the readable
    version, the Tune comparison and the registry table (with the problem) stay usable."""
    from birdray.registry import record_evaluation

    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    record = record_evaluation(small_registry, "v0002", report, 1.5, {"test_top1": 0.5})
    path = Path(record) / "calibration.json"
    path.write_text("{not json")
    try:
        at = app_test(PAGE, BIRDRAY_REGISTRY=small_registry, BIRDRAY_SWEEP_DIR=sweep_root)
        no_exceptions(at)
        errors = texts(at, "error")
        assert any("production version v0002 cannot be read" in e for e in errors), errors
        assert any(str(path) in e and "corrupt calibration" in e for e in errors), errors
        assert at.selectbox(key="model_version").value == "v0001"  # the readable one, shown
        assert any("Winner: trial **t1** (resnet18)" in s for s in texts(at, "success"))
        versions = next(t.value for t in at.dataframe if "version" in t.value.columns)
        assert versions["version"].tolist() == ["v0001", "v0002"]  # listed, with its problem
        assert "corrupt calibration" in versions["problem"].tolist()[1]
    finally:
        path.unlink()  # the record is then ignored, as the message advises


def test_a_registry_of_unreadable_versions_is_not_called_empty(sweep_root, app_test, tmp_path):
    """Its only version unreadable, the tab said "No model versions yet (train ...)"."""
    from birdray.registry import record_evaluation

    registry = str(tmp_path / "registry")
    register(registry, make_package(tmp_path / "pkg"), {"run": "run0"})
    promote(registry, "v0001")
    (tmp_path / "report").mkdir()
    record = record_evaluation(registry, "v0001", tmp_path / "report", 1.5, {})
    (Path(record) / "calibration.json").write_text("[]")
    at = app_test(PAGE, BIRDRAY_REGISTRY=registry, BIRDRAY_SWEEP_DIR=sweep_root)
    no_exceptions(at)
    assert any("production version v0001 cannot be read" in e for e in texts(at, "error"))
    assert any("No version in" in w and "v0001" in w for w in texts(at, "warning"))
    assert not any("No model versions" in i for i in texts(at, "info"))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_production_model_report(trained_package, sweep_root, tmp_path, app_test):
    """A trained, evaluated package in a registry, with its explainability evaluation."""
    from birdray.explain.evaluation import ExplainEvalConfig, run_explain_eval

    registry = str(tmp_path / "registry")
    version = register(registry, trained_package.package, {"run": "trained"})
    promote(registry, version)
    run_explain_eval(
        ExplainEvalConfig(
            dataset=str(trained_package.dataset),
            model=version,
            registry=registry,
            methods="gradcam",
            limit=6,
            actor_cpus=0.5,
            threads=1,
            batch_size=3,
        )
    )
    package = local_copy(registry, version)
    metrics = json.loads((package / "eval" / "metrics.json").read_text())
    summary = json.loads((package / "explain" / "summary.json").read_text())

    at = app_test(PAGE, BIRDRAY_REGISTRY=registry, BIRDRAY_SWEEP_DIR=sweep_root)
    no_exceptions(at)
    shown = {m.label: m.value for m in at.metric}
    assert shown[f"{metrics['split']} top-1 accuracy"] == f"{metrics['top1']:.1%}"
    assert shown["top-5 accuracy"] == f"{metrics['top5']:.1%}"
    assert shown["calibration error (ECE)"] == f"{metrics['ece_after']:.3f}"
    assert "**Per-species accuracy**" in texts(at, "markdown")
    species = at.selectbox(key="profile_species")
    assert len(species.options) == len(
        json.loads((package / "explain" / "part_profiles.json").read_text())["classes"]
    )
    assert any("Where gradcam attribution falls on" in m for m in texts(at, "markdown"))
    pointing = next(t.value for t in at.dataframe if "hits in box" in t.value.columns)
    assert pointing["hits in box"].tolist() == pytest.approx(
        [summary["methods"]["gradcam"]["pointing_bbox"]], abs=1e-3
    )
    versions = next(t.value for t in at.dataframe if "version" in t.value.columns)
    row = versions.set_index("version").loc[version]
    assert bool(row["production"]) and row["test_top1"] == pytest.approx(metrics["top1"])


@pytest.mark.timeout(300)
def test_peoples_corrections_per_species(small_registry, sweep_root, app_test, tmp_path):
    from birdray.feedback.store import Feedback, append

    def image(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (seed * 40, 90, 160)).save(buf, format="PNG")
        return buf.getvalue()

    one, two = "001.Species_1", "002.Species_2"
    answers = [(one, one), (two, one), (two, one), (one, "unsure")]  # (predicted, answer)
    items = [Feedback(image(i), f"b{i}.png", "v0002", p, a) for i, (p, a) in enumerate(answers)]
    append(f"{small_registry}/feedback", items)
    at = app_test(PAGE, BIRDRAY_REGISTRY=small_registry, BIRDRAY_SWEEP_DIR=sweep_root)
    no_exceptions(at)
    assert any("3 answers naming a species, 2 of them corrections" in str(c.value)
               for c in at.caption)  # fmt: skip
    table = next(t.value for t in at.dataframe if "correction rate" in t.value.columns)
    row = table.set_index("species").loc[one]
    assert (row["answers"], row["corrected"]) == (3, 2)
    assert row["predicted instead"] == two
