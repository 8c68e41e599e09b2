"""Pre-flight of the data jobs: synth, download, ingest, evaluate, feedback."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from birdray import storage
from birdray.checks.common import (
    MODEL_HELP,
    dataset,
    device,
    exists,
    feedback_store,
    file,
    full_path,
    md5,
    model,
    output,
    positive,
    require,
)
from birdray.config import UsageError
from birdray.data.cub import CubFormatError
from birdray.data.folders import LAYOUTS, find_layout, read_layout

if TYPE_CHECKING:
    from birdray.scoring.sources import Source


def synth(cfg: Any) -> None:
    output("--out", cfg.out)
    positive({"--classes": cfg.classes, "--per-class": cfg.per_class, "--min-side": cfg.min_side})
    require(cfg.min_side <= cfg.max_side, "--max-side", f"must be >= --min-side {cfg.min_side}")
    require(0.0 < cfg.test_fraction < 1.0, "--test-fraction", "must be between 0 and 1")
    positive({"--workers": cfg.workers}, 0)


def download(cfg: Any) -> None:
    output("--out", cfg.out)
    require(
        cfg.url.startswith(("http://", "https://", "file://")),
        "--url",
        f"{cfg.url!r} is not an http(s):// or file:// URL",
    )
    if cfg.url.startswith("file://"):
        require(
            storage.local_path(cfg.url).is_file(),
            "--url",
            f"{storage.local_path(cfg.url)} is not a file (give the archive's absolute path)",
        )
    md5(cfg.md5)
    require(cfg.timeout_s > 0, "--timeout-s", "must be > 0")
    require(
        math.isfinite(cfg.max_extract_gb) and cfg.max_extract_gb > 0,
        "--max-extract-gb",
        "must be > 0",
    )


def ingest(cfg: Any) -> None:
    from birdray.data.ingest import DEFAULT_SOURCE

    local = None if storage.is_remote(cfg.source) else storage.local_path(cfg.source)
    if cfg.source == DEFAULT_SOURCE and local is not None and not local.exists():
        raise UsageError(
            f"--source: {full_path(cfg.source)} does not exist; `birdray download` puts CUB there, "
            f"or give --source ({LAYOUTS})"
        )
    exists("--source", cfg.source, LAYOUTS)
    if cfg.feedback:
        feedback_store(cfg.feedback)
    if local is not None and (local.is_dir() or local.suffix.lower() == ".csv"):
        try:
            layout = find_layout(local)
            if layout != "cub":  # a malformed line, case-only class names: before Ray starts
                read_layout(local, layout)
        except CubFormatError as exc:
            raise UsageError(f"--source: {exc}") from exc
    output("--out", cfg.out)
    require(0.0 <= cfg.val_fraction < 1.0, "--val-fraction", "must be in [0, 1)")
    require(0.0 <= cfg.test_fraction < 1.0, "--test-fraction", "must be in [0, 1)")
    require(
        cfg.val_fraction + cfg.test_fraction < 1.0,
        "--test-fraction",
        "--val-fraction + --test-fraction must be < 1 (something must be left to train on)",
    )
    positive({"--rows-per-shard": cfg.rows_per_shard, "--max-pixels": cfg.max_pixels})
    positive({"--max-side": cfg.max_side}, 0)
    require(cfg.max_file_mb > 0, "--max-file-mb", f"must be > 0, got {cfg.max_file_mb:g}")
    md5(cfg.md5)


def evaluate(cfg: Any) -> None:
    device(cfg.device, cfg.address)
    require(bool(cfg.model or cfg.registry), "--model", f"is required ({MODEL_HELP})")
    model(cfg.model, cfg.registry)
    manifest = dataset("--dataset", cfg.dataset, cfg.split)
    sources = _labelled_splits(cfg, manifest["splits"])
    if cfg.exclude_ids:
        _exclude_ids(cfg.exclude_ids, sources.get(cfg.split), cfg.split)
    if cfg.out:
        output("--out", cfg.out)
    positive({"--batch-size": cfg.batch_size, "--actors": cfg.actors})


def _labelled_splits(cfg: Any, have: list[str]) -> dict[str, Source]:
    """The splits evaluation reads (the report split, val to calibrate on), opened as the job
    opens them: shards' footers, and a ``label`` column (an unlabelled split failed after Ray
    started). A bucket's shards are the job's to read, before Ray all the same."""
    from birdray.evaluate.inputs import open_splits, splits_read
    from birdray.scoring.sources import SourceError

    if storage.is_remote(cfg.dataset):
        return {}
    try:
        return open_splits(cfg.dataset, splits_read(cfg.split, cfg.calibrate, have))
    except SourceError as exc:
        raise UsageError(f"--dataset: {exc}") from None


def _exclude_ids(path: str, source: Source | None, split: str) -> None:
    """Every token an id, and some image of the split left to report on: one column read from
    the shards the job reads (``source``; ``None`` for a bucket), a README beside them ignored."""
    from birdray.evaluate.exclude import nothing_left, read_exclude_ids
    from birdray.scoring.sources import split_columns

    file("--exclude-ids", path, "a file of image ids")
    ids = read_exclude_ids(path)
    if ids and source is not None:
        listed = split_columns(source, ["image_id"])
        left = set(listed["image_id"].to_pylist()) - set(ids)
        require(bool(left), "--exclude-ids", nothing_left(path, split, len(ids), listed.num_rows))


def feedback(cfg: Any) -> None:
    feedback_store(cfg.feedback or storage.join(cfg.registry, "feedback"))
    if cfg.model:
        model(cfg.model, cfg.registry)
    if cfg.out and not storage.is_remote(cfg.out):
        require(not storage.local_path(cfg.out).is_dir(), "--out", f"{cfg.out} is a folder")
