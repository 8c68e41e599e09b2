"""``birdray serve`` as a user runs it: a local Ray, real HTTP, Ctrl-C stops it cleanly."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from birdray.runtime import free_port
from tests.model_fixture import make_package
from tests.serve_fixtures import encode, post_images, random_rgb


def _birdray_serve(tmp_path, port: int, *extra: str) -> subprocess.Popen:
    """``birdray serve`` of a small package on its own local Ray, output in one text pipe."""
    package = make_package(tmp_path / "pkg", num_classes=4)
    cmd = [
        sys.executable, "-m", "birdray.cli", "serve", "--model", str(package),
        "--registry", "none", "--port", str(port), "--explain", "false",
        "--num-cpus", "2", "--torch-threads", "1", *extra,
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _tree(root: int) -> set[int]:
    """``root`` and every process below it (a local Ray's GCS, raylet and workers)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree, grew = tree | below, bool(below)
    return tree


def _listening_beyond_loopback(root: int) -> set[int]:
    """TCP ports that processes of ``root``'s tree listen on at an address other than loopback."""
    inodes = set()
    for pid in _tree(root):
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)]
            ip = ipaddress.ip_address(b"".join(words))
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (mapped or ip).is_loopback:
                ports.add(int(port, 16))
    return ports


def _refuses_without_rays_token(port: int) -> bool:
    """Whether Serve's internal gRPC service on ``port`` turns away a call without the token."""
    import grpc
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    with grpc.insecure_channel(f"localhost:{port}") as channel:
        call = serve_pb2_grpc.ASGIServiceStub(channel).HandleRequest
        try:
            call(serve_pb2.ASGIRequest(pickled_request_metadata=b"not a pickle"), timeout=10)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_birdray_serve_command_serves_until_ctrl_c(tmp_path):
    """It answers on the asked loopback port. The one port beyond loopback is Ray 2.60's own:
    every Serve replica opens an internal gRPC server on all interfaces, which unpickles what
    it is sent; Ray's token authentication (on by default for a new local Ray) must refuse a
    caller without the token (README, Serve)."""
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
        beyond = _listening_beyond_loopback(proc.pid)
        assert port not in beyond and len(beyond) <= 1, beyond  # the replica's, if any
        assert all(_refuses_without_rays_token(p) for p in beyond), beyond
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


def _haproxy_configs() -> dict[int, str]:
    """The config text of each running HAProxy process, by pid (its ``-f`` argument)."""
    found = {}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"haproxy") and b"-f" in args:
            config = Path(args[args.index(b"-f") + 1].decode())
            found[int(proc_dir.name)] = config.read_text() if config.exists() else ""
    return found


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_birdray_serve_proxy_haproxy_answers_through_haproxy_on_loopback(tmp_path):
    """``--proxy haproxy``: HAProxy listens on the asked port (loopback) and forwards to the
    replica's own server (loopback); Ctrl-C stops it quickly and leaves no HAProxy behind."""
    port = free_port()
    proc = _birdray_serve(tmp_path, port, "--proxy", "haproxy")
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            lines.append(proc.stdout.readline())
            if "press Ctrl-C" in lines[-1]:
                break
        assert "press Ctrl-C" in lines[-1], f"rc={proc.poll()}\n" + "".join(lines[-40:])
        url = f"http://127.0.0.1:{port}"
        resp = post_images(url, [("a.png", encode(random_rgb(43), "PNG"), "image/png")])
        assert resp.status_code == 200 and resp.json()["results"][0]["ok"], resp.text
        mine = {pid: text for pid, text in _haproxy_configs().items() if f":{port}\n" in text}
        assert mine, "no HAProxy process listens on the port\n" + "".join(lines[-40:])
        config = next(iter(mine.values()))
        assert f"bind 127.0.0.1:{port}" in config
        assert re.search(r"server \S+ 127\.0\.0\.1:\d+", config), config[-2000:]
        stopping = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        lines.append(out)
        assert proc.returncode == 0, "".join(lines[-40:])
        assert time.monotonic() - stopping < 60, "stopping waited out Ray's 30 s drain"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=5)
        time.sleep(2)
        assert not set(mine) & set(_haproxy_configs()), "HAProxy outlived birdray serve"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_proxy_haproxy_on_a_serve_that_runs_the_python_proxy_fails_before_deploying(
    serve_http, tmp_path
):
    from birdray.serve.job import serve_apps, start_local

    before = serve_apps()
    package = make_package(tmp_path / "pkg", num_classes=4)
    with pytest.raises(RuntimeError, match="RAY_SERVE_ENABLE_HA_PROXY=1"):
        start_local(str(package), registry="", name="never", route_prefix="/never",
                    explain=False, proxy="haproxy")  # fmt: skip
    assert serve_apps() == before
    assert os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1"  # the test process's Ray untouched
    with pytest.raises(ValueError, match="serve, haproxy"):
        start_local(str(package), registry="", proxy="nginx")
