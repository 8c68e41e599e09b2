"""Photos listed as ``path,label`` pairs: the CSV layout, and the dataset any such list becomes.

A CSV is ``path,label`` rows (a header ``path,label`` is optional), paths relative to the CSV's
folder and confined to it as CUB's ``images.txt`` paths are to ``images/``; ``folders`` lists
species folders as the same pairs. ``labelled_dataset`` turns either into a ``CubDataset``: class
names are the labels, sorted; label = index.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterator
from pathlib import Path

from birdray.data.confined import confined_path, refused_reason
from birdray.data.cub import CubDataset, CubRecord
from birdray.data.cub_text import ENCODING, CubFormatError
from birdray.images import IMAGE_SUFFIXES

CSV_COLUMNS = ("path", "label")


def read_csv(path: Path) -> CubDataset:
    """``path,label`` rows; a path leaving the CSV's folder is quarantined as ``unsafe_path``.

    UTF-8 (a BOM is fine); a ``path,label`` header is optional, another header is refused. A
    Windows ``a\\b.jpg`` path means ``a/b.jpg``. A path listed twice is kept once (the repeat
    is quarantined as ``duplicate``), or refused when the two rows give it different labels."""
    entries: list[tuple[str, str]] = []
    problems: dict[int, str] = {}
    first: dict[str, tuple[int, str]] = {}  # path -> (line, label) of its first row
    for lineno, row in _csv_rows(path):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise CubFormatError(f"{path}:{lineno}: expected path,label, got {row!r}")
        rel, label = row[0].strip(), row[1].strip()
        if not entries and not first and _header(path, lineno, rel, label):
            continue
        rel = _slashes(rel)
        key = posixpath.normpath(rel)
        if key in first:
            line, seen = first[key]
            if seen != label:
                raise CubFormatError(
                    f"{path}:{lineno}: {rel!r} is labelled {label!r} here and {seen!r} at line "
                    f"{line}; give each photo one label"
                )
            problems[len(entries)] = (
                f"duplicate: {path.name}:{lineno} lists {rel!r} again (line {line}); kept once"
            )
        else:
            first[key] = (lineno, label)
        if confined_path(path.parent, rel) is None:
            leaves = f"{path.name}:{lineno} path {rel!r} leaves {path.parent}"
            problems[len(entries)] = refused_reason(path.parent, rel, leaves)
        entries.append((rel, label))
    if not entries:
        raise CubFormatError(f"{path}: lists no images")
    return labelled_dataset(path.parent, entries, problems)


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row. Strict: a quote left open or a stray quote, or a field
    over csv's size limit, is one error naming the line; so is a quoted field running over lines
    (a path or label is one line: non-strict csv let one open quote swallow the rest silently)."""
    rows = csv.reader(_utf8_text(path), strict=True)
    start = 1
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CubFormatError(
                f"{path}:{start}: not a CSV row birdray reads ({exc}); a quote left open?"
            ) from None
        if rows.line_num > start:
            raise CubFormatError(
                f"{path}:{start}: a quoted field runs on to line {rows.line_num}; a path or "
                "label is one line (a quote left open?)"
            )
        yield start, row
        start = rows.line_num + 1


def _utf8_text(path: Path) -> io.StringIO:
    """The CSV as text; bytes that are not UTF-8 are one error naming the line (U+FFFD class
    names from a Latin-1 file passed silently). A BOM is dropped."""
    data = path.read_bytes()
    try:
        return io.StringIO(data.decode(ENCODING), newline="")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CubFormatError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}, as in a Latin-1 or "
            "Windows-1252 file); save the CSV as UTF-8"
        ) from None


def _header(path: Path, lineno: int, rel: str, label: str) -> bool:
    """Whether the first row is the ``path,label`` header; another header is refused (it would
    become a class of one missing photo)."""
    if (rel.lower(), label.lower()) == CSV_COLUMNS:
        return True
    inside = confined_path(path.parent, _slashes(rel))  # never stat outside the CSV's folder
    if Path(rel).suffix.lower() in IMAGE_SUFFIXES or _exists(inside):
        return False
    raise CubFormatError(
        f"{path}:{lineno}: {rel},{label} is not a header birdray reads nor a photo; expected "
        f"columns {','.join(CSV_COLUMNS)} (the header is optional)"
    )


def _exists(path: Path | None) -> bool:
    """Whether ``path`` is there; a name the system refuses (too long) is not a crash."""
    try:
        return path is not None and path.exists()
    except OSError:
        return False


def _slashes(rel: str) -> str:
    """A Windows relative path (``Cardinal\\1.jpg``) with ``/``: a name holding a backslash is
    refused by ``confined_path`` anyway, and absolute or ``..`` paths stay refused after this."""
    return rel.replace("\\", "/")


def labelled_dataset(
    root: Path, entries: list[tuple[str, str]], problems: dict[int, str]
) -> CubDataset:
    """Records of (path, label) ``entries`` with ``problems`` by entry index; ids follow the
    entries. Labels differing only in case are refused: one species, one class."""
    class_names = sorted({label for _, label in entries})
    folded: dict[str, str] = {}
    for name in class_names:
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            raise CubFormatError(
                f"{root}: classes {other!r} and {name!r} differ only in case; one species "
                "should have one name (rename or merge them)"
            )
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
