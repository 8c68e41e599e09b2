"""The one training function: what each Ray Train worker runs, for ``birdray train`` and the sweep.

Workers receive decoded, augmented uint8 batches from Ray Data (the decode/augment happens in
Ray Data tasks, off the step's critical path), normalise on the device, and step a DDP-wrapped
timm model. Every epoch each worker reports the same metrics (val metrics are all-reduced across
workers) and rank 0 attaches a checkpoint; a restarted or resubmitted run resumes from the latest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from birdray.model.factory import auto_threads, create_model, set_threads, train_autocast
from birdray.model.package import WEIGHTS_FILE
from birdray.model.preprocess import normalize_uint8
from birdray.resources import watched
from birdray.train.config import TrainConfig
from birdray.train.optim import build_optimizer

logger = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


def worker_device() -> torch.device:
    """The GPU Ray assigned to this worker, or the CPU when CUDA is absent (logical GPUs)."""
    import ray.train.torch

    return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _distinct_nodes() -> int:
    """How many machines the worker group spans (reported so placement is visible)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels.unsqueeze(1)).any(dim=1).sum())


def _maybe_inject_failure(cfg: TrainConfig, epoch: int, rank: int) -> None:
    """Chaos hook: fail once (marker file in the run folder) so tests can prove recovery."""
    if cfg.inject_failure_at_epoch != epoch or rank != 0:
        return
    marker = Path(cfg.storage_path) / cfg.name / ".injected_failure"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(epoch))
    raise RuntimeError(f"injected failure in epoch {epoch} (inject_failure_at_epoch)")


def read_history(folder: str | Path) -> list[dict[str, Any]]:
    """A checkpoint folder's per-epoch history (the whole run up to it)."""
    return json.loads(Path(folder, HISTORY_FILE).read_text())


