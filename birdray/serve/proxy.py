"""Serve's HTTP front door: which proxy a local Ray starts Serve with, and starting (or joining)
it, with a clear error when it does not come up."""

from __future__ import annotations

import logging
import os
import time

import ray
from ray import serve
from ray.serve.context import _get_global_client

from birdray.resources import StallError, pending_report
from birdray.runtime import LOOPBACK, free_port
from birdray.serve.args import AppArgs

logger = logging.getLogger(__name__)

PROXY_TIMEOUT_MARGIN_S = 10.0  # the proxy's backstop waits longer than the app's own JSON 504
PROXIES = ("serve", "haproxy")


def check_proxy_name(proxy: str) -> None:
    """Refuse an unknown front door before anything starts."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, not {proxy!r}")


def choose_proxy(proxy: str) -> None:
    """Set Ray's switches for Serve's front door; they take effect in a Ray started after this.

    Serve picks its proxy once, when its controller starts, from the Ray processes' environment,
    which a local Ray started by this process inherits. HAProxy's stats page and Prometheus
    exporter listen on all interfaces (Ray's template), so they get free ports rather than
    Ray's fixed 8404 and 9101 (two services on one machine would clash); and on one node a
    stopping replica needs a short drain only (HAProxy drops it within a second).
    """
    check_proxy_name(proxy)
    if proxy == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
        for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
            os.environ.setdefault(name, str(free_port("0.0.0.0")))


def running_proxy() -> str | None:
    """The front door of the connected cluster's Serve (``serve`` or ``haproxy``; None: unknown)."""

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    try:  # the controller's own flag: set when it started, so no race with the proxies starting
        enabled = ray.get(
            client._controller.__ray_call__.remote(
                lambda controller: getattr(controller, "_ha_proxy_enabled", None)
            ),
            timeout=30,
        )
    except Exception as exc:  # an older or changed controller: say so, don't guess
        logger.warning("could not ask Serve's controller which proxy it runs: %s", exc)
        return None
    return None if enabled is None else ("haproxy" if enabled else "serve")


def check_proxy(wanted: str) -> None:
    """Fail before deploying when Serve runs another front door than the one asked for."""

    running = running_proxy()
    if wanted == "haproxy" and running == "serve":
        raise RuntimeError(
            "--proxy haproxy: this Ray's Serve already runs its Python proxy, and the proxy is "
            "chosen when Serve starts; start the cluster with RAY_SERVE_ENABLE_HA_PROXY=1 "
            "(birdray does that for a local Ray it starts), or use --proxy serve"
        )
    if running and running != wanted:
        logger.info("Serve in this cluster runs the %s proxy (asked: %s)", running, wanted)


def _proxy_did_not_start(waited_s: float, exc: BaseException) -> StallError:
    """Serve gives its HTTP proxy 60 s to start, then raises a timeout or the actor's death ("killed
    by ray.kill"), which says nothing of why; on an overloaded machine that is the load."""
    load = os.getloadavg()[0]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StallError(
        f"Serve's HTTP proxy did not start within {waited_s:.0f} s ({first}); this machine has "
        f"{os.cpu_count()} CPUs and a load average of {load:.1f} over the last minute; Ray: "
        f"{pending_report()}"
    )


def ensure_serve(host: str = LOOPBACK, port: int = 0, app_timeout_s: float | None = None) -> str:
    """Start Serve's HTTP proxy on the head node (or join a running one); its base URL.

    Serve's HTTP options are fixed once it runs, so when it already runs the URL reports the
    port it really listens on, not the one asked for. The proxy bounds every request at the app's
    own limit ``app_timeout_s`` (default: ``AppArgs``') plus a margin, so the app answers first.
    """

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        port = port or free_port(host)
        timeout = float(app_timeout_s or AppArgs().request_timeout_s) + PROXY_TIMEOUT_MARGIN_S
        started = time.monotonic()
        try:
            serve.start(
                http_options={"host": host, "port": port, "request_timeout_s": timeout},
                proxy_location="HeadOnly",
            )
        except (TimeoutError, ray.exceptions.RayError) as exc:
            raise _proxy_did_not_start(time.monotonic() - started, exc) from exc
        client = _get_global_client()
    options = client.http_config
    if port and options.port != port:
        logger.warning("Serve already listens on port %s; port %s is not used", options.port, port)
    shown = LOOPBACK if options.host in ("0.0.0.0", "::") else options.host
    return f"http://{shown}:{options.port}"
