"""The benchmark harness works end to end (tiny sizes; its numbers are not asserted)."""

from __future__ import annotations

import json

import pytest

from birdray.benchmark import BenchmarkConfig, run_benchmark
from birdray.benchmark.gpu import run as gpu_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(900)
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


def test_gpu_check_runs_on_cpu():
    out = gpu_run("cpu", "test_resnet", 64, 4, 1)
    assert out["train_fp32_img_s"] > 0 and out["infer_bf16_cl_img_s"] > 0
    assert out["pillow_img_s"] > 0
