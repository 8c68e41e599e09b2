"""The Serve application: a CPU FastAPI ingress composed with the model (and explainer) deployments.

``build_app(args)`` is the application builder used by ``serve run``/``serve deploy`` config files
(``import_path: birdray.serve.app:build_app``), by ``birdray serve`` and by tests. Nothing is
resolved at import time: the builder pins ``production``/``latest`` to a concrete registry version,
and each replica loads that version when it starts. ``BirdIngress`` decodes and validates uploads
and preprocesses them with the model's own data config, so model replicas only run the network.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from birdray import config as cfglib
from birdray import storage
from birdray.config import field
from birdray.images import DEFAULT_MAX_ASPECT
from birdray.registry.ref import ModelChoice, ModelRef
from birdray.serve.classifier import BirdClassifier
from birdray.serve.errors import RETRY_AFTER_S
from birdray.serve.explainer import BirdExplainer
from birdray.serve.ingress import PROBE_SLOTS, BirdIngress
from birdray.serve.rollout import check_rollout
from birdray.serve.uploads import Limits

CANDIDATE_DEPLOYMENT = "CandidateClassifier"  # the candidate's model deployment (its own options)
COLOCATE = ("on", "off", "auto")

__all__ = ["AppArgs", "BirdClassifier", "BirdExplainer", "BirdIngress", "bind_app", "build_app"]


@dataclass
class AppArgs(ModelChoice):
    """Everything ``build_app`` accepts (the ``args:`` of a Serve config file)."""

    api_key_env: str | None = field(
        None, "env var with the API key; when named, /v1 needs X-API-Key (unset/empty: refused)"
    )
    max_upload_mb: float = field(16.0, "largest accepted image file")
    max_request_mb: float = field(64.0, "largest accepted request body")
    max_files: int = field(16, "most images per /v1/predict request")
    max_pixels: int = field(40_000_000, "largest accepted width x height (decompression bombs)")
    max_aspect_ratio: float = field(
        DEFAULT_MAX_ASPECT, "most elongated accepted image (long / short side)"
    )
    device: str | None = field(
        "auto", "model replicas: auto (a GPU each when the cluster has one) | cpu | cuda (insist)"
    )
    torch_threads: int = field(2, "torch threads per model replica (Ray sets OMP_NUM_THREADS=1)")
    amp: bool = field(False, "bf16/fp16 autocast in model replicas")
    max_batch_size: int = field(8, "@serve.batch size (user_config; live-tunable)")
    batch_wait_timeout_s: float = field(
        0.002, "@serve.batch wait, only while another image can join (user_config; live-tunable)"
    )
    max_ongoing_requests: int = field(
        64,
        "per model replica (>= max_batch_size); below what an ingress admits, the rest wait in "
        "Serve's router back-off and throughput falls as load rises (BENCHMARKS.md)",
    )
    max_queued_requests: int = field(128, "model requests waiting per caller before 503 busy")
    num_gpus: float = field(0.0, "GPUs per model replica (a fraction shares; 0: --device decides)")
    model_num_cpus: float = field(1.0, "CPUs per model replica")
    min_replicas: int = field(1, "model replicas at least")
    max_replicas: int = field(1, "model replicas at most (> min_replicas turns on autoscaling)")
    target_ongoing_requests: float = field(8.0, "autoscaling target per model replica")
    upscale_delay_s: float = field(10.0, "sustained load needed before adding a replica")
    downscale_delay_s: float = field(60.0, "sustained idleness needed before removing one")
    metrics_interval_s: float = field(2.0, "how often replicas report load to the autoscaler")
    look_back_period_s: float = field(10.0, "window the autoscaler averages load over")
    max_surge_percent: int = field(100, "extra replicas while a redeploy restarts (0: stop first)")
    replica_loop: bool = field(
        True, "model and ingress code on Serve's own event loop: a thread hop less per request"
    )
    colocate: str = field(
        "off",
        "on | off | auto (on unless a candidate or more than one model replica needs the model "
        "deployment): "
        "the model inside the ingress's process, batched there, one Ray hop and process less per "
        "request; replicas scale with ingress_replicas",
    )
    ingress_replicas: int = field(1, "ingress (decode/preprocess) replicas")
    ingress_num_cpus: float = field(0.5, "CPUs per ingress replica")
    ingress_max_ongoing_requests: int = field(
        192,
        "HTTP requests the proxy hands one ingress replica; well above max_concurrent_requests, so "
        "overload gets the app's quick 503 instead of waiting in the proxy's queue",
    )
    ingress_max_queued_requests: int = field(
        64, "HTTP requests the proxy holds for a busy ingress before its (plain-text) 503"
    )
    max_concurrent_requests: int = field(
        56,
        "/v1 requests at once per ingress replica, then 503 busy (0: the ingress's "
        "max_ongoing_requests - 8); keep the model replica's max_ongoing_requests at least this",
    )
    request_timeout_s: float = field(
        50.0, "a /v1 request's limit (upload, queue, model) before 504; below the proxy's"
    )
    feedback_dir: str | None = field(
        "auto", "where POST /v1/feedback stores answers (auto: <registry>/feedback; '': disabled)"
    )
    explain: bool = field(True, "add the BirdExplainer deployment and /v1/explain")
    explain_num_cpus: float = field(0.5, "CPUs per explainer replica")
    explain_num_gpus: float = field(0.0, "GPUs per explainer replica")
    explain_max_ongoing_requests: int = field(2, "explanations computed at once per replica")
    explain_max_queued_requests: int = field(4, "explanations waiting before 503")
    candidate: str = field(
        "", "a second model served beside --model for a rollout (alias | version | folder)"
    )
    rollout: str = field(
        "off", "off | shadow | canary (BirdIngress user_config: live-tunable; needs --candidate)"
    )
    rollout_share: float = field(
        0.1, "share of requests copied to (shadow) or answered by (canary) the candidate"
    )


# Serve runs replica code on a second event loop thread and a caller's router on a third by
# default; each request then crosses threads (and the GIL) several times. On 2 shared cores, code
# on Serve's own loop served +25-35% more requests at concurrency 8 and 32 (BENCHMARKS.md). The
# explainer keeps the default: an explanation takes seconds, and Serve's own messages to that
# replica must not wait behind it.
REPLICA_LOOP_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def _request_path(opts: AppArgs, env_vars: dict[str, str]) -> dict[str, Any]:
    """``ray_actor_options`` entries: the replica's environment (merged into the job's)."""
    env = {**(REPLICA_LOOP_ENV if opts.replica_loop else {}), **env_vars}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _limits(args: AppArgs) -> Limits:
    return Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_request_bytes=int(args.max_request_mb * 2**20),
        max_files=args.max_files,
        max_pixels=args.max_pixels,
        max_aspect_ratio=args.max_aspect_ratio,
        request_timeout_s=args.request_timeout_s,
        max_concurrent_requests=args.max_concurrent_requests,
    )


def check_bounds(opts: AppArgs) -> None:
    """Fail closed before anything starts: a named API key must be there, limits must bound."""
    if opts.api_key_env is not None:
        if not opts.api_key_env.strip():
            raise ValueError("api_key_env is empty: name the variable that holds the API key")
        if not os.environ.get(opts.api_key_env, "").strip():
            raise ValueError(
                f"api_key_env names {opts.api_key_env}, which is unset or empty: "
                "refusing to serve /v1 without an API key"
            )
    if not opts.request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be > 0 (got {opts.request_timeout_s})")
    if opts.max_concurrent_requests < 0:
        got = opts.max_concurrent_requests
        raise ValueError(f"max_concurrent_requests must be >= 0 (got {got})")
    check_rollout(opts.rollout, opts.rollout_share, bool(opts.candidate))
    if opts.colocate not in COLOCATE:
        raise ValueError(f"colocate must be one of {', '.join(COLOCATE)} (got {opts.colocate!r})")
    if opts.colocate == "on" and opts.candidate:
        raise ValueError("colocate=on serves one model: a candidate needs colocate=off (or auto)")
    if opts.colocate == "on" and max(opts.min_replicas, opts.max_replicas) > 1:
        raise ValueError(
            "colocate=on runs one model in each ingress replica: set ingress_replicas, not "
            "min_replicas/max_replicas (or colocate=off)"
        )


def colocated(opts: AppArgs) -> bool:
    """Whether the model runs inside the ingress (``colocate``; ``auto``: when nothing needs a
    model deployment of its own: no candidate, one model replica, no autoscaling)."""
    if opts.colocate == "auto":
        return not opts.candidate and max(opts.min_replicas, opts.max_replicas) <= 1
    return opts.colocate == "on"


def build_app(args: dict[str, Any]) -> Application:
    """The birdray Serve application for ``args`` (keys: the fields of ``AppArgs``)."""
    opts = args if isinstance(args, AppArgs) else cfglib.from_dict(AppArgs, dict(args or {}))
    check_bounds(opts)  # before any registry is read
    # an alias becomes a version: a swap is an edit
    candidate = ModelRef(opts.candidate, opts.registry).pinned() if opts.candidate else None
    return bind_app(opts, opts.ref.pinned(), candidate)


def bind_app(opts: AppArgs, ref: ModelRef, candidate: ModelRef | None = None) -> Application:
    """Deployments with their options bound to model references (no I/O, nothing resolved).

    The reference is passed once, as each model deployment's argument; a ``user_config`` that
    names a ``model`` (a config edit, ``serve deploy``) swaps it live. With a ``candidate``, a
    second model deployment (``CandidateClassifier``, same options) serves it, and the ingress's
    ``user_config`` carries the rollout mode and share (live-tunable the same way)."""
    check_bounds(opts)
    device = None if opts.device in (None, "auto") else opts.device
    user_config = _batch_config(opts)
    scaling: dict[str, Any] = {"num_replicas": opts.min_replicas}
    if opts.max_replicas > opts.min_replicas:
        scaling = {
            "autoscaling_config": {
                "min_replicas": opts.min_replicas,
                "max_replicas": opts.max_replicas,
                "target_ongoing_requests": opts.target_ongoing_requests,
                "upscale_delay_s": opts.upscale_delay_s,
                "downscale_delay_s": opts.downscale_delay_s,
                "metrics_interval_s": opts.metrics_interval_s,
                "look_back_period_s": opts.look_back_period_s,
            }
        }
    model_options = dict(
        **scaling,
        max_ongoing_requests=max(opts.max_ongoing_requests, opts.max_batch_size),
        max_queued_requests=opts.max_queued_requests,
        ray_actor_options={
            "num_cpus": opts.model_num_cpus,
            "num_gpus": opts.num_gpus,
            **_request_path(opts, {}),
        },
        user_config=user_config,
        max_surge_percent=opts.max_surge_percent,
    )
    model_args = {"device": device, "torch_threads": opts.torch_threads, "amp": opts.amp}
    if colocated(opts):
        return _ingress(opts, ref, None, _explainer(opts, ref, device), colocated=model_args)
    classifier = BirdClassifier.options(**model_options).bind(ref, **model_args)
    second = None
    if candidate is not None:
        second = BirdClassifier.options(name=CANDIDATE_DEPLOYMENT, **model_options).bind(
            candidate, **model_args
        )
    return _ingress(opts, ref, classifier, _explainer(opts, ref, device), candidate=second)


def _explainer(opts: AppArgs, ref: ModelRef, device: str | None) -> Application | None:
    if not opts.explain:
        return None
    return BirdExplainer.options(
        num_replicas=1,
        max_ongoing_requests=opts.explain_max_ongoing_requests,
        max_queued_requests=opts.explain_max_queued_requests,
        ray_actor_options={"num_cpus": opts.explain_num_cpus, "num_gpus": opts.explain_num_gpus},
        max_surge_percent=opts.max_surge_percent,
    ).bind(ref, device=device, torch_threads=opts.torch_threads)


def _ingress(
    opts: AppArgs,
    ref: ModelRef,
    classifier: Application | None,
    explainer: Application | None,
    candidate: Application | None = None,
    colocated: dict[str, Any] | None = None,
) -> Application:
    """The ingress deployment, bound to the model deployments, or (``colocated``: the model's
    arguments) holding the model itself, with the model's CPUs, GPUs and batch knobs."""
    # hand the key to the ingress replicas (they may run on other nodes than the builder)
    key = {opts.api_key_env: os.environ[opts.api_key_env]} if opts.api_key_env else {}
    ingress_actor = {"num_cpus": opts.ingress_num_cpus, **_request_path(opts, key)}
    user_config: dict[str, Any] = {"rollout": opts.rollout, "rollout_share": opts.rollout_share}
    model = None
    if colocated is not None:
        model = {"model": ref, **colocated}
        ingress_actor["num_cpus"] += opts.model_num_cpus
        ingress_actor["num_gpus"] = opts.num_gpus
        user_config.update(_batch_config(opts))
    return BirdIngress.options(
        num_replicas=opts.ingress_replicas,
        # above the app's own admission limit, so overload gets its JSON 503, not the proxy's
        max_ongoing_requests=max(
            opts.ingress_max_ongoing_requests, opts.max_concurrent_requests + PROBE_SLOTS
        ),
        max_queued_requests=opts.ingress_max_queued_requests,
        # the proxy's own last-resort 503 (ingress queue full) is plain text, but says when to retry
        backpressure_config=BackpressureConfig(retry_after_s=int(RETRY_AFTER_S)),
        ray_actor_options=ingress_actor,
        max_surge_percent=opts.max_surge_percent,
        user_config=user_config,
    ).bind(
        classifier,
        explainer,
        _limits(opts),
        opts.api_key_env,
        feedback_location(opts, ref),
        candidate=candidate,
        model=model,
    )


