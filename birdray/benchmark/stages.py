"""Each stage's birdray path against its practical limit, measured in the same process.

ingest vs reading the bytes; Ray Train vs a plain PyTorch loop on pre-decoded tensors; batch
scoring vs the bare model's forward pass; Serve vs calling the model directly; explanations per
method. Every function returns result rows (see ``row``) for the report.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from birdray.benchmark.measure import PeakMemory, percentile, timed


def row(
    stage: str,
    metric: str,
    value: float,
    baseline: float | None,
    unit: str,
    goal: str = "",
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    ratio = value / baseline if baseline else None
    return {
        "stage": stage,
        "metric": metric,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "goal": goal,
        "met": None if met is None else bool(met),  # numpy bools would serialise as text
        **extra,
    }


def make_folder(out: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """Generated CUB-layout birds (the demo's data), reused across runs of the same size."""
    from birdray.synth.job import SynthConfig, generate

    return Path(
        generate(
            SynthConfig(
                out=str(out),
                classes=classes,
                per_class=per_class,
                seed=seed,
                min_side=300,
                max_side=500,
            )
        )
    )


def _image_files(source: Path) -> list[Path]:
    return sorted((source / "CUB_200_2011" / "images").rglob("*.jpg"))


def bench_ingest(source: Path, out: Path, repeats: int, label: str = "1x") -> list[dict]:
    from birdray.data.ingest import IngestConfig, run_ingest

    files = _image_files(source)
    read = timed(lambda: sum(len(p.read_bytes()) for p in files), repeats, warmup=1)
    cfg = IngestConfig(source=str(source), out=str(out), force=True)
    with PeakMemory() as memory:
        ingest = timed(lambda: run_ingest(cfg), repeats)
    ratio = ingest["median_s"] / read["median_s"]
    return [
        row(
            "ingest",
            f"seconds for {len(files)} images ({label})",
            ingest["median_s"],
            read["median_s"],
            "s",
            "<= 2x reading the bytes",
            ratio <= 2.0,
            spread=[ingest["min_s"], ingest["max_s"]],
            images=len(files),
            driver_peak_mb=memory.driver_peak_mb,
            workers_peak_mb=memory.workers_peak_mb,
        )
    ]


def _decoded(files: list[Path], data_config: dict, uint8: bool) -> torch.Tensor:
    from birdray.model.preprocess import build_transform

    transform = build_transform(data_config, training=False, uint8=uint8)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in files])


def plain_train_throughput(
    arch: str,
    num_classes: int,
    batch: torch.Tensor,
    data_config: dict,
    steps: int,
    device: str = "cpu",
    amp: bool = False,
) -> float:
    """Images/s of the plain PyTorch loop on pre-decoded uint8 tensors: the training limit."""
    from birdray.model.factory import autocast_dtype, create_model
    from birdray.model.preprocess import normalize_uint8

    dev = torch.device(device)
    model = create_model(arch, num_classes).to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.randint(0, num_classes, (len(batch),), device=dev)
    batch = batch.to(dev)
    dtype = autocast_dtype(dev, amp)

    def step():
        x = normalize_uint8(batch, data_config).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    result = timed(step, steps, warmup=2)
    return len(batch) / result["median_s"]


def bench_train(
    dataset: Path,
    storage: Path,
    arch: str,
    image_size: int,
    batch_size: int,
    threads: int,
    epochs: int,
) -> list[dict]:
    """Ray Train's in-epoch images/s (Parquet -> decode -> augment -> step) vs the plain loop."""
    from birdray.data.manifest import load_manifest, split_path
    from birdray.model.factory import create_model, set_threads
    from birdray.model.preprocess import resolve_data_config
    from birdray.train.job import TrainConfig, run_training

    manifest = load_manifest(dataset)
    classes = len(manifest["class_names"])
    cfg = resolve_data_config(create_model(arch, classes), image_size)
    import pyarrow.parquet as pq

    images = pq.read_table(split_path(dataset, "train"), columns=["image"]).column(0).to_pylist()
    tmp = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[:batch_size]]
    from birdray.model.preprocess import build_transform

    transform = build_transform(cfg, training=False, uint8=True)
    batch = torch.stack([transform(im) for im in tmp])
    set_threads(threads)
    plain = plain_train_throughput(arch, classes, batch, cfg, steps=5)
    summary = run_training(
        TrainConfig(
            dataset=str(dataset),
            arch=arch,
            image_size=image_size,
            batch_size=batch_size,
            epochs=epochs,
            num_workers=1,
            cpus_per_worker=float(threads),
            torch_threads=threads,
            storage_path=str(storage),
            name=f"bench-{time.time():.0f}",
            warmup_epochs=0,
        )
    )
    history = summary["last"]  # the warm final epoch
    ray_ips = float(history["images_per_s"])
    return [
        row(
            "train",
            f"{arch}@{image_size} images/s, batch {batch_size}",
            ray_ips,
            plain,
            "img/s",
            ">= 0.95 of the plain loop",
            ray_ips / plain >= 0.95,
            epoch_seconds=history["epoch_seconds"],
        )
    ]


