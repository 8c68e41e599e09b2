"""Ray Train on generated birds: learning, fault tolerance, resume by name, GPU scheduling."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from birdray.model.factory import auto_threads
from birdray.train.job import ResourceError, TrainConfig, check_resources, run_training
from tests.train_fixtures import committed_checkpoint

pytestmark = [pytest.mark.ray]

SMALL = dict(
    arch="test_resnet",
    image_size=64,
    batch_size=2,  # 12 train rows over 2 workers: a few steps per epoch
    lr=0.05,
    warmup_epochs=0,
    num_workers=2,
    cpus_per_worker=1.0,
)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_worker_training_learns(trained_package):
    history = json.loads((trained_package.package / "metadata.json").read_text())
    best = history["metrics"]
    chance = 1 / 6
    assert best["val_top1"] >= chance + 0.3, best  # far above chance, not an exact number
    assert trained_package.eval_summary["test_top1"] >= chance + 0.25
    epochs = history["provenance"]["history"]
    losses = [h["train_loss"] for h in epochs]
    assert losses[-1] < losses[0] * 0.7
    # validation decoded once per attempt, then kept in the workers' memory: every epoch saw the
    # whole split (2 equal shards drop at most one row). A worker failure Ray Train recovered
    # from restarts the workers, which decode it again; each such restart names its failure
    failures = trained_package.train_summary["worker_failures"]
    resumed = [h["resumed"] for h in epochs]
    assert sum(resumed) <= len({f["failure"] for f in failures}), (resumed, failures)
    if failures:  # recovered, not hidden: CI's warnings summary shows why
        warnings.warn(f"the shared trained model's run restarted: {failures}", stacklevel=1)
    first_of_attempt = [float(i == 0 or r == 1.0) for i, r in enumerate(resumed)]
    assert [h["val_from_memory"] for h in epochs] == [1.0 - f for f in first_of_attempt]
    val_rows = json.loads((trained_package.dataset / "manifest.json").read_text())["splits"]
    assert {h["val_images"] for h in epochs} <= {val_rows["val"]["rows"] - k for k in (0, 1)}
    assert len({h["val_images"] for h in epochs}) == 1
    assert all(0 < h["first_batch_s"] <= h["data_wait_s"] for h in epochs)
    assert best["workers"] == 2
    # unset torch threads: the node's cores shared by the two workers on it (one each on 2
    # cores), never fewer than the 1.0 CPU each reserves (TRAINED_RECIPE)
    assert best["torch_threads"] == auto_threads(1.0, 2)
    run_dir = Path(trained_package.train_summary["run_dir"])
    for name in ("config.yaml", "summary.csv", "train_val_losses.png"):
        assert (run_dir / name).is_file()
    assert history["dataset"]["manifest_checksum"]


@pytest.mark.timeout(600)
def test_worker_failure_recovers_from_checkpoint(small_dataset, tmp_path):
    cfg = TrainConfig(
        dataset=str(small_dataset),
        epochs=2,
        storage_path=str(tmp_path),
        name="chaos",
        inject_failure_at_epoch=1,
        max_failures=1,
        **SMALL,
    )
    sigint = signal.getsignal(signal.SIGINT)
    summary = run_training(cfg)
    assert signal.getsignal(signal.SIGINT) is sigint  # Train's handler (and its run) let go
    assert (tmp_path / "chaos" / ".injected_failure").read_text() == "1"
    with open(Path(summary["run_dir"]) / "summary.csv") as fh:  # the whole run, not the best
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # epoch 1 (0-based) redone from epoch 0's
    assert [float(r["resumed"]) for r in rows] == [0.0, 1.0]
    [failure] = summary["worker_failures"]  # the restart says why, beside its checkpoints
    assert failure["rank"] == 0 and "injected failure in epoch 1" in failure["error"], failure
    # the restarted workers had no kept validation shard: they decoded it again, all of it
    assert [float(r["val_from_memory"]) for r in rows] == [0.0, 0.0]
    assert rows[0]["val_images"] == rows[1]["val_images"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resubmitting_an_interrupted_run_by_name_resumes_it(
    ray_cluster, small_dataset, tmp_path, cpus_back
):
    import ray

    flags = {
        "--dataset": str(small_dataset),
        "--epochs": "5",  # epochs of SMALL take ~0.5 s: several must remain to interrupt
        "--storage-path": str(tmp_path),
        "--name": "interrupted",
        "--address": ray_cluster.address,
        **{"--" + k.replace("_", "-"): str(v) for k, v in SMALL.items()},
    }
    repo = Path(__file__).resolve().parents[1]
    idle_cpus = ray.available_resources().get("CPU", 0.0)
    proc = subprocess.Popen(
        [sys.executable, "jobs/train.py", *[x for kv in flags.items() for x in kv]],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run = tmp_path / "interrupted"
    deadline = time.time() + 600
    try:  # kill once Ray Train has committed a checkpoint (its snapshot names it)
        while time.time() < deadline and proc.poll() is None and not committed_checkpoint(run):
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run
        proc.wait()
    committed = committed_checkpoint(run)
    assert committed, "the first submission never committed a checkpoint"
    before = json.loads((run / committed / "history.json").read_text())
    assert len(before) < 5, "the run finished before it was interrupted"
    cpus_back(idle_cpus)  # Ray reaps the dead driver's workers

    again = TrainConfig(dataset=str(small_dataset), epochs=5, storage_path=str(tmp_path), **SMALL)
    again.name = "interrupted"  # the same name: Ray Train restores the run from its storage
    again.val_cache_mb = 0.001  # a shard that does not fit is decoded again every epoch
    summary = run_training(again)
    with open(Path(summary["run_dir"]) / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    resumed = rows[len(before) :]
    assert [float(r["val_from_memory"]) for r in resumed] == [0.0] * len(resumed)
    assert [float(r["resumed"]) for r in rows] == [float(i == len(before)) for i in range(5)]
    assert summary["worker_failures"] == []  # a killed driver is not a worker failure
    assert len({r["val_images"] for r in rows}) == 1
    # the stored epochs were kept, not retrained: their rows are the first submission's own
    for old, new in zip(before, rows, strict=False):
        assert float(new["epoch_seconds"]) == pytest.approx(old["epoch_seconds"], rel=1e-9)


@pytest.mark.timeout(300)
def test_ctrl_c_on_train_is_one_line_exit_130_and_leaves_its_checkpoint(
    ray_cluster, small_dataset, tmp_path, cpus_back
):
    """Ctrl-C on ``birdray train``: Ray Train's own handler aborts the run gracefully, then its
    ``sys.exit(0)`` inside ``ray.get`` came out of ``fit()`` as ``SystemExit(1)``: exit 1 and no
    word. Now: Ray's abort still runs, then one line and 130, with a committed checkpoint left
    for the same ``--name`` to resume from."""
    import threading

    import ray

    from tests.cli_process import birdray_process

    epochs = 12  # epochs of SMALL take ~0.5 s: most must remain when Ctrl-C lands
    flags = {
        "--dataset": str(small_dataset),
        "--epochs": str(epochs),
        "--storage-path": str(tmp_path),
        "--name": "ctrl-c",
        "--address": ray_cluster.address,
        **{"--" + k.replace("_", "-"): str(v) for k, v in SMALL.items()},
    }
    idle_cpus = ray.available_resources().get("CPU", 0.0)
    proc = birdray_process(["train", *[x for kv in flags.items() for x in kv]])
    err: list[str] = []  # read as it comes: Ray's forwarded worker lines would fill the pipe
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    run = tmp_path / "ctrl-c"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None and not committed_checkpoint(run):
            time.sleep(0.2)
        assert proc.poll() is None, "".join(err[-30:])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=30)
    text = "".join(err)
    assert proc.returncode == 130, text[-3000:]
    assert [line for line in err if line.startswith("birdray train:")] == [
        "birdray train: interrupted\n"
    ], text[-3000:]
    assert "Traceback" not in text
    assert "Gracefully aborting" in text  # Ray Train's own abort ran, not bypassed
    committed = committed_checkpoint(run)
    assert committed, "the run never committed a checkpoint"
    before = json.loads((run / committed / "history.json").read_text())
    assert len(before) < epochs, "the run finished before Ctrl-C landed"
    cpus_back(idle_cpus)  # the aborted run's workers and placement group are let go
    # the same --name resumes from that checkpoint (as after any stop; resuming itself is
    # test_resubmitting_an_interrupted_run_by_name_resumes_it's, kept out of CI's time here)


@pytest.mark.timeout(600)
def test_failure_without_retries_fails_the_run(small_dataset, tmp_path):
    cfg = TrainConfig(
        dataset=str(small_dataset),
        epochs=2,
        storage_path=str(tmp_path),
        name="fragile",
        inject_failure_at_epoch=0,
        max_failures=0,
        **SMALL,
    )
    with pytest.raises(Exception, match="injected failure"):
        run_training(cfg)


@pytest.mark.timeout(600)
def test_gpu_workers_are_scheduled_on_gpu_nodes(
    ray_cluster, small_dataset, s3_bucket, tmp_path, monkeypatch
):
    """Logical GPUs on a second node; dataset and checkpoints in an S3 bucket, as on a cluster."""
    import pyarrow.fs as pafs

    from birdray import storage
    from birdray.registry import list_versions

    monkeypatch.chdir(tmp_path)  # the local staging copy of a bucket-stored run goes under ./runs
    dataset = f"{s3_bucket}/gpu-test/dataset"
    fs, path = storage.filesystem(dataset)
    pafs.copy_files(str(small_dataset), path, destination_filesystem=fs)
    node = ray_cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    try:
        cfg = TrainConfig(
            dataset=dataset,
            epochs=1,
            storage_path=f"{s3_bucket}/gpu-test/runs",
            name="gpu",
            registry=f"{s3_bucket}/gpu-test/registry",  # `train --registry s3://...`
            use_gpu=True,
            dist_backend="gloo",
            **{**SMALL, "cpus_per_worker": 0.5},
        )
        summary = run_training(cfg)
        assert summary["last"]["gpu_workers"] == 2  # both workers hold a (logical) GPU
        assert summary["last"]["device"] == "cpu"  # and fell back to CPU: no CUDA here
        stored = f"{s3_bucket}/gpu-test/runs/gpu"  # checkpoints by Ray Train, the rest uploaded
        assert summary["uploaded_to"] == stored
        assert summary["worker_failures"] == []  # none recorded: the bucket has no record
        fs, root = storage.filesystem(stored)
        files = [
            info.path.removeprefix(root + "/")
            for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        ]
        assert any(f.startswith("checkpoint_") and f.endswith("/train_state.pt") for f in files)
        for name in ("config.yaml", "summary.csv", "package/model.safetensors"):
            assert name in files, name
        meta = json.loads((Path(summary["package"]) / "metadata.json").read_text())
        assert meta["dataset"]["path"] == dataset  # read from the bucket, and it says so
        assert summary["registered_version"] == "v0001"
        assert list_versions(f"{s3_bucket}/gpu-test/registry") == ["v0001"]
        with pytest.raises(ResourceError, match="the cluster has .* 2 GPU"):
            check_resources(TrainConfig(num_workers=4, use_gpu=True), {"CPU": 6, "GPU": 2})
    finally:
        ray_cluster.remove_node(node)


def test_infeasible_cpu_request_says_what_the_cluster_has():
    with pytest.raises(ResourceError, match="need 16 CPU and 0 GPU; the cluster has 4 CPU"):
        check_resources(TrainConfig(num_workers=4, cpus_per_worker=4), {"CPU": 4})


@pytest.mark.parametrize("where", ["controller", "worker"])
def test_checkpoint_storage_that_refuses_writes_is_one_error_naming_it(where):
    """A full disk or read-only --storage-path (workers' checkpoints), or a bucket gone (the
    controller's state): one ResourceError naming --storage-path, a one-line CLI error."""
    import errno

    from ray.train import ControllerError, WorkerGroupError

    from birdray.train.job import ResourceError, storage_failure

    full = OSError(errno.ENOSPC, "No space left on device")
    error = (
        ControllerError(OSError("When initiating multiple part upload ... Could not connect"))
        if where == "controller"
        else WorkerGroupError("Training failed due to worker errors", {0: full, 1: full})
    )
    cfg = TrainConfig(dataset="d", storage_path="/full/runs", **SMALL)
    failure = storage_failure(cfg, error)
    assert isinstance(failure, ResourceError) and "--storage-path /full/runs" in str(failure)
    other = WorkerGroupError("Training failed", {0: RuntimeError("injected failure")})
    assert storage_failure(cfg, other) is None  # anything else is Ray Train's error, unchanged
