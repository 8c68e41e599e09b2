"""The output folder, written so that a half-finished job never looks finished.

Layout: ``<output>/predictions/*.parquet``, ``predictions.csv`` (optional), ``summary.json``,
``explanations/`` and ``review/`` (optional), ``inputs.parquet`` (dataset input: what each row was
made from, for ``--resume``) and ``_SUCCESS``, which is written last and is the only sign that the
rest belongs to one complete run. A run writes everything under ``<output>/.partial-<run_id>/``;
commit removes ``_SUCCESS``, swaps each result into place with a rename and writes ``_SUCCESS``
again. A run that fails leaves the previous complete result untouched, plus its partial folder,
whose finished Parquet files ``--resume`` reuses. One run at a time holds ``<output>/.lock``.

birdray only ever replaces or deletes what it wrote: a folder that holds something, but no
``_SUCCESS`` of birdray's (``is_result``: Spark writes one too) and no partial run of birdray's,
is someone else's and is refused (``foreign``), and the clean-up after a commit matches birdray's
own run-id names exactly (a user's ``.old-backup`` is not one of them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
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
INPUTS_FILE = "inputs.parquet"  # dataset input: path -> what was scored (``input_identity``)
RESULTS = (PREDICTIONS, CSV_FILE, SUMMARY_FILE, EXPLANATIONS, REVIEW, INPUTS_FILE)
PARTIAL_PREFIX = ".partial-"
OLD_PREFIX = ".old-"  # a commit's previous results, deleted once _SUCCESS is written
LOCK_FILE = ".lock"
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # new_run_id's shape, and nothing else's
MARKER_MAX_BYTES = 1 << 20  # birdray's _SUCCESS is ~100 bytes; a bigger one is someone else's


def new_run_id() -> str:
    """Sortable by start time; unique enough that two runs never share a staging folder."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def own_runs(root: Path, prefix: str) -> list[Path]:
    """birdray's own ``<prefix><run id>`` folders under ``root``, oldest first: only these may be
    read as partial runs or deleted as leftovers (a user's ``.old-backup`` is not one)."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.name.startswith(prefix) and RUN_ID.fullmatch(p.name[len(prefix) :]) and p.is_dir()
    )


def is_result(marker: bytes | None) -> bool:
    """Whether a ``_SUCCESS``'s bytes are birdray's: a JSON object naming its run (``run_id``).
    Spark's and Hadoop's empty one, other JSON or unreadable bytes mark someone else's files."""
    if not marker or len(marker) > MARKER_MAX_BYTES:
        return False
    try:
        data = json.loads(marker)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return isinstance(data, dict) and isinstance(data.get("run_id"), str) and data["run_id"] != ""


def read_marker(root: Path) -> bytes | None:
    """``root``'s ``_SUCCESS`` (None when there is none); a folder, FIFO or huge file of that
    name is ``b""``, someone else's. ``OSError`` when it cannot be read (its permissions): then
    whose files these are is unknown, and nobody may call them birdray's or another's."""
    try:  # no blocking open of a FIFO, no reading a huge file
        return storage.read_local_file(root / SUCCESS, MARKER_MAX_BYTES)
    except (FileNotFoundError, NotADirectoryError):  # a dangling link is someone's, though
        return b"" if os.path.lexists(root / SUCCESS) else None
    except (storage.NotRegularFile, storage.FileTooBig):
        return b""


def unreadable_marker(root: Path, exc: OSError) -> str:
    return (
        f"{root / SUCCESS} cannot be read ({exc.strerror or exc}), so whether {root} holds a"
        " birdray result is unknown: let this user read it, or choose another output"
    )


def finished(root: Path) -> bool:
    """Whether ``root`` holds a finished result of birdray's (its ``_SUCCESS`` is birdray's)."""
    try:
        return is_result(read_marker(root))
    except OSError:
        return False


def foreign(root: Path) -> str:
    """Why ``root`` may not be written ('' when it may): it holds files but no birdray result.

    A finished result (birdray's ``_SUCCESS``) or, with no ``_SUCCESS`` at all, a partial run of
    birdray's marks the folder as birdray's; otherwise what is there (even a ``summary.json`` of
    the same name) is the user's, and a commit would have replaced or deleted it."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return ""  # created by the run (a file in the way is the pre-flight's to refuse)
    except OSError as exc:
        return f"{root} cannot be listed ({exc.strerror or exc})"
    try:
        mark = read_marker(root)
    except OSError as exc:
        return unreadable_marker(root, exc)
    if is_result(mark):
        return ""
    ours = own_runs(root, PARTIAL_PREFIX) or own_runs(root, OLD_PREFIX)
    if ours and mark is None:  # another tool's _SUCCESS: theirs anyway
        return ""
    # hidden names (.DS_Store, an editor's swap file) are left alone: birdray's own hidden
    # folders are matched by exact run id, so it never touches another's
    names = [e.name + ("/" if e.is_dir() else "") for e in entries if not e.name.startswith(".")]
    return not_ours(str(root), names, "files", "folder")


def not_ours(where: str, names: list[str], things: str, place: str) -> str:
    """Why ``where`` is refused when it holds ``names`` ('' when it holds nothing)."""
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{where} holds {things} that are not a birdray result ({shown}); birdray never replaces "
        f"what it did not write: choose a new or empty {place}"
    )


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
    trash = root / f"{OLD_PREFIX}{staging.name.removeprefix(PARTIAL_PREFIX)}"
    trash.mkdir(exist_ok=True)
    for name in RESULTS:
        if (root / name).exists():
            os.replace(root / name, trash / name)
        if (staging / name).exists():
            os.replace(staging / name, root / name)
    write_json(root / SUCCESS, {**marker, "committed_at": time.time()})
    # only birdray's own run folders: a user's .old-backup or .partial-notes is not ours to delete
    for leftover in [trash, staging, *own_runs(root, PARTIAL_PREFIX), *own_runs(root, OLD_PREFIX)]:
        shutil.rmtree(leftover, ignore_errors=True)
