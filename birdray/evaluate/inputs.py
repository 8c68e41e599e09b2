"""The splits ``birdray evaluate`` reads, opened and checked before Ray starts.

Scoring needs only ``image_id``, ``path`` and ``image`` (``scoring.sources`` checks every shard's
footer for those), but evaluation also compares predictions with ``label``. A split without it
(an unlabelled set, another tool's Parquet) used to pass every check and fail after scoring, in
pyarrow or Ray, with a traceback naming no split. The pre-flight (``checks.data_jobs``) and the
job both open the splits here, through scoring's one reading of "the shards of a split".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow.dataset imports pandas, ~0.3 s: not at the CLI's start-up
    import pyarrow as pa

    from birdray.scoring.sources import Source


def label_columns() -> dict[str, Callable[[pa.DataType], bool]]:
    """What evaluation reads from every shard beyond scoring's columns, and of what type."""
    import pyarrow as pa

    return {"label": pa.types.is_integer}


def splits_read(split: str, calibrate: bool, have: Iterable[str]) -> list[str]:
    """The report split, and val when a temperature is fitted on it (scored in the same pool)."""
    fit = calibrate and "val" in have and split != "val"
    return [split] + (["val"] if fit else [])


def open_splits(dataset: str, splits: list[str]) -> dict[str, Source]:
    """Each split's source, its shards' footers read once for scoring's columns and for labels;
    a split without labels is a ``SourceError`` naming it, why it is read, and its first such
    shard."""
    from birdray.scoring.sources import LacksColumns, Needs, SourceError, open_source

    needs = Needs(label_columns(), " that evaluation needs")
    fit = " (read to fit the temperature; --no-calibrate skips it)"
    opened, unlabelled = {}, []
    for n, split in enumerate(splits):  # every split opened first: damage in any is said first
        try:
            opened[split] = open_source(dataset, split, needs)
        except LacksColumns as exc:
            unlabelled.append((split, fit if n and split == "val" else "", exc))
    if unlabelled:
        split, why, exc = unlabelled[0]
        problem = exc.problem + (
            ", expected integer class labels" if "wrong type" in exc.problem else ""
        )
        more = f" ({exc.more} more shards too)" if exc.more else ""
        raise SourceError(
            f"the {split!r} split of {dataset}{why} cannot be evaluated: shard "
            f"{exc.shard} {problem}{more}; evaluate a labelled dataset "
            "(birdray ingest of a labelled source), or score this one with birdray score"
        )
    return opened