def read_checkpoint(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A checkpoint folder's training state (model, optimizer, scheduler, epoch) and history."""
    state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    return state, read_history(folder)


def _load_state(model, optimizer, scheduler) -> tuple[int, list[dict[str, Any]]]:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        state, history = read_checkpoint(folder)
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1, history


def _save_state(folder: str, model, optimizer, scheduler, epoch: int, history: list) -> None:
    module = getattr(model, "module", model)
    state = {
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
    }
    torch.save(state, os.path.join(folder, STATE_FILE))
    Path(folder, HISTORY_FILE).write_text(json.dumps(history))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` = {"train": TrainConfig as dict, "num_classes",
    "data_config", "train_rows"}."""
    import ray
    import ray.train
    import ray.train.torch
    import timm.scheduler

    cfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device()
    # unset (0): on CPU this node's cores, shared by this run's workers on it (Tune's trials,
    # which share nodes with each other, are given one thread per reserved CPU)
    threads = cfg.torch_threads
    if not threads and device.type == "cuda":
        threads = max(1, math.ceil(cfg.cpus_per_worker))
    set_threads(threads or auto_threads(cfg.cpus_per_worker, ctx.get_local_world_size()))
    torch.manual_seed(cfg.seed + rank)
    data_config = config["data_config"]

    weights = str(Path(cfg.init_from) / WEIGHTS_FILE) if cfg.init_from else cfg.pretrained_file
    model = create_model(
        cfg.arch,
        config["num_classes"],
        cfg.pretrained,
        weights or None,
        cfg.drop_rate,
        keep_head=bool(cfg.init_from),
    )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    global_batch = cfg.batch_size * world
    lr = cfg.lr * global_batch / 256
    optimizer = build_optimizer(model, cfg.opt, lr, cfg.weight_decay, cfg.momentum, device)
    steps_per_epoch = max(1, config["train_rows"] // global_batch)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.min_lr,
        updates_per_epoch=steps_per_epoch,
        step_on_epochs=False,
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp_dtype = train_autocast(device, cfg.amp, cfg.amp_cpu)
    start_epoch, history = _load_state(model, optimizer, scheduler)
    step = _Step(cfg, model, optimizer, scheduler, loss_fn, data_config, device, amp_dtype)
    nodes = _distinct_nodes()
    val_cache: list[dict[str, torch.Tensor]] | None = None

    for epoch in range(start_epoch, cfg.epochs):
        started = time.time()
        train_loss, seen, data_wait, first_wait = _train_epoch(
            step, epoch, epoch * steps_per_epoch, rank
        )
        train_seconds = time.time() - started
        val, val_cache = _validate(step, val_cache)
        gpu_assigned = float(bool(ray.get_gpu_ids()))  # Ray's assignment, CUDA or not
        totals = _all_reduce(
            [train_loss, seen, train_seconds, gpu_assigned, data_wait, first_wait], device
        )
        if not totals[1]:  # the job checks this up front; a dataset changed under it would not
            raise RuntimeError(
                f"epoch {epoch + 1}: no worker got a full batch of {cfg.batch_size} from"
                f" {config['train_rows']} train images over {world} workers; nothing was trained"
            )
        metrics = {
            "epoch": epoch + 1,
            "train_loss": totals[0] / max(totals[1], 1),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": totals[1] / max(totals[2] / world, 1e-9),
            "data_wait_s": totals[4] / world,  # steps waiting for a batch (mean over workers)
            "first_batch_s": totals[5] / world,  # of which: the epoch's pipeline start
            "epoch_seconds": time.time() - started,
            "workers": world,
            "nodes": nodes,
            "gpu_workers": int(totals[3]),
            "device": device.type,
            "precision": "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),  # rank 0's
            # this attempt's first epoch, resumed from a checkpoint (a worker failure's restart,
            # or a resubmitted run): validation is decoded again, and the run's restarts count
            "resumed": float(epoch == start_epoch and epoch > 0),
            **val,
        }
        history.append(metrics)
        if rank == 0:  # one line an epoch; Ray Train's patched print() wrote each twice
            logger.info(
                "epoch %d/%d: %d images, %.1f img/s, train_loss %.4f, val_top1 %.4f, %.1f s",
                epoch + 1, cfg.epochs, totals[1], metrics["images_per_s"],
                metrics["train_loss"], metrics["val_top1"], metrics["epoch_seconds"],
            )  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                _save_state(folder, model, optimizer, scheduler, epoch, history)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


@dataclass
class _Step:
    """What every training and validation step uses, built once per worker."""

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    loss_fn: torch.nn.Module
    data_config: dict[str, Any]
    device: torch.device
    amp_dtype: torch.dtype | None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a uint8 batch, normalised and autocast as configured."""
        images = normalize_uint8(batch["image"], self.data_config, self.cfg.channels_last)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return self.model(images), batch["label"].long()


def _train_epoch(
    step: _Step, epoch: int, num_updates: int, rank: int
) -> tuple[float, float, float, float]:
    """One pass over this worker's shard; returns (summed loss, images seen, seconds spent
    waiting for batches, of which before the first: the pipeline's start)."""
    import ray.train

    cfg, model, optimizer = step.cfg, step.model, step.optimizer
    model.train()
    shard = ray.train.get_dataset_shard("train")
    total_loss, seen = 0.0, 0.0
    batches = shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        drop_last=True,
        prefetch_batches=2,
        device=step.device,
        local_shuffle_buffer_size=cfg.batch_size * 4,
        local_shuffle_seed=cfg.seed + epoch,
    )
    waited, first, ready = 0.0, 0.0, time.perf_counter()
    for index, batch in enumerate(watched(batches, cfg.stall_timeout_s, "training data")):
        waited += time.perf_counter() - ready
        first = first or waited
        if index == 1:
            _maybe_inject_failure(cfg, epoch, rank)
        logits, labels = step.forward(batch)
        loss = step.loss_fn(logits.float(), labels)  # as autocast would: in float32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        num_updates += 1
        step.scheduler.step_update(num_updates=num_updates)
        total_loss += float(loss.detach()) * len(labels)
        seen += len(labels)
        ready = time.perf_counter()
    return total_loss, seen, waited, first


@torch.no_grad()
def _validate(
    step: _Step, cached: list[dict[str, torch.Tensor]] | None
) -> tuple[dict[str, float], list[dict[str, torch.Tensor]] | None]:
    """All-reduced validation metrics, and the decoded batches to reuse next epoch.

    Validation's transform is deterministic, so after the first pass the shard is kept (up to
    ``val_cache_mb``) instead of planning and starting a Ray Data execution every epoch (seconds
    for a few hundred images). Workers of one streaming split must all read it or none, so the
    shard is kept only when every worker's fits.
    """
    import ray.train

    cfg, device = step.cfg, step.device
    step.model.eval()
    started = time.time()
    if cached is None:
        shard = ray.train.get_dataset_shard("val")
        stream = shard.iter_torch_batches(
            batch_size=cfg.batch_size * 2, drop_last=False, device=device
        )
        batches = watched(stream, cfg.stall_timeout_s, "validation data")
    else:
        batches = iter(cached)
    kept: list[dict[str, torch.Tensor]] | None = [] if cached is None else None
    kept_bytes, limit = 0, cfg.val_cache_mb * 2**20
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # loss, top1, top5, count, workers that could not keep
    for batch in batches:
        if kept is not None:
            kept_bytes += sum(t.nbytes for t in batch.values())
            if kept_bytes <= limit:  # a copy: the cache owns its memory, not Ray's blocks
                kept.append({k: t.clone() for k, t in batch.items()})
            else:
                kept = None
        logits, labels = step.forward(batch)
        logits = logits.float()
        sums[0] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        sums[1] += _topk_correct(logits, labels, 1)
        sums[2] += _topk_correct(logits, labels, 5)
        sums[3] += len(labels)
    sums[4] = float(cached is None and kept is None)
    loss, top1, top5, count, unkept = _all_reduce(sums, device)
    keep = cached if cached is not None else (kept if unkept == 0 else None)
    return {
        "val_loss": loss / max(count, 1),
        "val_top1": top1 / max(count, 1),
        "val_top5": top5 / max(count, 1),
        "val_images": count,
        "val_seconds": time.time() - started,
        "val_from_memory": float(cached is not None),
    }, keep
