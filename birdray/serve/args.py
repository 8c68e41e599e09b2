"""``AppArgs``: everything the Serve application accepts (a Serve config file's ``args:``, the
``birdray serve`` flags), and the checks that refuse a bad combination before anything starts.

Kept apart from the builder so what only reads the options (the resource plan, the proxy) does
not import the deployments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from birdray.config import field, numbers_out_of_range
from birdray.images import DEFAULT_MAX_ASPECT
from birdray.registry.ref import ModelChoice
from birdray.serve.rollout import check_rollout

COLOCATE = ("on", "off", "auto")
# Serve's -1: no limit on the requests waiting
UNLIMITED_ALLOWED = ("max_queued_requests", "ingress_max_queued_requests",
                     "explain_max_queued_requests")  # fmt: skip


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


def usable_api_key(name: str, value: str) -> str:
    """The key clients send, from ``value`` of variable ``name``: whitespace around it dropped
    (a secret file written by ``echo`` ends in a newline, which no header can carry: the key
    started, and then refused everyone). ``ValueError`` when nothing is left, or it holds what a
    header cannot carry as typed: non-ASCII (Starlette reads headers as Latin-1, clients send
    UTF-8, so it never matched) or control characters."""
    key = value.strip()
    if not key:
        raise ValueError(
            f"api_key_env names {name}, which is unset or empty: "
            "refusing to serve /v1 without an API key"
        )
    if not (key.isascii() and key.isprintable()):
        raise ValueError(
            f"the API key in {name} holds non-ASCII or control characters, which clients "
            "cannot send in a header as they are: use printable ASCII (e.g. `openssl rand -hex 32`)"
        )
    return key


def check_bounds(opts: AppArgs) -> None:
    """Fail closed before anything starts: a named API key must be there, limits must bound."""
    if opts.api_key_env is not None:
        if not opts.api_key_env.strip():
            raise ValueError("api_key_env is empty: name the variable that holds the API key")
        usable_api_key(opts.api_key_env, os.environ.get(opts.api_key_env, ""))
    for name, value, least in numbers_out_of_range(opts, dict.fromkeys(UNLIMITED_ALLOWED, -1)):
        raise ValueError(f"{name} must be a number >= {least:g} (got {value})")
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
