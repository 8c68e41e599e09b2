"""Application metrics over real HTTP: requests through a real Serve app move the ``birdray_``
counters and histograms on Ray's own Prometheus endpoint by exactly the right amounts; the
Grafana dashboard only queries metrics that exist.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import requests

from birdray.serve.metrics import SPECS, exported_names, metrics_url
from tests.model_fixture import make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    post_images,
    random_rgb,
    scrape,
    small_app_args,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "cluster" / "grafana" / "birdray.json"
# Ray Serve's own metrics the dashboard shows next to birdray's (names as Ray 2.60 exports them)
RAY_METRICS = {"ray_serve_deployment_replica_healthy", "ray_serve_replica_processing_queries"}
KEY_ENV, KEY = "BIRDRAY_TEST_METRICS_KEY", "metrics-test-key"
APP = "metrics"


def total(samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over this app's series whose labels include ``labels``."""
    want = {"application": APP, **labels}
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in want.items())
    )


def bucket(samples, name: str, le: float, **labels: str) -> float:
    """A histogram bucket by its bound as a number (Ray may write ``1`` or ``1.0``)."""
    want = {"application": APP, **labels}
    return sum(
        v
        for n, lab, v in samples
        if n == name
        and float(lab.get("le", "nan")) == le
        and all(lab.get(k) == w for k, w in want.items())
    )


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_requests_move_metrics_on_rays_endpoint(serve_http, tmp_path):
    url_of_metrics = metrics_url()  # what the demo prints
    package = make_package(tmp_path / "pkg", num_classes=4, image_size=64)
    os.environ[KEY_ENV] = KEY
    args = small_app_args(
        str(package), api_key_env=KEY_ENV, max_upload_mb=0.05, feedback_dir=str(tmp_path / "fb")
    )
    auth = {"X-API-Key": KEY}
    good = [("ok.png", encode(random_rgb(i), "PNG"), "image/png") for i in range(5)]
    with deployed(serve_http, APP, **args) as url:
        replies = [post_images(url, [g], headers=auth) for g in good[:3]]
        replies.append(post_images(url, good[3:], headers=auth))  # two images, one request
        corrupt = encode(random_rgb(9), "PNG")[:200]
        bad = [
            post_images(url, [("cut.png", corrupt, "image/png")], headers=auth),
            post_images(url, [("cut2.png", corrupt, "image/png")], headers=auth),
            post_images(url, [("big.bin", os.urandom(80_000), "image/png")], headers=auth),
            post_images(url, good[:1]),  # no key
        ]
        assert [r.status_code for r in replies] == [200] * 4
        said = replies[0].json()["results"][0]
        answer = {
            "predicted": said["prediction"]["species"],
            "model_version": said["model_version"],
        }
        feedback = [
            requests.post(
                f"{url}/v1/feedback",
                files={"file": good[0][:2]},
                data={**answer, "species": species},
                headers=auth,
                timeout=60,
            ).status_code
            for species in (answer["predicted"], "Dodo")
        ]
        assert feedback == [200, 422]
        assert [r.status_code for r in bad] == [422, 422, 413, 401], [r.text for r in bad]
        results = [res for r in replies for res in r.json()["results"]]
        version = results[0]["model_version"]
        confidences = [res["prediction"]["confidence"] for res in results]
        predict = {"route": "/v1/predict"}
        expected = {
            ("ray_birdray_requests_total", (("status", "200"), ("code", "ok"))): 4,
            ("ray_birdray_requests_total", (("status", "422"), ("code", "corrupt_image"))): 2,
            ("ray_birdray_requests_total", (("status", "413"), ("code", "file_too_large"))): 1,
            ("ray_birdray_requests_total", (("status", "401"), ("code", "unauthorized"))): 1,
            ("ray_birdray_request_seconds_count", ()): 8,
            ("ray_birdray_upload_seconds_count", ()): 7,  # all but the 401 (refused before)
            ("ray_birdray_image_errors_total", (("code", "corrupt_image"),)): 2,
            ("ray_birdray_step_seconds_count", (("step", "total"),)): 5,
            ("ray_birdray_step_seconds_bucket", (("step", "decode"), ("le", "+Inf"))): 5,
            ("batched_images", ()): 5,  # every image in exactly one batch
            ("batches_over_2", ()): 0,
            ("ray_birdray_confidence_count", ()): 5,
            ("ray_birdray_confidence_bucket", (("le", "0.99"),)): sum(
                c <= 0.99 for c in confidences
            ),
            ("ray_birdray_low_confidence_total", ()): sum(c < 0.5 for c in confidences),
            ("ray_birdray_feedback_total", (("outcome", "confirmed"),)): 1,
            ("ray_birdray_feedback_total", (("outcome", "unknown_species"),)): 1,
        }
        versioned = {"step_seconds", "batch_size", "confidence", "low_confidence"}
        seen: dict = {}
        deadline = time.monotonic() + 120  # Ray exports every few seconds: wait, don't time
        while time.monotonic() < deadline:
            samples = scrape(url_of_metrics)
            batches = [
                bucket(samples, "ray_birdray_batch_size_bucket", le, model_version=version)
                for le in (1, 2, math.inf)
            ]
            # batches of 1 and of 2 (the two-image request may or may not share one); Ray's
            # histogram _sum is approximated from bucket midpoints, so count images from buckets
            seen[("batched_images", ())] = batches[0] + 2 * (batches[1] - batches[0])
            seen[("batches_over_2", ())] = batches[2] - batches[1]
            for (name, labels), _ in expected.items():
                if not name.startswith("ray_"):
                    continue
                tags = dict(labels)
                if "requests" in name or "upload" in name or "request_seconds" in name:
                    tags.update(predict)
                if any(f"birdray_{v}_" in name for v in versioned):
                    tags["model_version"] = version
                seen[(name, labels)] = total(samples, name, **tags)
            if seen == expected:
                break
            time.sleep(2)
        assert seen == expected


