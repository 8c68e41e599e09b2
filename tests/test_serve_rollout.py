"""Shadow and canary rollout over real HTTP: shares hold, clients stay on one model, shadow
agreement reaches Ray's metrics endpoint, and share changes, promote and rollback under load
drop nothing (``serve deploy`` of new ``user_config`` values: reconfigure, no restarts).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from ray.serve.context import _get_global_client  # what `serve deploy` reaches via REST
from ray.serve.schema import ServeDeploySchema

from birdray.registry import RegistryConfig, promote, register, run_registry, set_alias
from birdray.serve.api import VERSION_HEADER
from birdray.serve.app import live_user_configs
from birdray.serve.metrics import metrics_url
from birdray.serve.rollout import client_point
from tests.model_fixture import make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    load,
    random_rgb,
    scrape,
    small_app_args,
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """v0001 is production, v0002 the candidate (same arch, other weights); v0003 has v0001's
    weights with a higher temperature: the same top-1 always, lower confidence."""
    root = tmp_path_factory.mktemp("rollout")
    reg = str(root / "reg")
    for seed in (0, 1):
        register(reg, make_package(root / f"pkg{seed}", num_classes=4, seed=seed))
    register(reg, make_package(root / "pkg0t", num_classes=4, seed=0, temperature=3.0))
    promote(reg, "v0001")
    set_alias(reg, "candidate", "v0002")
    return reg


# --- no cluster: the rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rollout": "canary"}, "needs a candidate"),
        ({"rollout": "blue-green", "candidate": "candidate"}, "rollout must be one of"),
        ({"rollout": "shadow", "candidate": "candidate", "rollout_share": 1.5}, "between 0 and 1"),
    ],
)
def test_a_rollout_that_cannot_be_served_is_refused_before_anything_starts(
    registry, changes, message
):
    from birdray.serve.app import build_app

    with pytest.raises(ValueError, match=message):
        build_app({"registry": registry, **changes})


def test_canary_shares_are_monotone_per_client_and_shadow_only_copies():
    from birdray.serve.rollout import Rollout

    canary = Rollout("canary", 0.2, has_candidate=True)
    clients = [f"c{i}" for i in range(200)]
    first = {c for c in clients if canary.answering(c) == "candidate"}
    canary.reconfigure({"rollout_share": 0.6})  # mode kept: absent keys stay
    later = {c for c in clients if canary.answering(c) == "candidate"}
    assert first < later  # raising the share only moves more clients over
    assert len(first) == sum(client_point(c) < 0.2 for c in clients)
    shadow = Rollout("shadow", 1.0, has_candidate=True)
    assert {shadow.answering(c) for c in clients} == {"production"} and shadow.shadowed()
    with pytest.raises(ValueError):
        canary.reconfigure({"rollout_share": -0.1})
    assert (canary.mode, canary.share) == ("canary", 0.6)  # a refused update changes nothing


def test_live_user_configs_pin_aliases_to_versions(registry):
    args = rollout_args(registry, "shadow", 0.25, max_batch_size=4)
    configs = live_user_configs(args)
    assert configs["BirdIngress"] == {"rollout": "shadow", "rollout_share": 0.25}
    assert configs["BirdClassifier"]["model"] == "v0001"
    assert configs["CandidateClassifier"]["model"] == "v0002"
    assert configs["BirdClassifier"]["max_batch_size"] == 4


# --- over real HTTP ----------------------------------------------------------------------------


def rollout_args(registry: str, mode: str, share: float, **more) -> dict:
    args = small_app_args("production", registry=registry, feedback_dir="")
    return {**args, "candidate": "candidate", "rollout": mode, "rollout_share": share, **more}


def predict(url: str, data: bytes, client: str | None = None) -> requests.Response:
    headers = {"X-Client-Key": client} if client else {}
    return requests.post(
        f"{url}/v1/predict", files={"files": ("b.png", data, "image/png")}, headers=headers,
        timeout=60,
    )  # fmt: skip


def answered_by(resp: requests.Response) -> str:
    """The version that answered, said three times the same way (header, model, result)."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    version = resp.headers[VERSION_HEADER]
    assert body["model"]["version"] == version == body["results"][0]["model_version"]
    return version


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_canary_share_and_sticky_clients(serve_http, registry):
    share = 0.3
    with deployed(serve_http, "canary", **rollout_args(registry, "canary", share)) as url:
        data = encode(random_rgb(40), "PNG")
        run = load(url, data, concurrency=4, requests_total=300)
        assert run.errors == []
        on_candidate = run.versions.count("v0002") / len(run.versions)
        print(f"\ncanary {share:.0%}: {on_candidate:.1%} of 300 requests answered by v0002")
        assert abs(on_candidate - share) < 0.1  # ~3.8 standard deviations of a binomial
        assert set(run.versions) == {"v0001", "v0002"}
        # sticky: a client key always lands on one model, the one its hash places it on
        clients = [f"client-{i}" for i in range(12)]
        for client in clients:
            seen = {answered_by(predict(url, data, client)) for _ in range(3)}
            expected = "v0002" if client_point(client) < share else "v0001"
            assert seen == {expected}, client
        state = requests.get(f"{url}/v1/rollout", timeout=10).json()
        assert (state["mode"], state["share"]) == ("canary", share)
        assert state["versions"] == {"production": "v0001", "candidate": "v0002"}
        answered = {v: r["requests"] for v, r in state["answered"].items()}
        assert sum(answered.values()) == 300 + 3 * len(clients)
        assert state["answered"]["v0002"]["role"] == "candidate"


