"""The settings every dashboard page shares, and which addresses may receive a credential.

Credentials never pass through the browser or a person's typing. The addresses the dashboard may
talk to are configuration (``birdray dashboard --serve-url/--jobs-address`` and their allow-lists,
as ``BIRDRAY_*`` variables); the sidebar can only choose among them. The API key is read from the
environment at the moment of each request, attached only to a configured Serve origin, never
followed through a redirect, and never stored in ``Settings``, session state or a widget.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased with the default port filled in ('' if none):
    what a credential is bound to."""
    url = url.strip()
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:  # a bad port
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port is None:
        return ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}"


def _addresses(env: Mapping[str, str], one: str, many: str, default: str) -> tuple[str, ...]:
    """The configured address (first) plus its allow-list, without duplicates or blanks."""
    first = env.get(one, default).strip().rstrip("/")
    rest = [a.strip().rstrip("/") for a in env.get(many, "").split(",")]
    return tuple(dict.fromkeys(a for a in (first, *rest) if a))


def configured_serve_urls(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    return _addresses(env, "BIRDRAY_SERVE_URL", "BIRDRAY_SERVE_URLS", Settings.serve_url)


def configured_jobs_addresses(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    return _addresses(env, "BIRDRAY_JOBS_ADDRESS", "BIRDRAY_JOBS_ADDRESSES", Settings.jobs_address)


def is_configured(url: str, configured: tuple[str, ...]) -> bool:
    return bool(origin(url)) and origin(url) in {origin(a) for a in configured}


def api_key_for(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The Serve API key, for a configured Serve origin only ('' for anything else)."""
    env = os.environ if environ is None else environ
    return env.get("BIRDRAY_API_KEY", "") if is_configured(url, configured_serve_urls(env)) else ""


@dataclass(frozen=True)
class Settings:
    """Where the dashboard finds everything; defaults come from the launcher's environment.

    Holds no secret: pages keep it in session state.
    """

    serve_url: str = "http://127.0.0.1:8000"
    jobs_address: str = "http://127.0.0.1:8265"
    serve_urls: tuple[str, ...] = ()  # what the sidebar may choose from (configured)
    jobs_addresses: tuple[str, ...] = ()
    registry: str = "runs/registry"
    sweep_dir: str = "runs/tune"
    score_dir: str = "runs/scored"
    max_upload_mb: int = 16
    timeout_s: float = 60.0
    job_runtime_env: str = ""  # a runtime_env YAML for submitted jobs (empty: none)
    feedback_dir: str = ""  # where Serve stores feedback (read only; empty: <registry>/feedback)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        base = cls()
        serve_urls, jobs_addresses = configured_serve_urls(env), configured_jobs_addresses(env)
        return cls(
            serve_url=serve_urls[0],
            jobs_address=jobs_addresses[0],
            serve_urls=serve_urls,
            jobs_addresses=jobs_addresses,
            registry=env.get("BIRDRAY_REGISTRY", base.registry),
            sweep_dir=env.get("BIRDRAY_SWEEP_DIR", base.sweep_dir),
            score_dir=env.get("BIRDRAY_SCORE_DIR", base.score_dir),
            max_upload_mb=int(env.get("BIRDRAY_MAX_UPLOAD_MB", base.max_upload_mb)),
            timeout_s=float(env.get("BIRDRAY_REQUEST_TIMEOUT_S", base.timeout_s)),
            job_runtime_env=env.get("BIRDRAY_JOB_RUNTIME_ENV", base.job_runtime_env),
            feedback_dir=env.get("BIRDRAY_FEEDBACK_DIR", base.feedback_dir),
        )

    @property
    def feedback_location(self) -> str:
        """The feedback dataset the Review page reads (Serve's ``feedback_dir=auto`` default)."""
        return self.feedback_dir or f"{self.registry.rstrip('/')}/feedback"
