"""Fetch and unpack the official CUB-200-2011 archive: resumable, checksum-verified, safe.

A 1.1 GB download over a flaky link must resume where it stopped (HTTP Range), a corrupted or
substituted archive must be refused before anything reads it (MD5 from Caltech's record; with no
MD5 given, the computed one is printed so a person can compare it), and an archive must never
write outside its target folder nor fill the disk (``birdray.data.archive``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs
import requests
from tqdm import tqdm

from birdray import locks, storage
from birdray.config import field
from birdray.data.archive import (  # noqa: F401  (EXTRACT_MARKER: the marker's one name)
    DEFAULT_MAX_EXTRACT_GB,
    EXTRACT_MARKER,
    ArchiveError,
    md5sum,
    not_the_users,
    progress_bar,
    safe_extract,
)
from birdray.data.cub import CubFormatError, find_root
from birdray.images import IMAGE_SUFFIXES

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")


@dataclass
class DownloadConfig:
    out: str = field("data/raw", "folder for the archive and the extracted CUB_200_2011/")
    url: str = field(CUB_URL, "archive URL")
    md5: str = field(CUB_MD5, "expected MD5 of the archive ('' skips the check: not advised)")
    extract: bool = field(True, "unpack after verifying")
    max_extract_gb: float = field(
        DEFAULT_MAX_EXTRACT_GB, "refuse archives that would unpack to more than this many GB"
    )
    timeout_s: float = field(60.0, "per-request network timeout")


def regular_file(path: Path, what: str) -> Path:
    """``path`` if it is a regular file; a FIFO there would block the first read forever."""
    if path.exists() and not path.is_file():
        raise ArchiveError(f"{what} {path} exists but is not a regular file; remove it")
    return path


def verify_md5(path: str | Path, expected: str) -> str:
    """The archive's MD5, checked against ``expected``; with none expected, printed instead."""
    actual = md5sum(path)
    if not expected:
        note = " (the official CUB_200_2011.tgz)" if actual == CUB_MD5 else ""
        print(
            f"{path}: MD5 {actual}{note}; no --md5 given, so it was not checked: compare it with "
            "the publisher's and pass --md5 next time"
        )
    elif actual != expected.lower():
        raise ArchiveError(
            f"{path}: MD5 {actual} does not match the expected {expected}; refusing it"
        )
    return actual


def fetch(url: str, dest: Path, timeout_s: float = 60.0) -> Path:
    """Download to ``dest``, resuming a previous ``.part`` file with an HTTP Range request."""

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    try:
        return _fetch(url, dest, part, have, timeout_s)
    except requests.RequestException as exc:  # offline, refused, 404, a cut connection...
        kept = " (the part file is kept: run again to resume)" if part.exists() else ""
        raise ArchiveError(f"download of {url} failed: {exc}{kept}") from exc


def _fetch(url: str, dest: Path, part: Path, have: int, timeout_s: float) -> Path:
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as resp:
        if resp.status_code == 416:  # the part file is already complete
            os.replace(part, dest)
            return dest
        resp.raise_for_status()
        if have and resp.status_code != 206:  # server ignored Range: start over
            have = 0
        total = int(resp.headers.get("Content-Length", 0)) + have
        mode = "ab" if have else "wb"
        with (
            open(part, mode) as fh,
            tqdm(
                total=total or None, initial=have, unit="B", unit_scale=True, desc=dest.name
            ) as bar,
        ):
            for block in resp.iter_content(1 << 20):
                fh.write(block)
                bar.update(len(block))
    os.replace(part, dest)
    return dest


def extracted_dir(archive: str | Path) -> Path:
    """Where ``open_source`` unpacks an archive: beside it, named after it."""
    archive = Path(archive)
    name = archive.name
    stem = next((name[: -len(x)] for x in ARCHIVE_SUFFIXES if name.lower().endswith(x)), name)
    return archive.with_name(stem + "_extracted")


def open_source(
    source: str | Path, md5: str = "", max_extract_gb: float = DEFAULT_MAX_EXTRACT_GB
) -> Path:
    """A folder to read CUB from: the folder itself, or a verified, safely extracted archive.

    An archive in a bucket (``s3://bucket/raw/CUB_200_2011.tgz``) is copied next to the driver
    first: ingest reads the source where its driver runs.
    """
    source = (
        _copy_from_bucket(str(source)) if storage.is_remote(source) else storage.local_path(source)
    )
    if source.is_dir() or (source.is_file() and source.suffix.lower() == ".csv"):
        return source  # a folder, or a CSV of path,label (birdray.data.folders)
    if not source.exists():
        raise FileNotFoundError(f"CUB source not found: {source}")
    regular_file(source, "CUB source")
    actual = verify_md5(source, md5)
    return unwrapped(safe_extract(source, extracted_dir(source), int(max_extract_gb * 1e9), actual))


