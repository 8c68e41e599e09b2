"""Multi-node on one machine: two Ray nodes for training workers and Serve replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from birdray.data.ingest import IngestConfig, run_ingest
from birdray.data.synthetic import SynthConfig, generate
from birdray.train.job import TrainConfig, run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def spread_dataset(ray_cluster, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spread")
    src = generate(
        SynthConfig(
            out=str(root / "src"),
            classes=3,
            per_class=12,
            seed=2,
            min_side=96,
            max_side=128,
            workers=1,
        )
    )
    run_ingest(IngestConfig(source=str(src), out=str(root / "ds"), val_fraction=0.25))
    return root / "ds"


def _recipe(dataset: Path, storage: Path, name: str, epochs: int) -> TrainConfig:
    return TrainConfig(
        dataset=str(dataset),
        arch="test_resnet",
        image_size=64,
        batch_size=8,
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
def test_strict_spread_training_uses_two_nodes(ray_cluster, spread_dataset, tmp_path):
    node = ray_cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    try:
        summary = run_training(_recipe(spread_dataset, tmp_path, "spread", epochs=1))
        assert summary["best"]["nodes"] == 2 and summary["best"]["workers"] == 2
    finally:
        ray_cluster.remove_node(node)


@pytest.mark.timeout(900)
def test_serve_replicas_spread_over_two_nodes(ray_cluster, tmp_path):
    """Two model replicas of 3 CPUs each: one lands on the head, one on the second node."""
    import ray
    import requests

    from birdray.serve.run import start_local
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg", num_classes=3)
    node = ray_cluster.add_node(num_cpus=4, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    app = None
    try:
        app = start_local(
            model=str(package),
            registry=None,
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
