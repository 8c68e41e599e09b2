"""Where the images come from: a folder or filesystem URI listed recursively, or an ingested split.

The driver lists the files once (one row each: that list is what "files seen" means and what the
output must reconcile with); Ray tasks then read the bytes themselves (local files without ever
blocking on a FIFO, buckets through pyarrow), so an unreadable file becomes an error row in a task
instead of failing the listing. What cannot be read at all is found while listing, and gets its
error row without a read.
Local paths must be visible to every node (one machine, or a shared filesystem); object-store
URIs (``s3://``, ``gs://``) work from anywhere.
"""

from __future__ import annotations

import functools
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from birdray import storage
from birdray.data.manifest import is_dataset, split_path
from birdray.images import IMAGE_SUFFIXES

# what the one decoder reads (birdray.images), so a folder's .jfif is scored as ingest takes it
DEFAULT_EXTENSIONS = list(IMAGE_SUFFIXES)
LISTING_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("image_id", pa.int64()),
        ("file_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("error", pa.string()),  # why a listed entry cannot be read, found while listing
    ]
)


class SourceError(ValueError):
    """An input that cannot be listed (missing folder, unknown split, bad URI)."""


@dataclass(frozen=True)
class Source:
    """A picklable description of the input that tasks on any node can reopen."""

    kind: str  # "folder" or "dataset"
    uri: str  # the filesystem URI or absolute local path that was listed
    prefix: str  # "" for local files, "s3://" etc.: filesystem path -> the path users see
    split_dir: str = ""  # dataset input: the split's Parquet folder

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        return _filesystem(self.uri)

    def fs_path(self, path: str) -> str:
        return path[len(self.prefix) :]


# one filesystem client per process and URI (S3 clients are slow to build)
_filesystem = functools.lru_cache(maxsize=8)(storage.filesystem)


