"""``birdray train|tune --dry-run``: the printed plan's numbers, its verdict and its exit status.

As a user runs it: the CLI in a subprocess on this machine with CUDA hidden (so the machine has 0
GPUs wherever the test runs), no RAY_ADDRESS, and Ray's temp folder pointed at a fresh folder that
must still not exist afterwards (the dry run starts no Ray). Against a cluster (``--address``):
the session's local Ray with a node of logical GPUs added, so the plan is judged on GPUs that
are really scheduled, not on this machine's. The expected numbers are worked out here from the
recipes' own values, not copied from the output.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from birdray.config import config_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(ray_cluster, tmp_path_factory) -> Path:
    """A real ingested dataset (train/val/test), so only resources decide the verdict: 232
    train images, a full batch for every worker of every recipe (workstation_4gpu: 4 x 32)."""
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.synth.job import SynthConfig, generate

    root = tmp_path_factory.mktemp("dry")
    synth = SynthConfig(
        out=str(root / "src"), classes=4, per_class=80, test_fraction=0.2, seed=2, workers=1,
        min_side=64, max_side=96,
    )  # fmt: skip
    run_ingest(IngestConfig(source=str(generate(synth)), out=str(root / "ds")))
    return root / "ds"


def _cpus() -> int:
    from birdray.plan import local_cpus

    return local_cpus()


def _recipe(name: str) -> dict:
    """The recipe's values over the job's defaults, as the CLI resolves them."""
    from birdray.config import from_dict
    from birdray.train.config import TrainConfig
    from birdray.tune.config import SweepConfig

    values = yaml.safe_load(config_path(name).read_text())
    if "archs" not in values:
        return vars(from_dict(TrainConfig, values))
    sweep = vars(from_dict(SweepConfig, values))
    return {**sweep, "train": vars(from_dict(TrainConfig, sweep["train"]))}


def _dry_run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        CUDA_VISIBLE_DEVICES="",  # this machine has no GPU, whatever machine the test runs on
        RAY_TMPDIR=str(tmp_path / "raytmp"),  # a Ray started here would create it
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [sys.executable, "-m", "birdray.cli", *argv, "--dry-run"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert not (tmp_path / "raytmp").exists(), "the dry run started Ray"
    assert "Started a local Ray" not in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()  # no run folder: nothing was started
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _row(out: str, label: str) -> str:
    """The text of one row of the printed plan (``  label  text``)."""
    for line in out.splitlines():
        if line.startswith(f"  {label}  "):
            return line[len(label) + 2 :].strip()
    raise AssertionError(f"no {label!r} row in:\n{out}")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("recipe", ["single_gpu_box", "workstation_4gpu"])
def test_a_gpu_recipe_says_how_many_gpus_it_needs_and_that_this_machine_has_none(
    recipe, dataset, tmp_path
):
    r = _recipe(recipe)
    n, cpus, data = r["num_workers"], r["cpus_per_worker"], max(1.0, r["data_cpus"])
    done = _dry_run(tmp_path, "train", "--config", recipe, "--dataset", str(dataset))
    out = done.stdout
    assert done.returncode == 1, (done.stdout, done.stderr)  # it would not start here
    assert "resolved config:" in out and f"image_size: {r['image_size']}" in out
    assert f"dataset: {dataset}" in out  # the flag over the recipe
    workers = f"{n} x ({cpus:g} CPU + 1 GPU) = {n * cpus:g} CPU + {n} GPU"
    assert _row(out, "training workers") == workers
    assert _row(out, "needs at least") == f"{n * cpus + data:g} CPU + {n} GPU"
    assert _row(out, "this machine").startswith(f"{_cpus()} CPU + 0 GPU (no Ray started")
    verdict = out.split("would NOT start on this machine:", 1)[1]
    assert f"needs {n} GPU ({n} x 1 GPU); this machine has 0 GPU" in verdict
    assert "--dataset" not in verdict  # the dataset is fine: only resources (and the hub) stop it
    assert "dry run: would not start here" in done.stderr


@pytest.mark.timeout(900)
def test_a_cpu_recipe_that_fits_exits_0_with_the_cpus_it_would_reserve(dataset, tmp_path):
    r = _recipe("demo")
    n, cpus, have = r["num_workers"], r["cpus_per_worker"], _cpus()
    free = have - 1.0  # Ray Data keeps one whole CPU (its file listing and reads)
    fitted = cpus if n * cpus <= free else math.floor(free / n * 100) / 100
    done = _dry_run(
        tmp_path, "train", "--config", "demo", "--dataset", str(dataset), "--pretrained-file", ""
    )
    out = done.stdout
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert _row(out, "training workers") == f"{n} x ({cpus:g} CPU) = {n * cpus:g} CPU + 0 GPU"
    plan = _row(out, "CPU plan")
    if fitted == cpus:
        assert plan == f"as asked; {have - n * cpus:g} CPU left for Ray Data", plan
    else:  # a 2-core laptop: the workers get fractions so Ray Data keeps its CPU
        assert plan.endswith(f"each worker reserves {fitted:g} CPU instead"), plan
        assert f"this machine's {have} CPU" in plan, plan
    assert f"would start on this machine: {have - n * fitted:g} CPU for Ray Data" in out
    assert "arch: tf_efficientnet_lite0" in out  # the recipe's own value, resolved


@pytest.mark.timeout(900)
def test_tune_dry_run_counts_the_trials_that_run_at_once(dataset, tmp_path):
    r = _recipe("sweep_demo")
    t = r["train"]
    data = max(r["data_cpus_per_trial"], t["data_cpus"], 1.0)
    per_trial = t["num_workers"] * t["cpus_per_worker"] + r["trial_cpus"] + data
    trials = len(r["archs"]) * r["num_samples"]
    at_once = max(1, min(math.floor(_cpus() / per_trial + 1e-9), trials))
    done = _dry_run(tmp_path, "tune", "--config", "sweep_demo", "--dataset", str(dataset))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert _row(done.stdout, "trials").startswith(f"{trials} ({len(r['archs'])} archs x")
    assert _row(done.stdout, "each trial").endswith(f"= {per_trial:g} CPU + 0 GPU")
    assert _row(done.stdout, "at once").startswith(f"{at_once} trials")
    assert f"would start on this machine: {at_once} of {trials} trials at once" in done.stdout


@pytest.mark.timeout(900)
def test_the_cub_sweep_needs_one_gpu_per_trial(dataset, tmp_path):
    done = _dry_run(tmp_path, "tune", "--config", "sweep_cub", "--dataset", str(dataset))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "needs 1 GPU (each trial 1 x 1 GPU); this machine has 0 GPU" in done.stdout
    assert _row(done.stdout, "trials").startswith("6 (3 archs x 2 samples)")


@pytest.mark.timeout(600)
def test_against_a_cluster_the_plan_uses_its_gpus(ray_cluster, dataset, capsys):
    """``--address``: the cluster's totals, here the session's Ray plus a node of 1 logical GPU."""
    import ray

    from birdray.cli import main

    node = ray_cluster.add_node(num_cpus=3, num_gpus=1)
    try:
        ray_cluster.wait_for_nodes()
        have = ray.cluster_resources()
        assert have.get("GPU") == 1, have
        common = ["--dataset", str(dataset), "--no-pretrained", "--address", ray_cluster.address]
        assert main(["train", "--config", "single_gpu_box", *common, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert _row(out, "the cluster").startswith(f"{have['CPU']:g} CPU + 1 GPU (the Ray cluster")
        assert "would start on the cluster:" in out
        assert main(["train", "--config", "workstation_4gpu", *common, "--dry-run"]) == 1
        out = capsys.readouterr().out
        assert "needs 4 GPU (4 x 1 GPU); the cluster has 1 GPU" in out
    finally:
        ray_cluster.remove_node(node)


@pytest.mark.parametrize(
    "argv, said",
    [
        (["train", "--lr", "1e400"], "--lr: must be a finite number, got inf"),
        (["train", "--hflip", "2"], "--hflip: must be <= 1"),
        (["train", "--stall-timeout-s", "-5"], "--stall-timeout-s: must be >= 0"),
        (["train", "--arch", "no_such_net"], "--arch: 'no_such_net' is not a timm model"),
        (["train", "--name", "../../escaped"], "--name: '../../escaped' must be one folder"),
        (["tune", "--config", "sweep_demo", "--train", "{momentum: .nan}"], "--train (momentum)"),
        (["tune", "--config", "sweep_demo", "--archs", "[resnet18, nonet]"], "--archs: 'nonet'"),
        (["tune", "--config", "sweep_demo", "--name", ".."], "--name: '..' must be one folder"),
        (["tune", "--config", "sweep_demo", "--archs", "[]"], "--archs: name at least one"),
    ],
    ids=["lr", "hflip", "stall", "arch", "name", "tune-nan", "tune-arch", "tune-name", "no-arch"],
)
def test_settings_that_cannot_train_stop_before_ray(
    dataset, tmp_path, monkeypatch, capsys, argv, said
):
    """Each of these was accepted: an lr of inf (NaN weights), a run name that wrote outside
    --storage-path, an architecture timm lacks (Ray started, then the first worker failed)."""
    import ray

    from birdray.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--dataset", str(dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"birdray {argv[0]}: error: ") and said in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()