def summed(samples, name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())
    )


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_shadow_answers_from_production_and_records_agreement(serve_http, registry):
    images = [encode(random_rgb(50 + i), "PNG") for i in range(20)]
    app = {"application": "shadow"}
    args = rollout_args(registry, "shadow", 1.0, candidate="v0003")  # v0001, less sure
    with deployed(serve_http, "shadow", **args) as url:
        versions = [answered_by(predict(url, data)) for data in images]
        assert versions == ["v0001"] * len(images)  # production answers every request

        def rollout() -> dict:
            return requests.get(f"{url}/v1/rollout", timeout=10).json()

        deadline = time.monotonic() + 60  # the shadow calls finish after their responses
        while time.monotonic() < deadline and not rollout()["shadow"]:
            time.sleep(0.5)
        while time.monotonic() < deadline and rollout()["shadow"][0]["compared"] < len(images):
            time.sleep(0.5)
        (pair,) = rollout()["shadow"]
        assert (pair["production"], pair["candidate"]) == ("v0001", "v0003")
        assert (pair["compared"], pair["failed"]) == (len(images), 0)
        assert pair["agreement"] == 1.0  # the same weights: the same top-1 every time
        assert pair["mean_confidence_delta"] < 0  # a higher temperature: less confident
        assert sum(rollout()["shadow_confidence"]["v0003"]) == len(images)
        print(
            f"\nshadow: {pair['agreed']}/{pair['compared']} same top-1, "
            f"mean confidence delta {pair['mean_confidence_delta']:+.3f}"
        )
        expected = {
            "agree": pair["agreed"],
            "disagree": len(images) - pair["agreed"],
            "delta": len(images),
            "candidate_confidence": len(images),
        }
        pair_tags = {"production_version": "v0001", "candidate_version": "v0003", **app}
        seen: dict = {}
        deadline = time.monotonic() + 120  # Ray exports every few seconds: wait, don't time
        while time.monotonic() < deadline:
            samples = scrape(metrics_url())
            for outcome in ("agree", "disagree"):
                seen[outcome] = summed(
                    samples, "ray_birdray_shadow_comparisons_total", outcome=outcome, **pair_tags
                )
            seen["delta"] = summed(
                samples, "ray_birdray_shadow_confidence_delta_count", **pair_tags
            )
            seen["candidate_confidence"] = summed(
                samples, "ray_birdray_confidence_count", model_version="v0003", **app
            )
            if seen == expected:
                break
            time.sleep(2)
        assert seen == expected


def serve_config(name: str, args: dict, user_configs: dict) -> ServeDeploySchema:
    """The Serve config an operator would ``serve deploy``: same builder args (same code
    version), only the deployments' ``user_config`` changing."""
    return ServeDeploySchema.model_validate(
        {"applications": [{
            "name": name, "route_prefix": f"/{name}",
            "import_path": "birdray.serve.app:build_app", "args": args,
            "deployments": [{"name": d, "user_config": c} for d, c in user_configs.items()],
        }]}
    )  # fmt: skip


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except requests.RequestException:  # not up yet
            pass
        time.sleep(0.5)
    return False


