"""What a sweep compares and where it writes: the config ``birdray tune`` and the hand-off share.

Kept apart from ``job`` (which runs Tune) so ``promote`` reads it without importing the runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from birdray import storage
from birdray.config import field
from birdray.train.config import TrainConfig

METRIC, MODE = "val_top1", "max"
SEARCHED = ("arch", "lr", "weight_decay", "label_smoothing", "image_size", "pretrained")
SWEEP_OWNED = ("dataset", "epochs", "storage_path", "name", "registry", "package_out", "address")


@dataclass
class SweepConfig:
    # what to compare
    dataset: str = field("data/cub_parquet", "ingested dataset folder (with manifest.json)")
    archs: list[str] = field(
        ["resnet50", "resnet101", "densenet121"], "timm architectures (a grid: all are tried)"
    )
    lr: list[float] = field([0.01, 0.1], "LR range [low, high], log-uniform; one value: fixed")
    weight_decay: list[float] = field([1e-4], "range [low, high], log-uniform; one value: fixed")
    label_smoothing: list[float] = field(
        [0.1], "label-smoothing values to choose from", aliases=("--smoothing",)
    )
    image_size: list[int] = field([224], "image sizes to choose from", aliases=("--img-size",))
    pretrained: list[bool] = field([False], "pretrained weights or not, to choose from")
    num_samples: int = field(1, "trials per architecture (each samples the hyper-parameters)")
    train: dict[str, Any] = field(
        {}, "TrainConfig settings shared by every trial (batch_size, num_workers, use_gpu, ...)"
    )
    # budget and early stopping
    epochs: int = field(10, "most epochs a trial trains (ASHA's max_t)")
    grace_period: int = field(1, "epochs every trial gets before ASHA may stop it")
    reduction_factor: int = field(2, "ASHA keeps the best 1/reduction_factor at each rung")
    seed: int = field(0, "seed of the hyper-parameter sampling")
    # resources
    max_concurrent_trials: int = field(0, "trials at once (0: as many as the cluster fits)")
    trial_cpus: float = field(0.1, "logical CPUs of each trial's Tune function (the Train driver)")
    data_cpus_per_trial: float = field(
        1.0,
        "CPUs kept free per running trial for its Ray Data pipeline (Ray Data's file "
        "listing and reads take a whole CPU; without it a trial waits forever)",
    )
    cluster_resources: dict[str, float] = field(
        {}, "plan for these, e.g. {CPU: 64, GPU: 8} on an autoscaling cluster (empty: what it has)"
    )
    trial_max_failures: int = field(1, "Tune restarts of a crashed trial (Train resumes it)")
    # where
    storage_path: str = field("runs/tune", "sweep results folder or URI")
    name: str = field("", "sweep name; running again with the same name resumes it")
    resume: bool = field(False, "insist on resuming (a sweep of this name resumes anyway)")
    # hand-off
    registry: str = field("runs/registry", "register the winner here, maybe promote (empty: skip)")
    force: bool = field(False, "promote the winner even when it does not beat production")
    eval_split: str = field("test", "split the winner is evaluated on")
    address: str = field("", "Ray address (empty: RAY_ADDRESS or a local Ray)")


def join_path(root: str, *parts: str) -> str:
    return storage.join(storage.absolute(root), *parts)


def trial_config(base: dict[str, Any], config: dict[str, Any], trial_id: str) -> TrainConfig:
    """The TrainConfig of one trial: the base recipe plus its sampled knobs."""
    values = {**base, **{k: config[k] for k in SEARCHED if k in config}, "name": trial_id}
    values["image_size"] = int(values["image_size"])
    values["pretrained"] = bool(values["pretrained"])
    # trials at once share a node: each worker one thread per reserved CPU, not the whole node
    values["torch_threads"] = values.get("torch_threads") or max(
        1, math.ceil(values["cpus_per_worker"])
    )
    return TrainConfig(**values)
