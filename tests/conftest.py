"""Shared fixtures: one local Ray cluster per test session, small generated datasets.

The cluster is a ``ray.cluster_utils.Cluster`` bound to 127.0.0.1 with more logical CPUs than the
machine has cores (Ray's CPU accounting deadlocks on 2 cores otherwise: Train workers or actor
pools take every CPU and Ray Data's read tasks never run). Tests that need GPU nodes or a second
node add one with ``add_node`` and remove it afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_MININTERVAL", "5")

HEAD_CPUS = 4


@pytest.fixture(scope="session")
def ray_cluster():
    """A live local Ray cluster; the driver is connected to it for the whole session."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": HEAD_CPUS,
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
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
def synth_root(tmp_path_factory) -> Path:
    """A small generated CUB-layout dataset (the ``CUB_200_2011`` folder's parent)."""
    from birdray.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out=str(out), classes=6, per_class=12, seed=7, workers=1))
    return out
