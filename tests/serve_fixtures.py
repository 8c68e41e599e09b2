"""Serve test helpers: one HTTP proxy per session on a free loopback port, apps deployed per test.

The session's ``serve_http`` fixture lives in ``conftest.py``; these are plain helpers. Every
app gets its own name and route prefix and is deleted afterwards, so Serve tests can share the
session's Ray cluster.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from birdray.serve.job import wait_ready


@contextlib.contextmanager
def deployed(base_url: str, name: str, **app_args: Any) -> Iterator[str]:
    """Run ``build_app(app_args)`` as app ``name`` under ``/<name>``; yields its URL."""
    from ray import serve

    from birdray.serve.app import build_app

    serve.run(build_app(app_args), name=name, route_prefix=f"/{name}")
    url = f"{base_url}/{name}"
    try:
        wait_ready(url, timeout_s=120)
        yield url
    finally:
        serve.delete(name)


def ready_version(url: str) -> str | None:
    """The model version ``/readyz`` reports, or None while the app is not ready."""
    try:
        resp = requests.get(f"{url}/readyz", timeout=5)
        return resp.json().get("model_version") if resp.status_code == 200 else None
    except requests.RequestException:
        return None


def wait_for(predicate, timeout_s: float, every_s: float = 0.5) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def small_app_args(model: str, **overrides: Any) -> dict[str, Any]:
    """App args sized for a 2-core test machine (fractional CPUs, one thread, no explainer)."""
    args = {
        "model": model,
        "registry": "",
        "explain": False,
        "torch_threads": 1,
        "model_num_cpus": 0.25,
        "ingress_num_cpus": 0.25,
    }
    return {**args, **overrides}


def random_rgb(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random colour picture (smooth so JPEG/palette round trips stay close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def post_images(
    url: str, files: list[tuple[str, bytes, str | None]], top_k: int = 5, **kwargs: Any
) -> requests.Response:
    parts = [
        ("files", (name, data, ctype) if ctype else (name, data)) for name, data, ctype in files
    ]
    return requests.post(
        f"{url}/v1/predict", params={"top_k": top_k}, files=parts, timeout=60, **kwargs
    )


@dataclass
class LoadRun:
    """What a load run saw: one entry per request, in completion order."""

    latencies_s: list[float] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else math.nan


def load(
    url: str,
    data: bytes,
    concurrency: int,
    requests_total: int | None = None,
    stop: threading.Event | None = None,
) -> LoadRun:
    """POST one image repeatedly from ``concurrency`` threads (until the count or ``stop``)."""
    run = LoadRun()
    lock = threading.Lock()
    counter = itertools.count()

    def worker() -> None:
        with requests.Session() as session:
            while True:
                if stop is not None and stop.is_set():
                    return
                if requests_total is not None and next(counter) >= requests_total:
                    return
                start = time.perf_counter()
                try:
                    resp = session.post(
                        f"{url}/v1/predict",
                        files={"files": ("x.png", data, "image/png")},
                        timeout=60,
                    )
                    result = resp.json()["results"][0] if resp.status_code == 200 else None
                    error = None if result and result["ok"] else f"{resp.status_code} {resp.text}"
                except Exception as exc:  # a dropped connection is exactly what we count
                    result, error = None, repr(exc)
                with lock:
                    run.latencies_s.append(time.perf_counter() - start)
                    if error:
                        run.errors.append(error)
                    else:
                        run.versions.append(result["model_version"])

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.wall_s = time.perf_counter() - started
    return run


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on a Prometheus endpoint (Ray's metrics port): (name, labels, value)."""
    text = requests.get(url, timeout=10).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
