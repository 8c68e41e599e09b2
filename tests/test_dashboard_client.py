"""Dashboard plumbing without a cluster: job commands, credentials, filters, the launcher."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest

from birdray.dashboard.client import error_text, species_name
from birdray.dashboard.ray_jobs import ScoringRequest, ray_auth_headers, scoring_entrypoint
from birdray.dashboard.settings import Settings, api_key_for
from birdray.dashboard.stage_reports import filter_rows
from birdray.dashboard_launcher import (
    DashboardConfig,
    dashboard_command,
    dashboard_env,
    start_dashboard,
    stop,
)


def test_entrypoint_quotes_every_value(tmp_path):
    hostile = str(tmp_path / "my photos; rm -rf ~ $(reboot)")
    req = ScoringRequest(
        input=hostile,
        output="s3://bucket/out dir",
        model="v0003",
        registry=str(tmp_path / "reg"),
        explain_lowest=4,
    )
    argv = shlex.split(scoring_entrypoint(req))
    assert argv[:4] == ["python", "-m", "birdray.cli", "score"]  # the cluster's birdray
    args = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert args["--input"] == hostile  # one argument, unchanged: nothing for a shell to run
    assert args["--output"] == "s3://bucket/out dir"
    assert args["--model"] == "v0003"
    assert args["--registry"] == str(tmp_path / "reg")
    assert args["--explain-lowest"] == "4"


def test_entrypoint_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(
        scoring_entrypoint(ScoringRequest(input="photos", output="out", model="pkg"))
    )
    args = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert args["--input"] == str(tmp_path / "photos")
    assert args["--model"] == str(tmp_path / "pkg")  # not a registry ref: a package folder


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("input", "", "required"),
        ("input", "--overwrite", "start with '-'"),
        ("output", "out\n--overwrite true", "single line"),
        ("model", "-x", "start with '-'"),
    ],
)
def test_entrypoint_refuses_flag_injection(field, value, problem):
    values = {"input": "photos", "output": "out", "model": "production", field: value}
    with pytest.raises(ValueError, match=problem):
        scoring_entrypoint(ScoringRequest(**values))


def test_ray_token_from_env_file_or_home(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token here
    assert ray_auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert ray_auth_headers() == {"Authorization": "Bearer home-token"}
    token_file = tmp_path / "cluster_token"
    token_file.write_text("file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert ray_auth_headers() == {"Authorization": "Bearer file-token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert ray_auth_headers() == {"Authorization": "Bearer env-token"}


def test_settings_come_from_the_launchers_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_FOR_SERVE", "k3y")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIRDRAY_API_KEY", "inherited")  # only --api-key-env's variable counts
    cfg = DashboardConfig(
        serve_url="http://127.0.0.1:9000/",
        serve_urls=["http://10.0.0.5:8000"],
        jobs_addresses=["http://10.0.0.5:8265"],
        api_key_env="SECRET_FOR_SERVE",
        registry="/r",
        sweep_dir="runs/tune",
        score_dir="/mnt/birdray/scored",
        max_upload_mb=3,
    )
    env = dashboard_env(cfg)
    settings = Settings.from_env(env)
    assert settings.serve_url == "http://127.0.0.1:9000"
    assert settings.serve_urls == ("http://127.0.0.1:9000", "http://10.0.0.5:8000")
    assert settings.jobs_addresses == ("http://127.0.0.1:8265", "http://10.0.0.5:8265")
    assert "k3y" not in repr(settings)  # settings live in session state: no secret in them
    assert api_key_for("http://127.0.0.1:9000/v1/predict", env) == "k3y"
    assert api_key_for("http://10.0.0.5:8000/readyz", env) == "k3y"
    assert api_key_for("http://10.0.0.6:8000/readyz", env) == ""
    assert api_key_for("https://127.0.0.1:9000/v1/predict", env) == ""  # another origin
    assert dashboard_env(DashboardConfig(api_key_env="")).get("BIRDRAY_API_KEY") is None
    assert settings.registry == "/r"
    assert settings.sweep_dir == str(tmp_path / "runs" / "tune")  # relative to where it ran
    assert settings.score_dir == "/mnt/birdray/scored"
    assert settings.max_upload_mb == 3
    command = dashboard_command(cfg)
    assert "k3y" not in " ".join(command)  # the key never appears on a command line
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.maxUploadSize") + 1] == "3"


def test_plain_words():
    assert species_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert species_name("Species_3") == "Species 3"
    text = error_text({"code": "not_an_image", "message": "bytes are not a recognised image"})
    assert text.startswith("This is not an image file") and "recognised" in text


def test_result_filters():
    rows = pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "ok": [True, True, True, False],
            "species": ["001.A", "002.B", "001.A", None],
            "confidence": [0.9, 0.3, 0.4, None],
            "error": [None, None, None, "corrupt_image: x"],
        }
    )
    assert filter_rows(rows, [], None, "errors")["path"].tolist() == ["d"]
    assert filter_rows(rows, ["001.A"], None, "all")["path"].tolist() == ["a", "c"]
    assert filter_rows(rows, [], 0.5, "all")["path"].tolist() == ["b", "c"]
    assert filter_rows(rows, ["001.A"], 0.5, "scored")["path"].tolist() == ["c"]


@pytest.mark.timeout(240)
def test_launcher_serves_the_app_on_loopback(tmp_path):
    url, process = start_dashboard(
        "http://127.0.0.1:9",
        tmp_path / "reg",
        tmp_path / "tune",
        tmp_path / "scored",
        ready_timeout_s=180,
    )
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as resp:
            assert resp.read() == b"ok"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"<noscript>" in resp.read()  # Streamlit's page shell
    finally:
        stop(process)
    assert process.returncode is not None


@pytest.mark.timeout(240)
def test_birdray_dashboard_stopped_by_sigterm_stops_streamlit_too(tmp_path):
    """``kill PID`` (or a service manager) of ``birdray dashboard`` left Streamlit serving."""
    import re
    import signal

    proc = _birdray_dashboard(tmp_path)
    try:
        lines, match = [], None
        for line in proc.stdout:
            lines.append(line)
            if match := re.search(r"birdray dashboard: (http://127\.0\.0\.1:\d+)", line):
                break
        assert match, "".join(lines[-30:])
        url = match.group(1)
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as resp:
            assert resp.read() == b"ok"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0
        with pytest.raises(OSError):  # Streamlit is gone with it
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(240)
def test_birdray_dashboard_interrupted_while_starting_exits_cleanly(tmp_path):
    """Ctrl-C before Streamlit answers (CI's journey hit it): no traceback, exit 0, no orphan."""
    import signal
    import time
    from pathlib import Path

    def children(pid: int) -> list[int]:  # Linux: the kernel lists a process's children
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(c) for c in path.read_text().split()] if path.exists() else []

    def alive(pid: int) -> bool:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split(") ")[-1][:1] not in ("Z", "X")

    proc = _birdray_dashboard(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (streamlit := children(proc.pid)):  # Streamlit started, not ready yet
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped before it was ready" in out and "Traceback" not in out
        assert not any(alive(pid) for pid in streamlit)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_while_popen_returns_still_stops_the_child(tmp_path, monkeypatch):
    """The race behind the test above, made certain: the signal lands after the fork, before
    ``Popen`` hands back the process; the launcher must still know the child to stop it."""
    import signal
    import time

    from birdray import dashboard_launcher as launcher
    from birdray.runtime import free_port

    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_interrupted_before_returning(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # Python runs the handler here, unless the launcher holds it
        return started[-1]

    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    monkeypatch.setattr(launcher, "dashboard_command", lambda cfg: sleeper)
    monkeypatch.setattr(launcher.subprocess, "Popen", popen_interrupted_before_returning)
    try:
        with pytest.raises(KeyboardInterrupt):
            launcher.launch(launcher.DashboardConfig(port=free_port()), tmp_path / "log")
        assert len(started) == 1 and started[0].poll() is not None, "the child outlived it"
    finally:
        for child in started:
            child.kill()
            child.wait()


def _birdray_dashboard(tmp_path) -> subprocess.Popen:
    """``birdray dashboard`` as a user starts it (any free port), output in one text pipe."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "birdray.cli", "dashboard", "--port", "0", "--registry",
         str(tmp_path / "reg"), "--serve-url", "http://127.0.0.1:9"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
