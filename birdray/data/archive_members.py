"""What an archive member may be, for tar and zip alike: no escape from the target folder, no
link, device or pipe, no name listed twice or as both a file and a folder, no more than
``MAX_MEMBERS`` entries or the size cap in all. Read by name and header alone, before anything is
written (birdray.data.archive unpacks only what passed)."""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path, PureWindowsPath

MAX_MEMBERS = 200_000  # CUB has ~12,000 entries; millions of empty files would exhaust inodes


class ArchiveError(ValueError):
    """A download or archive that must not be used (bad checksum, unsafe member, not a tar)."""


def check_member(member: tarfile.TarInfo, target: Path) -> str:
    """The member's path in the target, normalised ("" for the target itself), if it is safe to
    write. Read by name alone, not on disk: it is unpacked into a fresh folder, and it holds no
    links (tarfile's "data" filter checks each path on disk again as it writes it)."""
    path = posixpath.normpath(member.name)
    if path.startswith("/") or ".." in member.name.split("/"):  # 'a/./../b' included
        raise ArchiveError(f"unsafe archive member {member.name!r}: escapes {target}")
    if path == "." and not member.isdir():
        raise ArchiveError(f"archive member {member.name!r} is a file where its root folder goes")
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
    return "" if path == "." else path


def check_count(count: int) -> None:
    if count > MAX_MEMBERS:
        raise ArchiveError(f"the archive has more than {MAX_MEMBERS:,} entries; refusing it")


def check_total(total: int, max_bytes: int) -> None:
    """The bytes the members read so far would write (a tar bomb stops at its first header)."""
    if total > max_bytes:
        raise ArchiveError(
            f"the archive would unpack to at least {total / 1e9:.2f} GB, more than the cap of "
            f"{max_bytes / 1e9:.2f} GB (raise --max-extract-gb if this archive is trusted)"
        )


class Names:
    """The paths an archive's members write: one listed twice (unpacking would keep the last
    copy, silently), or a file and a folder of one name (unpacking would stop half-way with
    'File exists' or 'Not a directory') is refused before anything is written."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.files: dict[str, str] = {}  # path -> the member's name in the archive
        self.folders: dict[str, str] = {}  # path -> the member that is it, or is in it

    def add(self, path: str, shown: str, is_dir: bool) -> None:
        """``path``: the member's relative path, ``/``-separated, normalised."""
        if path in self.files:
            if not is_dir:
                raise ArchiveError(f"the {self.kind} lists {shown!r} twice; which one is meant?")
            raise self._both(self.files[path], shown)
        if is_dir:
            self.folders.setdefault(path, shown)  # a folder listed twice is harmless
        elif path in self.folders:
            raise self._both(shown, self.folders[path])
        else:
            self.files[path] = shown
        while "/" in path:  # every folder above it, up to one already seen (and so checked)
            path = path.rsplit("/", 1)[0]
            if path in self.files:
                raise self._both(self.files[path], shown)
            if path in self.folders:
                break
            self.folders[path] = shown

    def _both(self, file: str, folder: str) -> ArchiveError:
        return ArchiveError(
            f"the {self.kind} holds {file!r} both as a file and as a folder ({folder!r}); which "
            "one is meant?"
        )


ZIP_METHODS = {  # what zipfile decompresses; Deflate64, PPMd, zstd ... it cannot
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def is_zip_dir(info: zipfile.ZipInfo) -> bool:
    """A folder entry: ``name/``, ``name\\`` (older Windows tools) or a folder's mode."""
    return info.filename.endswith(("/", "\\")) or stat.S_ISDIR(info.external_attr >> 16)


def zip_name(info: zipfile.ZipInfo, target: Path) -> str:
    """The member's relative path with ``/`` separators, or ArchiveError if it must not be
    written (zipfile's own extract would quietly rewrite an escaping name instead)."""
    mode = info.external_attr >> 16
    if info.flag_bits & 0x1:
        raise ArchiveError(f"zip member {info.filename!r} is encrypted; unzip it yourself")
    if info.compress_type not in ZIP_METHODS and not is_zip_dir(info):
        raise ArchiveError(
            f"zip member {info.filename!r} uses compression method {info.compress_type}, which"
            f" cannot be read here ({', '.join(ZIP_METHODS.values())} can); zip it again with"
            " Deflate"
        )
    if stat.S_ISLNK(mode):
        raise ArchiveError(
            f"unsafe link {info.filename!r}: the archive holds a symbolic link; refusing it"
        )
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type (DOS, zipfile)
        raise ArchiveError(f"archive member {info.filename!r} is not a file or folder")
    name = info.filename.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    escapes = name.startswith("/") or bool(PureWindowsPath(info.filename).drive) or ".." in parts
    if escapes or not parts or not (target / "/".join(parts)).resolve().is_relative_to(target):
        raise ArchiveError(f"unsafe archive member {info.filename!r}: escapes {target}")
    return "/".join(parts)
