"""``birdray serve``: run the app on a local Ray (or a given cluster) bound to 127.0.0.1.

``start_local`` is the programmatic door the demo and tests use: start Serve, deploy the app,
wait until ``/readyz`` answers, return where it listens. ``LocalServe.swap`` redeploys with a
new model reference; old replicas keep serving until the new ones are ready (``max_surge_percent``)
when the cluster has room for both, else each is replaced in place (one line says so): then
requests wait in Serve's queues while a replica restarts, and with a single ingress replica (the
2-CPU default) those beyond its queue, or waiting past the request timeout, are answered with an
error. Either way the swap is bounded in time.
Config-file deployments swap in place instead: change ``user_config.model`` of ``BirdClassifier``
(and ``BirdExplainer``) and ``serve deploy`` again.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from birdray import config as cfglib
from birdray.config import field
from birdray.devices import gpus_to_use
from birdray.resources import pending_report
from birdray.runtime import LOOPBACK, init_ray, sigterm_as_ctrl_c
from birdray.serve.app import app_args, build_app
from birdray.serve.args import AppArgs, colocated
from birdray.serve.fit import plan_redeploy, plan_serve
from birdray.serve.proxy import check_proxy, check_proxy_name, choose_proxy, ensure_serve

logger = logging.getLogger(__name__)
# Ray 2.60's Serve replicas each open an internal gRPC server on all interfaces (whatever
# --host says) that unpickles what it is sent; Ray's token authentication is its only guard.
RAY_AUTH_DISABLED = (
    "RAY_AUTH_MODE=disabled: each Serve replica's internal gRPC port listens on all interfaces "
    "and runs what it is sent, so anyone who can reach this machine can run code as you; "
    "unset RAY_AUTH_MODE (Ray's token authentication) unless this network is yours alone"
)


@dataclass
class ServeConfig(AppArgs):
    """``AppArgs`` plus where and how to run Serve."""

    host: str = field(LOOPBACK, "HTTP bind address (loopback; set an API key before exposing)")
    port: int = field(8000, "HTTP port (0 picks a free one)")
    name: str = field("birdray", "Serve application name")
    route_prefix: str = field("/", "URL prefix of the app")
    address: str | None = field(None, "Ray address (default: RAY_ADDRESS, else a new local Ray)")
    num_cpus: float | None = field(None, "logical CPUs for a new local Ray")
    blocking: bool = field(True, "keep serving until Ctrl-C (false: return; needs a cluster)")
    colocate: str = field(
        "auto",
        "on | off | auto: the model inside the ingress's process (one hop less; auto: unless a "
        "candidate or more model replicas need the model deployment); config files default off",
    )
    ready_timeout_s: float = field(120.0, "how long to wait for /readyz after deploying")
    proxy: str = field(
        "serve",
        "serve | haproxy: the HTTP front door; haproxy (Ray's HAProxy mode, experimental) forwards "
        "to the ingress replica's own HTTP server, a Python hop less; chosen when Ray starts",
    )


def wait_ready(url: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> dict:
    """Poll ``/readyz`` until it answers 200; its JSON (``model_version``) is returned."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"{url}/readyz", headers=headers or {})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url}/readyz not ready after {timeout_s:.0f}s: {last}")


def wait_running(name: str, timeout_s: float) -> None:
    """Wait until Serve reports app ``name`` RUNNING (a redeploy's replicas all replaced);
    ``RuntimeError`` when it failed, ``TimeoutError`` after ``timeout_s`` naming the deployments
    not done and what waits for resources in Ray."""
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        if app is None:
            raise RuntimeError(f"Serve application {name!r} is gone")
        if app.status == ApplicationStatus.RUNNING:
            return
        if app.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"Serve could not deploy {name!r}: {app.message}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    waiting = "; ".join(
        f"{dep} {info.status.value}" + (f" ({info.message})" if info.message else "")
        for dep, info in app.deployments.items()
        if info.status.value != "HEALTHY"
    )
    raise TimeoutError(
        f"Serve application {name!r} not (re)deployed after {timeout_s:.0f} s: "
        f"{waiting or app.status.value}; Ray: {pending_report()}. Serve keeps trying to start "
        "the waiting replicas; replicas not yet replaced keep serving"
    )


