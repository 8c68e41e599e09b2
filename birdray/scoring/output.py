"""The output folder, written so that a half-finished job never looks finished.

Layout: ``<output>/predictions/*.parquet``, ``predictions.csv`` (optional), ``summary.json``,
``explanations/`` and ``review/`` (optional) and ``_SUCCESS``, which is written last and is the
only sign that the rest belongs to one complete run. A run writes everything under
``<output>/.partial-<run_id>/``; commit removes ``_SUCCESS``, swaps each result into place with a
rename and writes ``_SUCCESS`` again. A run that fails leaves the previous complete result
untouched, plus its partial folder, whose finished Parquet files ``--resume`` reuses. One run at
a time holds ``<output>/.lock``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from birdray import locks, storage
from birdray.scoring.stages import SCHEMA

SUCCESS = "_SUCCESS"
PREDICTIONS = "predictions"
CSV_FILE = "predictions.csv"
SUMMARY_FILE = "summary.json"
EXPLANATIONS = "explanations"
REVIEW = "review"  # --review-below: the unsure photos, for people to label
RESULTS = (PREDICTIONS, CSV_FILE, SUMMARY_FILE, EXPLANATIONS, REVIEW)
PARTIAL_PREFIX = ".partial-"


class OutputError(RuntimeError):
    """The output is busy, already finished (no --resume/--overwrite) or does not reconcile."""


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Refuse a second job on the same output while one runs (released when the process dies)."""
    with locks.file_lock(root / ".lock", wait=False) as held:
        if not held:
            raise OutputError(f"another scoring job is writing to {root}")
        yield


