"""Fast readers for CUB's two big per-image files: 3.7 M attribute lines and 177 k part lines.

The line-by-line readers in ``cub.py`` define what is valid and word every error and problem
(with its line number). These read the same files with pyarrow's CSV parser and vectorised
checks, and give up (return None) as soon as any line is not plainly valid, so the careful
reader takes over: the same result for every file, in a third of the time for a clean one.
Only values both readers parse identically pass the checks (plain decimal digits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

_INT = r"^[0-9]{1,18}$"  # fits int64: longer ids are the careful reader's to word
_DECIMAL = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$"


def _columns(path: Path, count: int) -> tuple[pa.Table, list[str]] | None:
    """The first ``count`` space-separated fields as strings, and the lines of another width."""
    odd: list[str] = []

    def keep_aside(row) -> str:
        odd.append(row.text)
        return "skip"

    names = [f"f{i}" for i in range(count)]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(autogenerate_column_names=True),
            parse_options=pacsv.ParseOptions(
                delimiter=" ", quote_char=False, invalid_row_handler=keep_aside
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=names, column_types=dict.fromkeys(names, pa.string())
            ),
        )
    except (pa.ArrowException, KeyError, ValueError):  # invalid UTF-8, too few columns, ...
        return None
    return table, odd


def _all_match(table: pa.Table, names: list[str], pattern: str) -> bool:
    return all(pc.all(pc.match_substring_regex(table[n], pattern)).as_py() for n in names)


def _plain_attribute_line(fields: list[str]) -> bool:
    plain_int = lambda v: v.isascii() and v.isdigit() and len(v) <= 18  # noqa: E731
    return (
        len(fields) >= 3
        and plain_int(fields[0])
        and plain_int(fields[1])
        and fields[2] in ("0", "1")
    )


def present_attributes(path: Path, image_ids: set[int]) -> dict[int, list[int]] | None:
    try:
        return _present_attributes(path, image_ids)
    except (pa.ArrowException, ValueError, OverflowError):  # e.g. an id beyond int64
        return None


def part_locations(
    path: Path, image_ids: set[int], num_parts: int
) -> dict[int, dict[int, list[float]]] | None:
    """image id -> {part id: [x, y, visible]} (a later line wins), or None: read it line by line."""
    try:
        return _part_locations(path, image_ids, num_parts)
    except (pa.ArrowException, ValueError, OverflowError):
        return None


def _present_attributes(path: Path, image_ids: set[int]) -> dict[int, list[int]] | None:
    """image id -> sorted present attribute ids (repeats kept), or None: read it line by line.

    Lines with extra fields (real CUB has some) are judged on their first three, as the
    line-by-line reader does.
    """
    read = _columns(path, 3)
    if read is None:
        return None
    table, odd = read
    if not _all_match(table, ["f0", "f1"], _INT):
        return None
    extra = [fields for fields in (text.split() for text in odd) if fields]
    if not all(_plain_attribute_line(fields) for fields in extra):
        return None  # the few lines of another width, judged one by one
    if not pc.all(pc.is_in(table["f2"], value_set=pa.array(["0", "1"]))).as_py():
        return None
    known = np.fromiter(image_ids, np.int64, len(image_ids))
    listed = np.r_[
        np.asarray(pc.cast(pc.unique(table["f0"]), pa.int64())), [int(f[0]) for f in extra]
    ]
    if not np.isin(listed, known).all():
        return None
    present = pc.equal(table["f2"], "1")
    ids = np.r_[
        np.asarray(pc.cast(pc.filter(table["f0"], present), pa.int64())),
        [int(f[0]) for f in extra if f[2] == "1"],
    ].astype(np.int64)
    attrs = np.r_[
        np.asarray(pc.cast(pc.filter(table["f1"], present), pa.int64())),
        [int(f[1]) for f in extra if f[2] == "1"],
    ].astype(np.int64)
    order = np.lexsort((attrs, ids))
    ids, attrs = ids[order], attrs[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], int)
    groups = np.split(attrs, starts[1:])
    return {int(ids[s]): g.tolist() for s, g in zip(starts, groups, strict=True)}


def _part_locations(
    path: Path, image_ids: set[int], num_parts: int
) -> dict[int, dict[int, list[float]]] | None:
    read = _columns(path, 5)
    if read is None:
        return None
    table, odd = read
    if odd or not _all_match(table, ["f0"], _INT):
        return None
    if not _all_match(table, ["f1", "f2", "f3", "f4"], _DECIMAL):
        return None
    ids = np.asarray(pc.cast(table["f0"], pa.int64()))
    values = np.stack([np.asarray(pc.cast(table[f"f{i}"], pa.float64())) for i in range(1, 5)])
    parts = np.trunc(values[0])
    visible = values[3]
    if not np.isin(ids, np.fromiter(image_ids, np.int64, len(image_ids))).all():
        return None
    if ((parts != values[0]) | (parts < 1) | (parts > num_parts)).any():
        return None  # '1.7' is no part: the careful reader words it
    if (~np.isin(visible, (0.0, 1.0))).any():
        return None
    out: dict[int, dict[int, list[float]]] = {}
    for image_id, part, x, y, vis in zip(
        ids.tolist(),
        parts.astype(np.int64).tolist(),
        values[1].tolist(),
        values[2].tolist(),
        visible.tolist(),
        strict=True,
    ):
        out.setdefault(image_id, {})[part] = [x, y, vis]
    return out
