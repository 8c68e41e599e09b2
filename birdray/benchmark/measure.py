"""Measuring helpers: repeated timings with median and spread, peak memory, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import requests as http


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> dict[str, Any]:
    """Median, min and max wall seconds of ``repeats`` calls (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    seconds = []
    result = None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": len(seconds),
        "last": result,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def http_load(
    url: str, payloads: list[bytes], requests: int, concurrency: int, field: str = "files"
) -> dict[str, Any]:
    """POST ``requests`` one-image uploads to ``url`` from ``concurrency`` threads.

    The one load client for birdray's Serve and the plain-FastAPI peer, so their numbers differ
    only by the server. Each thread keeps its own HTTP session (a shared one drops connections
    past its pool size). A non-2xx answer (503 busy, 504) is counted as failed, not raised:
    answering excess load quickly is behaviour to report. Latency percentiles are of the
    successful requests; ``req_s`` counts successful answers per wall second.
    """

    local = threading.local()

    def call(i: int) -> tuple[bool, float]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = http.Session()
        started = time.perf_counter()
        try:
            body = {field: ("b.jpg", payloads[i % len(payloads)])}
            ok = session.post(url, files=body, timeout=300).ok
        except http.RequestException:
            ok = False
        return ok, time.perf_counter() - started

    busy_before, client_before = machine_busy_s(), time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        results = list(pool.map(call, range(requests)))
    seconds = time.perf_counter() - started
    busy_after, client_s = machine_busy_s(), time.process_time() - client_before
    good = [s for ok, s in results if ok]
    per_answer = 1000 / max(1, len(good))
    measured = busy_before is not None and busy_after is not None
    return {
        "concurrency": concurrency,
        "requests": requests,
        "failed": requests - len(good),
        "req_s": len(good) / seconds,
        "p50_ms": percentile(good, 50) * 1000,
        "p99_ms": percentile(good, 99) * 1000,
        "latencies_s": good,
        # where a level's rate comes from on a CPU-bound machine: CPU spent per answer
        "cpu_ms_per_answer": (busy_after - busy_before) * per_answer if measured else None,
        "client_cpu_ms_per_answer": client_s * per_answer,
    }


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``; None
    elsewhere): the difference over a load level, divided by its answers, is what each answer
    cost in all processes together (server, Ray's, the client)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user, nice, system, then irq and softirq; not idle, iowait, a hypervisor's steal, or
    # guest time (already inside user and nice)
    busy = sum(ticks[:3]) + sum(ticks[5:7])
    return busy / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_ray_worker(pid: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ray::" in cmd or b"default_worker.py" in cmd


class PeakMemory:
    """Samples RSS of this driver and of Ray worker processes; keeps the peaks (Linux /proc)."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.driver_peak_mb = 0.0
        self.workers_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            self.driver_peak_mb = max(self.driver_peak_mb, _rss_kb(me) / 1024)
            workers = sum(
                _rss_kb(p)
                for p in os.listdir("/proc")
                if p.isdigit() and p != me and _is_ray_worker(p)
            )
            self.workers_peak_mb = max(self.workers_peak_mb, workers / 1024)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, GPU, versions. Ray is optional: the GPU check
    runs on a box without it."""
    import timm
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ray": _version("ray"),
        "platform": platform.platform(),
    }
