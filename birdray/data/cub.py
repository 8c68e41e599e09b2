"""Read the official CUB-200-2011 layout: images, labels, split, boxes, 15 parts, 312 attributes.

Structural problems (a missing ``images.txt``, ids that don't match across files, a line whose
id can't be read or is below 1, a class name that is not UTF-8) stop the reader with one error
naming the file and line: there is no sensible dataset to build (``cub_text`` reads the lines).
Problems of one image (a malformed box or part line) quarantine that image with a reason, so
ingest can report it instead of crashing or silently dropping it. An ``images.txt`` path that
would leave the ``images/`` folder (absolute, ``..``, a symlink pointing elsewhere) is such a
problem of one image: the row is quarantined as ``unsafe_path`` and its file is never opened. So
is a path that is not UTF-8 (``bad_filename``) or one listed under two ids (``duplicate``,
refused when the two ids give it different classes).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from birdray.data.confined import image_path, refused_reason
from birdray.data.cub_columns import part_locations, present_attributes
from birdray.data.cub_text import (
    CubFormatError,
    check_ids,
    floats,
    id_bounds,
    int_field,
    numbered_lines,
    quoted,
    read_names,
    read_pairs,
    split_lines,
    stored_range,
)
from birdray.storage import utf8_name

ROOT_NAME = "CUB_200_2011"
NUM_PARTS = 15


@dataclass
class CubRecord:
    image_id: int
    rel_path: str
    label: int  # 0-based
    class_name: str
    is_train: bool
    bbox: list[float] | None = None  # x, y, w, h
    parts: list[list[float]] = field(default_factory=list)  # 15 x [x, y, visible]
    attributes: list[int] = field(default_factory=list)  # present attribute ids (1-based)
    problems: list[str] = field(default_factory=list)


@dataclass
class CubDataset:
    root: Path  # the CUB_200_2011 folder
    class_names: list[str]  # "001.Black_footed_Albatross", index = label
    part_names: list[str]
    attribute_names: list[str]
    records: list[CubRecord]
    certainty_names: list[str] = field(default_factory=list)
    class_attributes: list[list[float]] = field(default_factory=list)  # per class, % present
    warnings: list[str] = field(default_factory=list)  # skipped files, said in the summary


def find_root(path: str | Path) -> Path:
    """The ``CUB_200_2011`` folder given it or its parent (an archive unpacked under another
    top folder name, e.g. ``CUB_200_2011_v2/``, is found when it is the only one)."""
    path = Path(path)
    for candidate in (path, path / ROOT_NAME):
        if (candidate / "images.txt").is_file():
            return candidate
    if path.is_dir() and not path.is_symlink():
        inside = [d for d in path.iterdir() if d.is_dir() and (d / "images.txt").is_file()]
        if len(inside) == 1:
            return inside[0]
    raise CubFormatError(
        f"{path}: no images.txt here or in {path / ROOT_NAME} (not a CUB-200-2011 folder)"
    )


def read_cub(path: str | Path) -> CubDataset:
    """Parse every metadata file of the layout (see GUIDE §4 for the formats)."""
    root = find_root(path)
    ids = id_bounds("image_id")  # every file keyed by image id: 1 up to what is stored
    images = read_pairs(root / "images.txt", bounds=ids)
    if not images:
        raise CubFormatError(f"{root / 'images.txt'}: lists no images")
    class_names = read_names(root / "classes.txt")
    image_ids = set(images)
    labels = read_pairs(root / "image_class_labels.txt", bounds=ids)
    splits = read_pairs(root / "train_test_split.txt", bounds=ids)
    for fname, table in (("image_class_labels.txt", labels), ("train_test_split.txt", splits)):
        check_ids(root / fname, table, image_ids)
    boxes = read_pairs(root / "bounding_boxes.txt", required=False, bounds=ids)
    if boxes:
        check_ids(root / "bounding_boxes.txt", boxes, image_ids)

    records: dict[int, CubRecord] = {}
    first: dict[str, tuple[int, str]] = {}  # path -> (line, class) where it was first listed
    coordinate = stored_range("bbox")[1]
    for image_id, (lineno, rel) in images.items():  # in line order: the first listing is kept
        if not rel:
            raise CubFormatError(f"{root / 'images.txt'}:{lineno}: no path for id {image_id}")
        lab_line, lab = labels[image_id]
        class_id = int_field(
            lab.split()[0] if lab else "", root / "image_class_labels.txt", lab_line, "class id"
        )
        if not 1 <= class_id <= len(class_names):
            raise CubFormatError(
                f"{root / 'image_class_labels.txt'}:{lab_line}: class id {class_id} "
                f"not in classes.txt (1..{len(class_names)})"
            )
        split_line, split = splits[image_id]
        if split not in ("0", "1"):
            raise CubFormatError(
                f"{root / 'train_test_split.txt'}:{split_line}: "
                f"is_train must be 0 or 1, got {quoted(split)}"
            )
        rel, utf8 = utf8_name(rel)
        rec = CubRecord(image_id, rel, class_id - 1, class_names[class_id - 1], split == "1")
        if not utf8:  # Parquet and JSON hold UTF-8 text only
            rec.problems.append(f"bad_filename: '{rel}' is not valid UTF-8; rename it")
        elif image_path(root, rel) is None:
            leaves = f"images.txt:{lineno} path {rel!r} leaves the images folder"
            rec.problems.append(refused_reason(root / "images", rel, leaves))
        repeat = _repeated(root, first, rec, lineno)
        if repeat:
            rec.problems.append(repeat)
        if image_id in boxes:
            box = floats(boxes[image_id][1].split(), 4, coordinate)
            if box is None or box[2] <= 0 or box[3] <= 0:
                rec.problems.append(
                    f"malformed bounding box (bounding_boxes.txt:{boxes[image_id][0]})"
                )
            else:
                rec.bbox = box
        records[image_id] = rec
    records = dict(sorted(records.items()))

    part_names = _read_parts(root, records)
    attribute_names = _read_attributes(root, records)
    return CubDataset(
        root,
        class_names,
        part_names,
        attribute_names,
        list(records.values()),
        certainty_names=read_names(root / "attributes" / "certainties.txt", required=False),
        class_attributes=_read_class_attributes(root, len(class_names)),
    )


def _repeated(root: Path, first: dict[str, tuple[int, str]], rec: CubRecord, lineno: int) -> str:
    """A ``duplicate`` problem when ``rec``'s path was listed before (worded as for
    ``labels.csv``: one file must be one dataset row), else ''. Two classes for it are an error."""
    rel = rec.rel_path
    key = posixpath.normpath(rel)
    if key not in first:
        first[key] = (lineno, rec.class_name)
        return ""
    line, seen = first[key]
    here = rec.class_name
    if seen != here:
        raise CubFormatError(
            f"{root / 'images.txt'}:{lineno}: {rel!r} is labelled {here!r} here and {seen!r} at "
            f"line {line} (image_class_labels.txt); give each photo one label"
        )
    return f"duplicate: images.txt:{lineno} lists {rel!r} again (line {line}); kept once"


def _read_class_attributes(root: Path, num_classes: int) -> list[list[float]]:
    path = root / "attributes" / "class_attribute_labels_continuous.txt"
    if not path.is_file():
        return []
    rows = []
    for lineno, fields in split_lines(path):
        vals = floats(fields, len(fields))
        if vals is None:
            raise CubFormatError(f"{path}:{lineno}: non-numeric value")
        rows.append(vals)
    if len(rows) != num_classes:
        raise CubFormatError(f"{path}: {len(rows)} rows for {num_classes} classes")
    return rows


def read_part_clicks(path: str | Path) -> dict[int, list[list[float]]]:
    """Per-image MTurk clicks (``part_id x y visible time``); rarely needed, so read on demand."""
    clicks_file = find_root(path) / "parts" / "part_click_locs.txt"
    clicks: dict[int, list[list[float]]] = defaultdict(list)
    if not clicks_file.is_file():
        return clicks
    image_ids = id_bounds("image_id")
    for lineno, fields in split_lines(clicks_file):
        vals = floats(fields, 5)
        if vals is None:
            raise CubFormatError(f"{clicks_file}:{lineno}: expected image part x y visible")
        image_id = int_field(fields[0], clicks_file, lineno, "image id", image_ids)
        clicks[image_id].append(vals[1:] + [float(v) for v in fields[5:6]])
    return clicks


def _read_parts(root: Path, records: dict[int, CubRecord]) -> list[str]:
    parts_file = root / "parts" / "parts.txt"
    part_names = read_names(parts_file, required=False)
    locs_file = root / "parts" / "part_locs.txt"
    if not part_names or not locs_file.is_file():
        return part_names
    table = part_locations(locs_file, set(records), len(part_names))
    if table is None:  # not plainly valid: the line reader words every problem
        table = _part_lines(locs_file, records, part_names)
    for image_id, rec in records.items():
        found = table.get(image_id, {})
        rec.parts = [found.get(p, [0.0, 0.0, 0.0]) for p in range(1, len(part_names) + 1)]
    return part_names


def _part_lines(
    locs_file: Path, records: dict[int, CubRecord], part_names: list[str]
) -> dict[int, dict[int, list[float]]]:
    table: dict[int, dict[int, list[float]]] = defaultdict(dict)
    coordinate = stored_range("parts")[1]
    image_ids = id_bounds("image_id")
    for lineno, fields in split_lines(locs_file):
        image_id = int_field(fields[0], locs_file, lineno, "image id", image_ids)
        if image_id not in records:
            raise CubFormatError(f"{locs_file}:{lineno}: image id {image_id} is not in images.txt")
        vals = floats(fields[1:], 4, coordinate)
        part_ok = vals is not None and vals[0].is_integer() and 1 <= vals[0] <= len(part_names)
        if not part_ok or vals[3] not in (0.0, 1.0):
            records[image_id].problems.append(f"malformed part line ({locs_file.name}:{lineno})")
            continue
        table[image_id][int(vals[0])] = [vals[1], vals[2], vals[3]]
    return table


def _read_attributes(root: Path, records: dict[int, CubRecord]) -> list[str]:
    """Attribute names sit beside CUB_200_2011/ in the archive; accept them inside too."""
    names_file = next(
        (
            p
            for p in (
                root.parent / "attributes.txt",
                root / "attributes" / "attributes.txt",
                root / "attributes.txt",
            )
            if p.is_file()
        ),
        None,
    )
    names = read_names(names_file) if names_file else []
    labels_file = root / "attributes" / "image_attribute_labels.txt"
    if not labels_file.is_file():
        return names
    lowest, highest = id_bounds("attributes")
    why = ""
    if names and len(names) < highest:  # an id beyond the named attributes names none
        highest, why = len(names), f"{names_file.name} names {len(names)} attributes"
    fast = present_attributes(labels_file, set(records))
    if fast is not None and all(lowest <= a <= highest for ids in fast.values() for a in ids):
        for image_id, rec in records.items():
            rec.attributes = fast.get(image_id, [])
        return names
    present: dict[int, list[int]] = defaultdict(list)
    for lineno, line in numbered_lines(labels_file):
        fields = line.split()
        if not fields:
            continue
        # Real CUB has lines with extra fields; id, attr, is_present are always first.
        if len(fields) < 3 or not (fields[0].isdecimal() and fields[1].isdecimal()):
            raise CubFormatError(f"{labels_file}:{lineno}: cannot read {quoted(line.strip())}")
        image_id = int(fields[0])
        if image_id not in records:
            raise CubFormatError(f"{labels_file}:{lineno}: image id {image_id} not in images.txt")
        if fields[2] == "1":
            bounds = (lowest, highest)
            attribute = int_field(fields[1], labels_file, lineno, "attribute id", bounds, why)
            present[image_id].append(attribute)
        elif fields[2] != "0":
            records[image_id].problems.append(
                f"malformed attribute line ({labels_file.name}:{lineno})"
            )
    for image_id, rec in records.items():
        rec.attributes = sorted(present.get(image_id, []))
    return names