class Traffic:
    """Four client threads posting until stopped; what they saw, for zero-drop assertions."""

    def __init__(self, url: str):
        self.stop, self.results = threading.Event(), {}
        data = encode(random_rgb(60), "PNG")
        self.thread = threading.Thread(
            target=lambda: self.results.setdefault("run", load(url, data, 4, stop=self.stop))
        )

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def recent_versions(url: str, n: int = 12) -> set[str]:
    data = encode(random_rgb(61), "PNG")
    return {answered_by(predict(url, data)) for _ in range(n)}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_live_share_change_promote_and_rollback_under_load_drop_nothing(
    serve_http,
    registry,
):
    """Canary 0 -> 100% -> 50% through the ingress's user_config, then ``registry promote
    candidate`` and ``rollback`` followed through the classifier's: all while clients post."""
    name, client = "live", _get_global_client()
    url = f"{serve_http}/{name}"
    args = rollout_args(registry, "canary", 0.0, batch_wait_timeout_s=0.01)

    def deploy(**changes) -> None:
        client.deploy_apps(serve_config(name, args, live_user_configs({**args, **changes})))

    deploy()  # its _blocking wait is a fixed 60 s: poll instead
    try:
        assert wait_for(lambda: requests.get(f"{url}/readyz", timeout=5).ok, 240)
        assert recent_versions(url) == {"v0001"}
        with Traffic(url) as traffic:
            time.sleep(2)
            deploy(rollout_share=1.0)  # live: every request to the candidate
            assert wait_for(lambda: recent_versions(url) == {"v0002"}, 120)
            deploy(rollout_share=0.5)
            assert wait_for(lambda: recent_versions(url, 30) == {"v0001", "v0002"}, 120)
            # promote: production takes the candidate's version; the rollout ends
            run_registry(RegistryConfig(action="promote", args=["candidate"], registry=registry))
            deploy(rollout="off")  # production pinned anew: v0002
            assert wait_for(lambda: recent_versions(url) == {"v0002"}, 120)
            state = requests.get(f"{url}/v1/rollout", timeout=10).json()
            assert state["mode"] == "off" and state["versions"]["production"] == "v0002"
            run_registry(RegistryConfig(action="rollback", registry=registry))
            deploy(rollout="off")  # production pinned anew: v0001 again
            assert wait_for(lambda: recent_versions(url) == {"v0001"}, 120)
            time.sleep(2)
        run = traffic.results["run"]
        print(f"\nlive rollout changes under load: {len(run.versions)} ok, {len(run.errors)} lost")
        assert run.errors == []
        assert {"v0001", "v0002"} <= set(run.versions)
        assert run.versions[-1] == "v0001"
        state = requests.get(f"{url}/v1/rollout", timeout=10).json()
        # one ingress replica counted everything: reconfigured in place, never restarted
        answered = sum(r["requests"] for r in state["answered"].values())
        assert answered >= len(run.versions)
    finally:
        from ray import serve

        serve.delete(name)
        promote(registry, "v0001")  # leave the module's registry as it was


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_shadow_stage_with_a_candidate_that_preprocesses_differently(
    serve_http,
    tmp_path,
):
    """The demo's serve stage: its other model shadows production and the agreement it
    measured is printed. Its two models may differ in preprocessing (another arch or image
    size): the ingress prepares each image once per data config."""
    from pathlib import Path

    from birdray.demo_stages import shadow_args
    from birdray.registry import read_aliases
    from birdray.serve.job import shadow_agreement

    reg = str(tmp_path / "reg")
    register(reg, make_package(tmp_path / "a", num_classes=4, image_size=64, seed=0))
    assert shadow_args(Path(reg), "v0001") == {}  # one model: nothing to shadow
    register(reg, make_package(tmp_path / "b", num_classes=4, image_size=80, seed=2))
    promote(reg, "v0001")
    args = shadow_args(Path(reg), "v0001")
    assert args == {"candidate": "candidate", "rollout": "shadow", "rollout_share": 1.0}
    assert read_aliases(reg)["candidate"]["version"] == "v0002"
    app_args = {**small_app_args("production", registry=reg, feedback_dir=""), **args}
    with deployed(serve_http, "demoshadow", **app_args) as url:
        for i in range(5):
            assert answered_by(predict(url, encode(random_rgb(80 + i), "PNG"))) == "v0001"
        line = shadow_agreement(url)
    print(f"\n{line}")
    assert line.startswith("v0002 agreed with production v0001 on ")
    assert " of 5 images (" in line


