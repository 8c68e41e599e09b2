"""The training recipe: one dataclass for ``birdray train``, the Tune sweep and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from birdray.config import field


@dataclass
class TrainConfig:
    # data
    dataset: str = field("data/cub_parquet", "ingested dataset folder (with manifest.json)")
    # model
    arch: str = field(
        "resnet50",
        "any timm model name (--model: timm train.py's name for it; only train takes it, as"
        " elsewhere --model names a model package)",
        aliases=("--model",),
    )
    pretrained: bool = field(False, "start from timm hub weights (needs internet)")
    pretrained_file: str = field("", "start from a local weights file (safetensors/.pth)")
    init_from: str = field(
        "", "start from this model package, head included (fine-tune it on new data: feedback)"
    )
    image_size: int = field(
        224, "train/eval resolution (448 for the fine-tune recipe)", aliases=("--img-size",)
    )
    drop_rate: float = field(0.0, "dropout before the classifier")
    # recipe
    epochs: int = field(30, "epochs")
    batch_size: int = field(32, "images per worker per step")
    opt: str = field("sgd", "timm optimizer name (sgd, momentum, adamw, ...)")
    lr: float = field(
        0.01,
        "peak learning rate per 256 images, like timm's --lr-base: scaled linearly to the global"
        " batch (batch_size x num_workers)",
        aliases=("--lr-base",),
    )
    momentum: float = field(0.9, "SGD momentum")
    weight_decay: float = field(1e-4, "weight decay")
    warmup_epochs: int = field(1, "linear warmup epochs")
    min_lr: float = field(1e-6, "cosine floor")
    label_smoothing: float = field(0.1, "label smoothing", aliases=("--smoothing",))
    hflip: float = field(0.5, "horizontal flip probability (CUB parts are mirrored)")
    scale_min: float = field(0.35, "random-resized-crop minimum area (CUB birds are small)")
    auto_augment: str = field(
        "", "timm auto-augment policy, e.g. rand-m9-mstd0.5 (empty: off)", aliases=("--aa",)
    )
    amp: bool = field(True, "bf16 autocast on GPU")
    amp_cpu: bool | None = field(
        None,
        "bf16 autocast on CPU: on, off, or unset: on where the CPU has bf16 instructions "
        "(AVX512-BF16, AMX; ~1.7x faster steps), off where bf16 would be emulated",
    )
    channels_last: bool = field(True, "channels_last memory format")
    seed: int = field(0, "seed")
    # scaling
    num_workers: int = field(2, "data-parallel training workers")
    use_gpu: bool = field(False, "one GPU per worker (falls back to CPU in the model if absent)")
    cpus_per_worker: float = field(1.0, "logical CPUs reserved per worker")
    torch_threads: int = field(
        0, "torch threads per worker (0: on CPU the node's cores, shared by the workers there)"
    )
    placement_strategy: str = field("PACK", "PACK | SPREAD | STRICT_SPREAD (one worker per node)")
    dist_backend: str = field("", "torch.distributed backend (empty: nccl on GPU, gloo on CPU)")
    data_cpus: float = field(
        1.0,
        "logical CPUs per Ray Data decode/augment task (at 0.5, two decoders on the core left"
        " beside a CPU worker made its steps 30 % slower on 2 cores)",
    )
    val_cache_mb: float = field(
        1024.0,
        "keep each worker's decoded validation shard in memory after the first epoch, up to this"
        " many MiB (its transform is deterministic: re-decoding every epoch buys nothing; 0: off)",
    )
    stall_timeout_s: float = field(
        300.0, "stop with Ray's pending-resource view when no batch arrives this long (0: never)"
    )
    # run
    storage_path: str = field("runs/train", "where Ray Train keeps checkpoints (path or URI)")
    name: str = field("", "run name; submitting again with the same name resumes it")
    checkpoints_to_keep: int = field(2, "best checkpoints kept (by val_top1); the latest too")
    max_failures: int = field(2, "worker failures to recover from (restart from last checkpoint)")
    package_out: str = field(
        "",
        "model package folder (default: <storage>/<name>/package; with a URI storage:"
        " runs/train/<name>/package here, then copied next to the checkpoints)",
    )
    registry: str = field("", "register the package here when training ends (empty: don't)")
    address: str = field("", "Ray address (empty: RAY_ADDRESS or a local Ray)")
    inject_failure_at_epoch: int = field(
        -1, "chaos test: rank 0 raises once during this epoch, to prove recovery (-1: never)"
    )


def short_of_one_batch(train_rows: int, batch_size: int, num_workers: int) -> tuple[str, str]:
    """(the flag to change, why no worker would take a training step), or ("", "") when each
    worker gets at least one batch.

    Ray Train splits the train split equally between workers and the loop drops a last partial
    batch (a batch of one breaks BatchNorm), so a split smaller than batch x workers trains
    nothing: the run used to end "successfully" and register an untrained model."""
    per_worker = train_rows // max(num_workers, 1)
    if per_worker >= batch_size:
        return "", ""
    said = (
        f"the train split has {train_rows} images, {per_worker} per worker for {num_workers}"
        f" workers, fewer than one batch of {batch_size}: no training step would run; "
    )
    if per_worker >= 2:
        return "--batch-size", said + (
            f"use --batch-size {per_worker} or less, fewer --num-workers, or more data"
        )
    most = train_rows // 2  # workers that each get a batch of two
    fewer = f"use --num-workers {most} or fewer with --batch-size 2, or " if most else "use "
    return "--num-workers", said + fewer + "more data"
