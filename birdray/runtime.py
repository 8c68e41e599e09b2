"""Connect to Ray the same way from every job: an existing cluster, or a local one on loopback.

Under ``ray job submit`` the job joins the cluster it was submitted to (RAY_ADDRESS is set).
Run by hand on a laptop, it starts a local Ray bound to 127.0.0.1 with the dashboard off, so
nothing listens on a public address and small machines are not starved by Ray's own services.
"""

from __future__ import annotations

import os
from typing import Any

import ray

LOOPBACK = "127.0.0.1"


def init_ray(
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: int | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Start or join Ray once per process; returns the cluster's resources."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        ray.init(address=address, log_to_driver=True, **kwargs)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=kwargs.pop("include_dashboard", False),
            _node_ip_address=LOOPBACK,
            **kwargs,
        )
    return ray.cluster_resources()


def cpu_count() -> float:
    """Logical CPUs of the running cluster (for sizing pools without over-subscription)."""
    return float(ray.cluster_resources().get("CPU", 1.0))
