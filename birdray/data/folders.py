"""Read a user's own photos: a folder per species, or a CSV of ``path,label``.

Two layouts besides CUB are accepted (``find_layout`` tells which one a source is):

* ``folders``: ``DIR/<species>/*.jpg``, what torchvision's ``ImageFolder`` and timm read;
* ``csv``: a file of ``path,label`` rows, read by ``path_labels.read_csv``.

Class names are the folder names / labels, sorted; label = index. There is no official split, so
``assign_splits`` makes a seeded, per-class (stratified) train/val/test split. There are no box
or part annotations: ``bbox`` is null, ``parts`` empty, ``part_names`` empty (explain-eval then
skips its part scores). Records reuse ``CubRecord`` so ingest treats every layout the same way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from birdray.data.archive import not_the_users
from birdray.data.confined import confined_path
from birdray.data.cub import CubDataset, CubRecord, find_root
from birdray.data.cub_text import CubFormatError
from birdray.data.path_labels import labelled_dataset, read_csv
from birdray.images import IMAGE_SUFFIXES
from birdray.storage import file_stamp, utf8_name

LAYOUTS = (
    "a CUB_200_2011 folder (images.txt), a CSV of path,label, or DIR/<species>/*.jpg (each may"
    " come as a .tgz or .zip)"
)
SHOWN = 5  # file names a warning shows; the rest are counted


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
    if source.is_dir() and any(_images(d)[0] for d in _class_dirs(source)):
        return "folders"
    hint = ""
    if source.is_dir() and any(_loose_file(p) and _is_image(p) for p in source.iterdir()):
        hint = (
            "; its photos lie directly in it: put each species' photos in a folder named after it"
        )
    raise LayoutError(f"{source}: not a dataset layout birdray reads; expected {LAYOUTS}{hint}")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not not_the_users(d.name))


def _images(folder: Path) -> tuple[list[Path], list[Path], list[OSError]]:
    """Image files anywhere below ``folder`` (hidden files and folders skipped, links to folders
    not followed), the other files found there (skipped, but said), and why each folder that
    could not be listed was not (``os.walk`` skips those silently: their photos would vanish)."""
    images, others, unlisted = [], [], []
    for top, dirs, files in os.walk(folder, onerror=unlisted.append):
        dirs[:] = [d for d in dirs if not not_the_users(d)]
        for name in files:
            if not not_the_users(name):
                path = Path(top, name)
                (images if _is_image(path) else others).append(path)
    return sorted(images), sorted(others), unlisted


def _shown(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(repr(p) for p in paths[:SHOWN]) + more


def read_layout(source: Path, layout: str) -> CubDataset:
    """The source as a ``CubDataset`` whose ``root`` is the folder image paths are relative to."""
    return read_species_folders(source) if layout == "folders" else read_csv(source)


def read_species_folders(root: Path) -> CubDataset:
    """Every image file below ``root/<species>/`` (sub-folders too: the class is the top-level
    folder); ids follow the sorted paths (deterministic). Loose files, empty species folders,
    non-image files and folders that cannot be listed are skipped and named in ``warnings``."""
    entries, problems, empty, other, unlisted, around = [], {}, [], [], [], []
    for folder in _class_dirs(root):
        label, label_ok = utf8_name(folder.name)
        if root.resolve().is_relative_to(folder.resolve()):  # a link to / walked it all
            around.append(label)
            continue
        images, others, errors = _images(folder)
        other += [utf8_name(p.relative_to(root).as_posix())[0] for p in others]
        unlisted += errors
        if not images and not errors:
            empty.append(label)
        for image in images:
            rel, rel_ok = utf8_name(image.relative_to(root).as_posix())
            if not (label_ok and rel_ok):  # Parquet and JSON hold UTF-8 text only
                problems[len(entries)] = f"bad_filename: '{rel}' is not valid UTF-8; rename it"
            entries.append((rel, label))
    if not entries:
        why = f"; {_unread(root, unlisted)}" if unlisted else ""
        why += f"; {_around(root, around)}" if around else ""
        raise LayoutError(f"{root}: no species folder holds images; expected {LAYOUTS}{why}")
    dataset = labelled_dataset(root, entries, problems)
    loose = [utf8_name(p.name)[0] for p in sorted(root.iterdir()) if _loose_file(p)]
    if loose:
        dataset.warnings.append(
            f"{len(loose)} file(s) directly in {root} belong to no species folder and were "
            f"skipped: {_shown(loose)}"
        )
    if empty:
        dataset.warnings.append(
            f"{len(empty)} species folder(s) hold no image and are not classes: {_shown(empty)}"
        )
    if unlisted:
        dataset.warnings.append(f"{_unread(root, unlisted)}; their photos are not in the dataset")
    if around:
        dataset.warnings.append(_around(root, around))
    if other:
        dataset.warnings.append(
            f"{len(other)} file(s) in species folders are not images by their name "
            f"({', '.join(IMAGE_SUFFIXES)}) and were skipped: {_shown(other)}"
        )
    return dataset


def _around(root: Path, labels: list[str]) -> str:
    return (
        f"{len(labels)} species folder(s) are links to {root} or a folder holding it and were "
        f"not followed (it would be read again inside itself): {_shown(labels)}"
    )


def _unread(root: Path, errors: list[OSError]) -> str:
    """``1 folder(s) could not be read (Permission denied): 'wren/2023'``, names below ``root``."""
    names = []
    for exc in errors:
        folder = Path(os.fsdecode(exc.filename or root))
        inside = folder.is_relative_to(root) and folder != root
        names.append(utf8_name(folder.relative_to(root).as_posix() if inside else str(folder))[0])
    why = ", ".join(sorted({exc.strerror or type(exc).__name__ for exc in errors}))
    return f"{len(errors)} folder(s) could not be read ({why}): {_shown(names)}"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _loose_file(path: Path) -> bool:
    return not not_the_users(path.name) and not path.is_dir()


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
        try:
            stamp = file_stamp(image)
        except OSError as exc:  # e.g. a name too long: reading it quarantines the row, and says why
            stamp = f"-1 {exc.errno}"
        digest.update(f"{rec.rel_path}\0{rec.class_name}\0{stamp}\n".encode())  # UTF-8 names
    return digest.hexdigest()
