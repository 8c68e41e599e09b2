"""A location is a local path or a bucket URI (``s3://``, ``gs://``, ``file://``); one API for both.

Datasets, checkpoints and the registry may live in a bucket on a cluster, so code that reads or
writes them goes through these helpers (pyarrow filesystems underneath) instead of ``pathlib``.
Local paths are made absolute, because Ray workers do not run in the driver's folder.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pyarrow.fs as pafs

# The storage a job writes to refusing it (a full disk or quota, a read-only mount, no
# permission): the user's to fix, so the CLI says it in one line naming the path, exit 1.
REFUSED_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
S3_ATTEMPTS = 4  # tries of one S3 request (a busy or briefly cut link), then its error


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def scheme(location: str | Path) -> str:
    """``s3://`` for ``s3://bucket/key``; empty for a local path."""
    text = str(location)
    return text.split("://", 1)[0] + "://" if is_uri(text) else ""


def file_stamp(path: Path | None) -> str:
    """Size and modification time of a regular file ("-1" when there is none): what a source's
    fingerprint hashes per image, so a same-size edit in place changes it too."""
    info = path.stat() if path is not None and path.is_file() else None
    return f"{info.st_size}\0{info.st_mtime_ns}" if info else "-1"


def is_remote(location: str | Path) -> bool:
    """A bucket (``s3://``, ``gs://``...), as opposed to this machine's files (``file://`` too)."""
    return is_uri(location) and not str(location).startswith("file://")


def local_path(location: str | Path) -> Path:
    """The absolute local path of a non-remote location (a path or a ``file://`` URI, whose
    ``%20``-style escapes are decoded and whose host may be ``localhost``)."""
    text = str(location)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
        text = unquote(
            "/" + text.removeprefix("localhost/") if text.startswith("localhost/") else text
        )
    return Path(text).expanduser().resolve()


def absolute(location: str | Path) -> str:
    """URIs unchanged; local paths resolved (workers see the same file)."""
    return str(location) if is_uri(location) else str(Path(location).expanduser().resolve())


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path on it."""
    if is_uri(location):
        fs, path = pafs.FileSystem.from_uri(str(location))
        return (_bounded(fs) if isinstance(fs, pafs.S3FileSystem) else fs), path
    return pafs.LocalFileSystem(), absolute(location)


def _bounded(fs: pafs.S3FileSystem) -> pafs.S3FileSystem:
    """``fs`` with each request tried ``S3_ATTEMPTS`` times. Arrow's default retries one about
    33 times, 3 s each when the endpoint stops answering: a frozen S3 server held one HEAD for
    99 s and ``registry add``'s upload for over 8 minutes, deaf to Ctrl-C inside Arrow's call.
    The options are the URI's own (``__reduce__`` is the public pickle form of them)."""
    options = fs.__reduce__()[1][0]
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)
    return pafs.S3FileSystem(**{**options, "retry_strategy": retry})


def join(location: str | Path, *parts: str) -> str:
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def file_type(location: str | Path) -> pafs.FileType:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type