def _batch_config(opts: AppArgs) -> dict[str, Any]:
    return {
        "max_batch_size": opts.max_batch_size,
        "batch_wait_timeout_s": opts.batch_wait_timeout_s,
    }


def live_user_configs(args: dict[str, Any] | AppArgs) -> dict[str, dict[str, Any]]:
    """Each deployment's ``user_config`` for ``args``, models pinned to the versions their
    aliases name now. Put them under the Serve config's ``deployments`` and ``serve deploy``
    (Serve calls ``reconfigure``; nothing restarts, no request is dropped) to change the
    rollout's mode or share, or to follow ``birdray registry promote candidate`` / ``rollback``
    (pinned versions, so a move of an alias is a change Serve sees)."""
    opts = args if isinstance(args, AppArgs) else cfglib.from_dict(AppArgs, dict(args or {}))
    check_bounds(opts)
    batch = _batch_config(opts)
    production = opts.ref.pinned()
    pinned = {"model": production.model, "registry": production.registry}
    out = {"BirdIngress": {"rollout": opts.rollout, "rollout_share": opts.rollout_share}}
    if colocated(opts):  # the ingress holds the model: its user_config swaps it
        out["BirdIngress"].update({**batch, **pinned})
    else:
        out["BirdClassifier"] = {**batch, **pinned}
    if opts.explain:
        out["BirdExplainer"] = pinned
    if opts.candidate:
        candidate = ModelRef(opts.candidate, opts.registry).pinned()
        out[CANDIDATE_DEPLOYMENT] = {
            **batch,
            "model": candidate.model,
            "registry": candidate.registry,
        }
    return out


def feedback_location(opts: AppArgs, ref: ModelRef) -> str | None:
    """Where feedback goes: the given folder/bucket, ``<registry>/feedback`` for ``auto`` (no
    registry: disabled), or None (disabled) for an empty value."""
    if opts.feedback_dir == "auto":
        return storage.join(ref.registry, "feedback") if ref.registry else None
    return storage.absolute(opts.feedback_dir) if opts.feedback_dir else None


def app_args(cfg: Any) -> dict[str, Any]:
    """The ``AppArgs`` part of a larger config (e.g. ``ServeConfig``) as a plain dict."""
    names = {f.name for f in dataclasses.fields(AppArgs)}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
