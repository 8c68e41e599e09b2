"""Pre-flight of the jobs that train: train, tune, and the benchmark (which trains too)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.benchmark import STAGES
from birdray.checks.common import (
    choice,
    dataset,
    file,
    output,
    positive,
    require,
)
from birdray.config import UsageError, numbers_out_of_range
from birdray.config import flag as flag_of

SIGNED = ("seed", "inject_failure_at_epoch", "max_failures")  # negative means something there
SHARES = ("drop_rate", "label_smoothing", "hflip", "scale_min")  # between 0 and 1


def train(cfg: Any) -> None:
    if cfg.use_gpu:  # --device's advice does not fit train, which has no --device
        from birdray.devices import joins_cluster, local_gpus

        require(
            joins_cluster(cfg.address) or local_gpus() > 0,
            "--use-gpu",
            "this machine has no CUDA GPU (torch sees none); train on CPU with --no-use-gpu,"
            " --address a Ray cluster with GPUs, or see what the recipe needs with --dry-run",
        )
    manifest = dataset("--dataset", cfg.dataset)
    splits = manifest.get("splits") or {}
    require(
        bool(splits.get("train")) and bool(splits.get("val")),
        "--dataset",
        f"{cfg.dataset} needs non-empty train and val splits (has {sorted(splits)})",
    )
    classes = manifest.get("class_names") or []
    require(  # one class: a "classifier" that is always right, at 100% on every metric
        len(classes) >= 2,
        "--dataset",
        f"{cfg.dataset} has {len(classes)} class(es) {classes[:1]}; a classifier needs at least"
        " 2 (an archive of one species' folder? give the folder of species folders)",
    )
    if cfg.pretrained_file:
        file("--pretrained-file", cfg.pretrained_file, "a weights file (.safetensors or .pth)")
    if cfg.init_from:
        from birdray.model.errors import ModelError
        from birdray.model.package import check_fine_tune_source

        try:
            check_fine_tune_source(
                Path(cfg.init_from).expanduser(),
                cfg.arch,
                manifest.get("class_names") or [],
                cfg.dataset,
            )
        except ModelError as exc:
            raise UsageError(f"--init-from: {exc}") from None
    positive(
        {
            "--epochs": cfg.epochs,
            "--batch-size": cfg.batch_size,
            "--num-workers": cfg.num_workers,
            "--image-size": cfg.image_size,
        }
    )
    from birdray.train.config import short_of_one_batch

    flag, short = short_of_one_batch(splits["train"]["rows"], cfg.batch_size, cfg.num_workers)
    require(not short, flag, short)
    require(cfg.cpus_per_worker > 0, "--cpus-per-worker", "must be > 0")
    require(cfg.data_cpus > 0, "--data-cpus", "must be > 0")
    require(cfg.lr > 0, "--lr", "must be > 0")
    settings(cfg, flag_of)
    run_name("--name", cfg.name)
    from birdray.train.optim import unknown_optimizer

    why = unknown_optimizer(cfg.opt)  # else it failed in the first worker, retried --max-failures
    require(not why, "--opt", why)
    choice("--placement-strategy", cfg.placement_strategy, ("PACK", "SPREAD", "STRICT_SPREAD"))
    output("--storage-path", cfg.storage_path)
    if cfg.registry and not storage.is_remote(cfg.registry):
        require(
            not storage.local_path(cfg.registry).is_file(),
            "--registry",
            f"{cfg.registry} is a file; expected a registry folder",
        )


def settings(cfg: Any, label: Any) -> None:
    """Every number of a ``TrainConfig`` is finite (an lr of inf trained NaNs), none is negative
    but where that means something, and shares are shares; the architecture is one timm knows
    (else Ray started, a run folder was written, and the first worker failed). ``label`` turns
    a field's name into what the user typed (``--lr``, or tune's ``--train (lr)``)."""
    import timm

    for name, value, _ in numbers_out_of_range(cfg, dict.fromkeys(SIGNED, -math.inf)):
        floor = "a finite number" if not math.isfinite(value) else ">= 0"
        raise UsageError(f"{label(name)}: must be {floor}, got {value:g}")
    for name in SHARES:
        value = getattr(cfg, name)
        require(value <= 1, label(name), f"must be <= 1, got {value:g}")
    require(timm.is_model(cfg.arch), label("arch"), f"{cfg.arch!r} is not a timm model name")


def run_name(label: str, name: str) -> None:
    """A run's name is one folder under --storage-path: ``../../x`` wrote outside it."""
    one_part = name == Path(name).name and name not in (".", "..") and "\\" not in name
    require(one_part, label, f"{name!r} must be one folder name (no '/', '..')")


