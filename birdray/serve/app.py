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
from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from birdray import config as cfglib
from birdray import storage
from birdray.feedback.store import location_problem
from birdray.registry.ref import ModelRef
from birdray.serve.args import AppArgs, check_bounds, colocated
from birdray.serve.classifier import BirdClassifier
from birdray.serve.errors import RETRY_AFTER_S
from birdray.serve.explainer import BirdExplainer
from birdray.serve.ingress import BirdIngress
from birdray.serve.replica import PROBE_SLOTS
from birdray.serve.uploads import Limits

CANDIDATE_DEPLOYMENT = "CandidateClassifier"  # the candidate's model deployment (its own options)

__all__ = ["AppArgs", "BirdClassifier", "BirdExplainer", "BirdIngress", "bind_app", "build_app"]


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


def build_app(args: dict[str, Any]) -> Application:
    """The birdray Serve application for ``args`` (keys: the fields of ``AppArgs``)."""
    opts = args if isinstance(args, AppArgs) else cfglib.from_dict(AppArgs, dict(args or {}))
    check_bounds(opts)  # before any registry is read
    # an alias becomes a version: a swap is an edit
    candidate = ModelRef(opts.candidate, opts.registry).pinned() if opts.candidate else None
    production = opts.ref.pinned()
    feedback = feedback_location(opts, production)
    if feedback and (problem := location_problem(feedback)):  # answers stored as "ok" there
        raise ValueError(f"feedback_dir: {problem}")  # would be refused whole when read
    return bind_app(opts, production, candidate)


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
