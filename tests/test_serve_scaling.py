"""Serve under load: batching batches, replicas autoscale on (logical) GPUs, swaps drop nothing.

Timing figures are printed (run with ``-s`` to see them); the assertions are about behaviour:
fewer model calls than images, replica counts going up and down, zero failed requests.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import requests
from ray import serve

from birdray.registry import promote, register
from birdray.serve.job import start_local
from tests.model_fixture import make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    load,
    post_images,
    random_rgb,
    ready_version,
    small_app_args,
    wait_for,
)

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("serve_scaling") / "pkg", num_classes=4)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two registered versions (different weights); production -> v0001."""
    root = tmp_path_factory.mktemp("serve_registry")
    for seed in (0, 1):
        register(str(root / "reg"), make_package(root / f"pkg{seed}", num_classes=4, seed=seed))
    promote(str(root / "reg"), "v0001")
    return str(root / "reg")


def classifier(app: str):
    return serve.get_deployment_handle("BirdClassifier", app_name=app)


def running_replicas(app: str, deployment: str = "BirdClassifier") -> int:
    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


@pytest.mark.timeout(300)
def test_concurrent_requests_are_served_in_fewer_model_calls(serve_http, package):
    args = small_app_args(str(package), max_batch_size=8, batch_wait_timeout_s=0.25)
    with deployed(serve_http, "batching", **args) as url:
        data = encode(random_rgb(31), "PNG")
        before = classifier("batching").stats.remote().result()
        # one request with four files: the ingress sends them concurrently -> one batch
        resp = post_images(url, [(f"{i}.png", data, "image/png") for i in range(4)])
        assert resp.status_code == 200 and all(r["ok"] for r in resp.json()["results"])
        mid = classifier("batching").stats.remote().result()
        assert mid["items"] - before["items"] == 4
        assert mid["calls"] - before["calls"] <= 2
        # a lone image does not sit out batch_wait_timeout_s (0.25 s) waiting for nobody
        lone = post_images(url, [("one.png", data, "image/png")]).json()["results"][0]
        assert lone["ok"] and lone["timing_ms"]["queue_and_model"] < 250, lone["timing_ms"]
        mid = classifier("batching").stats.remote().result()
        # sixteen concurrent single-image requests
        with ThreadPoolExecutor(16) as pool:
            codes = list(
                pool.map(
                    lambda _: post_images(url, [("x.png", data, "image/png")]).status_code,
                    range(16),
                )
            )
        assert codes == [200] * 16
        after = classifier("batching").stats.remote().result()
        items, calls = after["items"] - mid["items"], after["calls"] - mid["calls"]
        print(
            f"\nbatching: {items} images in {calls} model calls, largest {after['largest_batch']}"
        )
        assert items == 16
        assert calls <= 8  # batched: at least two images per call on average
        assert after["largest_batch"] >= 4
        assert after["max_batch_size"] == 8 and after["batch_wait_timeout_s"] == 0.25


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_autoscaling_on_logical_gpus(ray_cluster, serve_http, package):
    gpu_node = ray_cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    try:
        args = small_app_args(
            str(package), num_gpus=0.5, min_replicas=1, max_replicas=3,
            target_ongoing_requests=1, upscale_delay_s=0.5, downscale_delay_s=3,
            metrics_interval_s=0.2, look_back_period_s=1.0,
            max_batch_size=4, batch_wait_timeout_s=0.05,
        )  # fmt: skip
        with deployed(serve_http, "autoscale", **args) as url:
            assert running_replicas("autoscale") == 1
            assert ray.available_resources().get("GPU", 0) == pytest.approx(1.5)
            stop = threading.Event()
            data = encode(random_rgb(32), "PNG")
            loader = threading.Thread(target=load, args=(url, data, 12), kwargs={"stop": stop})
            loader.start()
            try:
                peak = 0

                def scaled_up() -> bool:
                    nonlocal peak
                    peak = max(peak, running_replicas("autoscale"))
                    return peak >= 2

                assert wait_for(scaled_up, timeout_s=120), "no upscale under sustained load"
                used_gpu = 2 - ray.available_resources().get("GPU", 0)
                assert used_gpu >= 1.0  # each replica holds half a (logical) GPU
                stats = classifier("autoscale").stats.remote().result()
                assert stats["device"] == "cpu"  # no CUDA on this machine: fell back to CPU
            finally:
                stop.set()
                loader.join()
            assert wait_for(lambda: running_replicas("autoscale") == 1, timeout_s=120), (
                "no downscale after the load stopped"
            )
            print(f"\nautoscaling: 1 -> {peak} -> 1 replicas (GPU held at peak {used_gpu})")
    finally:
        ray_cluster.remove_node(gpu_node)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bounded_load_run_has_no_errors(serve_http, package):
    args = small_app_args(str(package), model_num_cpus=0.5, max_batch_size=16)
    with deployed(serve_http, "load", **args) as url:
        data = encode(random_rgb(33, (160, 120)), "JPEG")
        single = load(url, data, concurrency=1, requests_total=100)
        run = load(url, data, concurrency=16, requests_total=1000)
        stats = classifier("load").stats.remote().result()
    print(
        f"\none-image requests, concurrency 1: p50 {single.percentile_ms(50):.1f} ms, "
        f"p99 {single.percentile_ms(99):.1f} ms"
        f"\n1000 requests at concurrency 16: {len(run.latencies_s) / run.wall_s:.1f} req/s, "
        f"p50 {run.percentile_ms(50):.1f} ms, p99 {run.percentile_ms(99):.1f} ms, "
        f"mean batch {stats['items'] / max(1, stats['calls']):.1f}"
    )
    assert single.errors == [] and run.errors == []
    assert len(run.latencies_s) == 1000


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_model_swap_under_load_drops_nothing(serve_http, registry):
    port = int(serve_http.rsplit(":", 1)[1])
    args = small_app_args("production", registry=registry)
    args.pop("model")
    local = start_local(
        "production", port=port, name="swap", route_prefix="/swap", ready_timeout_s=120, **args
    )
    try:
        assert local.model_version == "v0001"
        stop = threading.Event()
        data = encode(random_rgb(34), "PNG")
        results = {}
        loader = threading.Thread(
            target=lambda: results.setdefault("run", load(local.url, data, 4, stop=stop))
        )
        loader.start()
        try:
            time.sleep(2)
            assert local.swap("v0002") == "v0002"
            time.sleep(2)
        finally:
            stop.set()
            loader.join()
        run = results["run"]
        print(f"\nswap (redeploy) under load: {len(run.versions)} ok, {len(run.errors)} failed")
        assert run.errors == []
        assert run.versions[0] == "v0001" and run.versions[-1] == "v0002"
        assert {"v0001", "v0002"} == set(run.versions)
        model = requests.get(f"{local.url}/v1/model", timeout=10).json()
        assert model["version"] == "v0002"
    finally:
        local.stop()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_config_update_swaps_model_in_place_under_load(serve_http, registry):
    """``serve deploy`` with a new ``user_config.model``: reconfigure(), no replica restart."""
    from ray.serve.context import _get_global_client  # what `serve deploy` reaches via REST
    from ray.serve.schema import ServeDeploySchema

    def config(version: str, batch: int) -> ServeDeploySchema:
        app_args = small_app_args(version, registry=registry)
        user_config = {
            "model": version, "registry": registry,
            "max_batch_size": batch, "batch_wait_timeout_s": 0.01,
        }  # fmt: skip
        return ServeDeploySchema.model_validate({"applications": [{
            "name": "inplace", "route_prefix": "/inplace",
            "import_path": "birdray.serve.app:build_app",
            "args": {**app_args, "model": "v0001"},  # args unchanged: same code version
            "deployments": [{"name": "BirdClassifier", "user_config": user_config}],
        }]})  # fmt: skip

    client = _get_global_client()
    url = f"{serve_http}/inplace"
    client.deploy_apps(config("v0001", 8))  # its _blocking wait is a fixed 60 s: poll instead
    try:
        assert wait_for(lambda: ready_version(url) == "v0001", timeout_s=240)
        stop = threading.Event()
        data = encode(random_rgb(35), "PNG")
        results = {}
        loader = threading.Thread(
            target=lambda: results.setdefault("run", load(url, data, 4, stop=stop))
        )
        loader.start()
        try:
            time.sleep(2)
            client.deploy_apps(config("v0002", 2))
            assert wait_for(lambda: ready_version(url) == "v0002", timeout_s=120)
            time.sleep(2)
        finally:
            stop.set()
            loader.join()
        run = results["run"]
        print(f"\nin-place swap under load: {len(run.versions)} ok, {len(run.errors)} failed")
        assert run.errors == []
        assert run.versions[0] == "v0001" and run.versions[-1] == "v0002"
        stats = classifier("inplace").stats.remote().result()
        assert stats["swaps"] == 2  # the same replica loaded both models: no restart
        assert stats["max_batch_size"] == 2  # batch knobs applied through reconfigure too
    finally:
        serve.delete("inplace")