def test_grafana_dashboard_queries_exported_metrics():
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"]
    assert any(v.get("type") == "datasource" for v in board["templating"]["list"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    known = exported_names() | RAY_METRICS
    for expr in exprs:
        names = set(re.findall(r"\bray_[a-z_]+", expr))
        assert names and names <= known, (expr, names - known)
    used = {n for e in exprs for n in re.findall(r"\bray_birdray_[a-z_]+", e)}
    # every birdray metric family shows on the board
    assert {s.name for s in SPECS.values()} <= {
        n.removeprefix("ray_").removesuffix(sfx)
        for n in used
        for sfx in ("_total", "_bucket", "_count", "_sum")
        if n.endswith(sfx)
    }


class Failing:
    """A service whose model lookup crashes (a bug, not a refusal)."""

    async def model_info(self):
        raise RuntimeError("boom")


def test_recorder_sees_crashes_and_unknown_paths_with_bounded_routes():
    from fastapi.testclient import TestClient

    from birdray.serve.api import create_api
    from birdray.serve.uploads import Limits

    seen: list[tuple[str, int, str]] = []

    class Recorder:
        def request(self, route, status, code, seconds):
            seen.append((route, status, code))

        def upload(self, route, seconds):
            pass

    client = TestClient(
        create_api(Failing(), Limits(1000, 1000, 1, 1000, 2.0), api_key="k", recorder=Recorder()),
        raise_server_exceptions=False,
    )
    assert client.get("/v1/model", headers={"X-API-Key": "k"}).status_code == 500
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/predict?top_k=0", headers={"X-API-Key": "k"}).status_code == 405
    assert client.get("/scan/../../etc/passwd").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert seen == [
        ("/v1/model", 500, "internal_error"),
        ("/v1/model", 401, "unauthorized"),
        ("/v1/predict", 405, "method_not_allowed"),
        ("unmatched", 404, "not_found"),
        ("/healthz", 200, "ok"),
    ]


def score_rows(url: str) -> dict[tuple[str, str], float]:
    return {
        (lab["model_version"], lab["outcome"]): v
        for n, lab, v in scrape(url)
        if n == "ray_birdray_score_rows_total"
    }


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_batch_scoring_counts_rows_by_outcome_on_rays_endpoint(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    from birdray.scoring.job import ScoreConfig, run_scoring

    url = metrics_url()
    before = score_rows(url)
    package = make_package(tmp_path / "pkg", num_classes=4, image_size=64, seed=11)
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(3):
        (photos / f"ok{i}.png").write_bytes(encode(random_rgb(i), "PNG"))
    (photos / "cut.png").write_bytes(encode(random_rgb(7), "PNG")[:200])
    (photos / "notes.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    cfg = ScoreConfig(input=str(photos), output=str(out), model=str(package), batch_size=4)
    run_scoring(cfg)
    rows = pq.read_table(out / "predictions").to_pylist()
    expected: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["model_version"], (row["error"] or "ok").split(":", 1)[0])
        expected[key] = expected.get(key, 0) + 1
    assert sum(expected.values()) == 5 and len(expected) >= 2
    deadline = time.monotonic() + 120  # Ray exports every few seconds: wait, don't time
    while True:
        after = score_rows(url)
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in expected}
        if moved == expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert moved == expected


def test_a_client_that_goes_away_is_counted_as_cancelled_not_as_a_crash():
    import asyncio

    from birdray.serve.api import create_api
    from birdray.serve.uploads import Limits

    seen: list[tuple[str, int, str]] = []

    class Recorder:
        def request(self, route, status, code, seconds):
            seen.append((route, status, code))

        def upload(self, route, seconds):
            pass

    class Hanging:
        async def model_info(self):
            await asyncio.sleep(3600)

    app = create_api(Hanging(), Limits(1000, 1000, 1, 1000, 2.0), recorder=Recorder())
    scope = {"type": "http", "method": "GET", "path": "/v1/model", "raw_path": b"/v1/model",
             "root_path": "", "query_string": b"", "headers": [], "scheme": "http",
             "http_version": "1.1", "asgi": {"version": "3.0"}}  # fmt: skip

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        pass

    async def go():
        task = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.2)
        task.cancel()  # what Serve does when the HTTP client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert seen == [("/v1/model", 499, "cancelled")]
