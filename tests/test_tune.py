"""Ray Tune sweeps on generated birds: comparison report, promotion, resume, fail-fast resources."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from birdray.registry import read_pointer, resolve
from birdray.train.job import ResourceError
from birdray.tune.job import SweepConfig, base_train_config, build_tuner, plan_trials, run_sweep
from birdray.tune.report import FILES
from tests.train_fixtures import committed_checkpoint

pytestmark = [pytest.mark.ray]

TRAIN = dict(
    num_workers=1,
    cpus_per_worker=0.9,
    batch_size=8,
    warmup_epochs=0,
    checkpoints_to_keep=2,
    max_failures=0,
)


def _config(dataset: Path, root: Path, **overrides) -> SweepConfig:
    values = dict(
        dataset=str(dataset),
        archs=["test_resnet", "resnet18"],
        lr=[0.02, 0.1],
        image_size=[64],
        epochs=2,
        grace_period=1,
        train=dict(TRAIN),
        storage_path=str(root / "sweeps"),
        name="two-archs",
        registry=str(root / "registry"),
    )
    return SweepConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def sweep(small_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    cfg = _config(small_dataset, root)
    return cfg, run_sweep(cfg)


def _rows(report: str) -> list[dict[str, str]]:
    with open(Path(report) / FILES["csv"]) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sweep_compares_every_trial_and_promotes_the_best(sweep):
    cfg, summary = sweep
    # 4 CPUs hold 2 trials of 0.9 (worker) + 0.1 (Tune function) + 1 (free for Ray Data)
    assert summary["trials"] == 2 and summary["concurrent_trials"] == 2
    report = Path(summary["report"])
    assert report == Path(cfg.storage_path).resolve() / cfg.name / "report"
    for name in [*FILES.values(), "summary.json", "sweep.yaml"]:
        assert (report / name).stat().st_size > 0, name
    rows = _rows(summary["report"])
    assert sorted(r["arch"] for r in rows) == ["resnet18", "test_resnet"]
    for row in rows:
        assert row["status"] in ("finished", "stopped early"), row
        assert 1 <= int(row["epochs"]) <= cfg.epochs
        assert float(row["images_per_s"]) > 0 and float(row["wall_s"]) > 0
    assert {r["arch"]: int(r["parameters"]) for r in rows}["test_resnet"] < 1_000_000
    with open(report / FILES["curves"]) as fh:
        curves = list(csv.DictReader(fh))
    assert {c["trial"] for c in curves} == {r["trial"] for r in rows}

    # the winner is the best trial by val top-1, exported, tested and made production
    best = max(float(r["val_top1"]) for r in rows)
    assert summary["val_top1"] == pytest.approx(best)
    winner = next(r for r in rows if r["trial"] == summary["best_trial"])
    assert float(winner["val_top1"]) == pytest.approx(best)
    assert 0.0 <= summary["evaluation"]["test_top1"] <= 1.0
    assert summary["registry"]["promoted"]
    assert read_pointer(cfg.registry)["version"] == summary["registry"]["version"]
    meta = json.loads((resolve("production", cfg.registry) / "metadata.json").read_text())
    assert meta["arch"] == winner["arch"]
    assert meta["provenance"]["sweep"] == cfg.name
    assert meta["provenance"]["trial"] == summary["best_trial"]
    assert meta["provenance"]["manifest_checksum"] == meta["dataset"]["manifest_checksum"]
    assert meta["metrics"]["val_top1"] == pytest.approx(best)
    assert "test_top1" in meta["metrics"] and meta["temperature"] > 0


@pytest.mark.timeout(300)
def test_infeasible_request_fails_fast_naming_the_cluster(small_dataset, tmp_path):
    started = time.time()
    cfg = _config(
        small_dataset, tmp_path, train={**TRAIN, "num_workers": 2, "cpus_per_worker": 3.0}
    )
    with pytest.raises(ResourceError, match="the cluster has 4 CPU and 0 GPU"):
        run_sweep(cfg)
    cfg = _config(small_dataset, tmp_path, train={**TRAIN, "use_gpu": True})
    with pytest.raises(ResourceError, match="the cluster has 4 CPU and 0 GPU"):
        run_sweep(cfg)
    assert time.time() - started < 60
    assert not (tmp_path / "sweeps" / "two-archs").exists()  # nothing was started


def _statuses(experiment: Path) -> dict[str, str]:
    states = sorted(glob.glob(str(experiment / "experiment_state-*.json")))
    if not states:
        return {}
    try:
        data = json.loads(Path(states[-1]).read_text())
    except (json.JSONDecodeError, OSError):
        return {}  # being rewritten
    trials = [json.loads(entry[0]) for entry in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _checkpoints(trainer: Path) -> list[Path]:
    return sorted(p for p in trainer.glob("checkpoint_*") if p.is_dir())


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_interrupted_sweep_resumes_without_redoing_finished_trials(
    ray_cluster, small_dataset, tmp_path, cpus_back
):
    cfg = _config(
        small_dataset,
        tmp_path,
        archs=["test_resnet"],
        num_samples=2,
        epochs=6,  # an epoch of 12 images takes ~0.3 s: several must remain to interrupt
        grace_period=6,
        max_concurrent_trials=1,
        name="interrupted",
        registry="",
    )
    args = [
        sys.executable,
        "jobs/tune.py",
        "--dataset",
        cfg.dataset,
        "--archs",
        "[test_resnet]",
        "--num-samples",
        "2",
        "--lr",
        "[0.02, 0.1]",
        "--image-size",
        "[64]",
        "--epochs",
        "6",
        "--grace-period",
        "6",
        "--max-concurrent-trials",
        "1",
        "--train",
        json.dumps(TRAIN),
        "--storage-path",
        cfg.storage_path,
        "--name",
        cfg.name,
        "--registry",
        "",
        "--address",
        ray_cluster.address,
    ]
    repo = Path(__file__).resolve().parents[1]
    idle_cpus = ray.available_resources().get("CPU", 0.0)
    proc = subprocess.Popen(
        args,
        cwd=repo,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    experiment = Path(cfg.storage_path) / cfg.name
    finished = running = None
    statuses: dict[str, str] = {}
    deadline = time.time() + 1200
    try:
        while time.time() < deadline and proc.poll() is None:
            statuses = _statuses(experiment)
            assert list(statuses.values()).count("RUNNING") <= 1, statuses  # one at a time
            done = [t for t, s in statuses.items() if s == "TERMINATED"]
            others = [t for t in statuses if t not in done]
            # committed by Ray Train (its snapshot names it), not merely a folder being written
            if done and others and committed_checkpoint(experiment / "trainers" / others[0]):
                finished, running = done[0], others[0]
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep's driver dies mid-sweep
        proc.wait()
    assert finished, f"never saw one trial finished and the next one checkpointed: {statuses}"
    committed = committed_checkpoint(experiment / "trainers" / running)
    trainer = experiment / "trainers" / running
    before = json.loads((trainer / committed / "history.json").read_text())
    assert len(before) < cfg.epochs, "the second trial finished before the interruption"
    cpus_back(idle_cpus)  # Ray reaps the dead driver's trial actors

    # Move the finished trial's Train run aside: if Tune ran that trial again, it would have to
    # train it from scratch and the folder would reappear.
    finished_run = experiment / "trainers" / finished
    shutil.move(finished_run, tmp_path / "aside")
    base = base_train_config(cfg)
    plan = plan_trials(cfg, base, ray.cluster_resources())
    tuner, resumed = build_tuner(cfg, base, plan)
    assert resumed
    results = tuner.fit()
    assert not finished_run.exists(), "the finished trial was run again"
    assert {r.metrics["trial_id"] for r in results} == {finished, running}
    assert all(r.error is None for r in results)
    after = json.loads(
        (_checkpoints(experiment / "trainers" / running)[-1] / "history.json").read_text()
    )
    assert [h["epoch"] for h in after] == [1, 2, 3, 4, 5, 6]
    assert after[: len(before)] == before  # resumed from its checkpoint, not restarted
    shutil.move(tmp_path / "aside", finished_run)

    # running the job again on a finished sweep only reports (nothing is trained again)
    summary = run_sweep(cfg)
    assert summary["resumed"] and summary["trials"] == 2
    assert {r["trial"] for r in _rows(summary["report"])} == {finished, running}
    _assert_kept_best_and_latest(finished_run, TRAIN["checkpoints_to_keep"], cfg.epochs)


def _assert_kept_best_and_latest(trainer: Path, keep: int, epochs: int) -> None:
    """Ray Train keeps the `keep` best checkpoints by val_top1 and, for resume, the latest too."""
    histories = [json.loads((c / "history.json").read_text()) for c in _checkpoints(trainer)]
    kept = {len(h) for h in histories}  # a checkpoint's history ends at its own epoch
    assert epochs in kept, kept
    history = max(histories, key=len)
    assert len(kept) <= keep + 1, kept
    assert len(kept) >= min(keep, epochs), kept  # nothing pruned beyond what was asked
    score = {h["epoch"]: h["val_top1"] for h in history}
    older_kept = [score[e] for e in kept if e != epochs]
    dropped = [score[e] for e in score if e not in kept]
    floor = min(older_kept) if older_kept else score[epochs]
    assert all(d <= floor for d in dropped), (kept, score)  # the worst went first
