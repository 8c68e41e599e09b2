"""``birdray serve`` as a user runs it: a local Ray, real HTTP, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from birdray.serve.job import free_port
from tests.model_fixture import make_package
from tests.serve_fixtures import encode, post_images, random_rgb


def _birdray_serve(tmp_path, port: int) -> subprocess.Popen:
    """``birdray serve`` of a small package on its own local Ray, output in one text pipe."""
    package = make_package(tmp_path / "pkg", num_classes=4)
    cmd = [
        sys.executable, "-m", "birdray.cli", "serve", "--model", str(package),
        "--registry", "none", "--port", str(port), "--explain", "false",
        "--num-cpus", "2", "--torch-threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_birdray_serve_command_serves_until_ctrl_c(tmp_path):
    port = free_port()
    proc = _birdray_serve(tmp_path, port)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        url = None
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            match = re.search(r"birdray serve: (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
            if "press Ctrl-C" in line:
                break
        if proc.poll() is not None:
            lines.append(proc.stdout.read())
        assert url == f"http://127.0.0.1:{port}", f"rc={proc.poll()}\n" + "".join(lines[-40:])
        resp = post_images(url, [("a.png", encode(random_rgb(41), "PNG"), "image/png")])
        assert resp.status_code == 200 and resp.json()["results"][0]["ok"]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        lines.append(out)
        assert proc.returncode == 0, "".join(lines[-40:])
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_birdray_serve_interrupted_while_starting_exits_cleanly(tmp_path):
    """Ctrl-C after Ray started but before the app answers: no traceback, exit 0, no app."""
    port = free_port()
    proc = _birdray_serve(tmp_path, port)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            lines.append(proc.stdout.readline())
            if "Started a local Ray instance" in lines[-1]:
                break
        assert "Started a local Ray instance" in lines[-1], "".join(lines[-40:])
        proc.send_signal(signal.SIGINT)  # Serve is still deploying the app
        out, _ = proc.communicate(timeout=120)
        lines.append(out)
        said = "".join(lines)
        assert proc.returncode == 0, said[-4000:]
        assert "stopped before it was ready" in said and "Traceback" not in said, said[-4000:]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
