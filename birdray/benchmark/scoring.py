"""Batch scoring against the bare model's forward pass on pre-decoded tensors and against a
timm ``inference.py``-style DataLoader loop (``peers.py``): whole command, steady state and the
seconds until the first results, as separate rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from birdray.benchmark.measure import PeakMemory, timed
from birdray.benchmark.stages import image_files, row
from birdray.runtime import init_ray

STEADY_MIN_BATCHES = 8  # batches of images below which no steady-state rate is reported


def decoded_batch(files: list[Path], data_config: dict, uint8: bool) -> torch.Tensor:
    from birdray.model.preprocess import build_transform

    transform = build_transform(data_config, training=False, uint8=uint8)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in files])


def bench_score(
    source: Path,
    dataset: Path | None,
    package: Path,
    out: Path,
    batch_size: int,
    threads: int,
    label: str = "1x",
    peers: bool = False,
) -> list[dict]:
    """Batch scoring images/s (whole command and steady state) vs the bare model forward on
    pre-decoded tensors and, for the folder, the DataLoader peer; start-up seconds apart.
    Issue 16's goals are judged on the main run (``label`` 1x), not on the scaling run's sizes."""
    from birdray.benchmark.peers import score_peer
    from birdray.model.inference import Predictor
    from birdray.scoring.job import ScoreConfig, run_scoring

    judged = label == "1x"
    files = image_files(source)
    predictor = Predictor(str(package), device="cpu", num_threads=threads)
    batch = decoded_batch(files[:batch_size], predictor.metadata.data_config, uint8=False)
    bare = timed(lambda: predictor.logits(batch), 5, warmup=1)
    bare_ips = len(batch) / bare["median_s"]
    rows = []
    inputs = [("folder", str(source / "CUB_200_2011" / "images"))]
    if dataset is not None:
        inputs.append(("parquet", str(dataset)))
    for kind, uri in inputs:
        cfg = ScoreConfig(
            input=uri,
            output=str(out / kind),
            model=str(package),
            overwrite=True,
            batch_size=batch_size,
            torch_threads=threads,
            split="test",
        )
        with PeakMemory() as memory:
            started = time.perf_counter()
            summary = run_scoring(cfg)
            seconds = time.perf_counter() - started
        count = summary.get("files_seen") or summary.get("rows") or len(files)
        ips = count / seconds
        peer: dict[str, Any] = {}
        if peers and kind == "folder":  # DataLoader workers = the decode tasks' CPUs
            have = float(init_ray().get("CPU", 1.0))
            workers = max(1, int(have - cfg.actor_cpus * cfg.pool_size))
            peer = score_peer(Path(uri), package, out / "peer", batch_size, threads, workers)
        rows.append(
            row(
                "score",
                f"{kind} images/s, whole command ({count} images, {label})",
                ips,
                bare_ips,
                "img/s",
                [
                    (">= 0.8 of the bare model", ips >= 0.8 * bare_ips if judged else None),
                    (">= 1.0x the peer", ips >= peer["images_per_s"] if peer else None),
                ],
                peer=peer.get("images_per_s"),
                seconds=seconds,
                peer_seconds=peer.get("seconds"),
                peer_workers=peer.get("workers"),
                driver_peak_mb=memory.driver_peak_mb,
                workers_peak_mb=memory.workers_peak_mb,
            )
        )
        timing = summary.get("timing", {})
        steady = timing.get("steady_images_per_s")
        # the rate after the first block means something only when many batches follow it: on
        # a few dozen images the rest is already done when the first arrives (rates above the
        # bare model's)
        if steady and count >= STEADY_MIN_BATCHES * batch_size:
            rows.append(
                row(
                    "score",
                    f"{kind} images/s, steady state ({label})",
                    float(steady),
                    bare_ips,
                    "img/s",
                    peer=peer.get("steady_images_per_s"),
                )
            )
        startup = timing["total_s"] - timing["scoring_s"] + timing.get("first_rows_s", 0.0)
        rows.append(
            row(
                "score",
                f"{kind} seconds until the first results ({label})",
                startup,
                None,
                "s",
                peer=peer.get("startup_s"),
            )
        )
    return rows