def shadow_agreement(
    url: str, timeout_s: float = 60.0, headers: dict[str, str] | None = None
) -> str:
    """One line: what a shadow rollout measured (``GET /v1/rollout``), once every image
    production answered was compared (the candidate answers in the background, after the
    client got production's answer) or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/v1/rollout", headers=headers or {})
    while True:
        with urllib.request.urlopen(request, timeout=10) as resp:
            state = json.loads(resp.read())
        production, candidate = state["versions"]["production"], state["versions"]["candidate"]
        answered = state["answered"].get(production, {}).get("images", 0)
        pair = next((p for p in state["shadow"] if p["candidate"] == candidate), None)
        done = pair["compared"] + pair["failed"] if pair else 0
        if done >= answered or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not pair or not pair["compared"]:
        return f"{candidate} beside {production}: nothing compared yet"
    return (
        f"{candidate} agreed with production {production} on {pair['agreed']} of "
        f"{pair['compared']} images ({pair['agreement']:.0%} same top-1), mean confidence "
        f"difference {pair['mean_confidence_delta']:+.3f}; {url}/v1/rollout"
    )


@dataclass
class LocalServe:
    """A running birdray app: where it listens and how to swap or stop it."""

    url: str
    name: str
    route_prefix: str
    args: dict[str, Any]
    model_version: str

    def swap(self, model: str, registry: str | None = None, timeout_s: float = 120.0) -> str:
        """Redeploy on another model; returns the new version once it is serving."""
        changes: dict[str, Any] = {"model": model}
        if registry is not None:
            changes["registry"] = registry
        return self.redeploy(timeout_s, **changes)

    def redeploy(self, timeout_s: float = 120.0, **changes: Any) -> str:
        """Redeploy with some ``AppArgs`` changed (``candidate``, ``rollout``, ``rollout_share``
        after ``registry promote candidate``...); returns the production version serving then.

        Old replicas serve until their replacements are ready when the surge replicas
        (``max_surge_percent``) fit beside them in the free resources; otherwise a smaller surge,
        or replacement in place, is used and one line says so with the numbers. A new app that
        cannot fit at all is refused (``ResourceError``) before anything changes. The whole
        redeploy is bounded by ``timeout_s``: ``TimeoutError`` names what Serve could not
        schedule (the old version keeps serving; Serve keeps trying)."""

        args = {**self.args, **changes}
        surge = plan_redeploy(self.args, args, ray.available_resources(), ray.cluster_resources())
        # built once (model references resolved once), with this rollout's surge; it validates
        # args and references before anything changes
        app = build_app({**args, "max_surge_percent": surge})
        deadline = time.monotonic() + timeout_s
        # not serve.run: it waits for RUNNING without a limit (forever, for a pending replica)
        serve.run_many(
            [serve.RunTarget(app, name=self.name, route_prefix=self.route_prefix)],
            wait_for_applications_running=False,
        )
        self.args = args
        wait_running(self.name, deadline - time.monotonic())
        left = max(1.0, deadline - time.monotonic())
        self.model_version = wait_ready(self.url, left)["model_version"]
        return self.model_version

    def stop(self) -> None:

        serve.delete(self.name)


def start_local(
    model: str = "production",
    registry: str | None = "runs/registry",
    port: int = 0,
    host: str = LOOPBACK,
    name: str = "birdray",
    route_prefix: str = "/",
    address: str | None = None,
    num_cpus: float | None = None,
    ready_timeout_s: float = 120.0,
    proxy: str = "serve",
    **app_kwargs: Any,
) -> LocalServe:
    """Start (or join) Ray, start Serve on ``host:port``, deploy the app, wait until it is ready.

    ``app_kwargs`` are further ``AppArgs`` fields (``max_batch_size=16``, ``explain=False``...);
    ``colocate`` defaults to ``auto``, as for ``birdray serve``.
    If Serve already runs in this cluster its HTTP options stay as they are (Ray's rule).
    ``proxy="haproxy"`` needs Serve started in HAProxy mode: a local Ray started here is.
    """

    # as `birdray serve`: the model colocated with the ingress when nothing needs it apart
    args = {"model": model, "registry": registry, "colocate": ServeConfig.colocate, **app_kwargs}
    app = build_app(args)  # validates args and the model reference before starting anything
    check_proxy_name(proxy)
    joining = (address or os.environ.get("RAY_ADDRESS")) not in (None, "", "local")
    if not ray.is_initialized() and not joining:
        choose_proxy(proxy)  # a local Ray is started next
    cluster = init_ray(address=address, num_cpus=num_cpus)
    # auto: the cluster's GPUs shared by the replicas that start (at most one each)
    replicas = max(1, int(args.get("min_replicas") or AppArgs().min_replicas))
    if colocated(cfglib.from_dict(AppArgs, dict(args))):  # each ingress replica holds the model
        replicas = max(1, int(args.get("ingress_replicas") or AppArgs().ingress_replicas))
    replicas *= 2 if args.get("candidate") else 1  # a rollout's candidate deployment too
    per = min(1.0, float(cluster.get("GPU", 0.0)) / replicas)
    gpus = gpus_to_use(args.get("device"), float(args.get("num_gpus") or 0.0), cluster, per)
    if gpus != float(args.get("num_gpus") or 0.0):  # --device auto found GPUs: ask Ray for them
        args["num_gpus"] = gpus
        app = build_app(args)
    plan_serve(args, cluster)  # fits, or fails now
    base = ensure_serve(host, port, app_kwargs.get("request_timeout_s"))
    check_proxy(proxy)
    deadline = time.monotonic() + ready_timeout_s
    # bounded, unlike serve.run (a replica no node can take would keep it waiting forever)
    serve.run_many(
        [serve.RunTarget(app, name=name, route_prefix=route_prefix)],
        wait_for_applications_running=False,
    )
    wait_running(name, deadline - time.monotonic())
    prefix = "" if route_prefix == "/" else route_prefix.rstrip("/")
    url = f"{base}{prefix}"
    ready = wait_ready(url, max(1.0, deadline - time.monotonic()))
    return LocalServe(url, name, route_prefix, args, ready["model_version"])


def serve_apps() -> list[str]:
    """Names of the applications Serve runs in the connected cluster."""

    return list(serve.status().applications)


def shutdown() -> None:
    """Stop Serve entirely (all apps, proxies, controller) in the connected cluster."""

    serve.shutdown()


def run_serve(cfg: ServeConfig) -> dict[str, Any]:
    """Serve a model over HTTP (local Ray unless --address); Ctrl-C stops it."""
    if cfg.host not in (LOOPBACK, "localhost") and not cfg.api_key_env:
        logger.warning("serving on %s without an API key (set --api-key-env)", cfg.host)
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        logger.warning(RAY_AUTH_DISABLED)
    args = app_args(cfg)
    args.pop("model")
    args.pop("registry")
    if cfg.blocking:  # SIGTERM stops it as Ctrl-C does (init_ray keeps Ray's handler out)
        sigterm_as_ctrl_c()
    try:
        local = start_local(
            cfg.model,
            cfg.registry,
            port=cfg.port,
            host=cfg.host,
            name=cfg.name,
            route_prefix=cfg.route_prefix,
            address=cfg.address,
            num_cpus=cfg.num_cpus,
            ready_timeout_s=cfg.ready_timeout_s,
            proxy=cfg.proxy,
            **args,
        )
    except KeyboardInterrupt:  # stopped while starting: no traceback, no half-deployed app left
        print("birdray serve: stopped before it was ready")
        _remove_app(cfg.name)
        return {"url": None, "app": cfg.name, "stopped": "before it was ready"}
    print(f"birdray serve: {local.url} (model {local.model_version}); docs at {local.url}/docs")
    if cfg.candidate:
        print(
            f"rollout {cfg.rollout} ({cfg.rollout_share:g}) of candidate {cfg.candidate}: "
            f"{local.url}/v1/rollout"
        )
    summary = {"url": local.url, "app": cfg.name, "model_version": local.model_version}
    if not cfg.blocking:
        return summary
    print("serving; press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping Serve")
    finally:
        local.stop()
        if not serve_apps():  # leave Serve running for other apps on a shared cluster
            shutdown()
    return summary


def _remove_app(name: str) -> None:
    """Delete a half-deployed app (Serve itself too when nothing else runs on it)."""

    if not ray.is_initialized():  # interrupted before Ray was reached: nothing to undo
        return

    try:
        serve.delete(name)
        if not serve_apps():
            shutdown()
    except Exception as exc:  # Ray itself may be going down with the interrupt
        logger.warning("could not remove the half-deployed app %s: %s", name, exc)