def unwrapped(folder: Path) -> Path:
    """What an unpacked archive holds: CUB's layout, else the one CSV of path,label in it, else
    the folder it wraps its content in (``photos.zip`` holding ``photos/<species>/``; hidden
    files and macOS's ``__MACOSX`` aside). CUB comes first, as ingest reads the same folder
    unarchived: a stray ``notes.csv`` beside ``images.txt`` is not the dataset. A folder holding
    photos is content, not a wrapper; one species' folder of dated sub-folders zipped alone
    cannot be told from a wrapper, and reads as those sub-folders."""
    while True:
        with contextlib.suppress(CubFormatError):
            find_root(folder)
            return folder
        if csv := _one_csv(folder):
            return csv
        inside = _visible(folder)
        if len(inside) != 1 or not inside[0].is_dir():
            return folder
        if _content(inside[0]) and not _one_csv(inside[0]):
            return folder
        folder = inside[0]


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not not_the_users(p.name)]


def _one_csv(folder: Path) -> Path | None:
    csvs = [p for p in _visible(folder) if p.suffix.lower() == ".csv" and p.is_file()]
    return csvs[0] if len(csvs) == 1 else None


def _content(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def _copy_from_bucket(uri: str) -> Path:
    """The archive's local copy (kept while the object is unchanged: a re-run does not re-copy)."""

    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        what = "is a folder" if info.type == pafs.FileType.Directory else "was not found"
        raise FileNotFoundError(
            f"CUB source {uri} {what}: in a bucket, give the archive (CUB_200_2011.tgz)"
        )
    local = Path(tempfile.gettempdir()) / "birdray-sources" / Path(path).name
    stamp = local.with_name(local.name + ".from")  # which object version the copy is
    version = f"{uri} {info.size} {info.mtime_ns}"
    if not (local.is_file() and stamp.is_file() and stamp.read_text() == version):
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        pafs.copy_files(path, str(part), source_filesystem=fs)
        shutil.rmtree(extracted_dir(local), ignore_errors=True)  # unpacked from the old copy
        os.replace(part, local)
        stamp.write_text(version)
    return local


def download_cub(cfg: DownloadConfig) -> Path:
    """Download (resuming), verify and extract the official archive; returns the folder."""
    out = Path(cfg.out)
    with contextlib.ExitStack() as held:
        try:  # one download at a time into a folder; a second waits, then reuses the first's
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(
                locks.file_lock(
                    out / ".birdray-download.lock", waiting_for=f"another download into {out}"
                )
            )
        except (PermissionError, NotADirectoryError, FileExistsError) as exc:
            raise ArchiveError(f"--out {out} cannot be written: {exc}") from exc
        return _download(cfg, out)


def _download(cfg: DownloadConfig, out: Path) -> Path:
    name = Path(unquote(urlparse(cfg.url).path)).name or "archive.tgz"  # no ?query in the name
    archive = regular_file(out / name, "the archive's place")
    source = storage.local_path(cfg.url) if cfg.url.startswith("file://") else None
    if source is not None:
        regular_file(source, "--url")  # a FIFO would block the copy forever
    if not archive.exists():
        if source is not None:  # an archive already on disk: copied, then verified
            _copy(source, archive)
        else:
            fetch(cfg.url, archive, cfg.timeout_s)
    try:
        actual = verify_md5(archive, cfg.md5)
    except ArchiveError as exc:
        if source is not None and archive.resolve() == source:
            raise  # the user's own file: never moved
        bad = archive.with_name(archive.name + ".bad")
        archive.rename(bad)  # a re-run downloads again instead of meeting the same bytes
        raise ArchiveError(f"{exc}; moved it to {bad}") from exc
    if not cfg.extract:
        return archive.resolve()
    folder = safe_extract(archive, out / "extracted", int(cfg.max_extract_gb * 1e9), actual)
    _check_layout(folder)
    return folder


def _copy(source: Path, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    with (
        open(source, "rb") as src,
        open(part, "wb") as dst,
        progress_bar(os.fstat(src.fileno()).st_size, f"copying {source.name}") as bar,
    ):
        while block := src.read(1 << 20):
            dst.write(block)
            bar.update(len(block))
    os.replace(part, dest)


def _check_layout(folder: Path) -> None:
    """The unpacked archive is one ``ingest`` reads, or the error says where its files went."""
    try:
        find_root(folder)
    except CubFormatError as exc:
        found = sorted(folder.glob("*/*/images.txt")) + sorted(folder.glob("*/images.txt"))
        where = (
            f"; images.txt is at {found[0]}: pass that folder to ingest --source"
            if found
            else ("; the archive holds no images.txt")
        )
        raise ArchiveError(f"unpacked, but not a CUB-200-2011 layout: {exc}{where}") from exc
