"""What an ingress replica takes from Serve: its admission limit, its API key, and deployment
calls (over a handle or in this process) awaited into the API's error shape."""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentResponse

from birdray.serve.args import usable_api_key
from birdray.serve.errors import ApiError
from birdray.serve.uploads import Limits

PROBE_SLOTS = 8  # requests Serve lets in beyond the app's own limit: probes, quick 503s


async def answer(response: DeploymentResponse, what: str) -> Any:
    """Await a deployment call; overload and absence become 503s in the API's error shape."""
    try:
        return await response
    except BackPressureError as exc:
        raise ApiError(503, "busy", f"too many {what} requests queued; retry shortly") from exc
    except DeploymentUnavailableError as exc:
        raise ApiError(503, "unavailable", f"the {what} deployment is not available") from exc
    except RayActorError as exc:  # the replica died (or is unreachable) mid-request: Serve
        # restarts it, so the client retries, as for busy; never a 500 ``internal_error``
        raise ApiError(503, "unavailable", f"the {what} replica stopped; retry shortly") from exc


class InProcess:
    """A deployment's object in this process, called the way a ``DeploymentHandle`` is
    (``handle.method.remote(...)``, awaited): the colocated model needs no other code path."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        return SimpleNamespace(remote=method)


def admission_limit(limits: Limits) -> Limits:
    """``limits`` with ``max_concurrent_requests`` set: when 0, this replica's Serve
    ``max_ongoing_requests`` (as a config file may have set it) less ``PROBE_SLOTS``, so the app
    turns overload away in its JSON shape before Serve's proxy queues or drops it in plain text."""
    if limits.max_concurrent_requests:
        return limits
    # Serve has no public getter for a running replica's own options
    ongoing = serve.get_replica_context()._deployment_config.max_ongoing_requests
    return dataclasses.replace(limits, max_concurrent_requests=max(1, ongoing - PROBE_SLOTS))


def api_key_from_env(name: str | None) -> str | None:
    """The key in variable ``name`` (None: no key configured); fails closed on unset or blank.

    A named but missing key is a deployment mistake (a secret that did not mount), never a
    reason to serve ``/v1`` to anyone: the replica refuses to start and Serve reports why.
    """
    if not name:
        return None
    try:
        return usable_api_key(name, os.environ.get(name, ""))
    except ValueError as exc:
        raise RuntimeError(f"{exc} (read in this replica)") from None
