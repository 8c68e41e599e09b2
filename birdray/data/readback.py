"""What ingest wrote, read back from the files before the manifest names them: per-split
counts, a content checksum, the quarantined rows with their reasons, and the ids reconciled
as sets against the listing (a row written twice must not hide a row lost)."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow.dataset as pads

from birdray import storage
from birdray.data.rows import QUARANTINE


def reconcile(listed: list[int], ingested: list[int], quarantined: list[int]) -> None:
    """Every listed id exactly once in ``ingested`` + ``quarantined``, and nothing else.

    Equal counts are not enough: a row written twice hides a row lost.
    """
    seen = list(ingested) + list(quarantined)
    counts: dict[int, int] = {}
    for image_id in seen:
        counts[image_id] = counts.get(image_id, 0) + 1
    twice = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(set(listed) - set(counts))
    unlisted = sorted(set(counts) - set(listed))
    if twice or missing or unlisted:
        raise RuntimeError(
            f"image ids do not reconcile ({len(ingested)} ingested + {len(quarantined)} "
            f"quarantined, {len(listed)} listed): written more than once {twice[:10]}, "
            f"missing {missing[:10]}, not listed {unlisted[:10]}"
        )


def split_counts(shard_root: str) -> tuple[dict[str, Any], str, list[int]]:
    """Per-split row/class counts read back from the written files, a content checksum, and
    every image id written (to reconcile against the list)."""
    fs, root = storage.filesystem(shard_root)
    table = pads.dataset(root, filesystem=fs, format="parquet", partitioning="hive").to_table(
        columns=["image_id", "label", "split", "content_hash"]
    )
    splits: dict[str, Any] = {}
    frame = table.to_pandas().sort_values("image_id")
    for split, group in frame.groupby("split"):
        splits[str(split)] = {
            "rows": len(group),
            "files": storage.count_files(storage.join(shard_root, f"split={split}"), ".parquet"),
            "per_class": {
                int(k): int(v) for k, v in group["label"].value_counts().sort_index().items()
            },
        }
    payload = "\n".join(
        f"{r.image_id} {r.label} {r.split} {r.content_hash}" for r in frame.itertuples()
    )
    return splits, hashlib.sha256(payload.encode()).hexdigest(), frame["image_id"].tolist()


def collect_quarantine(shards: str) -> list[dict[str, Any]]:
    """Rejected rows move from their Parquet folder into the manifest, with their reasons."""
    folder = storage.join(shards, f"split={QUARANTINE}")
    if QUARANTINE not in {name.removeprefix("split=") for name in storage.child_dirs(shards)}:
        return []
    fs, path = storage.filesystem(folder)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["image_id", "path", "error"]
    )
    storage.delete_dir(folder)
    rows = sorted(table.to_pylist(), key=lambda r: r["image_id"])
    return [{"image_id": r["image_id"], "path": r["path"], "reason": r["error"]} for r in rows]
