"""The resource plan every job makes before submitting anything, and the stall watchdog.

Plans are pure functions of the requested shape and ``ray.cluster_resources()``; the watchdog is
proven on the session's real Ray: a scoring pool that fits the plan, while another actor holds
every free CPU, must stop with Ray's pending demand instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from birdray.resources import (
    ResourceError,
    StallError,
    plan_pool,
    plan_workers,
    watched,
)
from birdray.serve.fit import plan_redeploy, plan_serve
from birdray.train.job import TrainConfig, check_resources

TWO_CPUS = {"CPU": 2.0}


def test_training_workers_leave_a_cpu_for_ray_data(capsys):
    # demo.yaml on a 2-core laptop: 2 workers x 1 CPU left Ray Data's listing task nothing
    assert plan_workers(2, 1.0, False, 0.5, TWO_CPUS) == 0.5
    assert "each worker reserves 0.5 CPU instead" in capsys.readouterr().err
    cfg = TrainConfig(num_workers=2, cpus_per_worker=1.0)
    check_resources(cfg, TWO_CPUS)
    assert cfg.cpus_per_worker == 0.5
    capsys.readouterr()
    assert plan_workers(2, 1.0, False, 0.5, {"CPU": 4.0}) == 1.0  # fits as asked: unchanged
    assert capsys.readouterr().err == ""


def test_plans_that_cannot_fit_stop_with_the_numbers():
    with pytest.raises(ResourceError, match=r"need 2\.5 CPU; the cluster has 1 CPU"):
        plan_workers(1, 1.0, False, 1.5, {"CPU": 1.0})
    with pytest.raises(ResourceError, match=r"4 workers x 8 CPU \+ 1 GPU need 32 CPU and 4 GPU"):
        plan_workers(4, 8.0, True, 1.0, TWO_CPUS)  # resnet50_imagenet.yaml on a laptop
    with pytest.raises(ResourceError, match="the cluster has 16 CPU and 0 GPU"):
        plan_workers(2, 1.0, True, 1.0, {"CPU": 16.0})


def test_actor_pools_are_capped_to_what_fits(capsys):
    assert plan_pool("scoring", 4, 1.0, 0.0, TWO_CPUS, data_cpus=1.0) == 1
    assert "4 scoring actors" in capsys.readouterr().err
    assert plan_pool("scoring", 2, 0.5, 0.0, {"CPU": 4.0}) == 2
    with pytest.raises(ResourceError, match=r"needs 1 scoring actor x 2 CPU .* has 2 CPU"):
        plan_pool("scoring", 1, 2.0, 0.0, TWO_CPUS)
    with pytest.raises(ResourceError, match="0 GPU"):
        plan_pool("scoring", 1, 1.0, 1.0, TWO_CPUS)
    assert plan_pool("scoring", 8, 1.0, 1.0, {"CPU": 16.0, "GPU": 2.0}) == 2


def test_serve_replicas_must_fit():
    plan_serve({"min_replicas": 1}, TWO_CPUS)  # 1 + 0.5 + 0.5 CPU
    with pytest.raises(ResourceError, match=r"3 model x 1 CPU .* need 4 CPU; the cluster has 2"):
        plan_serve({"min_replicas": 3, "max_replicas": 3}, TWO_CPUS)
    with pytest.raises(ResourceError, match="0 GPU") as refused:
        plan_serve({"num_gpus": 1.0}, {"CPU": 8.0})
    # serve and score have --device and --num-gpus; --use-gpu is training's flag
    assert "(--device cpu --num-gpus 0 runs on CPU)" in str(refused.value)


DEFAULTS = {"model": "v0001", "registry": "", "colocate": "auto"}  # as start_local deploys


def test_redeploy_surges_only_beside_what_is_free(capsys):
    swap = {**DEFAULTS, "model": "v0002"}
    # the defaults on 2 CPUs: ingress+model 1.5 + explainer 0.5 hold them all; a surge of the two
    # could never be scheduled (the swap hung): replace in place, said once with the numbers
    assert plan_redeploy(DEFAULTS, swap, {"CPU": 0.0}, TWO_CPUS) == 0
    said = capsys.readouterr().err
    assert "max_surge_percent 100 needs 2 CPU and 0 GPU beside the running replicas" in said
    assert "0 CPU and 0 GPU free; each replica is replaced in place" in said
    no_explainer = {**DEFAULTS, "explain": False}
    assert plan_redeploy(no_explainer, no_explainer, {"CPU": 0.5}, TWO_CPUS) == 0
    assert "needs 1.5 CPU" in capsys.readouterr().err
    # room for the surge: as asked, nothing said
    assert plan_redeploy(DEFAULTS, swap, {"CPU": 2.0}, {"CPU": 4.0}) == 100
    assert plan_redeploy(DEFAULTS, {**swap, "max_surge_percent": 0}, {"CPU": 0.0}, TWO_CPUS) == 0
    assert capsys.readouterr().err == ""
    # room for some: the largest surge that fits (1 of 4 ingress replicas + the explainer)
    four = {**DEFAULTS, "ingress_replicas": 4}
    assert plan_redeploy(four, four, {"CPU": 3.0}, {"CPU": 9.0}) == 25
    assert "max_surge_percent 25 instead" in capsys.readouterr().err
    # one GPU held by the model replica: its surge twin needs a second one
    gpu = {**DEFAULTS, "explain": False, "num_gpus": 1.0}
    assert plan_redeploy(gpu, gpu, {"CPU": 6.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}) == 0
    assert "needs 1.5 CPU and 1 GPU" in capsys.readouterr().err


def test_a_redeploy_that_grows_a_deployment_counts_the_growth_beside_the_surge():
    """Serve starts ceil(p x n) plus the growth n - n_old beside every old replica (with 0, the
    growth alone): counting the larger of the two instead planned a surge whose last replica
    could never start, and old ones stop only once the new count is reached: a stall."""
    from birdray.serve.fit import surge_need

    old = {"BirdClassifier": ("model", 1, 1.0, 0.0)}
    two = {"BirdClassifier": ("model", 2, 1.0, 0.0)}
    assert surge_need(old, two, 50) == (2.0, 0.0)  # 1 surge + 1 growth, not max(1, 1)
    assert surge_need(old, two, 0) == (1.0, 0.0)  # the growth first, then one for one
    halves = {"BirdClassifier": ("model", 2, 0.5, 0.0)}  # smaller, more: 2 x 0.5 beside 1 x 1
    assert surge_need({"BirdClassifier": ("model", 1, 2.0, 0.0)}, halves, 0) == (0.5, 0.0)
    assert surge_need(two, old, 100) == (0.0, 0.0)  # shrinking: the extra one stops first
    grown = {**DEFAULTS, "explain": False, "colocate": "off", "min_replicas": 2, "max_replicas": 2}
    base = {**DEFAULTS, "explain": False, "colocate": "off"}
    # ingress 0.5 + 2 model replicas = 2.5 CPU at surge 50: only 1.5 free, so replace in place
    assert plan_redeploy(base, {**grown, "max_surge_percent": 50}, {"CPU": 1.5}, {"CPU": 3.0}) == 0


def test_redeploy_that_cannot_fit_even_in_place_is_refused_at_once():
    bigger = {**DEFAULTS, "model_num_cpus": 1.5}  # 2 + 0.5 CPU in a 2.5 CPU cluster, 0 free
    with pytest.raises(ResourceError, match=r"need 0\.5 CPU and 0 GPU more than the running") as e:
        plan_redeploy(DEFAULTS, bigger, {"CPU": 0.0}, {"CPU": 2.5})
    assert "the cluster has 0 CPU and 0 GPU free (of 2.5 CPU, 0 GPU)" in str(e.value)
    # a candidate for a rollout: model + candidate + ingress + explainer = 3 CPU > 2
    with pytest.raises(ResourceError, match=r"need 3 CPU; the cluster has 2"):
        plan_redeploy(DEFAULTS, {**DEFAULTS, "candidate": "v0002"}, {"CPU": 0.0}, TWO_CPUS)


def test_watched_passes_items_and_errors_through():
    assert list(watched(iter(range(5)), 5.0, "numbers")) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        list(watched(broken(), 5.0, "broken"))


@contextlib.contextmanager
def cpus_held(cpus: float):
    """Another job holding ``cpus`` CPUs; afterwards, the abandoned pipelines' watchers end."""
    import ray

    @ray.remote
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.options(num_cpus=cpus).remote()
    ray.get(holder.ready.remote(), timeout=180)
    try:
        yield
    finally:
        ray.kill(holder)
    # with the CPUs back, an abandoned pipeline's next item lets its watcher close it and end
    watchers = [t for t in threading.enumerate() if t.name.startswith("birdray-watch-")]
    for thread in watchers:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in watchers)


