"""The same photo twice in one's own source: kept once, so no split holds the same bytes twice.

A species folder or CSV can hold one photo under two names (a copy in a sub-folder, a CSV
listing it twice under other spellings) or under two species. Copies would put one photo in both
train and test, and an image filed under two species teaches nothing about either. Before
splits are assigned, every listed file is hashed (SHA-256 of its bytes, the ``content_hash``
shards carry): of identical files with one label the first (by path order) is kept and the
others are quarantined as ``duplicate``; identical files under different labels are all
quarantined as ``duplicate_conflict``, naming the labels. CUB keeps its official split.
"""

from __future__ import annotations

import hashlib

from birdray import storage
from birdray.data.cub import CubDataset, CubRecord, confined_path

SHOWN = 3  # copies a reason names


def mark_duplicates(dataset: CubDataset, max_bytes: int = 0) -> int:
    """Adds a ``duplicate`` / ``duplicate_conflict`` problem to every copy not kept; returns
    how many. Files that cannot be read are left alone: reading them again says why."""
    groups: dict[str, list[CubRecord]] = {}
    for rec in dataset.records:
        path = None if rec.problems else confined_path(dataset.root, rec.rel_path)
        if path is None:
            continue
        try:
            data = storage.read_local_file(path, max_bytes)
        except (OSError, ValueError):  # missing, too big, not a regular file, a NUL in the name
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
