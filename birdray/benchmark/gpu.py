"""The GPU check: one short run of the device-bound core, no Ray needed on the GPU machine.

Training step and inference with bf16 autocast and channels_last against fp32/contiguous;
JPEG decoding on the GPU (torchvision.io.decode_jpeg) against Pillow on the CPU; and the peer
question for training and scoring: how many images a ``torch.utils.data.DataLoader`` with one
worker per core feeds when each does birdray's own per-batch data work
(``decode_and_transform``: augmentation, or the eval crop), against the rate the GPU trains or
infers at. Ray's path is proven on CPU; this measures what a GPU worker or
replica would do with its device, and whether the CPUs beside it can keep up.

    python -m birdray.benchmark.gpu --out gpu.json     # ~30-40 s a model on one H200
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.io as tvio
from PIL import Image

from birdray.benchmark.measure import timed
from birdray.model.factory import create_model
from birdray.model.preprocess import normalize_uint8, resolve_data_config
from birdray.train.config import TrainConfig
from birdray.train.data import decode_and_transform, train_transform_kwargs
from birdray.train.optim import build_optimizer


def _throughput(model, x, steps: int, train: bool, amp: bool, channels_last: bool) -> float:
    dev = x.device
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    recipe = TrainConfig()  # the optimizer birdray trains with (fused where torch has it)
    opt = (
        build_optimizer(model, recipe.opt, 0.01, recipe.weight_decay, recipe.momentum, dev)
        if train
        else None
    )
    labels = torch.randint(0, 200, (len(x),), device=dev)
    model.train(train)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            if train:
                loss = torch.nn.functional.cross_entropy(model(x), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.inference_mode():
                    model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return len(x) / timed(step, steps, warmup=3)["median_s"]


def _jpegs(count: int, size=(500, 375)) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_rates(count: int, device: str) -> dict[str, float]:

    data = _jpegs(count)
    started = time.perf_counter()
    for blob in data:
        Image.open(io.BytesIO(blob)).convert("RGB").load()
    pil = count / (time.perf_counter() - started)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    out = {"pillow_img_s": pil}
    if device == "cuda":
        tvio.decode_jpeg(tensors[:4], device="cuda")
        torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(0, count, 64):
            tvio.decode_jpeg(tensors[i : i + 64], device="cuda")
        torch.cuda.synchronize()
        out["gpu_decode_img_s"] = count / (time.perf_counter() - started)
    return out


class _Batches(torch.utils.data.Dataset):
    """Batches of JPEG bytes, each turned into uint8 crops by birdray's Ray Data batch fn:
    training's augmentation, or the eval crop that validation, scoring and Serve decode to."""

    def __init__(
        self, chunks: list[list[bytes]], data_config: dict, train_kwargs: dict, training: bool
    ):
        self.chunks, self.data_config, self.train_kwargs = chunks, data_config, train_kwargs
        self.training = training

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        batch = {"image": self.chunks[i], "label": np.zeros(len(self.chunks[i]), np.int64)}
        return decode_and_transform(batch, self.data_config, self.training, self.train_kwargs)


