"""Walking a local input folder: one row per entry, whatever it is.

Each entry of the tree becomes ``(path users see, size, mtime_ns, listing error)``. Folder links
are followed but each folder once, the output folder is never entered by any path, and what
cannot be scored (a FIFO, a device, a dangling link, a name that is not UTF-8) still gets its
row with the reason, so "files seen" counts everything there.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator

from birdray import storage

GONE = "missing: the file (or a link's target) does not exist"  # at listing, or deleted since
NOT_UTF8 = "is not valid UTF-8"  # in the error of every row whose path is shown escaped

Listed = tuple[str, int | None, int | None, str | None]  # path, size, mtime_ns, error
Identity = tuple[int, int]  # (st_dev, st_ino): one folder, whatever path reaches it


def walk_local(root: str, skip: Identity | None = None) -> Iterator[Listed]:
    """Every non-folder entry under ``root``, following folder links but each folder once (a
    link back up would otherwise list the same photos forever), never entering ``skip`` by any
    path. What cannot be scored still gets its row: a FIFO, device or dangling link is listed
    with the reason (a read would block or fail), and a name that is not UTF-8 is shown escaped
    with ``bad_filename``."""
    seen: set[Identity] = {skip} if skip else set()  # the output counts as seen from the start
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
            yield shown + "/", None, None, error + ("" if valid else f": the name {NOT_UTF8}")
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
    if not valid:  # rows hold UTF-8 paths: the file cannot be scored under this path
        return shown, None, None, _bad_name(path)
    try:
        info = entry.stat() if entry is not None else os.stat(path)
    except FileNotFoundError:
        return path, None, None, GONE
    except OSError as exc:
        return path, None, None, f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return path, None, None, "unreadable: not a regular file (a FIFO, socket or device)"
    return path, info.st_size, info.st_mtime_ns, None


def _bad_name(path: str) -> str:
    """``bad_filename`` naming the part of ``path`` to rename: under a folder whose name is not
    UTF-8 every photo was told to rename itself, though its own name was fine."""
    for part in path.split(os.sep)[:-1]:
        shown, valid = storage.utf8_name(part)
        if not valid:
            return f"bad_filename: the folder name '{shown}' {NOT_UTF8}; rename it"
    return f"bad_filename: the name {NOT_UTF8}; rename the file"


def distinct(paths: list[str], errors: list[str | None]) -> list[str]:
    """Paths with each shown once: a name that is not UTF-8 is shown escaped (``bird\\xe9.jpg``),
    which a real file may be named literally; the escaped one gets a suffix, so every file keeps
    its own row (two rows on one path ended the job at its count check)."""
    taken = Counter(paths)
    if len(taken) == len(paths):
        return paths
    out = list(paths)
    for i, (path, error) in enumerate(zip(paths, errors, strict=True)):
        if taken[path] > 1 and error and NOT_UTF8 in error:
            n = 2
            while f"{path} (not UTF-8, {n})" in taken:
                n += 1
            out[i] = f"{path} (not UTF-8, {n})"
            taken[path] -= 1
            taken[out[i]] += 1
    return out