def read_bytes(location: str | Path, at_most: int = 0) -> bytes:
    """The file's bytes, or its first ``at_most`` (0: all); ``FileNotFoundError`` for a missing
    file on any filesystem."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(location)
    with fs.open_input_stream(path) as stream:
        return stream.read(at_most) if at_most else stream.read()


class NotRegularFile(OSError):
    """A FIFO, socket, device or folder where a file was expected (opening a FIFO blocks)."""


class FileTooBig(OSError):
    """A file over the size limit, refused before its bytes are read."""


def utf8_name(name: str) -> tuple[str, bool]:
    """``name`` as text Parquet and JSON can hold, and whether it was valid UTF-8 already.

    Linux names are bytes; Python hands undecodable ones over with surrogate escapes, which no
    UTF-8 writer accepts. Those come back with ``\\xe9``-style escapes (and False), so the file
    can be reported by a readable name instead of failing the whole listing."""
    try:
        name.encode("utf-8")
        return name, True
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace"), False


def read_local_file(path: str | Path, max_bytes: int = 0) -> bytes:
    """The bytes of one input file on this machine, refusing without blocking or reading what is
    not a regular file (``open`` on a FIFO waits for a writer forever) or exceeds ``max_bytes``
    (0: no limit). ``FileNotFoundError`` for a missing file or a dangling link."""
    # non-blocking open (FileNotFoundError if dangling), then the type of what was opened: no
    # window for a swap to a FIFO
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    info = os.fstat(fd)  # before open(): io refuses a folder's fd with "Is a directory: <fd>"
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
        raise NotRegularFile(f"not a regular file ({kind})")
    with open(fd, "rb") as fh:
        if max_bytes and info.st_size > max_bytes:
            raise FileTooBig(f"{info.st_size:,} bytes (limit {max_bytes:,})")
        data = fh.read(max_bytes + 1) if max_bytes else fh.read()
    if max_bytes and len(data) > max_bytes:  # grew since the stat
        raise FileTooBig(f"more than {max_bytes:,} bytes (limit {max_bytes:,})")
    return data


def write_bytes_atomic(location: str | Path, data: bytes) -> None:
    """Readers see the old content or the new, never a torn file.

    Locally: write a hidden temporary, fsync, rename. Object stores: one PUT is already atomic.
    """
    if is_remote(location):
        fs, path = filesystem(location)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    path = local_path(location)
    # A temporary of its own per writer: two concurrent writers never rename each other's file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(6).hex()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_dirs(location: str | Path) -> None:
    """Local folders only: buckets have no folders to create."""
    if not is_remote(location):
        local_path(location).mkdir(parents=True, exist_ok=True)


def upload_dir(local: str | Path, location: str | Path) -> None:
    """Copy a local folder's contents to ``location`` (a bucket prefix or another folder), and
    check that every file arrived whole (``_check_arrived``)."""
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(
        str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )
    root = Path(local)
    sizes = {
        f.relative_to(root).as_posix(): f.stat().st_size for f in root.rglob("*") if f.is_file()
    }
    _check_arrived(location, sizes, dict(_stored_sizes(fs, path)))


def _stored_sizes(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, int]]:
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    base = path.rstrip("/") + "/"
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            yield info.path[len(base) :], info.size


def _check_arrived(location: str | Path, sent: dict[str, int], stored: dict[str, int]) -> None:
    """Arrow's ``copy_files`` can return without an error when an upload's part failed (the
    error is only logged as the stream is destroyed: "Error ignored when destroying file"): a
    registry version was then committed without its weights. Each file sent must be stored,
    at its size; otherwise the copy failed, and this says which file."""
    for name, size in sorted(sent.items()):
        if stored.get(name) != size:
            got = "missing" if name not in stored else f"{stored[name]:,} of {size:,} bytes stored"
            raise OSError(errno.EIO, f"the upload did not arrive whole ({name}: {got})", location)


def _listing(location: str | Path, recursive: bool) -> tuple[str, list[pafs.FileInfo]]:
    """What is under ``location`` (nothing if it does not exist), even while it is being made.

    Arrow's local listing looks twice (list the folder; on failure, does it exist?), so a folder
    another writer creates between the two looks fails with FileNotFoundError (racing alias moves
    lost entries this way). Folders are made, never moved away, so a second look sees it whole.
    """
    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    try:
        return path, fs.get_file_info(selector)
    except FileNotFoundError:
        return path, fs.get_file_info(selector)


def names(location: str | Path) -> list[str]:
    """Names directly under ``location``, files and folders (empty if it does not exist)."""
    _, infos = _listing(location, recursive=False)
    return sorted(i.base_name for i in infos)


def child_dirs(location: str | Path) -> list[str]:
    """Names of the folders directly under ``location`` (empty if it does not exist)."""
    _, infos = _listing(location, recursive=False)
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def count_files(location: str | Path, suffix: str) -> int:
    _, infos = _listing(location, recursive=True)
    return sum(1 for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def delete_dir(location: str | Path) -> None:
    """Remove a folder and everything in it; a missing folder is not an error."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def put_bytes(location: str | Path, data: bytes) -> None:
    """Write a new object/file under a unique name (one PUT; local parents are created)."""
    if not is_remote(location):
        local_path(location).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(location, data)


def list_files(location: str | Path) -> list[str]:
    """Every file under ``location``, as paths relative to it (one listing; empty if missing).

    On an object store this is one paginated LIST, so a reader sees a consistent set of names.
    """
    path, infos = _listing(location, recursive=True)
    base = path.rstrip("/") + "/"
    return sorted(i.path[len(base) :] for i in infos if i.type == pafs.FileType.File)


def download_file(location: str | Path, local: str | Path) -> None:
    """Copy one file to a local path: a hard link when both sides are this machine's disk."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(location):
        try:
            os.link(local_path(location), local)
            return
        except OSError:  # another device, or links unsupported: copy instead
            pass
    fs, path = filesystem(location)
    pafs.copy_files(
        path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )


def delete_file(location: str | Path) -> None:
    """Remove one file; a missing file is not an error."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def upload_file(local: str | Path, location: str | Path) -> None:
    """Copy one local file to ``location`` (streamed; local parents are created), and check
    that it arrived whole (``_check_arrived``)."""
    fs, path = filesystem(location)
    if not is_remote(location):
        local_path(location).parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )
    info, name = fs.get_file_info(path), Path(local).name
    stored = {name: info.size} if info.type == pafs.FileType.File else {}
    _check_arrived(location, {name: Path(local).stat().st_size}, stored)
