"""Locks between processes on one machine: one ingest, download or extraction at a time into a
place, the others waiting (saying for what and who holds it) or giving up at a bound."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


class LockTimeout(TimeoutError):
    """Another process held a lock longer than this one would wait (``file_lock``'s bound)."""


LOCK_MAX_WAIT_S = 4 * 3600.0  # a second ingest or download waits for the first, not forever
LOCK_NOTE_EVERY_S = 300.0  # while waiting, a line this often: alive, not flooding the log


@contextlib.contextmanager
def file_lock(
    lock_file: Path,
    wait: bool = True,
    waiting_for: str = "",
    max_wait_s: float = LOCK_MAX_WAIT_S,
    note_every_s: float = LOCK_NOTE_EVERY_S,
) -> Iterator[bool]:
    """An exclusive lock between processes on this machine, released when the holder dies.

    Yields True once held; with ``wait=False`` yields False at once when another holds it. A wait
    is never silent and never endless: it says on stderr what it waits for and which process
    holds the lock, says it again every ``note_every_s``, and raises ``LockTimeout`` (naming the
    holder) after ``max_wait_s``: a holder that hangs must not hang every job queued behind it.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:  # not "w": the holder's pid in it must survive a waiter
        if not _try_lock(fh):
            if not wait:
                yield False
                return
            _wait_for_lock(
                fh, lock_file, waiting_for or f"the lock {lock_file}", max_wait_s, note_every_s
            )
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _try_lock(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_for_lock(fh, lock_file: Path, what: str, max_wait_s: float, note_every_s: float) -> None:
    """Poll until the lock is ours (flock has no timed wait), saying who holds it meanwhile."""

    def holder() -> str:
        fh.seek(0)
        return fh.read().strip() or "unknown"

    started = time.monotonic()
    next_note = started
    while not _try_lock(fh):
        waited = time.monotonic() - started
        if waited >= max_wait_s:
            raise LockTimeout(
                f"gave up waiting for {what} after {_duration(waited)}: process {holder()} still"
                f" holds {lock_file} (it is released when that process ends)"
            )
        if time.monotonic() >= next_note:
            still = f" (still, after {_duration(waited)})" if next_note > started else ""
            print(
                f"birdray: waiting for {what}{still}: process {holder()} holds {lock_file}",
                file=sys.stderr,
                flush=True,
            )
            next_note += note_every_s
        time.sleep(min(0.25, max(max_wait_s - waited, 0.0)))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def machine_lock_file(kind: str, location: str | Path) -> Path:
    """This machine's lock file for ``kind`` of work on ``location`` (a path or a bucket URI).
    It lives in the temp folder: no write access to the location is needed, buckets included."""
    digest = hashlib.sha256(str(location).encode(errors="surrogateescape")).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "birdray-locks" / f"{kind}-{digest}.lock"