def test_the_pending_report_never_starts_a_ray_of_its_own():
    """Asked before any Ray is connected (a proxy or job that failed early), the report says so:
    asking Ray's runtime context would start a local Ray, on the machine's address, as a side
    effect of writing an error message (it did, in a test process that then met another Ray)."""
    script = (
        "import ray\n"
        "from birdray.resources import pending_report\n"
        "print(pending_report())\n"
        "print(ray.is_initialized())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()
    assert out == ["(not connected to Ray)", "False"]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_stalled_scoring_pool_stops_with_rays_pending_demand(
    ray_cluster, tmp_path, capsys, cpus_back
):
    import ray

    from birdray.scoring.job import ScoreConfig, run_scoring
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg", seed=1)
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(6):
        Image.new("RGB", (48, 40), (40 * i, 90, 160)).save(photos / f"bird{i}.jpg")

    def cfg(out: str, **kw) -> ScoreConfig:
        return ScoreConfig(input=str(photos), output=str(tmp_path / out), model=str(package),
                           batch_size=2, preprocess_cpus=0.5, actor_cpus=1.0, **kw)  # fmt: skip

    idle_cpus = ray.available_resources().get("CPU", 0.0)
    # a pool larger than the cluster: capped, and the run finishes
    summary = run_scoring(cfg("capped", pool_size=16))
    assert summary["scored"] + summary["failed"] == 6
    assert "16 scoring actors" in capsys.readouterr().err

    # the plan fits, but another job holds all free CPUs but one: enough for building the
    # dataset (from_arrow's 1-CPU metadata tasks), not for decode tasks and the scoring actor
    # together, so no row ever comes: stop after the timeout, saying why
    # the capped pool's actors give their CPUs back asynchronously after the run returns
    cpus_back(idle_cpus, timeout_s=60)
    free = ray.available_resources().get("CPU", 0.0) - 1.0
    assert free > 0, ray.available_resources()

    with cpus_held(free):
        started = time.time()
        with pytest.raises(StallError, match=r"scoring: nothing for 8 s .*waiting for resources"):
            run_scoring(cfg("stalled", stall_timeout_s=8.0))
        assert time.time() - started < 120
        assert not (Path(tmp_path / "stalled") / "_SUCCESS").exists()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_an_ingest_that_gets_no_cpu_stops_with_rays_pending_demand(
    ray_cluster, synth_root, tmp_path
):
    import ray

    from birdray.data.ingest import IngestConfig, run_ingest

    out = tmp_path / "ds"
    # every CPU of the cluster: the holder starts once earlier tests' actors have given theirs
    # back (asynchronously), so none can free up under the ingest later (CI saw that happen)
    with cpus_held(ray.cluster_resources()["CPU"]):
        with pytest.raises(StallError, match=r"ingest: nothing for 6 s .*waiting for resources"):
            run_ingest(IngestConfig(source=str(synth_root), out=str(out), stall_timeout_s=6.0))
        assert not (out / "manifest.json").exists()
