"""Read a user's own photos: a folder per species, or a CSV of ``path,label``.

Two layouts besides CUB are accepted (``find_layout`` tells which one a source is):

* ``folders``: ``DIR/<species>/*.jpg``, what torchvision's ``ImageFolder`` and timm read;
* ``csv``: a file of ``path,label`` rows (a header ``path,label`` is optional), paths relative to
  the CSV's folder and confined to it as CUB's ``images.txt`` paths are to ``images/``.

Class names are the folder names / labels, sorted; label = index. There is no official split, so
``assign_splits`` makes a seeded, per-class (stratified) train/val/test split. There are no box
or part annotations: ``bbox`` is null, ``parts`` empty, ``part_names`` empty (explain-eval then
skips its part scores). Records reuse ``CubRecord`` so ingest treats every layout the same way.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from birdray.data.cub import (
    CubDataset,
    CubFormatError,
    CubRecord,
    confined_path,
    find_root,
    refused_reason,
)
from birdray.storage import file_stamp, utf8_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LAYOUTS = "a CUB_200_2011 folder (images.txt) or .tgz, a CSV of path,label, or DIR/<species>/*.jpg"


class LayoutError(CubFormatError):
    """A source that is none of the three accepted layouts."""


def find_layout(source: Path) -> str:
    """``cub`` (images.txt found as before), else ``csv`` (a .csv file), else ``folders``."""
    try:
        find_root(source)
        return "cub"
    except CubFormatError:
        pass
    if source.is_file() and source.suffix.lower() == ".csv":
        return "csv"
    if source.is_dir() and any(_images(d) for d in _class_dirs(source)):
        return "folders"
    raise LayoutError(f"{source}: not a dataset layout birdray reads; expected {LAYOUTS}")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_layout(source: Path, layout: str) -> CubDataset:
    """The source as a ``CubDataset`` whose ``root`` is the folder image paths are relative to."""
    return read_species_folders(source) if layout == "folders" else read_csv(source)


def read_species_folders(root: Path) -> CubDataset:
    """Every image file one level below ``root``; ids follow the sorted paths (deterministic)."""
    entries, problems = [], {}
    for folder in _class_dirs(root):
        label, label_ok = utf8_name(folder.name)
        for image in _images(folder):
            rel, rel_ok = utf8_name(f"{folder.name}/{image.name}")
            if not (label_ok and rel_ok):  # Parquet and JSON hold UTF-8 text only
                problems[len(entries)] = f"bad_filename: '{rel}' is not valid UTF-8; rename it"
            entries.append((rel, label))
    if not entries:
        raise LayoutError(f"{root}: no species folder holds images; expected {LAYOUTS}")
    return _dataset(root, entries, problems)


def read_csv(path: Path) -> CubDataset:
    """``path,label`` rows; a path leaving the CSV's folder is quarantined as ``unsafe_path``."""
    entries: list[tuple[str, str]] = []
    problems: dict[int, str] = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise CubFormatError(f"{path}:{lineno}: expected path,label, got {row!r}")
            rel, label = row[0].strip(), row[1].strip()
            if lineno == 1 and (rel.lower(), label.lower()) == ("path", "label"):
                continue  # header
            if confined_path(path.parent, rel) is None:
                leaves = f"{path.name}:{lineno} path {rel!r} leaves {path.parent}"
                problems[len(entries)] = refused_reason(path.parent, rel, leaves)
            entries.append((rel, label))
    if not entries:
        raise CubFormatError(f"{path}: lists no images")
    return _dataset(path.parent, entries, problems)


def _dataset(root: Path, entries: list[tuple[str, str]], problems: dict[int, str]) -> CubDataset:
    class_names = sorted({label for _, label in entries})
    index = {name: i for i, name in enumerate(class_names)}
    records = []
    for i, (rel, label) in enumerate(entries):
        rec = CubRecord(i + 1, rel, index[label], label, is_train=True)
        if i in problems:
            rec.problems.append(problems[i])
        elif confined_path(root, rel) is None:  # a species folder's link pointing elsewhere
            rec.problems.append(refused_reason(root, rel, f"{rel!r} leaves {root}"))
        records.append(rec)
    return CubDataset(root, class_names, [], [], records)


def assign_splits(
    records: list[CubRecord], val_fraction: float, test_fraction: float, seed: int
) -> dict[int, str]:
    """Per class, a seeded permutation: the first ``test_fraction`` is test, the next
    ``val_fraction`` val, the rest train. A class of 3+ images keeps at least one in train and
    gets one in each non-zero split, so small classes are never missing from a split by rounding.
    """
    by_class: dict[int, list[int]] = {}
    for rec in records:
        by_class.setdefault(rec.label, []).append(rec.image_id)
    split: dict[int, str] = {}
    for label, ids in sorted(by_class.items()):
        ids = sorted(ids)
        n = len(ids)
        n_test, n_val = (_share(n, f) for f in (test_fraction, val_fraction))
        while n_test + n_val > n - 1 and (n_test or n_val):  # always leave one to train on
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        order = [ids[i] for i in np.random.default_rng([seed, label]).permutation(n)]
        for k, image_id in enumerate(order):
            split[image_id] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return split


def _share(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, int(round(n * fraction)))


def fingerprint(dataset: CubDataset, csv_file: Path | None) -> str:
    """Hash of the CSV and each image's path, label and size: changes when the source does."""
    digest = hashlib.sha256(csv_file.read_bytes() if csv_file is not None else b"folders")
    for rec in dataset.records:
        image = confined_path(dataset.root, rec.rel_path)  # never stat a path outside the source
        stamp = file_stamp(image)
        digest.update(f"{rec.rel_path}\0{rec.class_name}\0{stamp}\n".encode())  # UTF-8 names
    return digest.hexdigest()
