"""Helpers for the dashboard tests: the app under ``AppTest``, and its rendered text."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def texts(at, kind: str) -> list[str]:
    """The text of every element of one kind (``markdown``, ``error``, ``info``...)."""
    return [str(element.value) for element in getattr(at, kind)]


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


@contextlib.contextmanager
def ray_head(num_cpus: int = 4, timeout_s: float = 400) -> Iterator[tuple[str, Path]]:
    """A real ``ray start --head`` with its Jobs API on 127.0.0.1 and token auth on.

    Yields the Jobs address and the token file. The cluster has its own temp dir (short: Unix
    socket paths are limited to ~107 bytes) and is stopped through its own ``ray start --block``
    process, never with ``ray stop`` (which would stop every Ray on the machine).
    """
    from ray.job_submission import JobSubmissionClient

    from birdray.runtime import free_port

    tmp = Path(tempfile.mkdtemp(prefix="brd-", dir="/tmp"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    dashboard_port = free_port()
    command = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--dashboard-port",
        str(dashboard_port),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--ray-client-server-port",  # 10001 by default: another Ray head on the machine may hold it
        str(free_port()),
        "--include-dashboard",
        "true",
        "--num-cpus",
        str(num_cpus),
        "--object-store-memory",
        str(200 * 2**20),
        "--temp-dir",
        str(tmp / "ray"),
    ]
    log = open(tmp / "ray_start.log", "wb")  # closed in the finally below
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_jobs(address, token, process, timeout_s, JobSubmissionClient)
        yield address, token
    finally:
        process.terminate()  # the --block process drains the node and stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything left in its process group
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_for_jobs(address, token, process, timeout_s, client_cls) -> None:
    """Until a trivial job runs: the job agent starts well after the dashboard answers."""
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    deadline, last = time.monotonic() + timeout_s, "not started"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            client = client_cls(address, headers=headers)
            job = client.submit_job(entrypoint="echo ready")
            while not client.get_job_status(job).is_terminal():
                time.sleep(1)
            if str(client.get_job_status(job)) == "SUCCEEDED":
                return
            last = client.get_job_logs(job)
        except Exception as exc:  # not up yet
            last = str(exc)[:200]
        time.sleep(2)
    raise TimeoutError(f"Ray Jobs API at {address} not ready after {timeout_s:.0f} s: {last}")


def dump(at) -> str:
    """Everything a person would read on the page (for assertion messages)."""
    kinds = ("error", "warning", "info", "success", "markdown", "caption", "code")
    return "\n".join(f"{kind}: {text}" for kind in kinds for text in texts(at, kind))


def image_captions(at) -> list[str]:
    """Captions of every ``st.image`` on the page (they are not ``st.caption`` elements)."""
    return [caption for node in at.get("image") for caption in node.captions]
