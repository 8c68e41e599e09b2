"""``--device auto|cpu|cuda``: GPUs are used when the cluster has them, and asking for CUDA where
there is none is one line, exit 2, before Ray starts (before, ``--num-gpus 1`` on a CPU cluster
waited forever and GPUs went unused unless every flag asked for them)."""

from __future__ import annotations

import pytest

from birdray.config import UsageError
from birdray.devices import gpus_to_use, local_gpus

CPU_ONLY = {"CPU": 2.0}
ONE_GPU = {"CPU": 8.0, "GPU": 1.0}


def test_auto_uses_the_gpus_the_cluster_has():
    assert gpus_to_use("auto", 0.0, CPU_ONLY) == 0.0
    assert gpus_to_use(None, 0.0, CPU_ONLY) == 0.0
    assert gpus_to_use("auto", 0.0, ONE_GPU) == 1.0
    assert gpus_to_use("auto", 0.25, ONE_GPU) == 0.25  # an explicit --num-gpus is kept
    assert gpus_to_use("cpu", 0.0, ONE_GPU) == 0.0
    assert gpus_to_use("cuda", 0.0, ONE_GPU) == 1.0
    assert gpus_to_use("auto", 0.0, ONE_GPU, per=0.5) == 0.5  # two Serve replicas share it
    with pytest.raises(UsageError, match="--device cuda: the Ray cluster has 2 CPU and no GPU"):
        gpus_to_use("cuda", 0.0, CPU_ONLY)


@pytest.mark.skipif(local_gpus() > 0, reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["score", "--input", "{tmp}", "--output", "{tmp}/out", "--device", "cuda"], "--device"),
        (["serve", "--model", "{tmp}", "--device", "cuda"], "--device"),
        (["explain", "--image", "x.jpg", "--device", "cuda"], "--device"),
        (["evaluate", "--model", "{tmp}", "--device", "gpu"], "--device"),
        (["train", "--dataset", "{tmp}", "--use-gpu"], "--use-gpu"),
    ],
)
def test_cuda_without_a_gpu_is_one_line_before_ray(tmp_path, monkeypatch, capsys, argv, flag):
    import ray

    from birdray.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a user error")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f": error: {flag}" in lines[0], lines


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_auto_requests_a_gpu_on_a_cluster_that_declares_one(ray_cluster):
    """A node declaring a logical GPU joins the cluster: ``auto`` asks Ray for it, and a task
    with that request is placed there and handed the GPU (before, scoring, evaluation and Serve
    asked for no GPU unless every --num-gpus flag was set)."""
    import ray

    from birdray.runtime import init_ray

    node = ray_cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
    try:
        ray_cluster.wait_for_nodes()
        gpus = gpus_to_use("auto", 0.0, init_ray(None))
        assert gpus == 1.0
        task = ray.remote(num_cpus=0, num_gpus=gpus)(lambda: len(ray.get_gpu_ids()))
        assert ray.get(task.remote(), timeout=120) == 1
    finally:
        ray_cluster.remove_node(node)