# --- a swap on the user's 2-CPU Ray, with the real default replica sizes -------------------------

SWAP_DRIVER = """
import json, sys, threading, time
import requests
import birdray.serve.job as job
from birdray.serve.job import start_local

registry, port = sys.argv[1], int(sys.argv[2])
# what a user types: defaults (colocated ingress+model 1.5 CPU, explainer 0.5 CPU) on 2 CPUs
srv = start_local(model="v0001", registry=registry, port=port, num_cpus=2)
answers, stop = [], threading.Event()

def post():
    with requests.Session() as session:
        while not stop.is_set():
            start = time.monotonic()
            try:
                resp = session.post(srv.url + "/v1/predict", timeout=60,
                                    files={"files": ("b.png", IMAGE, "image/png")})
                answers.append([resp.status_code, resp.headers.get("x-model-version"),
                                round(time.monotonic() - start, 2)])
            except Exception as exc:
                answers.append(["error", repr(exc)[:200], round(time.monotonic() - start, 2)])
            time.sleep(0.1)

IMAGE = bytes.fromhex(sys.argv[3])
loader = threading.Thread(target=post, daemon=True)
loader.start()
time.sleep(1)
out = {}
started = time.monotonic()
try:
    out["swapped"] = srv.swap("v0002", timeout_s=90)
except Exception as exc:
    out["swap_error"] = f"{type(exc).__name__}: {exc}"
out["swap_s"] = round(time.monotonic() - started, 1)
time.sleep(1)
out["answers"] = list(answers)
# the bound itself: a plan that wrongly lets the surge through must not block forever
job.plan_redeploy = lambda *args: 100
started = time.monotonic()
try:
    srv.swap("v0001", timeout_s=8)
    out["bounded"] = "returned"
except Exception as exc:
    out["bounded"] = f"{type(exc).__name__}: {exc}"
out["bounded_s"] = round(time.monotonic() - started, 1)
time.sleep(1)
stop.set()
loader.join(70)
out["answers_after"] = answers[len(out["answers"]):]
print("SWAP-RESULT", json.dumps(out), flush=True)
"""


@pytest.mark.slow  # its own 2-CPU Ray in a subprocess, as the user starts it
@pytest.mark.timeout(360)
def test_swap_on_a_2_cpu_ray_with_default_sizes_replaces_in_place_and_is_bounded(registry):
    """Defaults on 2 CPUs hold all of them (1.5 + 0.5): the surge replicas can never be
    scheduled, so the swap says so and replaces in place (Serve holds requests meanwhile)
    instead of waiting forever; and a redeploy that cannot finish ends at its timeout."""
    import json
    import os
    import subprocess
    import sys

    from birdray.runtime import free_port

    image = encode(random_rgb(71), "PNG").hex()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SWAP_DRIVER, registry, str(free_port()), image],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SWAP-RESULT ")]
    assert lines, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = json.loads(lines[-1].split(" ", 1)[1])
    said = [ln for ln in proc.stderr.splitlines() if "birdray: resources: redeploy" in ln]
    print(f"\nswap {out['swap_s']} s; {said}\nbounded {out['bounded_s']} s: {out['bounded']}")
    assert out.get("swapped") == "v0002", out.get("swap_error")
    assert out["swap_s"] < 90  # its timeout_s: it did not end by timing out
    # one line, with the numbers: what the surge needs, what is free, what is done instead
    assert len(said) == 1 and "needs 2 CPU" in said[0] and "0 CPU and 0 GPU free" in said[0]
    assert "replaced in place" in said[0]
    answers = out["answers"]
    assert answers and all(a[0] == 200 for a in answers), answers
    versions = [a[1] for a in answers]
    assert versions[0] == "v0001" and versions[-1] == "v0002"
    assert max(a[2] for a in answers) < 50  # held while replaced, within request_timeout_s
    # the bound: ends at its timeout naming what waits, while the old replicas keep answering
    assert out["bounded"].startswith("TimeoutError"), out["bounded"]
    assert "not (re)deployed after 8 s" in out["bounded"] and "CPU" in out["bounded"]
    assert out["bounded_s"] < 20
    after = out["answers_after"]
    assert after and all(a[0] == 200 and a[1] == "v0002" for a in after), after
