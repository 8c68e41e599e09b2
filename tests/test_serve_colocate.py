"""``colocate``: the model inside the ingress's process (one Ray hop less), and when it applies."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from ray import serve

from birdray.model.crop import decode_for_model
from birdray.model.inference import Predictor
from birdray.registry.ref import ModelRef
from birdray.resources import ResourceError
from birdray.serve.app import build_app, live_user_configs
from birdray.serve.args import AppArgs, colocated
from birdray.serve.fit import plan_serve
from birdray.serve.job import ServeConfig
from tests.serve_fixtures import (
    encode,
    load,
    post_images,
    random_rgb,
    ready_version,
    small_app_args,
    wait_for,
)


@pytest.fixture
def registry(two_version_registry):
    return two_version_registry


def test_auto_colocates_unless_a_candidate_or_model_autoscaling_needs_the_deployment():
    assert colocated(ServeConfig())  # `birdray serve` on one machine: one hop less
    assert not colocated(AppArgs())  # a config file keeps its BirdClassifier deployment
    auto = {"colocate": "auto"}
    assert not colocated(AppArgs(**auto, candidate="v0002"))
    assert not colocated(AppArgs(**auto, min_replicas=1, max_replicas=3))
    assert not colocated(AppArgs(**auto, min_replicas=2, max_replicas=2))
    assert colocated(AppArgs(colocate="on"))


def test_colocate_on_refuses_what_needs_a_model_deployment(registry):
    with pytest.raises(ValueError, match="candidate needs colocate=off"):
        build_app({"registry": registry, "colocate": "on", "candidate": "v0002"})
    for replicas in ({"max_replicas": 2}, {"min_replicas": 2, "max_replicas": 2}):
        with pytest.raises(ValueError, match="one model in each ingress replica"):
            build_app({"registry": registry, "colocate": "on", **replicas})
    with pytest.raises(ValueError, match="colocate must be one of on, off, auto"):
        build_app({"registry": registry, "colocate": "yes"})


def test_colocated_live_config_and_resource_plan_name_the_ingress(registry):
    configs = live_user_configs({"registry": registry, "colocate": "on", "max_batch_size": 4})
    assert set(configs) == {"BirdIngress", "BirdExplainer"}
    assert configs["BirdIngress"]["model"] == "v0001"  # production, pinned
    assert configs["BirdIngress"]["max_batch_size"] == 4
    args = {"colocate": "on", "model_num_cpus": 1.0, "ingress_num_cpus": 0.5, "explain": False}
    plan_serve(args, {"CPU": 1.5})  # one replica holding both: 1.5 CPU fits
    with pytest.raises(ResourceError, match="1 ingress with the model x 1.5 CPU"):
        plan_serve({**args, "ingress_replicas": 1}, {"CPU": 1.0})


def _deployments(app: str) -> set[str]:
    return set(serve.status().applications[app].deployments)


def _ingress_actors() -> set[str]:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.actor_id for a in alive if "BirdIngress" in a.class_name}


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_colocated_app_answers_as_the_direct_model_batches_and_swaps_in_place(serve_http, registry):
    """No BirdClassifier deployment, the direct model's answer (and the explainer's), concurrent
    requests batched inside the ingress, and a ``user_config`` model swap with no restart."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def config(version: str) -> ServeDeploySchema:
        # explain on, as `birdray serve` runs by default: the explainer stays a deployment
        args = small_app_args(
            "v0001", registry=registry, colocate="on", explain=True, explain_num_cpus=0.25
        )
        user_config = {"model": version, "registry": registry, "max_batch_size": 8,
                       "batch_wait_timeout_s": 0.05, "rollout": "off"}  # fmt: skip
        return ServeDeploySchema.model_validate({"applications": [{
            "name": "colocated", "route_prefix": "/colocated",
            "import_path": "birdray.serve.app:build_app", "args": args,
            "deployments": [{"name": "BirdIngress", "user_config": user_config}],
        }]})  # fmt: skip

    client, url = _get_global_client(), f"{serve_http}/colocated"
    before = _ingress_actors()
    client.deploy_apps(config("v0001"))
    try:
        assert wait_for(lambda: ready_version(url) == "v0001", timeout_s=240)
        assert _deployments("colocated") == {"BirdIngress", "BirdExplainer"}
        data = encode(random_rgb(11, (640, 480)), "JPEG", quality=90)
        body = post_images(url, [("a.jpg", data, "image/jpeg")], top_k=3).json()
        (result,) = body["results"]
        direct = Predictor(str(ModelRef("v0001", registry).resolve()), num_threads=1)
        image = decode_for_model(data, direct.metadata.data_config).image
        want = direct.predict_images([image], top_k=3)[0]
        assert result["prediction"]["label"] == want.label
        assert result["prediction"]["confidence"] == pytest.approx(want.confidence, abs=1e-5)
        assert [t["label"] for t in result["top_k"]] == [t["label"] for t in want.top_k]
        np.testing.assert_allclose(
            [t["probability"] for t in result["top_k"]],
            [t["probability"] for t in want.top_k],
            atol=1e-5,
        )
        files = {"file": ("a.jpg", data, "image/jpeg")}
        explained = requests.post(f"{url}/v1/explain?method=gradcam", files=files, timeout=120)
        assert explained.status_code == 200, explained.text
        assert explained.json()["prediction"]["confidence"] == pytest.approx(
            result["prediction"]["confidence"], abs=1e-5
        )
        run = load(url, encode(random_rgb(12), "PNG"), concurrency=8, requests_total=32)
        assert run.errors == [] and set(run.versions) == {"v0001"}
        replica = _ingress_actors() - before
        assert len(replica) == 1
        ingress = serve.get_deployment_handle("BirdIngress", app_name="colocated")
        stats = ingress.model_stats.remote().result()
        assert stats["items"] == 33 and 1 < stats["largest_batch"] <= 8  # batched in-process

        client.deploy_apps(config("v0002"))  # a config edit: reconfigure(), no restart
        assert wait_for(lambda: ready_version(url) == "v0002", timeout_s=120)
        assert _ingress_actors() - before == replica  # the same process loaded v0002
        stats = ingress.model_stats.remote().result()
        assert stats["swaps"] == 2 and stats["version"] == "v0002"
        run = load(url, encode(random_rgb(13), "PNG"), concurrency=4, requests_total=8)
        assert run.errors == [] and set(run.versions) == {"v0002"}
    finally:
        serve.delete("colocated")
