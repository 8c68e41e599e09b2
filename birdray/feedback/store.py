"""The feedback dataset: one small Parquet file per accepted answer, deduplicated on read.

Writers never rewrite: each accepted feedback becomes a new file with a unique, time-ordered name,
written atomically through ``birdray.storage`` (a local folder or a bucket prefix), so concurrent
ingress replicas cannot lose or tear each other's rows. The same image sent twice is resolved when
reading: ``read_feedback`` keeps, per SHA-256 of the image bytes, the newest answer.

A store that is not one (a plain file, an ingested dataset, a torn or foreign Parquet file in it)
raises ``FeedbackError`` naming the path and what was expected: a bad part is never skipped, as
that would drop its answer silently, nor left to fail deep inside pyarrow. A store that cannot
be written (the folder replaced by a file, a full disk, a bucket outage) raises
``FeedbackUnavailable`` with a one-line reason; nothing of the answer is left behind.

``not_a_bird`` and ``unsure`` are answers only where the model has no class of that name (an
own-photos dataset may have a folder ``unsure``): a row's ``verdict`` says which it was, and
readers go by the verdict (``is_reserved``), not by the answer's spelling.
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


class FeedbackUnavailable(OSError):
    """The store could not take an answer now (nothing of it was stored): ``reason`` is one
    line fit for a client, without paths; ``str()`` names the path too, for the operator."""

    def __init__(self, location: str, reason: str):
        super().__init__(f"cannot write to the feedback store {location}: {reason}")
        self.location, self.reason = location, reason


def _reason(exc: OSError) -> str:
    """One line saying why a write failed, for a client: a fixed phrase, never the store's
    words (a bucket's error names the bucket, key, account or service identity; the server's
    log has them)."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # mkdir met a file
        return "a file stands where its folder should be"
    if exc.errno is not None and exc.strerror:  # the C library's phrase: "No space left..."
        return exc.strerror
    return f"the store did not take the write ({type(exc).__name__})"


def is_reserved(verdict: str | None, answer: str | None) -> bool:
    """Whether a stored row is a ``not_a_bird``/``unsure`` answer rather than a species: its
    verdict says so (the answer may be a class that is spelled the same way)."""
    if verdict:
        return verdict in (NOT_A_BIRD, UNSURE)
    return (answer or "").strip() in (NOT_A_BIRD, UNSURE)


@dataclass(frozen=True)
class Feedback:
    """One person's answer about one image (labels already checked against the served model)."""

    image: bytes
    file: str
    model_version: str
    predicted: str
    answer: str
    note: str = ""
    # whether ``answer`` is a class of the model; None: any answer but not_a_bird/unsure is.
    # Callers that know the classes say so: a model may have a class named not_a_bird.
    is_class: bool | None = None

    def __post_init__(self) -> None:
        if self.is_class is False and self.answer not in (NOT_A_BIRD, UNSURE):
            raise ValueError(f"answer {self.answer!r} is neither a class nor {NOT_A_BIRD}/{UNSURE}")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()

    @property
    def verdict(self) -> str:
        is_class = self.is_class
        if is_class is None:
            is_class = self.answer not in (NOT_A_BIRD, UNSURE)
        if not is_class:
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
    root = storage.absolute(location)
    path = storage.join(root, _row_name(now_ns))
    try:  # one atomic write: a failed one leaves no file (the temporary is removed)
        storage.put_bytes(path, buf.getvalue())
    except OSError as exc:  # pyarrow's bucket errors are OSErrors too
        raise FeedbackUnavailable(root, _reason(exc)) from exc
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
