"""The dataset manifest: the only way a folder of Parquet shards becomes a dataset.

Consumers (training, evaluation, explanation, benchmarks) find shards through ``load_manifest``
and ``split_path``, never by globbing, so a folder whose ingest did not finish (no manifest, or a
manifest pointing at missing shards) is refused with a clear error instead of half-read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "shards_dir", "splits", "counts", "class_names", "quarantine")


class DatasetError(ValueError):
    """A folder that is not a complete birdray dataset."""


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Atomic replace: readers see the old manifest or the new one, never a torn file."""
    path = out / MANIFEST_FILE
    tmp = out / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(
            f"{dataset_dir} is not a birdray dataset: no {MANIFEST_FILE} (run ingest)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema {manifest['schema_version']} is newer than birdray's")
    if not (dataset_dir / manifest["shards_dir"]).is_dir():
        raise DatasetError(f"{path} points at missing shards {manifest['shards_dir']}")
    return manifest


def manifest_checksum(dataset_dir: str | Path) -> str:
    """What a model records to say which data it was trained on."""
    return hashlib.sha256((Path(dataset_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


def split_path(dataset_dir: str | Path, split: str) -> str:
    manifest = load_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise DatasetError(
            f"{dataset_dir}: split {split!r} is empty or unknown; have {sorted(manifest['splits'])}"
        )
    return str(Path(dataset_dir) / manifest["shards_dir"] / f"split={split}")


def read_split(dataset_dir: str | Path, split: str, columns: list[str] | None = None):
    """A Ray Dataset of one split (lazy; blocks are the small Parquet files)."""
    import ray

    return ray.data.read_parquet(split_path(dataset_dir, split), columns=columns)
