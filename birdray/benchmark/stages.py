"""Each stage's birdray path against its practical limit and its peer, measured in one run.

ingest vs reading the bytes; Ray Train vs a plain PyTorch loop on pre-decoded tensors; batch
scoring vs the bare model's forward pass (``scoring.py``); Serve vs calling the model directly
(``serving.py``); explanations per method. With ``peers`` each row also carries what the plain
tool a user would pick instead does on the same data (``peers.py``). Every function returns
result rows (see ``row``).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from birdray.benchmark.measure import PeakMemory, timed
from birdray.data.manifest import load_manifest, split_path
from birdray.runtime import init_ray
from birdray.synth.job import SynthConfig, generate


def row(
    stage: str,
    metric: str,
    value: float,
    baseline: float | None,
    unit: str,
    goal: str | list[tuple[str, bool | None]] = "",
    met: bool | None = None,
    peer: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result: birdray's ``value``, the bare limit (``baseline``), the plain-tool ``peer``;
    both ratios are birdray / other (for seconds and ms, above 1 means birdray is slower).

    ``goal`` with ``met``, or a list of (goal, met) pairs for a row judged on several: each
    verdict is kept (``goals``), and ``met`` is whether all that could be judged were met."""
    ratio = value / baseline if baseline else None
    if isinstance(goal, list):
        judged = [(text, bool(ok)) for text, ok in goal if ok is not None]
        extra["goals"] = [{"goal": text, "met": ok} for text, ok in judged]
        goal, met = (
            "; ".join(text for text, _ in judged),
            all(ok for _, ok in judged) if judged else None,
        )
    return {
        "stage": stage,
        "metric": metric,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "peer": peer,
        "peer_ratio": value / peer if peer else None,
        "unit": unit,
        "goal": goal,
        "met": None if met is None else bool(met),  # numpy bools would serialise as text
        **extra,
    }


