"""Where the images come from: a folder or filesystem URI listed recursively, or an ingested split.

The driver lists the files once (one row each: that list is what "files seen" means and what the
output must reconcile with); Ray tasks then read the bytes themselves (local files without ever
blocking on a FIFO, buckets through pyarrow), so an unreadable file becomes an error row in a task
instead of failing the listing. What cannot be read at all is found while listing, and gets its
error row without a read.
An ingested split's shards are checked when it is opened (each one's Parquet footer, before any
Ray work), so a damaged or foreign shard is one error naming it, not a traceback from a reader.
Local paths must be visible to every node (one machine, or a shared filesystem); object-store
URIs (``s3://``, ``gs://``) work from anywhere.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from birdray import storage
from birdray.data.manifest import is_dataset, split_path
from birdray.images import IMAGE_SUFFIXES
from birdray.scoring.walk import Identity, Listed, distinct, walk_local

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
# what scoring's and evaluation's stages read from every shard of a split, and of what type
SHARD_COLUMNS = {
    "image_id": pa.types.is_integer,
    "path": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "image": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
}


class SourceError(ValueError):
    """An input that cannot be listed (missing folder, unknown split, bad URI)."""


class LacksColumns(SourceError):
    """Sound shards without the extra columns a caller asked for (``open_source``'s ``needs``):
    the caller words the error (evaluation: "cannot be evaluated"), from the first such shard."""

    def __init__(self, shard: str, problem: str, more: int):
        super().__init__(f"shard {shard} {problem}")
        self.shard, self.problem, self.more = shard, problem, more


@dataclass(frozen=True)
class Needs:
    """Columns a caller reads from every shard beyond scoring's (name -> type test), and who
    needs them, for the error (" that evaluation needs")."""

    columns: dict[str, Callable[[pa.DataType], bool]]
    purpose: str = ""


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


def open_source(input_uri: str, split: str = "test", needs: Needs | None = None) -> Source:
    """A folder/URI of images, or an ingested dataset (folder or URI with a manifest.json).

    A dataset split's shard footers are read once, for scoring's columns and ``needs`` (extra
    name -> type test, with who needs them): a damaged shard is a ``SourceError``, a sound one
    without ``needs`` a ``LacksColumns``."""
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
            return _dataset(
                Source("dataset", input_uri, prefix, split_path(input_uri, split)), needs
            )
        return Source("folder", input_uri, prefix)
    local = storage.local_path(input_uri)
    if not local.exists():
        raise SourceError(f"input not found: {local}")
    if local.is_dir() and is_dataset(local):
        return _dataset(Source("dataset", str(local), "", split_path(local, split)), needs)
    return Source("folder", _as_given(input_uri, local), "")


def _as_given(input_uri: str, resolved: Path) -> str:
    """The input's absolute path as the user gave it, links unresolved: rows name files the way
    the user reaches them, and a UTF-8 link (``inlink -> in\\xe9``) lets photos in a folder whose
    own name is not UTF-8 be scored. The resolved path where the two differ in what they reach
    (``link/..`` is the link target's parent, not the link's) or for a ``file://`` URI."""
    if storage.is_uri(input_uri):
        return str(resolved)
    given = os.path.abspath(os.path.expanduser(input_uri))
    try:
        return given if os.path.samefile(given, resolved) else str(resolved)
    except OSError:
        return str(resolved)


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
    # the output folder (a URI in the input's own bucket, or a local folder) is never scored
    skip = None  # spelt as the listing spells paths: pyarrow's decoded key (%20 is a space)
    if exclude is not None and source.prefix:
        skip = source.prefix + storage.filesystem(str(exclude))[1].rstrip("/") + "/"
    rows: dict[str, list] = {name: [] for name in LISTING_SCHEMA.names}
    for path, size, mtime_ns, error in _listed(source, _identity(exclude, source)):
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
    rows["path"] = distinct(rows["path"], rows["error"])
    return pa.table(rows, schema=LISTING_SCHEMA).sort_by("path")


def _identity(exclude: str | Path | None, source: Source) -> Identity | None:
    """The local output folder's identity, when the input is local too: a path string cannot
    say whether a link (``photos/results -> ../out``, ``photos/up -> ..``) leads into it, so a
    rerun scored the last run's explanation PNGs as photos. The input folder itself as the
    output is refused: everything under it would be the job's own output."""
    if exclude is None or source.prefix or storage.is_remote(exclude):
        return None
    try:
        info = os.stat(exclude)
    except OSError:  # not there (yet): nothing of it can be listed
        return None
    identity = (info.st_dev, info.st_ino)
    try:
        root = os.stat(source.uri)
    except OSError:
        return identity
    if (root.st_dev, root.st_ino) == identity:
        raise SourceError("--output must not be the --input folder itself (use a subfolder)")
    return identity


def _listed(source: Source, skip: Identity | None = None) -> Iterator[Listed]:
    """(path users see, size, mtime, listing error) of every file under the input; the folder
    ``skip`` (the output's, local inputs only) and all under it are left out."""
    if not source.prefix:
        yield from walk_local(source.uri, skip)
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


def _dataset(source: Source, needs: Needs | None = None) -> Source:
    """``source`` once every shard of its split has a Parquet footer with the columns scoring
    reads (and ``needs``). Checked here, before any Ray work: a damaged shard failed deep inside
    Ray's read_parquet (or pyarrow's), a traceback naming no file a user could act on."""
    fs, shards = _shards(source)
    if not shards:
        raise SourceError(f"{source.split_dir} holds no Parquet shards (*.parquet): re-run ingest")
    with ThreadPoolExecutor(8) as pool:  # footers from a bucket: a request each
        problems = list(pool.map(functools.partial(_shard_problem, fs, needs), shards))
    for lacking in (False, True):  # damage first: it is what to mend before anything else
        bad = [(i, p[1]) for i, p in zip(shards, problems, strict=True) if p[1] and p[0] == lacking]
        if not bad:
            continue
        info, problem = bad[0]
        shown = source.prefix + info.path if source.prefix else info.path
        if lacking:
            raise LacksColumns(shown, problem, len(bad) - 1)
        more = f" ({len(bad) - 1} more shards are damaged too)" if len(bad) > 1 else ""
        raise SourceError(
            f"damaged dataset {source.uri}: shard {shown} {problem}{more}; re-run ingest, or"
            " remove the file if it is not the dataset's"
        )
    return source


def _shard_problem(
    fs: pafs.FileSystem, needs: Needs | None, info: pafs.FileInfo
) -> tuple[bool, str]:
    """What is wrong with one shard, from its footer alone ("" if nothing), and whether it is
    only that it lacks ``needs`` (True) rather than damage or scoring's columns (False)."""
    if info.size == 0:
        return False, "is empty (0 bytes)"
    try:
        schema = pq.read_schema(info.path, filesystem=fs)
    except (pa.ArrowException, OSError) as exc:  # pyarrow names the file again: keep the reason
        reason = str(exc).rsplit("': ", 1)[-1].rstrip(".")
        return False, f"is not a Parquet file: {reason}"
    problem = columns_problem(schema, SHARD_COLUMNS)
    if problem or needs is None:
        return False, problem
    return True, columns_problem(schema, needs.columns, needs.purpose)


def columns_problem(
    schema: pa.Schema, needed: dict[str, Callable[[pa.DataType], bool]], purpose: str = ""
) -> str:
    """What ``schema`` lacks of ``needed`` (name -> type test), or has of the wrong type ("" if
    nothing); ``purpose`` says who needs the missing ones (scoring's columns, evaluation's)."""
    lacking = [name for name in needed if name not in schema.names]
    if lacking:
        has = ", ".join(schema.names[:10])
        return f"lacks column(s) {', '.join(lacking)}{purpose} (has {has})"
    wrong = [
        f"{name} is {schema.field(name).type}"
        for name, fits in needed.items()
        if not fits(schema.field(name).type)
    ]
    return f"has columns of the wrong type: {', '.join(wrong)}" if wrong else ""


def _shards(source: Source) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The split's shards as Ray Data's ``read_parquet`` (training's, evaluation's and scoring's
    reader) takes them: ``*.parquet`` files at any depth whose path in the split folder starts
    with neither ``.`` nor ``_``. Anything else there (a README, ``_SUCCESS``, ``.DS_Store``) is
    not data, so pyarrow's own reads here skip it too, and every file Ray reads is checked."""
    fs, root = storage.filesystem(source.split_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise SourceError(f"cannot list the shards in {source.split_dir}: {exc}") from exc
    root = root.rstrip("/") + "/"
    shards = [
        info
        for info in infos
        if info.type == pafs.FileType.File
        and info.path.lower().endswith(".parquet")
        and not info.path[len(root) :].startswith((".", "_"))
    ]
    return fs, sorted(shards, key=lambda info: info.path)


def split_columns(source: Source, columns: list[str]) -> pa.Table:
    """Some columns of a dataset split, read here by pyarrow: for a few small columns a Ray Data
    read (a listing task, then read tasks) cost ~2 s on 2 cores before any row."""
    return split_dataset(source).to_table(columns=columns)


def split_dataset(source: Source) -> pads.Dataset:
    """A dataset split for pyarrow's own reads, of the very files Ray Data's reader takes."""
    fs, shards = _shards(source)
    return pads.dataset([info.path for info in shards], filesystem=fs, format="parquet")


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
        table = split_dataset(source).to_table(
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
