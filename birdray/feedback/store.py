"""The feedback dataset: one small Parquet file per accepted answer, deduplicated on read.

Writers never rewrite: each accepted feedback becomes a new file with a unique, time-ordered name,
written atomically through ``birdray.storage`` (a local folder or a bucket prefix), so concurrent
ingress replicas cannot lose or tear each other's rows. The same image sent twice is resolved when
reading: ``read_feedback`` keeps, per SHA-256 of the image bytes, the newest answer.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from birdray import storage

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


def read_all(location: str) -> pa.Table:
    """Every stored row, duplicates included, in arrival order (empty table if none)."""
    root = storage.absolute(location)
    tables = [
        pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(root, name))))
        for name in feedback_files(location)
    ]
    return pa.concat_tables(tables).cast(SCHEMA) if tables else SCHEMA.empty_table()


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
