"""The dashboard's side of the Ray Jobs API: submit batch scoring, follow it, stop it.

Jobs are submitted like ``ray job submit -- python -m birdray.cli score ...``: the cluster runs
the birdray installed on it (no working dir is uploaded, so the dashboard works from an installed
wheel as from a checkout), and the entrypoint is built from validated values, each one
shell-quoted. Nothing here is cached except the client itself: job state changes all the time.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import yaml

from birdray import storage
from birdray.dashboard.client import ServiceError, first_line
from birdray.dashboard.settings import Settings, configured_jobs_addresses, is_configured

SCORING_JOB = "batch_score"  # metadata["birdray"] of the jobs this dashboard submits


def ray_auth_headers() -> dict[str, str]:
    """Ray's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) as a Bearer header.

    Ray 2.60 clusters check a token on the Jobs API; Ray's client sends it only when this process
    itself runs in token mode, so the dashboard sends it explicitly when one is configured.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def jobs_client(address: str):
    """The cached ``JobSubmissionClient`` for this address and the token in use now.

    Only for a configured Jobs address: the token lets its holder run code on the cluster, so it
    is never sent anywhere else (refused before connecting).
    """
    if not is_configured(address, configured_jobs_addresses()):
        raise ServiceError(
            "jobs_not_configured",
            f"{address} is not a configured Ray Jobs address; the dashboard submits only to the "
            "addresses it was started with (birdray dashboard --jobs-address / --jobs-addresses).",
        )
    headers = ray_auth_headers()
    fingerprint = hashlib.sha256(repr(sorted(headers.items())).encode()).hexdigest()[:16]
    return _client(address, fingerprint, headers)


@st.cache_resource(show_spinner=False, ttl=600)
def _client(address: str, fingerprint: str, _headers: dict[str, str]):
    """One client per address and token (``_headers`` is not hashed: it holds the secret)."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=_headers)
    except Exception as exc:  # connection refused, bad token, not a Ray dashboard...
        raise ServiceError(
            "jobs_unreachable",
            f"Cannot use the Ray Jobs API at {address}: {first_line(exc)}. "
            "Check the Ray Jobs address it was started with (the Ray dashboard URL, port 8265 "
            "by default).",
        ) from exc


@dataclass(frozen=True)
class ScoringRequest:
    """What a person asks for on the Batch page; every value becomes one quoted argument."""

    input: str
    output: str
    model: str = "production"
    registry: str = ""
    explain_lowest: int = 0
    overwrite: bool = False
    csv: bool = True


def _checked(name: str, value: str, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise ValueError(f"{name} is required")
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError(f"{name} must be a single line")
    if value.startswith("-"):
        raise ValueError(f"{name} must not start with '-'")
    return value


def _location(value: str) -> str:
    """A URI as given; a local path made absolute (the job runs in another working directory)."""
    return storage.absolute(value) if value else value


def scoring_entrypoint(req: ScoringRequest) -> str:
    """The job's shell command; each value is validated, then quoted (no shell injection)."""
    model = _checked("model", req.model)
    if not re.fullmatch(r"production|latest|v\d{4,}", model):
        model = _location(model)
    args = [
        "python",
        "-m",
        "birdray.cli",
        "score",
        "--input",
        _location(_checked("input", req.input)),
        "--output",
        _location(_checked("output", req.output)),
        "--model",
        model,
    ]
    registry = _checked("registry", req.registry, required=False)
    if registry:
        args += ["--registry", _location(registry)]
    if req.explain_lowest < 0:
        raise ValueError("explain_lowest must be >= 0")
    args += ["--explain-lowest", str(int(req.explain_lowest)), "--csv", str(req.csv).lower()]
    if req.overwrite:
        args += ["--overwrite", "true"]
    return shlex.join(args)


def job_runtime_env(runtime_env_file: str) -> dict[str, Any]:
    """The runtime_env of the configured YAML file, if any (env_vars, pip...).

    No working_dir is added: the entrypoint is the cluster's installed ``birdray``, and a
    dashboard installed from a wheel has no checkout to upload.
    """
    if runtime_env_file and Path(runtime_env_file).is_file():
        return yaml.safe_load(Path(runtime_env_file).read_text()) or {}
    return {}


def submit_scoring(settings: Settings, req: ScoringRequest) -> str:
    """Submit ``birdray score`` to the Jobs API; returns the submission id."""
    entrypoint = scoring_entrypoint(req)
    client = jobs_client(settings.jobs_address)
    metadata = {
        "birdray": SCORING_JOB,
        "input": req.input,
        "output": _location(req.output.strip()),
        "model": req.model,
    }
    try:
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env=job_runtime_env(settings.job_runtime_env),
            metadata=metadata,
            submission_id=f"birdray-score-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        )
    except Exception as exc:
        text = first_line(exc)
        if "No available agent" in text:
            text = "the cluster's job agent is still starting; try again in a few seconds"
        raise ServiceError("submit_failed", f"The job was not submitted: {text}") from exc


def scoring_jobs(settings: Settings) -> list[dict[str, Any]]:
    """This dashboard's scoring jobs on the cluster, newest first."""
    client = jobs_client(settings.jobs_address)
    try:
        jobs = client.list_jobs()
    except Exception as exc:
        raise ServiceError("jobs_failed", f"Cannot list jobs: {first_line(exc)}") from exc
    mine = [j for j in jobs if (j.metadata or {}).get("birdray") == SCORING_JOB]
    rows = [
        {
            "submission_id": j.submission_id,
            "status": str(j.status.value),
            "started": time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1e3)
            ),
            "input": j.metadata.get("input", ""),
            "output": j.metadata.get("output", ""),
            "model": j.metadata.get("model", ""),
            "message": j.message or "",
        }
        for j in mine
    ]
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def job_state(settings: Settings, submission_id: str, tail: int = 200) -> dict[str, Any]:
    """Status, message and the last ``tail`` log lines of one job (never cached: it changes)."""
    client = jobs_client(settings.jobs_address)
    try:
        info = client.get_job_info(submission_id)
        logs = client.get_job_logs(submission_id)
    except Exception as exc:
        raise ServiceError(
            "jobs_failed", f"Cannot read job {submission_id}: {first_line(exc)}"
        ) from exc
    return {
        "status": str(info.status.value),
        "terminal": info.status.is_terminal(),
        "message": info.message or "",
        "logs": "\n".join(logs.splitlines()[-tail:]),
        "output": (info.metadata or {}).get("output", ""),
    }


def stop_job(settings: Settings, submission_id: str) -> bool:
    return bool(jobs_client(settings.jobs_address).stop_job(submission_id))
