"""Scoring results in a bucket: the job works in a local mirror and publishes it, ``_SUCCESS`` last.

An output folder commits with atomic renames (see ``output``), which object stores lack. For an
``s3://`` or ``gs://`` output the job therefore runs the same protocol in a local mirror folder
on the driver's machine, then publishes: it deletes the bucket's ``_SUCCESS`` first (from then
on readers see "unfinished"), replaces each result object, and writes ``_SUCCESS`` last. A run
that dies mid-publish leaves no ``_SUCCESS``, so nobody mistakes the mix for a finished result,
and the next run publishes again. ``pull`` brings a finished bucket result into the mirror, so
``--resume`` and the "already finished" check see what the bucket holds, from any machine (rows
of an interrupted, never-published run stay in the mirror of the machine that ran it).

One writer per bucket output at a time: object stores have no lock, so a run refuses to publish
if another run published to the same URI after it started (a check, not a lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from birdray import locks, storage
from birdray.scoring.output import (
    MARKER_MAX_BYTES,
    RESULTS,
    SUCCESS,
    OutputError,
    finished,
    is_result,
    not_ours,
)


def mirror_of(uri: str, reader: str = "job") -> Path:
    """The local folder standing in for ``uri`` (stable per URI, so partial runs can resume).

    Readers (the dashboard) get their own, so they never touch a running job's working copy.
    """
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "birdray-score-mirror" / reader / digest


def marker(location: str) -> bytes | None:
    """The content of ``location``'s ``_SUCCESS`` (which run finished it), or None; whoever
    wrote it (``output.is_result`` says whether birdray did)."""
    try:  # one byte over birdray's cap is enough to call a big one someone else's
        return storage.read_bytes(storage.join(location, SUCCESS), MARKER_MAX_BYTES + 1)
    except FileNotFoundError:
        return None


def foreign_prefix(uri: str, mirror: Path) -> str:
    """Why the bucket prefix ``uri`` may not be published to ('' when it may): it holds objects
    but no birdray result. Publishing replaces every result name there (``summary.json``,
    ``review/`` ...), so a prefix of someone else's objects would lose them; a ``_SUCCESS`` that
    is not birdray's (Spark's empty one) marks them as someone else's too, as for a folder. A
    publish of this machine's that died halfway (its mirror committed, the bucket without
    ``_SUCCESS``) may finish."""
    found = marker(uri)
    if is_result(found) or (found is None and finished(mirror)):
        return ""
    return not_ours(uri, storage.names(uri), "objects", "prefix")


@contextlib.contextmanager
def _pull_lock(mirror: Path) -> Iterator[None]:
    """Readers sharing a mirror (dashboard sessions) take turns refreshing it."""
    lock = mirror.parent / f".{mirror.name}.pull.lock"
    with locks.file_lock(lock, waiting_for=f"another refresh of {mirror}"):
        yield


def pull(uri: str, mirror: Path) -> bool:
    """Make the mirror's finished result the bucket's; returns whether the bucket has one."""
    return pull_state(uri, mirror) == "finished"


def pull_state(uri: str, mirror: Path) -> str:
    """``pull``, saying what the bucket held: "finished" (the mirror is now its result),
    "foreign" (another tool's ``_SUCCESS``) or "unfinished" (none, or published over meanwhile).

    The copy goes to a temporary folder first and is used only if ``_SUCCESS`` did not change
    while it was taken: a copy made during someone's publish is thrown away, not trusted.
    """
    with _pull_lock(mirror):
        found = marker(uri)
        remote = found if is_result(found) else None  # another tool's _SUCCESS: no result
        local = (mirror / SUCCESS).read_bytes() if (mirror / SUCCESS).is_file() else None
        state = "unfinished" if found is None else "foreign"
        if remote == local:
            return "finished" if remote is not None else state
        mirror.mkdir(parents=True, exist_ok=True)
        (mirror / SUCCESS).unlink(missing_ok=True)
        if remote is None:  # never published, or a publish died: local rows stay for --resume
            return state
        fs, root = storage.filesystem(uri)
        fresh = mirror.parent / f".{mirror.name}.pull-{uuid.uuid4().hex[:8]}"
        try:
            fresh.mkdir()
            for name in RESULTS:
                kind = fs.get_file_info(f"{root}/{name}").type
                if kind == pafs.FileType.Directory:
                    (fresh / name).mkdir()  # copy_files fills a folder but does not create it
                if kind != pafs.FileType.NotFound:
                    pafs.copy_files(f"{root}/{name}", str(fresh / name), source_filesystem=fs)
            if marker(uri) != found:
                return "unfinished"  # published over while copying, until it settles
            for name in RESULTS:
                _remove_local(mirror / name)
                if (fresh / name).exists():
                    (fresh / name).rename(mirror / name)
            (mirror / SUCCESS).write_bytes(remote)
            return "finished"
        finally:
            shutil.rmtree(fresh, ignore_errors=True)


def publish(mirror: Path, uri: str, seen: bytes | None) -> None:
    """Copy the mirror's committed result to the bucket, ``_SUCCESS`` last.

    ``seen`` is the bucket's ``_SUCCESS`` when this run started: if it changed since, another
    run published to this URI meanwhile and this one refuses to overwrite it.
    """
    current = marker(uri)
    if current is not None and current != seen:
        raise OutputError(
            f"another run published to {uri} while this one ran; this result stays in {mirror}"
        )
    fs, root = storage.filesystem(uri)
    if current is not None:
        fs.delete_file(f"{root}/{SUCCESS}")  # from here until the end: "unfinished"
    for name in RESULTS:
        target = f"{root}/{name}"
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)
        if (mirror / name).is_dir():  # checked file by file: a lost part is an error, not _SUCCESS
            storage.upload_dir(mirror / name, storage.join(uri, name))
        elif (mirror / name).exists():
            storage.upload_file(mirror / name, storage.join(uri, name))
    with fs.open_output_stream(f"{root}/{SUCCESS}") as stream:
        stream.write((mirror / SUCCESS).read_bytes())


def _remove_local(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
