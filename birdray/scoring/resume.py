"""What ``--resume`` may keep: rows of inputs that have not changed since they were scored.

A folder's file says it by its size and modification time (in each row). A dataset's row has
neither, so each run records, before any row, what its rows were made from (``inputs.parquet``:
the photo's hash and the shard holding its bytes); a later run keeps a row only when that record
matches the input now.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from birdray import storage
from birdray.scoring.output import (
    INPUTS_FILE,
    PARTIAL_PREFIX,
    PREDICTIONS,
    own_runs,
    read_rows,
    writing,
)
from birdray.scoring.sources import Source, split_columns
from birdray.scoring.stages import SCHEMA


def input_identity(source: Source) -> dict[str, str]:
    """Dataset rows: path -> the photo's SHA-256 (ingest's ``content_hash``) and the location,
    size and mtime of the shard that holds its bytes; folders: {} (a row's size and mtime say it).

    Dataset rows have no size or mtime of their own, so ``--resume`` compared (None, None) and
    reused rows of replaced photos, or of another dataset (their paths are relative). The hash
    is of the original photo; the shard's identity also catches bytes re-encoded (``--max-side``)
    or rewritten in place under an unchanged hash, and rows of another dataset are rescored."""
    if source.kind != "dataset":
        return {}
    try:  # the split's shards exactly as the listing takes them
        table = split_columns(source, ["path", "content_hash", "__filename"])
    except (pa.ArrowInvalid, KeyError):  # a dataset without hashes: the shard alone says it
        table = split_columns(source, ["path", "__filename"])
        table = table.append_column("content_hash", pa.nulls(len(table), pa.string()))
    fs, _ = storage.filesystem(source.split_dir)
    shards = sorted(set(table["__filename"].to_pylist()))
    stamp = {i.path: f"{i.path}:{i.size}:{i.mtime_ns}" for i in fs.get_file_info(shards)}
    return {
        path: f"{digest}@{stamp[shard]}"
        for path, digest, shard in zip(
            table["path"].to_pylist(),
            table["content_hash"].to_pylist(),
            table["__filename"].to_pylist(),
            strict=True,
        )
    }


def write_inputs(staging: Path, identity: dict[str, str]) -> None:
    """Record what this run's rows were made from, before any row: a crash's rows need it too."""
    if identity:
        table = pa.table({"path": list(identity), "content": list(identity.values())})
        with writing(staging):
            staging.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, staging / INPUTS_FILE)


def _recorded(folder: Path) -> dict[str, str]:
    try:
        table = pq.read_table(folder / INPUTS_FILE, columns=["path", "content"])
    except (pa.ArrowException, OSError, KeyError, ValueError):
        return {}  # none (a folder input, an older run) or torn: dataset rows are not reused
    return dict(zip(table["path"].to_pylist(), table["content"].to_pylist(), strict=True))


def reusable_rows(
    root: Path, listing: pa.Table, version: str, identity: dict[str, str] | None = None
) -> pa.Table:
    """Rows ``--resume`` keeps: scored OK by this model version, for an input still listed
    unchanged: the same size, mtime and ``identity`` (``input_identity``) as when it was scored.
    An input whose identity is unknown (all three missing) is never taken for unchanged.

    Failed rows are not kept: their file is tried again (a fixed permission, a re-uploaded photo
    or a transient read error deserve a second chance; a truly broken file just fails again).
    """
    identity = identity or {}
    now: dict[str, tuple] = {
        p: (s, m, identity.get(p))
        for p, s, m in zip(
            listing["path"].to_pylist(),
            listing["file_size"].to_pylist(),
            listing["mtime_ns"].to_pylist(),
            strict=True,
        )
    }
    kept, taken = [], set()
    for folder in [root, *own_runs(root, PARTIAL_PREFIX)]:
        old = read_rows([folder / PREDICTIONS])
        good = pc.and_(pc.equal(old["ok"], True), pc.equal(old["model_version"], version))
        old = old.filter(good)
        then = _recorded(folder) if len(old) else {}
        keep = []
        for i, (p, s, m) in enumerate(
            zip(
                old["path"].to_pylist(),
                old["file_size"].to_pylist(),
                old["mtime_ns"].to_pylist(),
                strict=True,
            )
        ):
            key = (s, m, then.get(p))
            if p not in taken and key != (None, None, None) and now.get(p) == key:
                keep.append(i)
                taken.add(p)
        kept.append(old.take(pa.array(keep, pa.int64())))
    return pa.concat_tables(kept) if kept else SCHEMA.empty_table()
