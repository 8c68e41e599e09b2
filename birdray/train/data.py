"""Ray Data pipelines feeding the trainer: Parquet -> decode -> timm transform -> uint8 tensors.

Decoding and augmentation run as Ray Data tasks on the CPUs the worker plan leaves free, and
ship uint8 arrays: 4x less to move than floats, normalised on the training device. Random
augmentation is re-drawn every epoch because Ray Data re-executes the lazy pipeline on each pass;
the files are listed once, when the datasets are built, so an epoch's first batch does not wait
for a listing task (validation is kept by the workers after its first pass: see ``loop``).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from birdray.data.manifest import read_split
from birdray.images import decode_image
from birdray.model.crop import decode_for_model, uint8_eval_transform


@functools.lru_cache(maxsize=8)
def _transform(config_json: str, training: bool, train_kwargs_json: str):
    """The split's uint8 transform: validation's is the eval crop scoring, evaluation and Serve
    use (Pillow, no torch, for the configs it covers); training's is timm's augmentation.

    Imported here, not at the top: Ray Data's split coordinator unpickles this module's functions
    to plan each pipeline and never runs them, and importing torch/timm there held every split's
    start (and an epoch's first batch) up by seconds."""
    if not training:
        return uint8_eval_transform(json.loads(config_json))
    from birdray.model.preprocess import build_transform

    return build_transform(
        json.loads(config_json), training, uint8=True, **json.loads(train_kwargs_json)
    )


def train_transform_kwargs(hflip: float, scale_min: float, auto_augment: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"hflip": hflip, "scale": (scale_min, 1.0)}
    if auto_augment:
        kwargs["auto_augment"] = auto_augment
    return kwargs


def decode_and_transform(
    batch: dict[str, np.ndarray],
    data_config: dict[str, Any],
    training: bool,
    train_kwargs: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data batch fn: image bytes -> uint8 CHW arrays (the model's own preprocessing)."""
    transform = _transform(
        json.dumps(data_config, sort_keys=True),
        training,
        json.dumps(train_kwargs or {}, sort_keys=True),
    )
    # validation sees the pixels evaluation, scoring and Serve see (their one decode);
    # augmentation crops and zooms into the photo, so it decodes at full size. Ingest decoded
    # every stored image whole once: each epoch skips that check
    decode = (
        functools.partial(decode_image, whole=False)
        if training
        else functools.partial(decode_for_model, data_config=data_config, whole=False)
    )
    images = [
        np.asarray(transform(decode(bytes(data)).image), dtype=np.uint8) for data in batch["image"]
    ]
    return {"image": np.stack(images), "label": batch["label"].astype(np.int64)}


def build_datasets(
    dataset_dir: str,
    data_config: dict[str, Any],
    train_kwargs: dict[str, Any],
    data_cpus: float,
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> dict[str, Any]:
    """Lazy Ray Datasets per split, augmentation only on ``train``, whose files are read in a new
    order every epoch (the training loop's local shuffle buffer mixes the rows within)."""

    datasets = {}
    for split in splits:
        training = split == "train"
        ds = read_split(
            dataset_dir,
            split,
            columns=["image", "label"],
            list_once=True,
            shuffle_seed=seed if training else None,
        )
        datasets[split] = ds.map_batches(
            decode_and_transform,
            batch_size=32,
            num_cpus=data_cpus,
            fn_kwargs={
                "data_config": data_config,
                "training": training,
                "train_kwargs": train_kwargs if training else None,
            },
        )
    return datasets
