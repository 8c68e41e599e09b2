"""Serve against the direct model call and a plain FastAPI app, with one load client.

birdray's Serve app and the peer (``peer_app``: FastAPI + uvicorn around the same ``Predictor``)
get the same warm-up, the same sequential calls and the same concurrency levels from
``measure.http_load``; each level reports req/s, p50 and p99 for both, and start until ready.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from birdray.benchmark.measure import http_load, timed
from birdray.benchmark.stages import image_files, row


def _serve_rows(me: dict, peer: dict, bare_ips: float, direct_ms: float) -> list[dict]:
    """Rows for one Serve run and its peer's run with the same client (``me``/``peer``:
    {"startup_s", "sequential": load, "levels": [load per concurrency]})."""
    overhead = me["sequential"]["p50_ms"] - direct_ms
    peer_overhead = peer["sequential"]["p50_ms"] - direct_ms if peer else None
    rows = [
        row(
            "serve",
            "p50 one-image latency overhead over the direct call",
            overhead,
            None,
            "ms",
            "<= 5 ms",
            overhead <= 5,
            peer=peer_overhead,
            p50_ms=me["sequential"]["p50_ms"],
            p99_ms=me["sequential"]["p99_ms"],
            direct_p50_ms=direct_ms,
        ),
        row("serve", "start until ready", me["startup_s"], None, "s", peer=peer.get("startup_s")),
    ]
    peer_levels = {lv["concurrency"]: lv for lv in peer.get("levels", [])}
    previous: dict | None = None
    for load in me["levels"]:
        c, other = load["concurrency"], peer_levels.get(load["concurrency"], {})
        goals = _level_goals(load, previous, other)
        previous = load
        # refused or failed requests are not in the rates and percentiles: the table says so
        failures = f"{load['failed']}" + (f" / peer {other['failed']}" if other else "")
        refused = (
            f", failed {failures} of {load['requests']}"
            if load["failed"] or (other and other.get("failed"))
            else ""
        )
        rows.append(
            row(
                "serve",
                f"req/s at concurrency {c} (1 image each{refused})",
                load["req_s"],
                bare_ips,
                "req/s",
                goals,
                peer=other.get("req_s"),
                failed=load["failed"],
                peer_failed=other.get("failed"),
            )
        )
        for q in ("p50", "p99"):
            at_one = q == "p50" and c == 1 and bool(other)
            rows.append(
                row(
                    "serve",
                    f"{q} latency at concurrency {c}",
                    load[f"{q}_ms"],
                    None,
                    "ms",
                    "<= 1.3x the plain app" if at_one else "",
                    load["p50_ms"] <= 1.3 * other["p50_ms"] if at_one else None,
                    peer=other.get(f"{q}_ms"),
                )
            )
        if load.get("cpu_ms_per_answer") is not None:
            rows.append(
                row(
                    "serve",
                    f"CPU ms per answer at concurrency {c} (all processes; the client's alone "
                    f"{load['client_cpu_ms_per_answer']:.1f})",
                    load["cpu_ms_per_answer"],
                    None,
                    "ms",
                    peer=other.get("cpu_ms_per_answer"),
                    client_cpu_ms=load["client_cpu_ms_per_answer"],
                    peer_client_cpu_ms=other.get("client_cpu_ms_per_answer"),
                )
            )
    return rows


def _level_goals(load: dict, previous: dict | None, peer: dict) -> list[tuple[str, bool | None]]:
    """Issue 16's goals for one level's rate: throughput never falls as concurrency rises (each
    level at least the previous one's), and at 32 clients 1.5x the plain app (batching pays)."""
    goals: list[tuple[str, bool | None]] = []
    if previous is not None:
        goals.append((f">= c={previous['concurrency']}'s rate", load["req_s"] >= previous["req_s"]))
    if load["concurrency"] == 32 and peer.get("req_s"):
        goals.append((">= 1.5x the plain app", load["req_s"] >= 1.5 * peer["req_s"]))
    return goals


def level_requests(requests: int, concurrency: int, per_client: int) -> int:
    """Requests sent at one level: ``requests``, or ``per_client`` for each client if that is
    more, so every level reaches steady state (each quick 503 spends one of them)."""
    return max(requests, per_client * concurrency)


def _drive(
    url: str, payloads: list[bytes], requests: int, levels: list[int], per_client: int
) -> dict:
    """The same load for birdray and the peer: a warm-up, sequential calls, then each level."""
    http_load(url, payloads, min(10, requests), 1)  # warm-up, not reported
    sequential = http_load(url, payloads, min(requests, 100), 1)
    return {
        "sequential": sequential,
        "levels": [
            http_load(url, payloads, level_requests(requests, c, per_client), c) for c in levels
        ],
    }


def bench_serve(
    source: Path,
    package: Path,
    requests: int,
    threads: int,
    levels: list[int] | tuple[int, ...] = (1, 8, 32, 128),
    peers: bool = False,
    proxy: str = "serve",
    *,
    per_client: int,
) -> list[dict]:
    """One-image latency overhead vs the direct call; req/s, p50 and p99 per concurrency level,
    for birdray's Serve app and (``peers``) a plain FastAPI app, hit by the same client."""
    from birdray.benchmark.peers import serve_peer
    from birdray.model.inference import Predictor
    from birdray.serve.job import start_local  # colocate=auto, as `birdray serve`

    files = image_files(source)[:32]
    payloads = [p.read_bytes() for p in files]
    predictor = Predictor(str(package), device="cpu", num_threads=threads)
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in payloads]
    direct = [
        timed(lambda im=im: predictor.predict_images([im]), 1, warmup=1)["median_s"]
        for im in images
    ]
    batch = predictor.preprocess(images)
    bare_ips = len(images) / timed(lambda: predictor.logits(batch), 3, warmup=1)["median_s"]
    load = (payloads, requests, list(levels), per_client)
    started = time.perf_counter()
    app = start_local(
        model=str(package),
        registry="",
        name="bench",
        route_prefix="/bench",
        max_batch_size=32,
        torch_threads=threads,
        explain=False,
        max_ongoing_requests=64,
        proxy=proxy,
    )
    try:
        me = {"startup_s": time.perf_counter() - started}
        me.update(_drive(f"{app.url}/v1/predict", *load))
    finally:
        app.stop()
    peer: dict[str, Any] = {}
    if peers:
        with serve_peer(package, threads) as plain:
            peer = {"startup_s": plain["startup_s"]}
            peer.update(_drive(f"{plain['url']}/v1/predict", *load))
    return _serve_rows(me, peer, bare_ips, float(np.median(direct)) * 1000)
