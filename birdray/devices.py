"""``--device auto|cpu|cuda``: use the GPUs that are there, and refuse at once what cannot run.

Ray hides GPUs from an actor that did not reserve one, so "use the GPU" means asking Ray for it.
``auto`` (the default) asks when the Ray cluster has GPUs; ``cpu`` never asks; ``cuda`` insists,
and a cluster without GPUs is a usage error before any work starts, not a job that waits forever
for a GPU (Ray never rejects a request that fits no node). An explicit ``--num-gpus`` is kept.
"""

from __future__ import annotations

import os

from birdray.config import UsageError

DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto: the GPU when the Ray cluster has one | cpu: never | cuda: insist (else fails)"


def local_gpus() -> int:
    """CUDA devices this process sees (what a new local Ray would declare)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def joins_cluster(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


def check_local(device: str | None, address: str | None, flag: str = "--device cuda") -> None:
    """Before Ray: asking for CUDA on a machine without it, when Ray would start here."""
    if device == "cuda" and not joins_cluster(address) and local_gpus() == 0:
        raise UsageError(
            f"{flag}: this machine has no CUDA GPU (torch sees none); drop it, or pass --device"
            " cpu, or --address a Ray cluster with GPUs"
        )


def gpus_to_use(
    device: str | None,
    asked: float,
    cluster: dict[str, float],
    per: float = 1.0,
    flag: str = "--device cuda",
) -> float:
    """GPUs per actor/replica for ``device`` on this cluster (``ray.cluster_resources()``).

    ``asked`` (``--num-gpus``) wins when set (> 0) unless ``device`` is cpu; ``auto`` takes
    ``per`` when the cluster has GPUs; ``cuda`` on a cluster without any is a ``UsageError``.
    """
    have = float(cluster.get("GPU", 0.0))
    if device == "cpu":
        return 0.0
    if device == "cuda" and have <= 0:
        raise UsageError(
            f"{flag}: the Ray cluster has {cluster.get('CPU', 0):g} CPU and no GPU;"
            " leave it out (CPU), or --address a cluster with GPUs"
        )
    if asked and asked > 0:
        return float(asked)
    return min(per, have) if have > 0 else 0.0
