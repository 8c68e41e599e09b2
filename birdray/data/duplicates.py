"""The same photo twice in one's own source: kept once, so no split holds the same bytes twice.

A species folder or CSV can hold one photo under two names (a copy in a sub-folder, a CSV
listing it twice under other spellings) or under two species. Copies would put one photo in both
train and test, and an image filed under two species teaches nothing about either. Before
splits are assigned, every listed file whose size another shares is hashed (SHA-256 of its
bytes, the ``content_hash`` shards carry; a size no other file has cannot be a copy, so most
photos are only stat'ed here): of identical files with one label the first (by path order) is
kept and the others are quarantined as ``duplicate``; identical files under different labels
are all quarantined as ``duplicate_conflict``, naming the labels. CUB keeps its official split.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from birdray import storage
from birdray.data.confined import confined_path
from birdray.data.cub import CubDataset, CubRecord

SHOWN = 3  # copies a reason names


def mark_duplicates(dataset: CubDataset, max_bytes: int = 0) -> int:
    """Adds a ``duplicate`` / ``duplicate_conflict`` problem to every copy not kept; returns
    how many. Files that cannot be read are left alone: reading them again says why."""
    by_size: dict[int, list[tuple[CubRecord, Path]]] = {}
    for rec in dataset.records:
        path = None if rec.problems else confined_path(dataset.root, rec.rel_path)
        try:
            info = None if path is None else os.stat(path)
        except (OSError, ValueError):  # missing, a dangling link, a NUL in the name
            continue
        if info is not None and stat.S_ISREG(info.st_mode):
            by_size.setdefault(info.st_size, []).append((rec, path))
    groups: dict[str, list[CubRecord]] = {}
    for same_size in by_size.values():  # only files of one size can be copies: most are read
        if len(same_size) < 2:  # by the ingest alone, not here too
            continue
        for rec, path in same_size:
            try:
                data = storage.read_local_file(path, max_bytes)
            except (OSError, ValueError):  # gone since, too big, no longer a regular file
                continue
            groups.setdefault(hashlib.sha256(data).hexdigest(), []).append(rec)
    marked = 0
    for copies in groups.values():
        if len(copies) < 2:
            continue
        labels = sorted({rec.class_name for rec in copies})
        if len(labels) > 1:
            shown = ", ".join(f"{r.rel_path!r} ({r.class_name})" for r in copies[:SHOWN])
            more = f" and {len(copies) - SHOWN} more" if len(copies) > SHOWN else ""
            reason = (
                f"duplicate_conflict: the same bytes are labelled {' and '.join(map(repr, labels))}"
                f": {shown}{more}; none is kept"
            )
            for rec in copies:
                rec.problems.append(reason)
            marked += len(copies)
        else:
            for rec in copies[1:]:
                rec.problems.append(f"duplicate: the same bytes as {copies[0].rel_path!r} (kept)")
            marked += len(copies) - 1
    return marked
