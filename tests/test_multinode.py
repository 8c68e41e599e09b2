"""Multi-node on one machine: training workers, scoring actors and Serve replicas on two nodes."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from birdray.train.job import TrainConfig, run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _recipe(dataset: Path, storage: Path, name: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        dataset=str(dataset),
        arch="test_resnet",
        image_size=64,
        batch_size=4,  # 12 train rows over 2 workers: one full batch each per epoch
        lr=0.05,
        warmup_epochs=0,
        epochs=epochs,
        num_workers=2,
        cpus_per_worker=1.0,
        placement_strategy="STRICT_SPREAD",
        storage_path=str(storage),
        name=name,
        max_failures=2,
    )


@pytest.mark.timeout(900)
def test_training_recovers_when_a_worker_node_is_lost(ray_cluster, small_dataset, tmp_path):
    """Two workers strictly spread over two nodes; kill the node under one of them after the
    first checkpoint: the run restarts on the nodes that are left, from that checkpoint, and
    finishes, still one worker per node."""
    import ray

    extra = [ray_cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1") for _ in range(2)]
    ray_cluster.wait_for_nodes()
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["summary"] = run_training(_recipe(small_dataset, tmp_path, "lossy", epochs=6))
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=train, daemon=True)
    runner.start()
    run = tmp_path / "lossy"
    victim = None
    deadline = time.time() + 600
    while victim is None and time.time() < deadline and runner.is_alive():
        if any(run.glob("checkpoint_*/history.json")):
            on_nodes = {
                a["Address"]["NodeID"]
                for a in ray._private.state.actors().values()
                if "TrainWorker" in a.get("ActorClassName", "") and a["State"] == "ALIVE"
            }
            victim = next((n for n in extra if n.node_id in on_nodes), None)
        time.sleep(0.2)  # epochs take about a second: five must remain after the first
    try:
        assert victim is not None, f"no worker on a removable node before the end: {outcome}"
        ray_cluster.remove_node(victim)  # the node and the worker on it die mid-training
        runner.join(timeout=780)
        assert not runner.is_alive(), "training did not finish after the node loss"
        assert "error" not in outcome, outcome.get("error")
    finally:
        for node in extra:
            if node is not victim:
                ray_cluster.remove_node(node)
    with open(Path(outcome["summary"]["run_dir"]) / "summary.csv") as fh:
        epochs = [int(row["epoch"]) for row in csv.DictReader(fh)]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert outcome["summary"]["last"]["nodes"] == 2


@pytest.mark.timeout(900)
def test_serve_replicas_spread_over_two_nodes(ray_cluster, tmp_path):
    """Two model replicas of 3 CPUs each: one lands on the head, one on the second node."""
    import ray
    import requests

    from birdray.serve.job import start_local
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg", num_classes=3)
    node = ray_cluster.add_node(num_cpus=4, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    app = None
    try:
        app = start_local(
            model=str(package),
            registry="",
            name="spread",
            route_prefix="/spread",
            min_replicas=2,
            max_replicas=2,
            model_num_cpus=3.0,
            explain=False,
        )
        replicas = [
            a
            for a in ray._private.state.actors().values()
            if "BirdClassifier" in a.get("ActorClassName", "") and a["State"] == "ALIVE"
        ]
        nodes = {a["Address"]["NodeID"] for a in replicas}
        assert len(replicas) == 2 and len(nodes) == 2, replicas
        with open(tmp_path / "bird.jpg", "wb") as fh:
            from tests.cub_fixture import jpeg_bytes

            fh.write(jpeg_bytes())
        for _ in range(4):  # both replicas answer through the one HTTP entry point
            with open(tmp_path / "bird.jpg", "rb") as fh:
                reply = requests.post(f"{app.url}/v1/predict", files={"files": fh}, timeout=60)
            assert reply.status_code == 200 and reply.json()["results"][0]["ok"]
    finally:
        if app is not None:
            app.stop()
        ray_cluster.remove_node(node)


@pytest.mark.timeout(900)
def test_scoring_actors_spread_over_two_gpu_nodes(ray_cluster, tmp_path, monkeypatch):
    """One logical GPU per node and one per actor: the pool of two must use both nodes."""
    import ray
    from ray.util.state import list_actors

    from birdray.scoring.job import ScoreConfig, run_scoring
    from tests.cub_fixture import jpeg_bytes
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg", num_classes=3)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(16):
        (photos / f"bird {i}.jpg").write_bytes(jpeg_bytes(color=(10 * i, 120, 200 - 10 * i)))
    nodes = [ray_cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")]
    nodes.append(ray_cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1"))
    ray_cluster.wait_for_nodes()
    # Ray Data starts dispatching as soon as one actor is up; on 2 busy cores the first can
    # finish all 8 batches before the second has loaded the model. Start the whole pool first.
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 300)
    try:
        cfg = ScoreConfig(
            input=str(photos),
            output=str(tmp_path / "out"),
            model=str(package),
            batch_size=2,
            pool_size=2,
            num_gpus=1.0,
            actor_cpus=0.5,
            preprocess_cpus=0.5,
        )
        summary = run_scoring(cfg)
        # which actor gets a batch is Ray Data's choice (the least busy; when decoding is the
        # bottleneck one actor keeps up alone): placement is what the product decides
        actors = list_actors(limit=10_000, raise_on_missing_output=False)
    finally:
        for node in nodes:
            ray_cluster.remove_node(node)
    gpu_nodes = {node.node_id for node in nodes}
    assert summary["scored"] == 16
    assert set(summary["nodes"]) <= gpu_nodes, summary["nodes"]
    scorers = [a for a in actors if a.node_id in gpu_nodes]  # new nodes: only this job's actors
    assert all("MapWorker" in a.class_name for a in scorers), scorers
    assert {a.node_id for a in scorers} == gpu_nodes, actors
