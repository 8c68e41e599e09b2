"""The tools a user would pick instead of birdray, run on the same data in the same benchmark.

Each peer does one stage's work the plain way, with the same images, model package, resolution,
batch size and CPU budget as the birdray row it sits beside: a ``torch.utils.data.DataLoader``
training loop (timm ``train.py``), a DataLoader inference loop writing one Parquet file (timm
``inference.py``), a ~50-line FastAPI + uvicorn app (``peer_app.py``) and a single-process ingest.
Start-up is timed apart from the steady state wherever the loop makes it visible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import requests as http
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from birdray.data.cub import read_cub
from birdray.data.manifest import load_manifest, split_path
from birdray.data.rows import item_row, load_images
from birdray.runtime import free_port, interrupts_held
from birdray.train.config import TrainConfig


class Files(Dataset):
    """timm's ``ImageDataset`` in short: open with PIL, convert to RGB, apply the transform."""

    def __init__(self, files: list[Path], labels: list[int], transform: Any):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        with Image.open(self.files[i]) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), self.labels[i], rgb.width, rgb.height


def _loader(ds: Dataset, batch_size: int, workers: int, train: bool) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,  # timm's default: workers outlive the epoch
    )


def ingest_peer(source: Path, out: Path, rows_per_file: int = 256) -> int:
    """One process: read each file, validate + decode + hash it (``load_images``, the function
    birdray's Ray Data tasks run, which calls ``decode_image``) and write Parquet per split."""
    from birdray.data.ingest import IngestConfig, assign_splits

    cfg = IngestConfig()
    cub = read_cub(source)
    split = assign_splits(cub.records, cfg.val_fraction, cfg.seed)
    shutil.rmtree(out, ignore_errors=True)
    written = 0
    for start in range(0, len(cub.records), rows_per_file):
        items = []
        for rec in cub.records[start : start + rows_per_file]:
            item = item_row(rec, split[rec.image_id])
            if not item["problems"]:  # read_cub already flagged paths leaving images/
                try:
                    item["data"] = (cub.root / "images" / rec.rel_path).read_bytes()
                except OSError as exc:
                    item["problems"] = f"unreadable: {exc}"
            items.append(item)
        table = load_images(
            {k: [it[k] for it in items] for k in items[0]}, cfg.max_side, cfg.max_pixels
        )
        for name in set(table["split"].to_pylist()):
            part = table.filter(pc.equal(table["split"], name)).drop_columns(["split"])
            folder = out / f"split={name}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, folder / f"part-{start // rows_per_file:05d}.parquet")
            written += len(part)
    return written


def train_peer(
    dataset: Path, arch: str, image_size: int, batch_size: int, threads: int, epochs: int,
    workers: int, out: Path, bf16: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """timm ``train.py`` in short: DataLoader workers decode the split's JPEGs with PIL and the
    model's own timm train transform; the main process steps the model (birdray's recipe
    defaults: optimizer, lr scaling, label smoothing, channels_last) and validates each epoch.
    ``bf16``: as ``train.py --amp --amp-dtype bfloat16`` (forward and loss under autocast)."""
    import timm.optim

    from birdray.model.factory import create_model, set_threads
    from birdray.model.preprocess import build_transform, resolve_data_config
    from birdray.train.data import train_transform_kwargs

    started = time.perf_counter()
    set_threads(threads)
    recipe = TrainConfig()
    manifest = load_manifest(dataset)
    images = Path(manifest["source"]["root"]) / "images"
    model = create_model(arch, len(manifest["class_names"])).to(memory_format=torch.channels_last)
    data_config = resolve_data_config(model, image_size)
    kwargs = train_transform_kwargs(recipe.hflip, recipe.scale_min, recipe.auto_augment)
    loaders = {}
    for split, train in (("train", True), ("val", False)):
        rows = pq.read_table(split_path(dataset, split), columns=["path", "label"]).to_pydict()
        files = [images / p for p in rows["path"]]
        tf = build_transform(data_config, training=train, **(kwargs if train else {}))
        size = batch_size if train else batch_size * 2
        loaders[split] = _loader(Files(files, rows["label"], tf), size, workers, train)
    opt = timm.optim.create_optimizer_v2(
        model, opt=recipe.opt, lr=recipe.lr * batch_size / 256,
        weight_decay=recipe.weight_decay, momentum=recipe.momentum,
    )  # fmt: skip
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    out.mkdir(parents=True, exist_ok=True)
    epoch_seconds, ips, first_batch_s = [], 0.0, None
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        model.train()
        seen = 0
        for x, y, _w, _h in loaders["train"]:
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - started
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        ips = seen / (time.perf_counter() - epoch_start)
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for x, _y, _w, _h in loaders["val"]:
                model(x.contiguous(memory_format=torch.channels_last))
        torch.save(model.state_dict(), out / "last.pth")  # as train.py checkpoints each epoch
        epoch_seconds.append(time.perf_counter() - epoch_start)
    wall = time.perf_counter() - started
    return {
        "images_per_s": ips,  # the last epoch's, like birdray's row
        "wall_s": wall,
        "fixed_s": wall - sum(epoch_seconds),
        "first_batch_s": first_batch_s,
        "epoch_seconds": epoch_seconds,
        "workers": workers,
    }


def score_peer(
    folder: Path, package: Path, out: Path, batch_size: int, threads: int, workers: int,
    top_k: int = 5,
) -> dict[str, Any]:  # fmt: skip
    """timm ``inference.py`` in short: DataLoader over the folder (eval transform), top-k per
    image, birdray's output columns in one Parquet file written at the end."""
    from birdray.model.inference import Predictor
    from birdray.scoring.sources import DEFAULT_EXTENSIONS
    from birdray.scoring.stages import SCHEMA

    started = time.perf_counter()
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in DEFAULT_EXTENSIONS)
    predictor = Predictor(str(package), device="cpu", num_threads=threads)
    loader = _loader(Files(files, list(range(len(files))), predictor.transform), batch_size,
                     workers, train=False)  # fmt: skip
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    first_at, first_rows = None, 0
    for x, index, width, height in loader:
        for i, w, h, p in zip(index.tolist(), width.tolist(), height.tolist(),
                              predictor.predict_tensor(x, top_k), strict=True):  # fmt: skip
            stat = files[i].stat()
            values = {
                "path": str(files[i].relative_to(folder)), "ok": True, "error": None,
                "label": p.label, "species": p.species, "confidence": p.confidence,
                "top_k": p.top_k, "model_version": predictor.version, "width": w, "height": h,
                "image_id": None, "file_size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "node_id": socket.gethostname(), "device": str(predictor.device),
            }  # fmt: skip
            for name, value in values.items():
                cols[name].append(value)
        if first_at is None:
            first_at, first_rows = time.perf_counter(), len(index)
    loop_end = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=SCHEMA), out / "predictions.parquet")
    wall = time.perf_counter() - started
    rest = len(files) - first_rows
    return {
        "images": len(files),
        "seconds": wall,
        "images_per_s": len(files) / wall,
        "steady_images_per_s": rest / (loop_end - first_at) if first_at and rest else None,
        "startup_s": (first_at or loop_end) - started,  # listing, model load, first batch
        "workers": workers,
    }


@contextlib.contextmanager
def serve_peer(package: Path, threads: int, ready_timeout_s: float = 120.0) -> Iterator[dict]:
    """``peer_app`` in its own process on a free loopback port; yields its URL and start-up."""

    port = free_port()
    root = str(Path(__file__).resolve().parents[2])  # this birdray, not another install's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    argv = [sys.executable, "-m", "birdray.benchmark.peer_app", *map(str, (package, port, threads))]
    with interrupts_held():  # Ctrl-C inside Popen would lose the only handle on the peer
        proc = subprocess.Popen(argv, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the FastAPI peer exited with code {proc.returncode}")
            if time.perf_counter() - started > ready_timeout_s:
                raise TimeoutError(f"the FastAPI peer was not ready in {ready_timeout_s:.0f} s")
            with contextlib.suppress(http.RequestException):
                if http.get(f"{url}/healthz", timeout=1).ok:
                    break
            time.sleep(0.05)
        yield {"url": url, "startup_s": time.perf_counter() - started}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
