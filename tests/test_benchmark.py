"""The benchmark harness works end to end, peers included (tiny sizes; no timing asserted)."""

from __future__ import annotations

import json

import pytest

from birdray.benchmark import BenchmarkConfig, run_benchmark
from birdray.benchmark.gpu import run as gpu_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(1500)  # peers add a FastAPI start and two DataLoader runs
def test_benchmark_smoke_writes_every_stage(ray_cluster, tmp_path):
    result = run_benchmark(BenchmarkConfig(stage="all", out=str(tmp_path), smoke=True))
    data = json.loads(open(result["results"]).read())
    stages = {r["stage"] for r in data["rows"]}
    assert stages == {"ingest", "train", "score", "serve", "explain"}
    assert data["machine"]["cores"] >= 1
    for r in data["rows"]:
        assert r["value"] > 0 or r["stage"] == "serve"  # serve overhead may be ~0
        if r["baseline"]:
            assert r["ratio"] == pytest.approx(r["value"] / r["baseline"])
    table = open(result["table"]).read()
    assert "| ingest |" in table and "| serve |" in table
    assert "| peer | ratio vs peer |" in table
    # every stage with a plain-tool peer carries it, measured in the same run
    peers = {(r["stage"], r["metric"]): r for r in data["rows"] if r.get("peer") is not None}
    wanted = [
        ("ingest", "seconds for"),
        ("train", "images/s, batch 2 (last epoch)"),
        ("train", "wall seconds for 1 epochs"),
        ("train", "fixed seconds outside the epochs"),
        ("score", "folder images/s, whole command"),
        ("score", "folder images/s, steady state"),
        ("score", "folder seconds until the first results"),
        ("serve", "start until ready"),
        *[
            ("serve", f"{q} at concurrency {c}")
            for c in (1, 4)
            for q in ("req/s", "p50 latency", "p99 latency")
        ],
    ]
    for stage, text in wanted:
        found = [r for (s, m), r in peers.items() if s == stage and text in m]
        assert found, f"no peer row for {stage}: {text}"
        for r in found:
            assert r["peer"] > 0 and r["value"] > 0, r
            assert r["peer_ratio"] == pytest.approx(r["value"] / r["peer"])
    assert not any(r.get("peer") for r in data["rows"] if r["stage"] == "explain")


def test_gpu_check_runs_on_cpu():
    out = gpu_run("cpu", "test_resnet", 64, 4, 1)
    assert out["train_fp32_img_s"] > 0 and out["infer_bf16_cl_img_s"] > 0
    assert out["pillow_img_s"] > 0
    # the DataLoader peer of training's feed ran with one worker per core, on birdray's batch fn
    assert out["feed_workers"] >= 1 and out["dataloader_feed_img_s"] > 0
    assert out["feed_vs_train_bf16"] == pytest.approx(
        out["dataloader_feed_img_s"] / out["train_bf16_cl_img_s"]
    )