def tune(cfg: Any) -> None:
    """The search space and the shared train settings are checked by the sweep itself, before
    it starts Ray (``base_train_config``, ``search_space``: ConfigError, one line too)."""
    if cfg.train.get("use_gpu"):  # trials on a machine without CUDA would wait for GPUs forever
        from birdray.devices import joins_cluster, local_gpus

        require(
            joins_cluster(cfg.address) or local_gpus() > 0,
            "--train",
            "use_gpu: true but this machine has no CUDA GPU (torch sees none); run it on a GPU"
            " machine, --address a Ray cluster with GPUs, or set train: {use_gpu: false}"
            " (--dry-run shows what the sweep needs)",
        )
    manifest = dataset("--dataset", cfg.dataset)
    have = sorted(manifest.get("splits") or {})
    if (manifest.get("splits") or {}).get("train"):  # trials would train nothing, each of them
        from birdray.train.config import TrainConfig, short_of_one_batch

        default = TrainConfig()
        batch = cfg.train.get("batch_size", default.batch_size)
        workers = cfg.train.get("num_workers", default.num_workers)
        if isinstance(batch, int) and isinstance(workers, int):  # else the sweep's own error
            _, short = short_of_one_batch(manifest["splits"]["train"]["rows"], batch, workers)
            for flag, key in (("--batch-size", "batch_size"), ("--num-workers", "num_workers")):
                short = short.replace(flag, f"train: {key}")
            require(not short, "--train", short)
    opt = cfg.train.get("opt")
    if isinstance(opt, str):  # else every trial's first worker failed on it, after Ray started
        from birdray.train.optim import unknown_optimizer

        why = unknown_optimizer(opt)
        require(not why, "--train", f"opt: {why}")
    if cfg.registry:  # the winner is evaluated on it before it is registered
        require(cfg.eval_split in have, "--eval-split", f"{cfg.eval_split!r} is not in {have}")
    positive({"--epochs": cfg.epochs, "--num-samples": cfg.num_samples})
    from birdray.config import ConfigError
    from birdray.tune.job import base_train_config

    require(bool(cfg.archs), "--archs", "name at least one timm architecture")
    try:  # the sweep refuses these itself too, after its own checks
        base = base_train_config(cfg)
    except ConfigError as exc:
        raise UsageError(f"--train: {exc}") from None
    import timm

    for arch in cfg.archs:
        require(timm.is_model(arch), "--archs", f"{arch!r} is not a timm model name")
    settings(base, lambda name: f"--train ({name})")
    require(base.lr > 0 and base.batch_size >= 1, "--train", "lr must be > 0, batch_size >= 1")
    run_name("--name", cfg.name)
    positive({"--grace-period": cfg.grace_period})
    positive({"--reduction-factor": cfg.reduction_factor}, 2)
    output("--storage-path", cfg.storage_path)


def benchmark(cfg: Any) -> None:
    from birdray.benchmark import effective

    cfg = effective(cfg)  # the sizes that will run (--smoke fills what was not given)
    choice("stage", cfg.stage, STAGES)
    choice("--device", cfg.device, ("cpu", "cuda"))
    choice("--serve-proxy", cfg.serve_proxy, ("serve", "haproxy"))
    output("--out", cfg.out)
    positive(
        {
            "--classes": cfg.classes,
            "--per-class": cfg.per_class,
            "--repeats": cfg.repeats,
            "--scaling-per-class": cfg.scaling_per_class,
            "--image-size": cfg.image_size,
            "--batch-size": cfg.batch_size,
            "--threads": cfg.threads,
            "--requests": cfg.requests,
            "--requests-per-client": cfg.requests_per_client,
            **{f"--scales {v}": v for v in cfg.scales},
            **{f"--concurrency {v}": v for v in cfg.concurrency},
            **{f"--explain-sizes {v}": v for v in cfg.explain_sizes},
        }
    )
    require(
        len(set(cfg.concurrency)) == len(cfg.concurrency) and bool(cfg.concurrency),
        "--concurrency",
        f"needs distinct levels, got {cfg.concurrency}",
    )
    if cfg.device == "cuda":
        import torch

        require(torch.cuda.is_available(), "--device", "cuda asked for, but no CUDA GPU here")
    if cfg.stage in ("train", "all"):
        from birdray.train.config import short_of_one_batch

        train_rows, val_rows = _split_sizes(cfg.classes, cfg.per_class)
        _, short = short_of_one_batch(train_rows, cfg.batch_size, 1)  # the benchmark: 1 worker
        require(
            not short and val_rows > 0,
            "--per-class",
            f"{cfg.classes} x {cfg.per_class} images give {train_rows} train and {val_rows} val"
            f" images; training needs a batch ({cfg.batch_size}) of train images and some val"
            " images",
        )


def _split_sizes(classes: int, per_class: int) -> tuple[int, int]:
    """Train and val images of the benchmark's generated set, split as it will be: synth's
    official test share (CUB layout), then ingest's val share of each species' train images."""
    from birdray.data.cub import CubRecord
    from birdray.data.ingest import IngestConfig, assign_splits
    from birdray.synth.job import SynthConfig, test_images

    n_test = test_images(per_class, SynthConfig().test_fraction)
    records = [
        CubRecord(c * per_class + i + 1, "", c, "", i >= n_test)
        for c in range(classes)
        for i in range(per_class)
    ]
    ingest = IngestConfig()
    values = list(assign_splits(records, ingest.val_fraction, ingest.seed).values())
    return values.count("train"), values.count("val")