@contextlib.contextmanager
def writing(location: Path | str) -> Iterator[None]:
    """A write that fails (disk full, read-only, gone) is one ``OutputError`` naming the place."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write to {location}: {exc}") from exc


class PartWriter:
    """Parquet files of at most ``rows_per_file`` rows; a file gets its real name once closed."""

    def __init__(self, folder: Path, prefix: str, rows_per_file: int):
        self.folder, self.prefix, self.rows_per_file = folder, prefix, max(1, rows_per_file)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index, self.rows, self.total = 0, 0, 0
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None

    def write(self, table: pa.Table) -> None:
        table = table.select(SCHEMA.names).cast(SCHEMA)
        start = 0
        while start < len(table):
            if self.writer is None:
                self.tmp = self.folder / f".{self.prefix}-{self.index:05d}.inprogress"
                with writing(self.folder):
                    self.writer = pq.ParquetWriter(self.tmp, SCHEMA)
            take = min(len(table) - start, self.rows_per_file - self.rows)
            with writing(self.folder):
                self.writer.write_table(table.slice(start, take))
            start += take
            self.rows += take
            self.total += take
            if self.rows >= self.rows_per_file:
                self._finish()

    def _finish(self) -> None:
        if self.writer is None or self.tmp is None:
            return
        writer, tmp = self.writer, self.tmp
        # forgotten first: a close that fails leaves a torn file under its temporary name, which
        # a later close() (the caller's ``finally``) must not rename into a real one
        self.writer, self.tmp, self.rows = None, None, 0
        with writing(self.folder):
            writer.close()
            os.replace(tmp, self.folder / f"{self.prefix}-{self.index:05d}.parquet")
        self.index += 1

    def close(self) -> None:
        self._finish()


def read_rows(folders: list[Path], columns: list[str] | None = None) -> pa.Table:
    """All readable prediction rows under these folders (torn or foreign files are skipped)."""
    schema = pa.schema([SCHEMA.field(c) for c in columns]) if columns else SCHEMA
    tables = []
    for folder in folders:
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            try:
                table = pq.read_table(path, columns=schema.names)
                tables.append(table.select(schema.names).cast(schema))
            except (pa.ArrowException, OSError, KeyError, ValueError):
                continue
    return pa.concat_tables(tables) if tables else schema.empty_table()


def reusable_rows(root: Path, listing: pa.Table, version: str) -> pa.Table:
    """Rows ``--resume`` keeps: scored OK by this model version, for a file still listed unchanged.

    Failed rows are not kept: their file is tried again (a fixed permission, a re-uploaded photo
    or a transient read error deserve a second chance; a truly broken file just fails again).
    """
    folders = [
        root / PREDICTIONS,
        *sorted(p / PREDICTIONS for p in root.glob(PARTIAL_PREFIX + "*")),
    ]
    old = read_rows(folders)
    old = old.filter(pc.and_(pc.equal(old["ok"], True), pc.equal(old["model_version"], version)))
    if not len(old):
        return SCHEMA.empty_table()
    seen: dict[str, tuple] = {
        p: (s, m)
        for p, s, m in zip(
            listing["path"].to_pylist(),
            listing["file_size"].to_pylist(),
            listing["mtime_ns"].to_pylist(),
            strict=True,
        )
    }
    keep, taken = [], set()
    for i, (p, s, m) in enumerate(
        zip(
            old["path"].to_pylist(),
            old["file_size"].to_pylist(),
            old["mtime_ns"].to_pylist(),
            strict=True,
        )
    ):
        if p not in taken and seen.get(p) == (s, m):
            keep.append(i)
            taken.add(p)
    return old.take(pa.array(keep, pa.int64()))


def summarize(pred_dir: Path, listing: pa.Table, low_confidence: float) -> dict[str, Any]:
    """Counts read back from the written files; raises if they do not reconcile with the listing."""
    columns = ["path", "ok", "error", "species", "confidence", "node_id", "device"]
    table = read_rows([pred_dir], columns)
    rows, seen = len(table), len(listing)
    paths = set(table["path"].to_pylist())
    if rows != seen or len(paths) != rows or paths != set(listing["path"].to_pylist()):
        raise OutputError(
            f"counts do not reconcile: {rows} rows ({len(paths)} distinct paths) "
            f"for {seen} files seen"
        )
    ok = table.filter(table["ok"])
    failed = table.filter(pc.invert(table["ok"]))
    low = pc.sum(pc.less(ok["confidence"], low_confidence)).as_py() or 0

    def counts(values: Iterable) -> dict[str, int]:
        return dict(Counter(str(v) for v in values).most_common())

    return {
        "files_seen": seen,
        "scored": len(ok),
        "failed": len(failed),
        "errors": counts(str(e).split(":", 1)[0] for e in failed["error"].to_pylist()),
        "per_species": counts(ok["species"].to_pylist()),
        "low_confidence": {"threshold": low_confidence, "count": int(low)},
        "nodes": counts(table["node_id"].to_pylist()),
        "devices": counts(table["device"].to_pylist()),
    }


def write_csv(pred_dir: Path, dest: Path) -> None:
    """A flat CSV of the Parquet rows (top-k as ``species:probability`` pairs), file by file."""
    flat = pa.schema([(f.name, pa.string() if f.name == "top_k" else f.type) for f in SCHEMA])
    with pacsv.CSVWriter(dest, flat) as writer:
        for path in sorted(pred_dir.glob("*.parquet")):
            table = pq.read_table(path)
            top = [
                None
                if t is None
                else "; ".join(f"{x['species']}:{x['probability']:.4f}" for x in t)
                for t in table["top_k"].to_pylist()
            ]
            table = table.set_column(
                table.schema.get_field_index("top_k"), "top_k", pa.array(top, pa.string())
            )
            writer.write_table(table.cast(flat))


def write_json(path: Path, data: dict[str, Any]) -> None:
    with writing(path):
        storage.write_bytes_atomic(path, json.dumps(data, indent=2, default=str).encode())


def commit(root: Path, staging: Path, marker: dict[str, Any]) -> None:
    """Swap the staged results in and write ``_SUCCESS`` last; stale partial runs go away."""
    (root / SUCCESS).unlink(missing_ok=True)  # from here until the end the folder is "unfinished"
    trash = root / f".old-{staging.name.removeprefix(PARTIAL_PREFIX)}"
    trash.mkdir(exist_ok=True)
    for name in RESULTS:
        if (root / name).exists():
            os.replace(root / name, trash / name)
        if (staging / name).exists():
            os.replace(staging / name, root / name)
    write_json(root / SUCCESS, {**marker, "committed_at": time.time()})
    for leftover in [trash, *root.glob(PARTIAL_PREFIX + "*"), *root.glob(".old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
