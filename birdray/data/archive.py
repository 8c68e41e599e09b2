"""Unpack an archive (tar of any compression, or zip) safely: every member checked, the size
capped, the stream proven whole.

An archive must never write outside its target folder nor fill the disk: path traversal, every
link (CUB has none, so any link is refused, even one pointing inside), devices, a name listed
twice or as both a file and a folder, more than ``max_bytes`` of files or ``MAX_MEMBERS`` entries
are refused before anything is written (a tar as soon as its headers cross a limit, not after its
whole stream is decompressed); a damaged archive fails instead of unpacking in part; a second
process waits for the first; a link where the extraction folder goes is refused, never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from birdray import locks
from birdray.data.archive_members import (
    ArchiveError,
    Names,
    check_count,
    check_member,
    check_total,
    is_zip_dir,
    zip_name,
)

EXTRACT_MARKER = ".birdray-extracted"
# Raised whenever the checks below are tightened: an extraction a marker of another version
# vouches for was made under rules that may have let through what these refuse, so it is redone.
EXTRACT_CHECKS = 2
MACOS_FORKS = "__MACOSX"  # the resource forks macOS's Finder puts in every zip it makes
DEFAULT_MAX_EXTRACT_GB = 4.0  # CUB unpacks to ~1.2 GB
SHOW_PROGRESS_BYTES = 64 * 2**20  # smaller files are read, copied or unpacked without a bar
# what a damaged compressed stream raises from inside tarfile
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error)


def not_the_users(name: str) -> bool:
    """A file or folder no one put there as data: hidden ones, and macOS's forks in a zip."""
    return name.startswith(".") or name == MACOS_FORKS


def progress_bar(total: int, desc: str, unit: str = "B") -> tqdm:
    """A progress bar for the long steps of a 1.1 GB archive, silent for small files."""
    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, disable=total < SHOW_PROGRESS_BYTES
    )


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    size = os.stat(path).st_size
    with open(path, "rb") as fh, progress_bar(size, f"MD5 {Path(path).name}") as bar:
        while block := fh.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def safe_extract(
    archive: str | Path,
    target: str | Path,
    max_bytes: int = int(DEFAULT_MAX_EXTRACT_GB * 1e9),
    md5: str = "",
) -> Path:
    """Extract into ``target`` after checking every member, the total size and that the whole
    compressed stream is intact (nothing is written before); returns it.

    A marker naming the archive's MD5 and the checks' version is written last, so a
    half-finished extraction is redone, another archive unpacked into the same folder replaces it
    instead of being mistaken for it, and one made under older, looser checks is checked again.
    A lock (in the temp folder, so that a refused archive writes nothing near ``target``) makes a
    second process wait for the first, then reuse its result without reading the archive.
    """
    archive, target = Path(archive), _not_a_link(target)
    identity = json.dumps({"md5": (md5 or md5sum(archive)).lower(), "checks": EXTRACT_CHECKS})
    marker = target / EXTRACT_MARKER
    done = lambda: marker.is_file() and marker.read_text() == identity  # noqa: E731
    if done():
        return target
    waiting_for = f"another extraction of {archive.name} into {target}"
    with locks.file_lock(locks.machine_lock_file("extract", target), waiting_for=waiting_for):
        if done():  # another process unpacked it while this one waited
            return target
        with _checked(archive, target, max_bytes) as unpack:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")  # one name: the lock is held
            _remove(tmp)  # a killed run's leftovers
            tmp.mkdir()
            try:
                unpack(tmp)
                _remove(target)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            marker.write_text(identity)
    return target


def _not_a_link(target: str | Path) -> Path:
    """``target`` absolute, through links above it but never one at its own path. Unpacking
    replaces what is there: through a link that would delete the folder it points to. Replacing
    only the link would be safe for that folder, but a link there was made on purpose (say, to put
    the data on another disk) and would be undone silently, gigabytes landing where its maker
    chose not to have them; an error naming it loses nothing and lets them choose."""
    given = Path(target)
    path = given.resolve() if given.name in ("", ".", "..") else given.parent.resolve() / given.name
    if path.is_symlink():
        raise ArchiveError(
            f"the extraction folder {path} is a symbolic link (to {os.readlink(path)}); unpacking"
            " replaces that folder's contents, so it is not followed: remove the link and run again"
        )
    return path