def feed_rate(
    blobs: list[bytes],
    data_config: dict,
    batch: int,
    workers: int,
    total: int,
    training: bool = True,
) -> float:
    """Images/s ``workers`` DataLoader processes deliver (decode + the model's timm transform:
    training's augmentation, or with ``training=False`` the eval crop scoring feeds)."""
    recipe = TrainConfig()
    kwargs = train_transform_kwargs(recipe.hflip, recipe.scale_min, recipe.auto_augment)
    chunks = [blobs[i : i + batch] for i in range(0, len(blobs), batch)]
    chunks = (chunks * (total // max(1, len(blobs)) + 1))[: max(1, total // batch)]
    loader = torch.utils.data.DataLoader(  # a worker that hangs ends the check, with a reason
        _Batches(chunks, data_config, kwargs, training),
        batch_size=None,
        num_workers=workers,
        timeout=300 if workers else 0,
    )
    started, count = time.perf_counter(), 0
    for out in loader:
        count += len(out["image"])
    return count / (time.perf_counter() - started)


def gpu_eval_feed_rate(
    blobs: list[bytes], data_config: dict, batch: int, total: int, device: str = "cuda"
) -> float:
    """Images/s when the GPU itself decodes (nvJPEG) and makes the eval crop: scoring's feed
    with no CPU worker in the way, to set against the DataLoader's eval-crop feed."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    mode = InterpolationMode(data_config.get("interpolation", "bilinear"))
    size = int(data_config["input_size"][-1])
    shorter = math.floor(size / data_config["crop_pct"])
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    chunks = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]

    def one(chunk: list[torch.Tensor]) -> torch.Tensor:
        images = tvio.decode_jpeg(chunk, mode=tvio.ImageReadMode.RGB, device=device)
        crops = [tvf.center_crop(tvf.resize(im, [shorter], mode), [size, size]) for im in images]
        return normalize_uint8(torch.stack(crops), data_config)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    one(chunks[0])  # nvJPEG's and the kernels' first-call set-up
    sync()
    started, count = time.perf_counter(), 0
    while count < total:
        for chunk in chunks:
            one(chunk)
            count += len(chunk)
    sync()
    return count / (time.perf_counter() - started)


def predictor_rates(
    model: torch.nn.Module, data_config: dict, image_size: int, batch: int, steps: int, device: str
) -> dict[str, float]:
    """birdray's own inference path (``Predictor``, bf16) from host uint8 crops, as scoring and
    Serve call it: normalised on the model's device (``from_uint8``) against normalised on the
    CPU and copied as floats (the path before), to set against the bare model's rate."""
    from birdray.model.inference import Predictor
    from birdray.model.package import ModelPackage, PackageMetadata

    names = [f"species {i}" for i in range(200)]
    meta = PackageMetadata("bench", 200, names, data_config, image_size)
    predictor = Predictor(ModelPackage(Path("."), meta, model), device=device, amp=True)
    pixels = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8)

    def on_device() -> None:
        predictor.probabilities(predictor.logits(predictor.from_uint8(pixels)))

    def on_cpu() -> None:
        predictor.probabilities(predictor.logits(normalize_uint8(pixels, data_config)))

    return {
        "predictor_img_s": batch / timed(on_device, steps, warmup=3)["median_s"],
        "predictor_cpu_normalize_img_s": batch / timed(on_cpu, steps, warmup=3)["median_s"],
    }


def run(device: str, arch: str, image_size: int, batch: int, steps: int) -> dict:
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True  # as timm's train.py and inference.py set it
    model = create_model(arch, 200).to(dev)
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    results = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "arch": arch,
        "image_size": image_size,
        "batch": batch,
    }
    for train in (True, False):
        for amp, cl in ((False, False), (True, True)):
            key = f"{'train' if train else 'infer'}_{'bf16_cl' if amp else 'fp32'}_img_s"
            results[key] = _throughput(
                create_model(arch, 200).to(dev) if train else model, x, steps, train, amp, cl
            )
    data_config = resolve_data_config(model, image_size)
    results.update(predictor_rates(model, data_config, image_size, batch, steps, device))
    results.update(decode_rates(256 if dev.type == "cuda" else 32, device))
    workers = os.cpu_count() or 1
    blobs = _jpegs(64)
    total = 2048 if dev.type == "cuda" else 2 * batch
    feed = feed_rate(blobs, data_config, batch, workers, total)
    eval_feed = feed_rate(blobs, data_config, batch, workers, total, training=False)
    if dev.type == "cuda":
        gpu_feed = gpu_eval_feed_rate(blobs * 2, data_config, batch, total)
        results.update(
            gpu_eval_feed_img_s=gpu_feed,
            gpu_eval_feed_vs_infer_bf16=gpu_feed / results["infer_bf16_cl_img_s"],
        )
    results.update(
        feed_workers=workers,
        dataloader_feed_img_s=feed,
        feed_vs_train_bf16=feed / results["train_bf16_cl_img_s"],
        dataloader_eval_feed_img_s=eval_feed,
        eval_feed_vs_infer_bf16=eval_feed / results["infer_bf16_cl_img_s"],
    )
    return results


def table_rows(result: dict) -> list[dict]:
    """The check's numbers as benchmark rows (results.md's table): each precision against the
    fp32 rate, GPU decode against Pillow, and the DataLoader feed against the bf16 training rate
    it must keep up with."""
    what = f"{result['arch']}@{result['image_size']} batch {result['batch']} on {result['device']}"

    def row(metric: str, key: str, limit_key: str = "", goal: str = "") -> dict:
        value = result.get(key)
        limit = result.get(limit_key) if limit_key else None
        return {
            "stage": "gpu",
            "metric": metric,
            "value": value,
            "unit": "img/s",
            "baseline": limit,
            "ratio": value / limit if value is not None and limit else None,
            "goal": goal,
            "met": (value / limit >= 1.0) if goal and value is not None and limit else None,
        }

    rows = [
        row(f"train images/s, fp32, {what}", "train_fp32_img_s"),
        row(
            f"train images/s, bf16 + channels_last, {what}",
            "train_bf16_cl_img_s",
            "train_fp32_img_s",
        ),
        row(f"inference images/s, fp32, {what}", "infer_fp32_img_s"),
        row(
            f"inference images/s, bf16 + channels_last, {what}",
            "infer_bf16_cl_img_s",
            "infer_fp32_img_s",
        ),
        row("JPEG decode images/s, Pillow on the CPU (one core)", "pillow_img_s"),
    ]
    if "predictor_img_s" in result:
        path = f"birdray Predictor (scoring, Serve) images/s, bf16, {what}, uint8 from the host"
        rows.append(
            row(f"{path}, normalised on the device", "predictor_img_s", "infer_bf16_cl_img_s")
        )
        rows.append(
            row(
                f"{path}, normalised on the CPU (before)",
                "predictor_cpu_normalize_img_s",
                "infer_bf16_cl_img_s",
            )
        )
    if "gpu_decode_img_s" in result:
        rows.append(row("JPEG decode images/s on the GPU", "gpu_decode_img_s", "pillow_img_s"))
    feed = f"DataLoader feed images/s, {result['feed_workers']} workers, vs bf16 training"
    rows.append(row(feed, "dataloader_feed_img_s", "train_bf16_cl_img_s", ">= 1x the GPU's rate"))
    if "dataloader_eval_feed_img_s" in result:
        feed = f"DataLoader eval-crop feed images/s (scoring), {result['feed_workers']} workers,"
        rows.append(
            row(
                f"{feed} vs bf16 inference",
                "dataloader_eval_feed_img_s",
                "infer_bf16_cl_img_s",
                ">= 1x the GPU's rate",
            )
        )
    if "gpu_eval_feed_img_s" in result:
        rows.append(
            row(
                "GPU decode + eval-crop feed images/s (nvJPEG, no CPU workers) vs bf16 inference",
                "gpu_eval_feed_img_s",
                "infer_bf16_cl_img_s",
                ">= 1x the GPU's rate",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = run(args.device, args.arch, args.image_size, args.batch, args.steps)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
