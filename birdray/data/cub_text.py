"""How CUB's metadata text files are read: one decoding, ids, numbers and names, line by line.

Every file is decoded the same way (``numbered_lines``): UTF-8, a BOM dropped, and bytes that are
not UTF-8 kept as surrogate escapes, so a reader can tell a name that is not UTF-8 (an image
path becomes a ``bad_filename`` row, a class name an error) from one that is, instead of reading
U+FFFD and carrying on. A number holding such bytes is simply not a number. Values shown in a
message go through ``quoted``, which escapes those bytes (``\\xe9``): no message carries a lone
surrogate that a UTF-8 writer would refuse.

CUB ids start at 1; an id below 1 or beyond what the dataset's column stores is an error naming
the file and line (``id_bounds``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from birdray.storage import utf8_name

ENCODING = "utf-8-sig"  # UTF-8; a BOM (as Notepad or Excel write it) is dropped, not an id


class CubFormatError(ValueError):
    """The folder is not a readable CUB layout; the message names the file and line."""


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line: the one way a CUB metadata file is decoded."""
    with open(path, encoding=ENCODING, errors="surrogateescape") as fh:
        yield from enumerate(fh, 1)


def split_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) for non-empty lines."""
    return [(n, line.split()) for n, line in numbered_lines(path) if line.strip()]


def quoted(value: str) -> str:
    """``value`` quoted for a message; bytes that are not UTF-8 shown as ``\\xe9``."""
    text, utf8 = utf8_name(value)
    return repr(text) if utf8 else f"'{text}'"


def stored_range(column: str) -> tuple[float, float]:
    """The values the dataset's ``column`` holds (its type in ``rows.ITEM_SCHEMA``)."""
    from birdray.data.rows import stored_range  # rows imports cub, cub this: import when used

    return stored_range(column)


def id_bounds(column: str) -> tuple[int, int]:
    """The ids a line may give for ``column``: CUB numbers from 1, up to what the column stores
    (an id of 0 or -3 was stored as if it were one)."""
    return 1, int(stored_range(column)[1])


def int_field(
    value: str,
    path: Path,
    lineno: int,
    what: str,
    bounds: tuple[int, int] | None = None,
    why: str = "",
) -> int:
    """``value`` as an int; outside ``bounds`` (``id_bounds``, or what ``why`` says) it is this
    line's error, not Arrow's about the whole table later."""
    try:
        number = int(value)
    except ValueError:
        raise CubFormatError(f"{path}:{lineno}: {what} {quoted(value)} is not an integer") from None
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        why = why or f"CUB ids start at 1; the dataset stores ids up to {bounds[1]}"
        raise CubFormatError(
            f"{path}:{lineno}: {what} {number} is outside {bounds[0]}..{bounds[1]} ({why})"
        )
    return number


def read_pairs(
    path: Path, required: bool = True, bounds: tuple[int, int] | None = None
) -> dict[int, tuple[int, str]]:
    """``id rest`` files: id -> (line number, rest of the line), in line order."""
    if not path.is_file():
        if required:
            raise CubFormatError(f"required file missing: {path}")
        return {}
    out: dict[int, tuple[int, str]] = {}
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        head, _, rest = line.strip().partition(" ")
        key = int_field(head, path, lineno, "id", bounds)
        if key in out:
            raise CubFormatError(f"{path}:{lineno}: id {key} appears twice")
        out[key] = (lineno, rest.strip())
    return out


def read_names(path: Path, required: bool = True) -> list[str]:
    """``id name`` files with consecutive 1-based ids (classes, parts, attributes, certainties).
    A name that is not UTF-8 is an error: these name the whole dataset's classes and columns,
    and U+FFFD in their place would pass unnoticed into every model and report."""
    pairs = read_pairs(path, required)
    names = []
    for expected, key in enumerate(sorted(pairs), 1):
        lineno, name = pairs[key]
        if key != expected:
            raise CubFormatError(f"{path}:{lineno}: ids must run 1..N, found {key}")
        if not name:
            raise CubFormatError(f"{path}:{lineno}: id {key} has no name")
        shown, utf8 = utf8_name(name)
        if not utf8:
            raise CubFormatError(
                f"{path}:{lineno}: name '{shown}' is not UTF-8 (as in a Latin-1 or Windows-1252 "
                f"file); save {path.name} as UTF-8"
            )
        names.append(name)
    return names


def check_ids(path: Path, table: dict[int, tuple[int, str]], image_ids: set[int]) -> None:
    """``table`` (from ``read_pairs``) has one line for each image of images.txt, no other."""
    extra = sorted(set(table) - image_ids)
    if extra:
        raise CubFormatError(
            f"{path}:{table[extra[0]][0]}: image id {extra[0]} is not in images.txt"
        )
    missing = sorted(image_ids - set(table))
    if missing:
        raise CubFormatError(f"{path}: no line for image id {missing[0]} listed in images.txt")


def floats(fields: list[str], count: int, bound: float = math.inf) -> list[float] | None:
    """The first ``count`` fields as numbers, or None: too few, not numbers, or not finite
    within ``bound`` (``float`` reads 'nan' and 'inf', which no box or click can be)."""
    if len(fields) < count:
        return None
    try:
        values = [float(v) for v in fields[:count]]
    except ValueError:
        return None
    return values if all(math.isfinite(v) and abs(v) <= bound for v in values) else None
