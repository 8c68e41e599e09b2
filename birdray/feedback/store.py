"""The feedback dataset: one small Parquet file per accepted answer, deduplicated on read.

Writers never rewrite: each accepted feedback becomes a new file with a unique, time-ordered name,
written atomically through ``birdray.storage`` (a local folder or a bucket prefix), so concurrent
ingress replicas cannot lose or tear each other's rows. The same image sent twice is resolved when
reading: ``read_feedback`` keeps, per SHA-256 of the image bytes, the newest answer.

A store that is not one (a plain file, an ingested dataset, a torn or foreign Parquet file in it)
raises ``FeedbackError`` naming the path and what was expected: a bad part is never skipped, as
that would drop its answer silently, nor left to fail deep inside pyarrow.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from birdray import storage
from birdray.data.manifest import MANIFEST_FILE

NOT_A_BIRD = "not_a_bird"
UNSURE = "unsure"
SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("image", pa.binary()),
        ("file", pa.string()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("predicted", pa.string()),
        ("answer", pa.string()),  # a class name, ``not_a_bird`` or ``unsure``
        ("verdict", pa.string()),  # confirmed | corrected | not_a_bird | unsure
        ("note", pa.string()),
    ]
)


EXPECTED = "a feedback folder or URI (serve's feedback_dir: one Parquet file per answer)"


class FeedbackError(ValueError):
    """The feedback store cannot be read as one: the message names the path and what was
    expected (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Feedback:
    """One person's answer about one image (labels already checked against the served model)."""

    image: bytes
    file: str
    model_version: str
    predicted: str
    answer: str
    note: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()

    @property
    def verdict(self) -> str:
        if self.answer in (NOT_A_BIRD, UNSURE):
            return self.answer
        return "confirmed" if self.answer == self.predicted else "corrected"


def _row_name(now_ns: int) -> str:
    # time first (names sort in arrival order), then randomness (two replicas never collide)
    return f"{now_ns:020d}-{os.urandom(8).hex()}.parquet"


def append(location: str, items: list[Feedback]) -> str:
    """Write ``items`` as one new Parquet file under ``location``; returns its path."""
    now_ns = time.time_ns()
    received = datetime.fromtimestamp(now_ns / 1e9, tz=UTC)
    rows = [
        {
            "sha256": item.sha256,
            "image": item.image,
            "file": item.file,
            "received_at": received,
            "model_version": item.model_version,
            "predicted": item.predicted,
            "answer": item.answer,
            "verdict": item.verdict,
            "note": item.note,
        }
        for item in items
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf)
    path = storage.join(storage.absolute(location), _row_name(now_ns))
    storage.put_bytes(path, buf.getvalue())
    return path


def feedback_files(location: str) -> list[str]:
    """The dataset's Parquet files, oldest first (temporaries and other files skipped)."""
    return [
        name
        for name in storage.list_files(storage.absolute(location))
        if name.endswith(".parquet") and not name.rsplit("/", 1)[-1].startswith(".")
    ]


def location_problem(location: str) -> str | None:
    """Why ``location`` is not a feedback store, judged without reading answers (None: it may
    be one; a missing folder is an empty store). Shared by the reader and the CLI's pre-flight."""
    root = storage.absolute(location)
    if storage.file_type(root) not in (pafs.FileType.Directory, pafs.FileType.NotFound):
        return f"{root} is a file, not a folder; expected {EXPECTED}"
    if storage.file_type(storage.join(root, MANIFEST_FILE)) == pafs.FileType.File:
        return (
            f"{root} is an ingested dataset (it has {MANIFEST_FILE}), not a feedback store; "
            f"expected {EXPECTED}"
        )
    return None


def _read_part(path: str) -> pa.Table:
    """One answer file, in ``SCHEMA``; ``FeedbackError`` naming the file when it is not one."""
    data = storage.read_bytes(path)
    if not data:
        raise FeedbackError(f"{path} is empty (0 bytes); expected a feedback Parquet file")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise FeedbackError(f"{path} is not a readable Parquet file ({exc})") from None
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise FeedbackError(
            f"{path} is a Parquet file of another schema (no {', '.join(missing)}); expected "
            f"the feedback columns {', '.join(SCHEMA.names)}"
        )
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise FeedbackError(
            f"{path}: its columns have other types than feedback's ({exc})"
        ) from None


def read_all(location: str) -> pa.Table:
    """Every stored row, duplicates included, in arrival order (empty table if none).

    Every part is read before any error is raised, so the message can say how many are bad
    and that the other answers are intact (move the bad files aside to use them)."""
    problem = location_problem(location)
    if problem:
        raise FeedbackError(problem)
    root = storage.absolute(location)
    names = feedback_files(location)
    tables, bad = [], []
    for name in names:
        try:
            tables.append(_read_part(storage.join(root, name)))
        except FeedbackError as exc:
            bad.append(str(exc))
    if bad:
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        rest = (
            f"; the other {len(tables)} of {len(names)} files are readable: move the bad ones "
            "out of the store to use their answers"
            if tables
            else ""
        )
        raise FeedbackError(f"{bad[0]}{more}{rest}")
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def read_feedback(location: str) -> pa.Table:
    """The feedback dataset: one row per image (by SHA-256), the newest answer winning."""
    table = read_all(location)
    hashes = table.column("sha256").to_pylist()
    times = table.column("received_at").to_pylist()
    newest: dict[str, int] = {}
    for index, (digest, at) in enumerate(zip(hashes, times, strict=True)):
        kept = newest.get(digest)
        if kept is None or at >= times[kept]:  # ties: the later file (names sort by arrival)
            newest[digest] = index
    return table.take(pa.array(sorted(newest.values()), type=pa.int64()))
