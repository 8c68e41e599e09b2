"""``birdray train``: build the TorchTrainer from the recipe, fit, export the best model package.

The same function works under ``ray job submit`` on a GPU cluster and on a laptop: scaling,
storage and failure handling come from the config; resubmitting with the same ``--name`` resumes
the run from its latest checkpoint (Ray Train restores it from ``storage_path/name``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from birdray import storage
from birdray.config import ConfigError, save_config
from birdray.data.feedback import training_record
from birdray.data.manifest import DatasetError, load_manifest, manifest_checksum
from birdray.devices import gpus_to_use
from birdray.model.errors import ModelError
from birdray.model.package import PackageMetadata, check_fine_tune_source, save_package
from birdray.plots import training_curves
from birdray.resources import ResourceError, plan_workers
from birdray.runtime import init_ray, signals_received
from birdray.train.config import TrainConfig, short_of_one_batch
from birdray.train.optim import unknown_optimizer

__all__ = ["ResourceError", "TrainConfig", "build_trainer", "export_package", "run_training"]


def check_resources(
    cfg: TrainConfig,
    cluster: dict[str, float],
    copies: int = 1,
    extra_cpus: float = 0.0,
    data_cpus: float = 0.0,
) -> None:
    """Fit the workers beside Ray Data's tasks (may lower ``cpus_per_worker``) or fail now."""
    cfg.cpus_per_worker = plan_workers(
        cfg.num_workers,
        cfg.cpus_per_worker,
        cfg.use_gpu,
        max(cfg.data_cpus, data_cpus),
        cluster,
        copies,
        extra_cpus,
    )


def check_reachable(cfg: TrainConfig) -> None:
    """Hub weights and bucket storage are needed by every worker: fail in seconds, not after
    retries on each worker (timm's hub download retries for ~50 s offline)."""

    if cfg.pretrained and not cfg.pretrained_file and not os.environ.get("HF_HUB_OFFLINE"):
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=5).close()
        except OSError as exc:
            raise ResourceError(
                f"pretrained: true downloads {cfg.arch} weights from {host}, which cannot be"
                f" reached ({exc}); give --pretrained-file PATH, --pretrained false, or set"
                " HF_HUB_OFFLINE=1 when the weights are in the Hugging Face cache"
            ) from None
    if storage.is_remote(cfg.storage_path):
        try:
            fs, path = storage.filesystem(cfg.storage_path)
            fs.get_file_info(path)
        except OSError as exc:
            raise ResourceError(f"storage_path {cfg.storage_path}: {exc}") from None


def storage_failure(cfg: TrainConfig, error: BaseException) -> ResourceError | None:
    """The run's checkpoint storage refusing it (disk full, read-only, bucket unreachable) as
    one error naming ``--storage-path``: Ray Train reports it as a ``ControllerError`` (the
    controller persists the run's state) or a ``WorkerGroupError`` (workers write checkpoints)."""
    controller = getattr(error, "controller_failure", None)
    workers = list(getattr(error, "worker_failures", {}).values())
    causes = [controller] if isinstance(controller, OSError) else []
    causes += [e for e in workers if isinstance(e, OSError) and e.errno in storage.REFUSED_WRITE]
    if not causes:
        return None
    return ResourceError(f"--storage-path {cfg.storage_path}: {' '.join(str(causes[0]).split())}")


def default_name(cfg: TrainConfig) -> str:
    return cfg.name or f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_trainer(cfg: TrainConfig, callbacks: list | None = None):
    """A TorchTrainer for the recipe (used by ``run_training`` and each Tune trial)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # torch and timm (seconds) only once a run is built: a usage error is said before them
    from birdray.model.factory import arch_data_config
    from birdray.train.data import build_datasets, train_transform_kwargs
    from birdray.train.loop import train_loop_per_worker

    # workers run in another folder: absolute paths, in a copy (the caller's config is theirs)
    paths = ("dataset", "pretrained_file", "init_from")
    cfg = dataclasses.replace(
        cfg, **{name: storage.absolute(getattr(cfg, name)) for name in paths if getattr(cfg, name)}
    )
    manifest = load_manifest(cfg.dataset)
    if not manifest["splits"].get("train") or not manifest["splits"].get("val"):
        raise ValueError(f"{cfg.dataset}: training needs non-empty train and val splits")
    _, short = short_of_one_batch(
        manifest["splits"]["train"]["rows"], cfg.batch_size, cfg.num_workers
    )
    if short:
        raise DatasetError(f"{cfg.dataset}: {short}")
    unknown = unknown_optimizer(cfg.opt)
    if unknown:  # else the first worker failed on it, after Ray and the data had started
        raise ConfigError(f"opt: {unknown}")
    if cfg.init_from:
        check_fine_tune_source(cfg.init_from, cfg.arch, manifest["class_names"], cfg.dataset)
    data_config = arch_data_config(cfg.arch, len(manifest["class_names"]), cfg.image_size)
    datasets = build_datasets(
        cfg.dataset,
        data_config,
        train_transform_kwargs(cfg.hflip, cfg.scale_min, cfg.auto_augment),
        cfg.data_cpus,
        seed=cfg.seed,
    )
    resources = {"CPU": cfg.cpus_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": asdict(cfg),
            "num_classes": len(manifest["class_names"]),
            "data_config": data_config,
            "train_rows": manifest["splits"]["train"]["rows"],
        },
        torch_config=TorchConfig(backend=cfg.dist_backend or None),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage.absolute(cfg.storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoints_to_keep,
                checkpoint_score_attribute="val_top1",
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
    return trainer, data_config, manifest


LOCAL_STAGING = "runs/train"  # this machine's copy of a run whose storage is a bucket


def _upload(run_dir: Path, uri: str) -> str:
    """Copy the run's local outputs (config, summary, plots, package) next to its checkpoints."""
    storage.upload_dir(run_dir.resolve(), uri)
    return uri


