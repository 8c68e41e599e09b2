"""The splits ``birdray evaluate`` reads, opened and checked before Ray starts.

Scoring needs only ``image_id``, ``path`` and ``image`` (``scoring.sources`` checks every shard's
footer for those), but evaluation also compares predictions with ``label``. A split without it
(an unlabelled set, another tool's Parquet) used to pass every check and fail after scoring, in
pyarrow or Ray, with a traceback naming no split. The pre-flight (``checks.data_jobs``) and the
job both open the splits here, through scoring's one reading of "the shards of a split".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow.dataset imports pandas, ~0.3 s: not at the CLI's start-up
    import pyarrow as pa
    import pyarrow.dataset as pads

    from birdray.scoring.sources import Source


def label_columns() -> dict[str, Callable[[pa.DataType], bool]]:
    """What evaluation reads from every shard beyond scoring's columns, and of what type."""
    import pyarrow as pa

    return {"label": pa.types.is_integer}


def splits_read(split: str, calibrate: bool, have: Iterable[str]) -> list[str]:
    """The report split, and val when a temperature is fitted on it (scored in the same pool)."""
    fit = calibrate and "val" in have and split != "val"
    return [split] + (["val"] if fit else [])


def _problem(fragment: pads.ParquetFileFragment) -> str:
    """What evaluation cannot use in one shard's schema ("" if nothing); read from its footer."""
    from birdray.scoring.sources import columns_problem

    problem = columns_problem(fragment.physical_schema, label_columns(), " that evaluation needs")
    return problem + (", expected integer class labels" if "wrong type" in problem else "")


def check_labelled(source: Source, split: str, why: str = "") -> Source:
    """``source`` once every shard of ``split`` has the label columns; a ``SourceError`` naming
    the split (and ``why`` it is read), the first such shard and the column otherwise."""
    from birdray.scoring.sources import SourceError, split_dataset

    fragments = list(split_dataset(source).get_fragments())
    with ThreadPoolExecutor(8) as pool:  # footers from a bucket: a request each
        problems = list(pool.map(_problem, fragments))
    bad = [(f, p) for f, p in zip(fragments, problems, strict=True) if p]
    if bad:
        fragment, problem = bad[0]
        more = f" ({len(bad) - 1} more shards too)" if len(bad) > 1 else ""
        raise SourceError(
            f"the {split!r} split of {source.uri}{why} cannot be evaluated: shard "
            f"{source.prefix}{fragment.path} {problem}{more}; evaluate a labelled dataset "
            "(birdray ingest of a labelled source), or score this one with birdray score"
        )
    return source


def open_splits(dataset: str, splits: list[str]) -> dict[str, Source]:
    """Each split's source, its shards' footers checked for scoring's columns and for labels."""
    from birdray.scoring.sources import open_source

    opened = {split: open_source(dataset, split) for split in splits}
    fit = " (read to fit the temperature; --no-calibrate skips it)"
    return {
        split: check_labelled(source, split, fit if n and split == "val" else "")
        for n, (split, source) in enumerate(opened.items())
    }
