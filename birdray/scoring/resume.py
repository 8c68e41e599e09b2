"""What ``--resume`` may keep: rows of inputs that have not changed since they were scored.

A folder's file says it by its size and modification time (in each row). A dataset's row has
neither, so each run records, before any row, what its rows were made from (``inputs.parquet``:
the photo's hash and the shard holding its bytes); a later run keeps a row only when that record
matches the input now.

Built and compared column by column with pyarrow (a dataset may hold a million photos): Python
dicts of every row cost ~7-11 s and ~1.5 GB at 1 M rows before any photo was scored (~3-4 s and
~0.7 GB as columns).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
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
from birdray.scoring.sources import Source, SourceError, split_columns
from birdray.scoring.stages import SCHEMA

IDENTITY_SCHEMA = pa.schema([("path", pa.string()), ("content", pa.string())])
Identity = pa.Table | Mapping[str, str] | None  # path -> content; None or empty: a folder's


def input_identity(source: Source) -> pa.Table | None:
    """Dataset rows: a table of path -> ``<photo's SHA-256>@<shard>:<size>:<mtime_ns>`` (ingest's
    ``content_hash``; the location, size and mtime of the shard holding its bytes); folders:
    None (a row's size and mtime say it).

    Dataset rows have no size or mtime of their own, so ``--resume`` compared (None, None) and
    reused rows of replaced photos, or of another dataset (their paths are relative). The hash
    is of the original photo; the shard's identity also catches bytes re-encoded (``--max-side``)
    or rewritten in place under an unchanged hash, and rows of another dataset are rescored.
    A dataset that cannot be read now (a bucket refusing the connection or the permission) is
    one ``SourceError`` naming it, not a traceback."""
    if source.kind != "dataset":
        return None
    try:
        return _dataset_identity(source)
    except OSError as exc:
        raise SourceError(f"cannot read the dataset's shards in {source.split_dir}: {exc}") from exc


def _dataset_identity(source: Source) -> pa.Table:
    try:  # the split's shards exactly as the listing takes them
        table = split_columns(source, ["path", "content_hash", "__filename"])
    except (pa.ArrowInvalid, KeyError):  # a dataset without hashes: the shard alone says it
        table = split_columns(source, ["path", "__filename"])
        table = table.append_column("content_hash", pa.nulls(len(table), pa.string()))
    fs, _ = storage.filesystem(source.split_dir)
    shards = pc.unique(table["__filename"])  # a few hundred at most: one stamp each
    infos = fs.get_file_info(shards.to_pylist())
    stamps = pa.array([f"{i.path}:{i.size}:{i.mtime_ns}" for i in infos], pa.string())
    stamp = pc.take(stamps, pc.index_in(table["__filename"], value_set=shards))
    digest = pc.cast(table["content_hash"], pa.string())
    # "None@..." for a photo without a hash, as the records of earlier runs spell it
    content = pc.binary_join_element_wise(
        digest, stamp, "@", null_handling="replace", null_replacement="None"
    )
    path = pc.cast(table["path"], pa.string())
    return pa.table([path, content], schema=IDENTITY_SCHEMA)


def _as_table(identity: Identity) -> pa.Table:
    """``identity`` as a path/content table (a dict of an older caller too)."""
    if identity is None:
        return IDENTITY_SCHEMA.empty_table()
    if isinstance(identity, Mapping):
        columns = {"path": list(identity), "content": list(identity.values())}
        return _known(pa.table(columns, schema=IDENTITY_SCHEMA))
    return _known(identity.select(IDENTITY_SCHEMA.names).cast(IDENTITY_SCHEMA))


def _known(table: pa.Table) -> pa.Table:
    """Rows with a content: a path whose content is None has no identity, as an absent one."""
    return table.filter(pc.is_valid(table["content"])) if table["content"].null_count else table


def write_inputs(staging: Path, identity: Identity) -> None:
    """Record what this run's rows were made from, before any row: a crash's rows need it too."""
    table = _as_table(identity)
    if len(table):
        with writing(staging):
            staging.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, staging / INPUTS_FILE)


def _recorded(folder: Path) -> pa.Table:
    try:
        table = pq.read_table(folder / INPUTS_FILE, columns=IDENTITY_SCHEMA.names)
        return _known(table.cast(IDENTITY_SCHEMA))
    except (pa.ArrowException, OSError, KeyError, ValueError):
        # none (a folder input, an older run) or torn: dataset rows are not reused
        return IDENTITY_SCHEMA.empty_table()


def _lookup(keys: pa.ChunkedArray, table: pa.Table, column: str) -> pa.ChunkedArray:
    """``table[column]`` at the first row whose path is each of ``keys`` (null where none)."""
    return pc.take(table[column], pc.index_in(keys, value_set=table["path"]))


def _matches(recorded: pa.Table, current: pa.Table) -> pa.ChunkedArray:
    """Per recorded row: whether that input's identity now is the one recorded. The same paths
    in the same order (a rerun on an unchanged split) are compared in place, with no lookup."""
    now = current["content"]
    in_place = len(recorded) == len(current) and bool(
        pc.all(pc.equal(recorded["path"], current["path"])).as_py()  # None for no rows
    )
    if not in_place:
        now = _lookup(recorded["path"], current, "content")
    return pc.fill_null(pc.equal(recorded["content"], now), False)


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality in which two nulls are equal (as ``None == None`` was)."""
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(pc.fill_null(pc.equal(a, b), False), both_null)


def reusable_rows(
    root: Path, listing: pa.Table, version: str, identity: Identity = None
) -> pa.Table:
    """Rows ``--resume`` keeps: scored OK by this model version, for an input still listed
    unchanged: the same size, mtime and ``identity`` (``input_identity``) as when it was scored.
    An input whose identity is unknown (all three missing) is never taken for unchanged.
    Each path is kept once: from the finished result first, then the oldest partial run.

    Failed rows are not kept: their file is tried again (a fixed permission, a re-uploaded photo
    or a transient read error deserve a second chance; a truly broken file just fails again).
    """
    current = _as_table(identity)
    kept: list[pa.Table] = []
    taken = np.zeros(len(listing), dtype=bool)  # by position in the listing: one row per path
    for folder in [root, *own_runs(root, PARTIAL_PREFIX)]:
        old = read_rows([folder / PREDICTIONS])
        good = pc.and_(pc.equal(old["ok"], True), pc.equal(old["model_version"], version))
        old = old.filter(good)
        if not len(old):
            continue
        at = pc.index_in(old["path"], value_set=listing["path"])  # null: no longer listed
        size, mtime = old["file_size"], old["mtime_ns"]
        recorded = _recorded(folder)
        then = pc.index_in(old["path"], value_set=recorded["path"])  # null: none recorded
        unrecorded = pc.is_null(then)
        unknown = pc.and_(pc.and_(pc.is_null(size), pc.is_null(mtime)), unrecorded)
        # the identity recorded is today's, or there is none either then or now (a folder's)
        alike = pc.fill_null(pc.take(_matches(recorded, current), then), False)
        unseen: Any = True
        if len(current) and pc.any(pc.and_(unrecorded, pc.invert(unknown))).as_py():
            unseen = pc.invert(pc.is_in(old["path"], value_set=current["path"]))
        alike = pc.or_(alike, pc.and_(unrecorded, unseen))
        unchanged = pc.and_(
            pc.and_(
                _same(size, pc.take(listing["file_size"], at)),
                _same(mtime, pc.take(listing["mtime_ns"], at)),
            ),
            alike,
        )
        keep = pc.and_(pc.and_(pc.is_valid(at), pc.invert(unknown)), unchanged)
        rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        where = pc.fill_null(at, -1).to_numpy(zero_copy_only=False)[rows]
        rows, where = rows[~taken[where]], where[~taken[where]]  # kept from an earlier folder
        first = np.sort(np.unique(where, return_index=True)[1])  # the folder's first row of each
        rows, where = rows[first], where[first]
        taken[where] = True
        kept.append(old.take(rows))
    return pa.concat_tables(kept) if kept else SCHEMA.empty_table()
