"""Shared fixtures: one local Ray cluster per test session, small generated datasets.

The cluster is a ``ray.cluster_utils.Cluster`` bound to 127.0.0.1 with more logical CPUs than the
machine has cores (Ray's CPU accounting deadlocks on 2 cores otherwise: Train workers or actor
pools take every CPU and Ray Data's read tasks never run). Tests that need GPU nodes or a second
node add one with ``add_node`` and remove it afterwards.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from birdray.runtime import free_port

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_MININTERVAL", "5")

HEAD_CPUS = 4

# Ctrl-C as in a terminal, however the suite was started: a shell script that runs it in the
# background (``pytest &``, CI wrappers) starts it with SIGINT ignored, every child inherits
# that, and the tests that press Ctrl-C on ``birdray dashboard``/``serve`` then wait on a
# process that cannot hear it (seen: two dashboard tests failed and a Streamlit was orphaned).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# S3 in this session is a local moto server (see ``s3_bucket``), never a real account. Set before
# the cluster starts, so Ray's workers reach it the way a cluster's workers reach their bucket.
S3_PORT = free_port()
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}",
    AWS_ACCESS_KEY_ID="birdray-test",
    AWS_SECRET_ACCESS_KEY="birdray-test",
    AWS_DEFAULT_REGION="us-east-1",
)


@pytest.fixture(scope="session")
def ray_cluster():
    """A live local Ray cluster; the driver is connected to it for the whole session."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": HEAD_CPUS,
            # the state API behind it is how Train V2 frees a dead controller's placement group
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),  # a Ray dashboard already on 8265 must not clash
            "node_ip_address": "127.0.0.1",
            # metrics reach Ray's /metrics every 2 s, not 10: the tests polling it wait less
            "_system_config": {"metrics_report_interval_ms": 2000},
        },
    )
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def s3_bucket() -> str:
    """``s3://birds`` on a moto server speaking the S3 protocol over HTTP on 127.0.0.1."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket="birds")
    yield "s3://birds"
    server.stop()


@pytest.fixture
def killed_register(monkeypatch):
    """``register`` as if its node died after copying the files, before ``_COMMITTED``."""
    from birdray.registry import register, versions

    real_put = versions.storage.put_bytes

    def crash_before_commit(location, data):
        if str(location).endswith(versions.COMMITTED):
            raise OSError("node lost")
        real_put(location, data)

    def register_and_die(registry: str, package: Path) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(versions.storage, "put_bytes", crash_before_commit)
            with pytest.raises(OSError, match="node lost"):
                register(registry, package)

    return register_and_die


@pytest.fixture
def two_version_registry(tmp_path) -> str:
    """A local registry with v0001 (production) and v0002 of small test packages."""
    from birdray.registry import promote, register
    from tests.model_fixture import make_package

    reg = str(tmp_path / "reg")
    for seed in (0, 1):
        register(reg, make_package(tmp_path / f"p{seed}", seed=seed))
    promote(reg, "v0001")
    return reg


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small generated CUB-layout dataset (the ``CUB_200_2011`` folder's parent)."""
    from birdray.synth.job import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out=str(out), classes=6, per_class=12, seed=7, workers=1))
    return out


@pytest.fixture(scope="session")
def small_dataset(ray_cluster, tmp_path_factory) -> Path:
    """A small ingested dataset (3 species x 12 photos, a quarter held out for val) for the
    training, tuning and multi-node tests: ingested once per session."""
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.synth.job import SynthConfig, generate

    root = tmp_path_factory.mktemp("small")
    synth = SynthConfig(
        out=str(root / "src"), classes=3, per_class=12, seed=1, min_side=96, max_side=128, workers=1
    )
    run_ingest(IngestConfig(source=str(generate(synth)), out=str(root / "ds"), val_fraction=0.25))
    return root / "ds"


@dataclass
class TrainedModel:
    package: Path  # a trained, calibrated model package
    dataset: Path  # the ingested dataset it was trained on
    source: Path  # the generated CUB-layout folder (has synthetic_species.json)
    train_summary: dict
    eval_summary: dict


TRAINED_RECIPE = dict(
    arch="tf_efficientnet_lite0",
    image_size=128,
    epochs=6,
    batch_size=16,
    opt="adamw",
    lr=0.01,
    weight_decay=0.05,
    warmup_epochs=1,
    label_smoothing=0.0,
    scale_min=0.6,
    num_workers=2,
    cpus_per_worker=1.0,
)


@pytest.fixture(scope="session")
def trained_package(ray_cluster, tmp_path_factory) -> TrainedModel:
    """A model really fine-tuned with ``birdray train`` on generated birds, then evaluated.

    Shared by the training, explanation, Serve and dashboard tests that need a model that has
    learned something (e.g. where sibling species differ). A couple of minutes on 2 cores.
    """
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.model.weights import convert_lite0
    from birdray.synth.job import SynthConfig, generate
    from birdray.train.job import TrainConfig, run_training

    root = tmp_path_factory.mktemp("trained")
    weights = convert_lite0(root / "lite0.safetensors")  # real ImageNet weights, offline
    source = generate(
        SynthConfig(
            out=str(root / "src"),
            classes=6,
            per_class=40,
            seed=3,
            min_side=160,
            max_side=256,
            workers=1,
        )
    )
    dataset = root / "ds"
    run_ingest(IngestConfig(source=str(source), out=str(dataset), val_fraction=0.25))
    summary = run_training(
        TrainConfig(
            dataset=str(dataset),
            storage_path=str(root / "runs"),
            name="trained",
            pretrained_file=str(weights),
            **TRAINED_RECIPE,
        )
    )
    evaluation = run_evaluation(EvaluateConfig(model=summary["package"], dataset=str(dataset)))
    return TrainedModel(Path(summary["package"]), dataset, Path(source), summary, evaluation)


@pytest.fixture(scope="session")
def serve_http(ray_cluster) -> str:
    """Base URL of Serve's HTTP proxy (head node only, 127.0.0.1, a free port, or the one a
    proxy of this session already has)."""
    from birdray.serve.proxy import ensure_serve

    return ensure_serve("127.0.0.1")


@pytest.fixture
def app_test(monkeypatch):
    """A fresh ``AppTest`` of the dashboard factory, with Streamlit's caches emptied."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from birdray.dashboard_launcher import APP  # the entry file inside the package

    st.cache_data.clear()
    st.cache_resource.clear()

    def make(page: str | None = None, **env: str) -> AppTest:
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        at = AppTest.from_file(str(APP), default_timeout=240)
        at.run()
        if page:
            at.switch_page(page).run()
        return at

    return make


@pytest.fixture
def cpus_back(ray_cluster):
    """Wait until the cluster's free CPUs are back to a level seen before (after a kill, say).

    Ray reaps a dead driver's workers and a finished pool's actors asynchronously; tests wait on
    that condition instead of sleeping a fixed time, and fail with Ray's view if it never comes.
    """
    import time

    import ray

    def wait(idle_cpus: float, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("CPU", 0.0) < idle_cpus:
            assert time.monotonic() < deadline, (
                f"CPUs not given back within {timeout_s:.0f} s: {ray.available_resources()}"
            )
            time.sleep(0.5)

    return wait
