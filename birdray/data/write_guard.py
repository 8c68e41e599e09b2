"""Ingest's writes to ``--out``, guarded: what the OS refuses there (a full disk or quota, a
read-only mount, no permission, the folder deleted mid-run), in the driver or inside a Ray Data
task, is one ``WriteError`` naming ``--out`` and the OS's reason, said by the CLI in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from birdray import storage
from birdray.runtime import task_cause


class WriteError(Exception):
    """``--out`` refusing the shards or the manifest: a full disk or quota, a read-only mount, no
    permission, the folder deleted while the ingest wrote to it. The user's to fix: the CLI says
    it in one line naming ``--out`` and the OS's reason (``birdray.cli.JOB_ERRORS``)."""


def os_failure(error: BaseException) -> OSError | None:
    """The OS's error behind a failed write, wherever it was raised: ``error`` itself in the
    driver, or the one a Ray task raised (``runtime.task_cause``). Ray's own errors that are
    also ``OSError`` (``GetTimeoutError``) are not the storage's."""
    from ray.exceptions import RayError

    error = task_cause(error)
    if isinstance(error, OSError) and not isinstance(error, RayError):
        return error
    return None


@contextlib.contextmanager
def held_open(*locations: str) -> Iterator[Callable[[], bool]]:
    """Local folders kept open while the ingest writes into them; yields whether any of them was
    deleted or replaced since (Ray Data makes a deleted output folder again as it writes: the
    reconciliation then found rows missing, a traceback).

    A folder held open keeps its inode, so no folder made in its place gets the same number
    (ext4 gives a folder deleted and made again its old number at once): another number, or
    none, under the name means it changed. Buckets have no folders: never changed.
    """
    folders: dict[Path, int] = {}
    try:
        for location in locations:
            if not storage.is_remote(location):
                path = storage.local_path(location)
                with contextlib.suppress(OSError):  # a folder that cannot be opened: not watched
                    folders[path] = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

        def changed() -> bool:
            for path, fd in folders.items():
                try:
                    now, then = os.stat(path), os.fstat(fd)
                except OSError:
                    return True
                if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
                    return True
            return False

        yield changed
    finally:
        for fd in folders.values():
            os.close(fd)


@contextlib.contextmanager
def writing(out: str, changed: Callable[[], bool] | None = None) -> Iterator[None]:
    """Writing to ``--out``: the OS refusing it, in the driver or in a Ray Data task, is one
    ``WriteError`` naming ``--out`` and the OS's reason (a disk that filled up during the write
    was three tracebacks, 287 lines, and no ``birdray ingest: error:`` line)."""
    try:
        yield
    except Exception as exc:
        cause = os_failure(exc)
        if cause is None:
            raise
        # the OS's words; else the error's first line (Ray Data appends its retry advice below)
        text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        reason = os.strerror(cause.errno) if cause.errno else text
        where = str(cause.filename or "")  # Ray Data may put its retry advice there
        if where != out and (os.path.isabs(where) or storage.is_uri(where)):
            reason = f"{reason} ({where})"
        if changed is not None and changed():
            raise WriteError(
                f"--out {out} was deleted or replaced while the ingest wrote to it ({reason});"
                " run the ingest again"
            ) from exc
        if cause.errno is not None:  # the OS refused this path: full, read-only, too long...
            raise WriteError(f"--out {out}: {reason}") from exc
        # no errno: Arrow's words for a bucket that did not answer, not a fault of the path
        raise WriteError(f"writing to --out {out} failed: {reason}") from exc


class _OutputFailureRecords(logging.Filter):
    """Drops Ray Data's console records of a task's failed write (its log file keeps them): a
    full disk was two ~90-line tracebacks of Ray's internals before birdray's one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        try:
            return error is None or os_failure(error) is None
        except Exception:  # a filter must never break the execution it logs for
            return True


@contextlib.contextmanager
def quiet_output_failure() -> Iterator[None]:
    """``_OutputFailureRecords`` on Ray Data's console handlers while the block runs."""
    quiet = _OutputFailureRecords()
    handlers = [
        h
        for h in logging.getLogger("ray.data").handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