@contextlib.contextmanager
def _checked(archive: Path, target: Path, max_bytes: int) -> Iterator[Callable[[Path], None]]:
    """What unpacks the archive into a folder, once every member is checked and the whole
    archive read (its compressed stream or its CRCs): a tar of any compression, or a zip (what
    people's photo folders come as)."""
    try:
        tar = tarfile.open(archive, "r:*", tarinfo=_StrictInfo)
    except _STREAM_ERRORS as exc:
        if zipfile.is_zipfile(archive):
            with _checked_zip(archive, target, max_bytes) as unpack:
                yield unpack
            return
        raise ArchiveError(f"{archive}: not a readable tar archive, nor a zip ({exc})") from exc
    with tar:
        try:
            members = _checked_members(tar, target, max_bytes)
            _read_to_end(tar)
        except _STREAM_ERRORS as exc:
            raise ArchiveError(f"{archive}: damaged tar archive ({exc})") from exc
        yield lambda dest: _unpack(tar, members, dest, archive.name)


def _checked_members(tar: tarfile.TarFile, target: Path, max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member checked as tarfile reads its header, so the first to cross a limit stops the
    reading: a small .tgz declaring terabytes, or millions of entries, is refused at once instead
    of after its whole stream is decompressed and every header kept."""
    names, total = Names("tar"), 0
    for count, member in enumerate(tar, 1):  # lazily: one header at a time
        check_count(count)
        if path := check_member(member, target):
            names.add(path, member.name + ("/" if member.isdir() else ""), member.isdir())
        if member.isfile():
            total += member.size
            check_total(total, max_bytes)
    return tar.getmembers()  # all read by now: nothing more is read


def _unpack(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path, name: str) -> None:
    total = sum(m.size for m in members if m.isfile())
    try:
        with progress_bar(total, f"unpacking {name}") as bar:
            for member in members:
                tar.extract(member, dest, filter="data")
                bar.update(member.size if member.isfile() else 0)
    except _STREAM_ERRORS as exc:  # e.g. a name too long for this filesystem
        raise ArchiveError(f"{name}: cannot unpack it here ({exc})") from exc


class _StrictInfo(tarfile.TarInfo):
    """tarfile ends the member list at the first unreadable header after the first one, as if
    the archive ended there: a damaged archive would unpack in part, silently. Here such a
    header is the archive's error (an ``ArchiveError`` passes through tarfile's own handling)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as exc:
            if tar.offset == 0:
                raise  # not a tar at all: tarfile.open tries the next compression
            # the stream ends where a header (or the end-of-archive zeros every tar writer puts
            # there) should be: a plain .tar cut at a block boundary, e.g. a download stopped
            # at a 1 MiB chunk, would otherwise pass as whole
            raise ArchiveError(
                f"damaged tar archive: it ends at byte {tar.offset:,} of the unpacked stream "
                "without its end-of-archive blocks (cut short?); download it again"
            ) from exc
        except tarfile.InvalidHeaderError as exc:
            if tar.offset == 0:
                raise
            raise ArchiveError(
                f"damaged tar archive: unreadable entry header at byte {tar.offset:,} of the "
                f"unpacked stream ({exc}); download it again"
            ) from exc


def _read_to_end(tar: tarfile.TarFile) -> None:
    """What follows the end-of-archive blocks, read to the end: only that checks the CRC of a
    gzip, bzip2 or xz stream, which tarfile never reaches."""
    while tar.fileobj.read(1 << 20):
        pass


@contextlib.contextmanager
def _checked_zip(archive: Path, target: Path, max_bytes: int) -> Iterator[Callable[[Path], None]]:
    """A zip's members checked as a tar's are (links, devices, escapes, size, count), plus what
    only zips have: encryption, a name listed twice, and ``\\`` as a separator (zips made on
    Windows). Every member's CRC is read before anything is written."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, *_STREAM_ERRORS) as exc:
        raise ArchiveError(f"{archive}: damaged zip archive ({exc})") from exc
    with zf:
        infos, names = zf.infolist(), Names("zip")
        check_count(len(infos))
        for info in infos:
            names.add(zip_name(info, target), info.filename, is_zip_dir(info))
        check_total(sum(info.file_size for info in infos if not is_zip_dir(info)), max_bytes)
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, NotImplementedError, *_STREAM_ERRORS) as exc:
            raise ArchiveError(f"{archive}: damaged zip archive ({exc})") from exc
        if bad is not None:
            raise ArchiveError(f"{archive}: damaged zip archive (bad CRC in {bad!r})")
        yield lambda dest: _unpack_zip(zf, infos, target, dest, archive.name)


def _unpack_zip(
    zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], target: Path, dest: Path, name: str
) -> None:
    total = sum(info.file_size for info in infos if not is_zip_dir(info))
    try:
        with progress_bar(total, f"unpacking {name}") as bar:
            for info in infos:
                path = dest / zip_name(info, target)
                if is_zip_dir(info):
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                bar.update(info.file_size)
    except (zipfile.BadZipFile, *_STREAM_ERRORS) as exc:
        raise ArchiveError(f"{name}: cannot unpack it here ({exc})") from exc


def _remove(path: Path) -> None:
    """Whatever is at ``path`` (a folder, a file, a link), so an extraction can take its place."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
