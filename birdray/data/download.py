"""Fetch and unpack the official CUB-200-2011 archive: resumable, checksum-verified, safe.

A 1.1 GB download over a flaky link must resume where it stopped (HTTP Range), a corrupted or
substituted archive must be refused before anything reads it (MD5 from Caltech's record; with no
MD5 given, the computed one is printed so a person can compare it), and an archive must never
write outside its target folder nor fill the disk: path traversal, every link (CUB has none, so
any link is refused, even one pointing inside), devices, more than ``max_bytes`` of files or
``MAX_MEMBERS`` entries are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import requests
from tqdm import tqdm

from birdray import storage
from birdray.config import field

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
EXTRACT_MARKER = ".birdray-extracted"
DEFAULT_MAX_EXTRACT_GB = 4.0  # CUB unpacks to ~1.2 GB
MAX_MEMBERS = 200_000  # CUB has ~12,000 entries; millions of empty files would exhaust inodes


class ArchiveError(ValueError):
    """A download or archive that must not be used (bad checksum, unsafe member, not a tar)."""


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


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    resolved = (target / member.name).resolve()
    if not resolved.is_relative_to(target):
        raise ArchiveError(f"unsafe archive member {member.name!r}: escapes {target}")
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise ArchiveError(
            f"unsafe link {member.name!r} -> {member.linkname!r}: the archive holds a {kind} "
            "link, and a CUB archive holds none; refusing it"
        )
    if member.isdev() or member.isfifo():
        raise ArchiveError(f"archive member {member.name!r} is a device or pipe")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"archive member {member.name!r} is not a file or folder")


def _check_size(members: list[tarfile.TarInfo], max_bytes: int) -> None:
    """The bytes the members would write, checked before one is written (a tar bomb stops here)."""
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(
            f"the archive has {len(members):,} entries, more than {MAX_MEMBERS:,}; refusing it"
        )
    total = sum(m.size for m in members if m.isfile())
    if total > max_bytes:
        raise ArchiveError(
            f"the archive would unpack to {total / 1e9:.2f} GB, more than the cap of "
            f"{max_bytes / 1e9:.2f} GB (raise --max-extract-gb if this archive is trusted)"
        )


def safe_extract(
    archive: str | Path, target: str | Path, max_bytes: int = int(DEFAULT_MAX_EXTRACT_GB * 1e9)
) -> Path:
    """Extract into ``target`` after checking every member and the total size; returns it.

    A marker file is written last, so a half-finished extraction is redone, not trusted.
    """
    archive, target = Path(archive), Path(target).resolve()
    if (target / EXTRACT_MARKER).is_file():
        return target
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"{archive}: damaged tar archive ({exc})") from exc
        for member in members:
            _check_member(member, target)
        _check_size(members, max_bytes)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    (target / EXTRACT_MARKER).write_text(str(archive))
    return target


def extracted_dir(archive: str | Path) -> Path:
    """Where ``open_source`` unpacks an archive: beside it, named after it."""
    archive = Path(archive)
    return archive.with_name(archive.name.split(".")[0] + "_extracted")


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
    if not source.is_file():
        raise FileNotFoundError(f"CUB source not found: {source}")
    verify_md5(source, md5)
    return safe_extract(source, extracted_dir(source), int(max_extract_gb * 1e9))


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
    out.mkdir(parents=True, exist_ok=True)
    archive = out / Path(cfg.url).name
    if not archive.exists():
        if cfg.url.startswith("file://"):  # an archive already on disk: copied, then verified
            part = archive.with_name(archive.name + ".part")
            shutil.copyfile(storage.local_path(cfg.url), part)
            os.replace(part, archive)
        else:
            fetch(cfg.url, archive, cfg.timeout_s)
    try:
        verify_md5(archive, cfg.md5)
    except ArchiveError:
        archive.rename(archive.with_name(archive.name + ".bad"))
        raise
    if not cfg.extract:
        return archive
    return safe_extract(archive, out / "extracted", int(cfg.max_extract_gb * 1e9))