def make_folder(out: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """Generated CUB-layout birds (the demo's data), reused across runs of the same size."""

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


def image_files(source: Path) -> list[Path]:
    return sorted((source / "CUB_200_2011" / "images").rglob("*.jpg"))


def bench_ingest(
    source: Path, out: Path, repeats: int, label: str = "1x", peers: bool = False
) -> list[dict]:
    from birdray.benchmark.peers import ingest_peer
    from birdray.data.ingest import IngestConfig, run_ingest

    files = image_files(source)
    read = timed(lambda: sum(len(p.read_bytes()) for p in files), repeats, warmup=1)
    cfg = IngestConfig(source=str(source), out=str(out), force=True)
    with PeakMemory() as memory:
        ingest = timed(lambda: run_ingest(cfg), repeats)
    peer_out = out.with_name(out.name + "-peer")
    peer = timed(lambda: ingest_peer(source, peer_out), repeats) if peers else None
    return [
        row(
            "ingest",
            f"seconds for {len(files)} images ({label})",
            ingest["median_s"],
            read["median_s"],
            "s",
            [
                (
                    "<= 0.6x the single-process peer",
                    ingest["median_s"] <= 0.6 * peer["median_s"] if peer else None,
                )
            ],
            peer=peer["median_s"] if peer else None,
            spread=[ingest["min_s"], ingest["max_s"]],
            images=len(files),
            driver_peak_mb=memory.driver_peak_mb,
            workers_peak_mb=memory.workers_peak_mb,
        )
    ]


def plain_train_throughput(
    arch: str,
    num_classes: int,
    batch: torch.Tensor,
    data_config: dict,
    steps: int,
    device: str = "cpu",
) -> float:
    """Images/s of the plain PyTorch loop on pre-decoded uint8 tensors: the training limit
    (birdray's recipe optimizer, fused where torch has it, and its autocast choice, bf16 on a
    CPU with bf16 instructions, as the training loop makes them)."""
    from birdray.model.factory import create_model, train_autocast
    from birdray.model.preprocess import normalize_uint8
    from birdray.train.config import TrainConfig
    from birdray.train.optim import build_optimizer

    dev = torch.device(device)
    model = create_model(arch, num_classes).to(dev).to(memory_format=torch.channels_last).train()
    recipe = TrainConfig()
    opt = build_optimizer(model, recipe.opt, recipe.lr, recipe.weight_decay, recipe.momentum, dev)
    labels = torch.randint(0, num_classes, (len(batch),), device=dev)
    batch = batch.to(dev)
    dtype = train_autocast(dev, recipe.amp, recipe.amp_cpu)

    def step():
        x = normalize_uint8(batch, data_config)
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
    peers: bool = False,
) -> list[dict]:
    """Ray Train's in-epoch images/s (Parquet -> decode -> augment -> step) vs the plain loop
    on tensors and the DataLoader peer; wall time and the fixed cost outside the epochs."""
    from birdray.benchmark.peers import train_peer
    from birdray.model.factory import create_model, set_threads
    from birdray.model.preprocess import resolve_data_config
    from birdray.train.job import TrainConfig, run_training

    manifest = load_manifest(dataset)
    classes = len(manifest["class_names"])
    cfg = resolve_data_config(create_model(arch, classes), image_size)

    images = pq.read_table(split_path(dataset, "train"), columns=["image"]).column(0).to_pylist()
    tmp = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[:batch_size]]
    from birdray.model.preprocess import build_transform

    transform = build_transform(cfg, training=False, uint8=True)
    batch = torch.stack([transform(im) for im in tmp])
    set_threads(threads)
    plain = plain_train_throughput(arch, classes, batch, cfg, steps=10)
    train_cfg = TrainConfig(
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
    started = time.perf_counter()
    summary = run_training(train_cfg)
    wall = time.perf_counter() - started
    history = summary["last"]  # the warm final epoch
    first_batch = float(history["first_batch_s"])  # the epoch's pipeline start: its fixed cost
    ray_ips = float(history["images_per_s"])
    with open(Path(summary["run_dir"]) / "summary.csv") as fh:
        fixed = wall - sum(float(r["epoch_seconds"]) for r in csv.DictReader(fh))
    peer: dict[str, Any] = {}
    peer_bf16: dict[str, Any] = {}
    if peers:  # DataLoader workers = the CPUs Ray Data's tasks had beside the Train worker
        have = float(init_ray().get("CPU", 1.0))
        workers = max(1, int(have - train_cfg.cpus_per_worker))
        peer = train_peer(
            dataset, arch, image_size, batch_size, threads, epochs, workers, storage / "peer"
        )
        if history.get("precision", "fp32") != "fp32":
            peer_bf16 = train_peer(
                dataset, arch, image_size, batch_size, threads, epochs, workers,
                storage / "peer-bf16", bf16=True,
            )  # fmt: skip
    # the limit again, last: a machine that slowed or sped up during the stage shows in the row
    plain_after = plain_train_throughput(arch, classes, batch, cfg, steps=10)
    rows = [
        row(
            "train",
            f"{arch}@{image_size} images/s, batch {batch_size} (last epoch)",
            ray_ips,
            plain,
            "img/s",
            ">= 1.0x the DataLoader peer (timm train.py's defaults)",
            ray_ips >= peer["images_per_s"] if peer.get("images_per_s") else None,
            peer=peer.get("images_per_s"),
            epoch_seconds=history["epoch_seconds"],
            precision=history.get("precision"),
            peer_workers=peer.get("workers"),
        ),
        row(
            "train",
            f"wall seconds for {epochs} epochs incl. start-up",
            wall,
            None,
            "s",
            peer=peer.get("wall_s"),
        ),
        row(
            "train",
            "fixed seconds outside the epochs (start-up, export)",
            fixed,
            None,
            "s",
            peer=peer.get("fixed_s"),
            peer_first_batch_s=peer.get("first_batch_s"),
        ),
        row(  # the epoch's pipeline start; validation reads from memory after the first epoch
            "train",
            f"seconds before the last epoch's first batch (per-epoch fixed cost; validation "
            f"{'from memory' if history.get('val_from_memory') else 'planned again'})",
            first_batch,
            None,
            "s",
            [("<= 1 s", first_batch <= 1.0 if epochs > 1 else None)],
            val_seconds=history.get("val_seconds"),
        ),
        row(
            "train",
            "the plain loop again, after birdray and the peer (ratio: drift during the stage)",
            plain_after,
            plain,
            "img/s",
        ),
    ]
    if peer_bf16:  # the user who asks timm for birdray's precision
        metric = "images/s against the peer in bf16 (timm train.py --amp --amp-dtype bfloat16)"
        rows.insert(1, row("train", metric, ray_ips, None, "img/s", peer=peer_bf16["images_per_s"]))
    return rows


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