def export_package(
    checkpoint,
    cfg: TrainConfig,
    data_config: dict[str, Any],
    manifest: dict[str, Any],
    out: str | Path,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Turn a training checkpoint into the one model artifact (safetensors + metadata)."""
    from birdray.model.factory import create_model  # the fixed torch/timm import order first
    from birdray.train.loop import read_checkpoint

    with checkpoint.as_directory() as folder:
        state, history = read_checkpoint(folder)
    model = create_model(cfg.arch, num_classes=len(manifest["class_names"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ModelError(f"checkpoint does not fit {cfg.arch}: {exc}") from exc
    best = history[int(state["epoch"])] if int(state["epoch"]) < len(history) else history[-1]
    meta = PackageMetadata(
        arch=cfg.arch,
        num_classes=len(manifest["class_names"]),
        class_names=manifest["class_names"],
        data_config=data_config,
        image_size=cfg.image_size,
        metrics={k: v for k, v in best.items() if isinstance(v, (int, float))},
        train_config=asdict(cfg),
        dataset={
            "path": storage.absolute(cfg.dataset),
            "manifest_checksum": manifest_checksum(cfg.dataset),
            "content_checksum": manifest.get("content_checksum", ""),
            # which people's answers it learnt from (the registry keeps this with the version)
            **({"feedback": fb} if (fb := training_record(manifest)) else {}),
        },
        run_id=cfg.name,
        provenance={"checkpoint": str(checkpoint.path), "history": history, **(provenance or {})},
    )
    return save_package(out, model, meta)


def _run_history(checkpoint) -> list[dict[str, Any]]:
    """The whole run's per-epoch history, from its last checkpoint (the best may be earlier)."""
    from birdray.train.loop import read_history

    with checkpoint.as_directory() as folder:
        return read_history(folder)


def write_history(history: list[dict[str, Any]], run_dir: Path) -> Path:
    """timm-style ``summary.csv`` plus the training-curves plot next to it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.csv"
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)

    training_curves(history, run_dir / "train_val_losses.png")
    return path


def _failures_of(log) -> list[dict[str, Any]] | str:
    """This submission's recorded worker failures; a run that trained is not failed by them."""
    from birdray.train.failures import read_failures

    try:
        return read_failures(log.run_location, log.submission)
    except (OSError, ValueError) as exc:
        return f"unreadable: {exc}"


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train with Ray Train and export the best checkpoint as a model package."""

    cfg.name = default_name(cfg)
    cluster = init_ray(cfg.address or None)
    if cfg.use_gpu:  # a cluster without GPUs would never place the workers: say so now
        gpus_to_use("cuda", 0.0, cluster, flag="--use-gpu")
    check_resources(cfg, cluster)  # nothing is submitted before both checks pass
    check_reachable(cfg)
    remote = storage.is_remote(cfg.storage_path)
    # a bucket (s3://, gs://) keeps the checkpoints; config, summary, plots and the package are
    # written on this machine first, then copied next to them
    run_dir = (Path(LOCAL_STAGING) if remote else storage.local_path(cfg.storage_path)) / cfg.name
    save_config(cfg, run_dir / "config.yaml")
    from birdray.train.failures import FailureLog  # imports ray.train: after init_ray

    run_location = storage.join(storage.absolute(cfg.storage_path), cfg.name)
    failure_log = FailureLog(run_location, cfg.max_failures)
    trainer, data_config, manifest = build_trainer(cfg, callbacks=[failure_log])
    previous_sigint = signal.getsignal(signal.SIGINT)
    with signals_received() as received:
        try:
            result = trainer.fit()
        except BaseException as exc:  # Ray Train raises the run's error from fit()
            if signal.SIGINT in received():  # Ray Train aborted the run (signals_received)
                raise KeyboardInterrupt from exc
            failure = storage_failure(cfg, exc) if isinstance(exc, Exception) else None
            if failure is None:
                raise
            raise failure from exc
        finally:
            # fit() leaves Ray Train's Ctrl-C handler behind, and with it a handle that keeps the
            # finished run's controller, dataset actors and a CPU-holding pipeline alive in a
            # long-lived driver (the demo): put the previous handler back
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous_sigint)
        if signal.SIGINT in received():  # pressed as the run finished: Ray ignored it, not we
            raise KeyboardInterrupt
    if result.error:
        raise result.error
    best = result.get_best_checkpoint(metric="val_top1", mode="max") or result.checkpoint
    out = Path(cfg.package_out or run_dir / "package")
    package = export_package(best, cfg, data_config, manifest, out)
    write_history(_run_history(result.checkpoint or best), run_dir)
    summary: dict[str, Any] = {
        "package": str(package),
        "run_dir": str(run_dir),
        "uploaded_to": _upload(run_dir, f"{cfg.storage_path.rstrip('/')}/{cfg.name}")
        if remote
        else None,
        "best": json.loads((package / "metadata.json").read_text())["metrics"],  # exported
        "last": result.metrics,  # the final epoch's report
        # the worker failures Ray Train restarted from a checkpoint (max_failures), with why
        "worker_failures": _failures_of(failure_log),
    }
    if cfg.registry:
        from birdray.registry import register_once

        version, _ = register_once(cfg.registry, package, {"run": cfg.name})  # weights once
        summary["registered_version"] = version
    return summary
