"""Scoring results in a bucket: the job works in a local mirror and publishes it, ``_SUCCESS`` last.

An output folder commits with atomic renames (see ``output``), which object stores lack. For an
``s3://`` or ``gs://`` output the job therefore runs the same protocol in a local mirror folder
on the driver's machine, then publishes: it deletes the bucket's ``_SUCCESS`` first (from then
on readers see "unfinished"), replaces each result object, and writes ``_SUCCESS`` last. A run
that dies mid-publish leaves no ``_SUCCESS``, so nobody mistakes the mix for a finished result,
and the next run publishes again. ``pull`` brings a finished bucket result into the mirror, so
``--resume`` and the "already finished" check see what the bucket holds, from any machine.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from birdray import storage
from birdray.scoring.output import RESULTS, SUCCESS


def is_remote(output: str) -> bool:
    return storage.is_uri(output) and not output.startswith("file://")


def mirror_of(uri: str, reader: str = "job") -> Path:
    """The local folder standing in for ``uri`` (stable per URI, so partial runs can resume).

    Readers (the dashboard) get their own, so they never touch a running job's working copy.
    """
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "birdray-score-mirror" / reader / digest


def _marker(location: str) -> bytes | None:
    try:
        return storage.read_bytes(storage.join(location, SUCCESS))
    except FileNotFoundError:
        return None


def pull(uri: str, mirror: Path) -> bool:
    """Make the mirror's finished result the bucket's; returns whether the bucket has one."""
    remote = _marker(uri)
    local = (mirror / SUCCESS).read_bytes() if (mirror / SUCCESS).is_file() else None
    if remote == local:
        return remote is not None
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / SUCCESS).unlink(missing_ok=True)
    if remote is None:  # never published, or a publish died: local rows stay for --resume
        return False
    fs, root = storage.filesystem(uri)
    for name in RESULTS:
        _remove_local(mirror / name)
        kind = fs.get_file_info(f"{root}/{name}").type
        if kind == pafs.FileType.Directory:
            (mirror / name).mkdir()  # copy_files fills a folder but does not create it
        if kind != pafs.FileType.NotFound:
            pafs.copy_files(f"{root}/{name}", str(mirror / name), source_filesystem=fs)
    (mirror / SUCCESS).write_bytes(remote)
    return True


def publish(mirror: Path, uri: str) -> None:
    """Copy the mirror's committed result to the bucket, ``_SUCCESS`` last."""
    fs, root = storage.filesystem(uri)
    if fs.get_file_info(f"{root}/{SUCCESS}").type == pafs.FileType.File:
        fs.delete_file(f"{root}/{SUCCESS}")  # from here until the end: "unfinished"
    for name in RESULTS:
        target = f"{root}/{name}"
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)
        if (mirror / name).exists():
            pafs.copy_files(str(mirror / name), target, destination_filesystem=fs)
    with fs.open_output_stream(f"{root}/{SUCCESS}") as stream:
        stream.write((mirror / SUCCESS).read_bytes())


def _remove_local(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