def open_source(input_uri: str, split: str = "test") -> Source:
    """A folder/URI of images, or an ingested dataset (folder or URI with a manifest.json)."""
    if not input_uri:
        raise SourceError("--input is required (a folder, a file URI, or an ingested dataset)")
    if storage.is_remote(input_uri):
        try:
            fs, root = pafs.FileSystem.from_uri(input_uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise SourceError(f"cannot open {input_uri}: {exc}") from exc
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise SourceError(f"input not found: {input_uri}")
        prefix = storage.scheme(input_uri)
        if is_dataset(input_uri):
            return Source("dataset", input_uri, prefix, split_path(input_uri, split))
        return Source("folder", input_uri, prefix)
    local = storage.local_path(input_uri)
    if not local.exists():
        raise SourceError(f"input not found: {local}")
    if local.is_dir() and is_dataset(local):
        return Source("dataset", str(local), "", split_path(local, split))
    return Source("folder", str(local), "")


def normalize_extensions(extensions: list[str]) -> tuple[str, ...] | None:
    """``["jpg", ".PNG"]`` -> ``(".jpg", ".png")``; empty or ``*`` means every file."""
    items = [e.strip().lower() for ext in extensions for e in str(ext).split(",") if e.strip()]
    if not items or "*" in items:
        return None
    return tuple(e if e.startswith(".") else f".{e}" for e in items)


def list_inputs(
    source: Source,
    extensions: tuple[str, ...] | None,
    exclude: str | Path | None,
    skipped: Counter | None = None,
) -> pa.Table:
    """Every file (or dataset row) to score, sorted by path: what "files seen" means.

    Files left out by ``extensions`` are counted by extension into ``skipped`` (when given), so
    the job can say what it did not score."""
    if source.kind == "dataset":
        table = split_columns(source, ["image_id", "path"])
        rows = {
            "path": table["path"],
            "image_id": pc.cast(table["image_id"], pa.int64()),
            "file_size": pa.nulls(len(table), pa.int64()),
            "mtime_ns": pa.nulls(len(table), pa.int64()),
            "error": pa.nulls(len(table), pa.string()),
        }
        return pa.table(rows, schema=LISTING_SCHEMA).sort_by("path")
    # the output folder (a path, or a URI in the input's own bucket) is never scored
    skip = str(exclude).rstrip("/") + "/" if exclude is not None else None
    rows: dict[str, list] = {name: [] for name in LISTING_SCHEMA.names}
    for path, size, mtime_ns, error in _listed(source):
        if skip and (path + "/").startswith(skip):
            continue  # our own output folder inside the input: never score results
        folder = path.endswith("/")  # a folder that could not be listed: its files are unknown
        if extensions is not None and not folder and not path.lower().endswith(extensions):
            if skipped is not None:
                skipped[os.path.splitext(path)[1].lower() or "(no extension)"] += 1
            continue
        values = (path, None, size, mtime_ns, error)
        for name, value in zip(LISTING_SCHEMA.names, values, strict=True):
            rows[name].append(value)
    rows["path"] = _distinct(rows["path"], rows["error"])
    return pa.table(rows, schema=LISTING_SCHEMA).sort_by("path")


def _distinct(paths: list[str], errors: list[str | None]) -> list[str]:
    """Paths with each shown once: a name that is not UTF-8 is shown escaped (``bird\\xe9.jpg``),
    which a real file may be named literally; the escaped one gets a suffix, so every file keeps
    its own row (two rows on one path ended the job at its count check)."""
    taken = Counter(paths)
    if len(taken) == len(paths):
        return paths
    out = list(paths)
    for i, (path, error) in enumerate(zip(paths, errors, strict=True)):
        if taken[path] > 1 and error and ESCAPED in error:
            n = 2
            while f"{path} (not UTF-8, {n})" in taken:
                n += 1
            out[i] = f"{path} (not UTF-8, {n})"
            taken[path] -= 1
            taken[out[i]] += 1
    return out


Listed = tuple[str, int | None, int | None, str | None]  # path, size, mtime_ns, error
ESCAPED = ": the name is not valid UTF-8"  # in the error of a row whose path is shown escaped


def _listed(source: Source) -> Iterator[Listed]:
    """(path users see, size, mtime, listing error) of every file under the input."""
    if not source.prefix:
        yield from _walk_local(source.uri)
        return
    fs, root = source.filesystem()
    info = fs.get_file_info(root)
    infos = (
        [info]
        if info.type == pafs.FileType.File
        else fs.get_file_info(pafs.FileSelector(root, recursive=True))
    )
    for item in infos:
        if item.type == pafs.FileType.File:
            yield source.prefix + item.path, item.size, item.mtime_ns, None


def _walk_local(root: str) -> Iterator[Listed]:
    """Every non-folder entry under ``root``, following folder links but each folder once (a
    link back up would otherwise list the same photos forever). What cannot be scored still gets
    its row: a FIFO, device or dangling link is listed with the reason (a read would block or
    fail), and a name that is not UTF-8 is shown escaped with ``bad_filename``."""
    seen: set[tuple[int, int]] = set()
    folders = [root] if os.path.isdir(root) else []
    if not folders:  # one file given as the input
        yield _entry(root, None)
    while folders:
        folder = folders.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:  # its files are unknown: one row says so, never a silent gap
            shown, valid = storage.utf8_name(folder.rstrip("/"))
            error = f"unreadable: cannot list this folder: {exc.strerror or exc}"
            yield shown + "/", None, None, error + ("" if valid else ESCAPED)
            continue
        for entry in entries:
            try:
                if entry.is_dir():  # follows links; the seen set stops loops
                    folders.append(entry.path)
                    continue
            except OSError:
                pass
            yield _entry(entry.path, entry)


def _entry(path: str, entry: os.DirEntry | None) -> Listed:
    shown, valid = storage.utf8_name(path)
    if not valid:
        return shown, None, None, f"bad_filename{ESCAPED}; rename the file"
    try:
        info = entry.stat() if entry is not None else os.stat(path)
    except FileNotFoundError:
        return path, None, None, "missing: the file (or a link's target) does not exist"
    except OSError as exc:
        return path, None, None, f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return path, None, None, "unreadable: not a regular file (a FIFO, socket or device)"
    return path, info.st_size, info.st_mtime_ns, None


def split_columns(source: Source, columns: list[str]) -> pa.Table:
    """Some columns of a dataset split, read here by pyarrow: for a few small columns a Ray Data
    read (a listing task, then read tasks) cost ~2 s on 2 cores before any row."""
    return _split_dataset(source).to_table(columns=columns)


def _split_dataset(source: Source) -> pads.Dataset:
    fs, path = storage.filesystem(source.split_dir)
    return pads.dataset(path, filesystem=fs, format="parquet")


def read_file(source: Source, path: str, max_bytes: int = 0) -> bytes:
    """The bytes of one listed file (raises OSError when it cannot be read; ``max_bytes`` is
    enforced before reading local files, after for buckets, whose listing gave the size)."""
    if not source.prefix:  # a FIFO or device must fail, not block the task forever
        return storage.read_local_file(path, max_bytes)
    fs, _ = source.filesystem()
    with fs.open_input_file(source.fs_path(path)) as fh:
        return fh.read()


def read_many(source: Source, paths: list[str]) -> dict[str, bytes]:
    """Bytes for a few paths (explanations); unreadable ones are left out."""
    if source.kind == "dataset":
        table = _split_dataset(source).to_table(
            columns=["path", "image"], filter=pc.field("path").isin(paths)
        )
        return dict(zip(table["path"].to_pylist(), table["image"].to_pylist(), strict=True))
    out = {}
    for path in paths:
        try:
            out[path] = read_file(source, path)
        except OSError:
            continue
    return out
