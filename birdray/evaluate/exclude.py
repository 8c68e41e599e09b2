"""``evaluate --exclude-ids FILE``: the image ids to leave out of the report, read strictly.

A file of ids (e.g. the CUB test images that also appear in ImageNet) is written by hand or by
another tool: ids one per line, or separated by commas or spaces, ``#`` starting a comment. The
reader used to keep only whitespace-separated digit tokens, so ``12,34,56`` excluded nothing and
said nothing: any token that is not an integer id is now an error naming the token and its line.
"""

from __future__ import annotations

import re
from pathlib import Path

from birdray.config import UsageError

FLAG = "--exclude-ids"
FORMAT = "image ids (integers) separated by commas, spaces or newlines; '#' starts a comment"
_SEPARATORS = re.compile(r"[\s,]+")
_ID = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes '²'


def read_exclude_ids(path: str) -> list[int]:
    """The ids in ``path`` in file order (duplicates kept out); ``UsageError`` on a bad token."""
    if not path:
        return []
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8-sig")  # Excel writes a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{FLAG}: cannot read {path} ({exc}); expected {FORMAT}") from None
    ids: dict[int, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        for token in _SEPARATORS.split(line.split("#", 1)[0]):
            if not token:
                continue
            if not _ID.fullmatch(token):
                raise UsageError(
                    f"{FLAG}: {path} line {lineno}: {token!r} is not an image id; expected {FORMAT}"
                )
            ids.setdefault(int(token), None)
    return list(ids)


def nothing_left(path: str, split: str, excluded: int, total: int) -> str:
    """Why an exclusion list that leaves no image to report on is refused (after the flag)."""
    return (
        f"{path} excludes all {total} images of the {split!r} split ({excluded} ids "
        "given): nothing left to evaluate"
    )
