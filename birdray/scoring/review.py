"""The review set: the scored photos the model was unsure about, ready for a person to label.

``birdray score --review-below 0.5`` writes ``<output>/review/review.parquet``: one row per photo
whose calibrated top-1 confidence is below the threshold, least sure first, with a small JPEG
thumbnail, the top-k species and, for photos ``--explain-lowest`` explained, the overlay PNG (its
bytes and its file under ``explanations/``). The dashboard's Review page walks it and turns each
answer into feedback (``POST /v1/feedback``), so these photos come back as training rows.

It is written into the run's staging folder like every other result, so it commits (and, for a
bucket output, publishes) together with the predictions, and never outlives them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from birdray import storage
from birdray.images import decode_image
from birdray.runtime import init_ray
from birdray.scoring.output import EXPLANATIONS, REVIEW, read_rows
from birdray.scoring.sources import Source, read_many
from birdray.scoring.stages import TOP_K_TYPE

REVIEW_FILE = "review.parquet"
THUMBNAIL_SIDE = 160
CHUNK = 64  # photos per thumbnail task: small tasks spread over every CPU in the cluster
REVIEW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("image_id", pa.int64()),  # dataset input: the ingest's image id
        ("label", pa.int32()),
        ("species", pa.string()),
        ("confidence", pa.float64()),
        ("top_k", TOP_K_TYPE),
        ("model_version", pa.string()),
        ("thumbnail", pa.binary()),  # JPEG, longer side THUMBNAIL_SIDE (null if unreadable now)
        ("thumbnail_error", pa.string()),
        ("overlay", pa.string()),  # "explanations/<file>.png" when --explain-lowest covered it
        ("overlay_png", pa.binary()),
    ]
)
COLUMNS = ["path", "ok", "image_id", "label", "species", "confidence", "top_k", "model_version"]


def review_rows(pred_dir: Path, threshold: float) -> pa.Table:
    """Scored rows below ``threshold``, least sure first (a failed row has nothing to judge)."""
    rows = read_rows([pred_dir], COLUMNS)
    rows = rows.filter(pc.and_(rows["ok"], pc.less(rows["confidence"], threshold)))
    order = pc.sort_indices(rows, sort_keys=[("confidence", "ascending"), ("path", "ascending")])
    return rows.take(order).drop_columns(["ok"])


def _thumbnails(
    source: Source, paths: list[str], side: int, max_pixels: int
) -> list[tuple[bytes | None, str | None]]:
    """Ray task: (JPEG thumbnail, None) or (None, reason) per path, through the one decoder."""

    data = read_many(source, paths)
    out: list[tuple[bytes | None, str | None]] = []
    for path in paths:
        if path not in data:
            out.append((None, "unreadable: the file could not be read again"))
            continue
        try:
            image = decode_image(data[path], max_pixels).image.convert("RGB")
            image.thumbnail((side, side))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=80)
            out.append((buf.getvalue(), None))
        except Exception as exc:  # the file changed since scoring: its row stays, without a picture
            out.append((None, f"{type(exc).__name__}: {exc}"))
    return out


def _overlays(staging: Path) -> dict[str, str]:
    """path -> overlay file name, from this run's explanations index (if it ran)."""
    index = staging / EXPLANATIONS / "index.json"
    if not index.is_file():
        return {}
    items = json.loads(index.read_text()).get("items", [])
    return {item["path"]: item["overlay"] for item in items if item.get("overlay")}


def write_review(
    staging: Path,
    pred_dir: Path,
    source: Source,
    threshold: float,
    max_pixels: int,
    task_cpus: float = 1.0,
    address: str | None = None,
) -> dict[str, Any]:
    """Write ``staging/review/review.parquet``; returns the summary's ``review`` entry."""
    import ray

    rows = review_rows(pred_dir, threshold)
    report = {"threshold": threshold, "rows": len(rows), "thumbnails_failed": 0, "overlays": 0}
    dest = staging / REVIEW
    dest.mkdir(parents=True, exist_ok=True)
    overlays = _overlays(staging)
    writer = pq.ParquetWriter(dest / REVIEW_FILE, REVIEW_SCHEMA)
    try:
        if not len(rows):
            writer.write_table(REVIEW_SCHEMA.empty_table())
            return report
        init_ray(address)
        task = ray.remote(_thumbnails).options(num_cpus=task_cpus)
        paths = rows["path"].to_pylist()
        refs = [
            task.remote(source, paths[i : i + CHUNK], THUMBNAIL_SIDE, max_pixels)
            for i in range(0, len(paths), CHUNK)
        ]
        for start, ref in zip(range(0, len(paths), CHUNK), refs, strict=True):
            chunk = rows.slice(start, CHUNK)
            thumbs = ray.get(ref)  # in order: the file is least-confident first
            names = [overlays.get(p) for p in chunk["path"].to_pylist()]
            pngs = [(staging / EXPLANATIONS / n).read_bytes() if n else None for n in names]
            table = pa.table(
                {
                    **{name: chunk[name] for name in chunk.column_names},
                    "thumbnail": [t for t, _ in thumbs],
                    "thumbnail_error": [e for _, e in thumbs],
                    "overlay": [f"{EXPLANATIONS}/{n}" if n else None for n in names],
                    "overlay_png": pngs,
                }
            )
            writer.write_table(table.select(REVIEW_SCHEMA.names).cast(REVIEW_SCHEMA))
            report["thumbnails_failed"] += sum(1 for t, _ in thumbs if t is None)
            report["overlays"] += sum(1 for n in names if n)
    finally:
        writer.close()
    return report


def read_review(output: str) -> pa.Table:
    """A finished scoring output's review set (a folder or a bucket URI)."""

    data = storage.read_bytes(storage.join(output, REVIEW, REVIEW_FILE))
    return pq.read_table(pa.BufferReader(data))
