"""``birdray dashboard``: the Streamlit dashboard on 127.0.0.1, pointed at Serve and the cluster.

The dashboard (``birdray/dashboard/app.py``, package data run by path) is a separate Streamlit
process and a pure client: it talks to Serve over HTTP and to the Ray Jobs API, and reads report
folders. Addresses and folders reach it as ``BIRDRAY_*`` environment variables; the Serve API key
too, copied from the variable named by ``--api-key-env`` (never a command-line flag, which ``ps``
would show to every local user). The addresses given here are the only ones the dashboard talks
to (its sidebar chooses among them): the API key and the Ray token go to them and nowhere else,
and never to the browser.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.config import field
from birdray.runtime import LOOPBACK, free_port, interrupts_held, sigterm_as_ctrl_c

APP = Path(__file__).resolve().parent / "dashboard" / "app.py"  # package data, run by path
PACKAGE_ROOT = APP.parents[2]  # the folder holding this birdray: a checkout or site-packages


@dataclass
class DashboardConfig:
    serve_url: str = field("http://127.0.0.1:8000", "the Serve app's URL (birdray serve prints it)")
    api_key_env: str = field("BIRDRAY_API_KEY", "env var holding the Serve API key, if it has one")
    jobs_address: str = field(
        "http://127.0.0.1:8265", "Ray Jobs API address (the Ray dashboard URL)"
    )
    serve_urls: list[str] = field(
        [], "more Serve URLs the sidebar may switch to (the only others it will talk to)"
    )
    jobs_addresses: list[str] = field(
        [], "more Ray Jobs addresses the sidebar may switch to (and send the Ray token to)"
    )
    registry: str = field("runs/registry", "model registry folder or URI (Models page)")
    sweep_dir: str = field(
        "runs/tune", "Tune results: a sweep folder, its report/, or their parent"
    )
    score_dir: str = field("runs/scored", "default batch-scoring output folder (Batch page)")
    job_runtime_env: str = field(
        "", "runtime_env YAML for submitted jobs (env_vars...; they run the cluster's birdray)"
    )
    host: str = field(LOOPBACK, "bind address (loopback: put an authenticating proxy in front)")
    port: int = field(8501, "HTTP port (0 picks a free one)")
    max_upload_mb: int = field(16, "largest photo the Classify page accepts (Serve's default)")
    request_timeout_s: float = field(60.0, "how long to wait for Serve's answer to one request")
    ready_timeout_s: float = field(120.0, "how long to wait for the dashboard to come up")
    blocking: bool = field(True, "keep running until Ctrl-C (false: start it and return)")


def _absolute(location: str) -> str:
    """Local paths relative to where the user ran the command; URIs as given."""
    return storage.absolute(location) if location else location


def dashboard_env(cfg: DashboardConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The Streamlit process's environment: ``base`` (os.environ) plus the BIRDRAY_* settings."""
    source = os.environ if base is None else base
    env = dict(source)
    env.update(
        BIRDRAY_SERVE_URL=cfg.serve_url,
        BIRDRAY_JOBS_ADDRESS=cfg.jobs_address,
        BIRDRAY_SERVE_URLS=",".join(cfg.serve_urls),
        BIRDRAY_JOBS_ADDRESSES=",".join(cfg.jobs_addresses),
        BIRDRAY_REGISTRY=_absolute(cfg.registry),
        BIRDRAY_SWEEP_DIR=_absolute(cfg.sweep_dir),
        BIRDRAY_SCORE_DIR=_absolute(cfg.score_dir),
        BIRDRAY_JOB_RUNTIME_ENV=_absolute(cfg.job_runtime_env),
        BIRDRAY_MAX_UPLOAD_MB=str(cfg.max_upload_mb),
        BIRDRAY_REQUEST_TIMEOUT_S=str(cfg.request_timeout_s),
    )
    env.pop("BIRDRAY_API_KEY", None)  # only the variable --api-key-env names gives the key
    if cfg.api_key_env and source.get(cfg.api_key_env):
        env["BIRDRAY_API_KEY"] = source[cfg.api_key_env]
    # Streamlit imports the same birdray as this process (a checkout, a wheel, a --target folder).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


def dashboard_command(cfg: DashboardConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        cfg.host,
        "--server.port",
        str(cfg.port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.maxUploadSize",
        str(cfg.max_upload_mb),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float, log: Path | None) -> None:
    """Poll Streamlit's health endpoint; fail early (with the log) if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"dashboard exited with code {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"dashboard at {url} did not come up within {timeout_s:.0f} s")


def launch(cfg: DashboardConfig, log: Path | None = None) -> tuple[str, subprocess.Popen]:
    """Start Streamlit; returns its URL once it answers, and the process (caller stops it)."""
    if not APP.is_file():
        raise FileNotFoundError(f"{APP} not found: reinstall birdray (this copy has no dashboard)")
    if cfg.port == 0:
        cfg = replace(cfg, port=free_port(cfg.host))
    url = f"http://{cfg.host}:{cfg.port}"
    output = open(log, "ab") if log else None  # the child process writes to it
    process = None
    try:
        with interrupts_held():
            process = subprocess.Popen(
                dashboard_command(cfg),
                env=dashboard_env(cfg),
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
        if output:
            output.close()
        wait_ready(url, process, cfg.ready_timeout_s, log)
    except BaseException:
        if output:
            output.close()
        if process is not None:
            stop(process)
        raise
    return url, process


def stop(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_dashboard(
    serve_url: str,
    registry: str,
    sweep_dir: str,
    score_dir: str,
    port: int = 0,
    **overrides: Any,
) -> tuple[str, subprocess.Popen]:
    """For ``birdray demo --dashboard`` and tests: a running dashboard's URL and its process.

    Output goes to ``<tmp>/birdray-dashboard-<port>.log``; ``overrides`` are further
    ``DashboardConfig`` fields (``jobs_address=...``, ``api_key_env=...``).
    """
    cfg = DashboardConfig(
        serve_url=serve_url,
        registry=str(registry),
        sweep_dir=str(sweep_dir),
        score_dir=str(score_dir),
        port=port,
        **overrides,
    )
    if cfg.port == 0:
        cfg = replace(cfg, port=free_port(cfg.host))
    log = Path(tempfile.gettempdir()) / f"birdray-dashboard-{cfg.port}.log"
    return launch(cfg, log)


def run_dashboard(cfg: DashboardConfig) -> dict[str, Any]:
    """Open the Streamlit dashboard (Classify, Batch scoring, Models) on 127.0.0.1.

    Ctrl-C or ``kill`` stops Streamlit with it and exits cleanly, while it is starting too (a
    traceback and exit code -2 used to greet a user who stopped it before it was ready)."""
    if cfg.blocking:
        sigterm_as_ctrl_c()
    try:
        url, process = launch(cfg)  # stops Streamlit itself when interrupted
    except KeyboardInterrupt:
        print("birdray dashboard: stopped before it was ready")
        return {"url": None, "pid": None, "stopped": "before it was ready"}
    print(f"birdray dashboard: {url}  (Serve {cfg.serve_url}, Ray jobs {cfg.jobs_address})")
    summary = {"url": url, "pid": process.pid}
    if not cfg.blocking:
        return summary
    try:
        process.wait()
    except KeyboardInterrupt:
        print("stopping the dashboard")
    finally:
        stop(process)
    return summary