def bench_score(
    source: Path,
    dataset: Path | None,
    package: Path,
    out: Path,
    batch_size: int,
    threads: int,
    label: str = "1x",
) -> list[dict]:
    """End-to-end batch scoring images/s vs the bare model forward on pre-decoded tensors."""
    from birdray.model.inference import Predictor
    from birdray.scoring.job import ScoreConfig, run_scoring

    files = _image_files(source)
    predictor = Predictor(str(package), device="cpu", num_threads=threads)
    batch = _decoded(files[:batch_size], predictor.metadata.data_config, uint8=False)
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
        rows.append(
            row(
                "score",
                f"{kind} images/s ({count} images, {label})",
                ips,
                bare_ips,
                "img/s",
                ">= 0.85 of the bare model",
                ips / bare_ips >= 0.85,
                seconds=seconds,
                driver_peak_mb=memory.driver_peak_mb,
                workers_peak_mb=memory.workers_peak_mb,
            )
        )
    return rows


def bench_serve(source: Path, package: Path, requests: int, threads: int) -> list[dict]:
    """One-image latency overhead vs the direct call; throughput at concurrency 1/8/32."""
    from concurrent.futures import ThreadPoolExecutor

    import requests as http

    from birdray.model.inference import Predictor
    from birdray.serve.job import start_local

    files = _image_files(source)[:32]
    payloads = [p.read_bytes() for p in files]
    predictor = Predictor(str(package), device="cpu", num_threads=threads)
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in payloads]
    direct = [timed(lambda im=im: predictor.predict_images([im]), 1)["median_s"] for im in images]
    batch = predictor.preprocess(images)
    bare_ips = len(images) / timed(lambda: predictor.logits(batch), 3, warmup=1)["median_s"]
    app = start_local(
        model=str(package),
        registry="",
        name="bench",
        route_prefix="/bench",
        max_batch_size=32,
        torch_threads=threads,
        explain=False,
        max_ongoing_requests=64,
    )
    session = http.Session()

    def call(i: int) -> float:
        started = time.perf_counter()
        resp = session.post(f"{app.url}/v1/predict", files={"files": ("b.jpg", payloads[i % 32])})
        resp.raise_for_status()
        return time.perf_counter() - started

    try:
        latencies = [call(i) for i in range(min(requests, 100))]
        p50 = percentile(latencies, 50)
        rows = [
            row(
                "serve",
                "p50 one-image latency overhead",
                (p50 - np.median(direct)) * 1000,
                None,
                "ms",
                "<= 5 ms",
                (p50 - np.median(direct)) * 1000 <= 5,
                p50_ms=p50 * 1000,
                p99_ms=percentile(latencies, 99) * 1000,
                direct_p50_ms=float(np.median(direct)) * 1000,
            )
        ]
        for concurrency in (1, 8, 32):
            with ThreadPoolExecutor(concurrency) as pool:
                started = time.perf_counter()
                list(pool.map(call, range(requests)))
                ips = requests / (time.perf_counter() - started)
            goal = ">= 0.8 of bare batched" if concurrency == 32 else ""
            rows.append(
                row(
                    "serve",
                    f"throughput at concurrency {concurrency}",
                    ips,
                    bare_ips,
                    "img/s",
                    goal,
                    ips / bare_ips >= 0.8 if concurrency == 32 else None,
                )
            )
        return rows
    finally:
        app.stop()


def bench_explain(arch: str, sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """Seconds per explanation per method at each resolution (random weights: timing only)."""
    from birdray.explain import explain
    from birdray.model.factory import create_model
    from birdray.model.preprocess import resolve_data_config

    model = create_model(arch, 200).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), np.uint8))
    rows = []
    for size in sizes:
        cfg = resolve_data_config(model, size)
        for method in ("gradcam", "saliency", "integrated_gradients"):
            result = timed(lambda m=method, c=cfg: explain(model, c, image, m), repeats, warmup=1)
            rows.append(
                row(
                    "explain",
                    f"{arch}@{size} {method}",
                    result["median_s"],
                    None,
                    "s",
                    spread=[result["min_s"], result["max_s"]],
                )
            )
    return rows
