"""What one image becomes: the input row the driver builds, the shard row a Ray Data task writes.

The driver reads each image's bytes (the source sits where it runs) into object-store blocks;
tasks on any node validate and decode them and turn each into a row of ``SCHEMA``, or into a
quarantine row whose ``error`` says why.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from birdray import storage
from birdray.data.cub import CubRecord
from birdray.images import ImageError, decode_image, reencode_max_side

QUARANTINE = "quarantine"

PART_TYPE = pa.struct([("x", pa.float32()), ("y", pa.float32()), ("visible", pa.bool_())])
SCHEMA = pa.schema(
    [
        ("image_id", pa.int32()),
        ("path", pa.string()),
        ("image", pa.binary()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("split", pa.string()),
        ("bbox", pa.list_(pa.float32())),
        ("parts", pa.list_(PART_TYPE)),
        ("attributes", pa.list_(pa.int16())),
        ("content_hash", pa.string()),
        ("source_mode", pa.string()),
        ("error", pa.string()),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        ("image_id", pa.int32()),
        ("path", pa.string()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("split", pa.string()),
        ("bbox", pa.list_(pa.float32())),
        ("parts", pa.list_(pa.list_(pa.float32()))),
        ("attributes", pa.list_(pa.int16())),
        ("problems", pa.string()),
        ("data", pa.binary()),
    ]
)


def stored_range(column: str) -> tuple[float, float]:
    """The least and greatest value ``ITEM_SCHEMA``'s numeric ``column`` (or its lists' items)
    holds, so readers can word a line whose value does not fit: a larger id fails the whole
    table (``ArrowInvalid``), a larger coordinate becomes inf in float32."""
    kind = ITEM_SCHEMA.field(column).type
    while pa.types.is_list(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind):
        ints = np.iinfo(kind.to_pandas_dtype())
        return int(ints.min), int(ints.max)
    floats = np.finfo(kind.to_pandas_dtype())
    return float(floats.min), float(floats.max)


def item_row(rec: CubRecord, split: str) -> dict[str, Any]:
    return {
        "image_id": rec.image_id,
        "path": rec.rel_path,
        "label": rec.label,
        "class_name": rec.class_name,
        "split": split,
        "bbox": rec.bbox,
        "parts": rec.parts,
        "attributes": rec.attributes,
        "problems": "; ".join(rec.problems),
        "data": None,
    }


def _read_bytes(item: dict[str, Any], images: Path, max_bytes: int = 0) -> dict[str, Any]:
    if item["problems"] or item["data"] is not None:  # feedback rows arrive with their bytes
        return item
    try:
        return {**item, "data": storage.read_local_file(images / item["path"], max_bytes)}
    except FileNotFoundError:
        return {**item, "problems": "missing: the listed file does not exist"}
    except storage.FileTooBig as exc:
        return {**item, "problems": f"file_too_big: {exc}"}
    except OSError as exc:
        return {**item, "problems": f"unreadable: {exc}"}


def put_blocks(
    items: list[dict[str, Any]],
    images: Path,
    rows_per_block: int,
    hashes: dict[str, str] | None = None,
    max_bytes: int = 0,
) -> list:
    """The driver reads the bytes (the source sits where it runs) one block at a time into the
    object store, so its own memory holds one block, not the dataset. ``hashes``, if given, is
    filled with each read image's SHA-256 -> split (feedback must not repeat a dataset photo).
    Files over ``max_bytes`` become quarantine rows without being read."""
    import ray

    refs = []
    with tqdm(
        total=len(items), desc="reading images", unit="img", disable=len(items) < 1000
    ) as bar:
        for start in range(0, len(items), rows_per_block):
            block = items[start : start + rows_per_block]
            chunk = [_read_bytes(item, images, max_bytes) for item in block]
            if hashes is not None:
                hashes.update(
                    (hashlib.sha256(i["data"]).hexdigest(), i["split"])
                    for i in chunk
                    if i["data"] is not None
                )
            refs.append(ray.put(pa.Table.from_pylist(chunk, schema=ITEM_SCHEMA)))
            bar.update(len(chunk))
    return refs


def load_images(batch: dict[str, np.ndarray], max_side: int, max_pixels: int) -> pa.Table:
    """Ray Data task: validate + decode each image; bad ones become rows with an ``error``."""
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for i in range(len(batch["image_id"])):
        item = {k: batch[k][i] for k in batch}
        error = item["problems"] or None
        data = None if item["data"] is None else bytes(item["data"])
        if error:
            row = _row(item, data, None, max_side, error)
        else:
            try:
                row = _row(item, data, _validated(data, max_side, max_pixels), max_side, None)
            except ImageError as exc:
                row = _row(item, data, None, max_side, str(exc))
            except Exception as exc:  # re-encoding a decoded image failed: still this file's row
                row = _row(item, data, None, max_side, f"corrupt: {type(exc).__name__}: {exc}")
        for name in SCHEMA.names:
            rows[name].append(row[name])
    return pa.table(rows, schema=SCHEMA)


def _validated(data: bytes, max_side: int, max_pixels: int):
    """The file's decode: at 1/8 scale when its original bytes will be stored as they are.

    Draft-mode JPEG decoding judges a file exactly as a full decode does (it reads every byte;
    ``tests/test_images_fuzz.py`` checks the two agree) at a quarter of the cost. Files that
    will be re-encoded from their pixels (other modes or formats, shrunk to ``max_side``) are
    decoded again at full size: that is what gets stored.
    """
    quick = decode_image(data, max_pixels, min_side=1)
    if _keeps_original(quick, max_side):
        return quick
    return decode_image(data, max_pixels, whole=False)  # checked whole by the first decode


def _keeps_original(decoded, max_side: int) -> bool:
    small = max_side <= 0 or max(decoded.width, decoded.height) <= max_side
    return small and _plain_format(decoded)


def _plain_format(decoded) -> bool:
    """Formats and modes every consumer reads as they are; others are stored as RGB PNG."""
    return decoded.source_mode in ("RGB", "L") and decoded.format in ("JPEG", "PNG")


def _row(item: dict, data: bytes | None, decoded, max_side: int, error: str | None) -> dict:
    bbox = None if item["bbox"] is None else [float(v) for v in item["bbox"]]
    parts = [[float(v) for v in p] for p in (item["parts"] if item["parts"] is not None else [])]
    row = {
        "image_id": int(item["image_id"]),
        "path": str(item["path"]),
        "label": int(item["label"]),
        "class_name": str(item["class_name"]),
        "attributes": [int(a) for a in item["attributes"]],
        "image": None,
        "format": None,
        "width": None,
        "height": None,
        "source_mode": None,
        "content_hash": None,
        "error": error,
        "split": QUARANTINE if error else str(item["split"]),
        "bbox": bbox,
        "parts": [{"x": p[0], "y": p[1], "visible": bool(p[2])} for p in parts],
    }
    if error:
        return row
    fmt, stored = decoded.format, data
    if not _plain_format(decoded):
        stored, fmt = _encode(decoded.image, "PNG"), "PNG"  # one plain RGB format downstream
    shrunk = reencode_max_side(decoded, max_side)
    scale = 1.0
    if shrunk is not None:
        scale, stored, fmt = max_side / max(decoded.width, decoded.height), shrunk, "JPEG"
        row["bbox"] = None if bbox is None else [v * scale for v in bbox]
        row["parts"] = [
            {"x": p[0] * scale, "y": p[1] * scale, "visible": bool(p[2])} for p in parts
        ]
    row.update(
        image=stored,
        format=fmt,
        source_mode=decoded.source_mode,
        width=max(1, round(decoded.width * scale)),
        height=max(1, round(decoded.height * scale)),
        content_hash=hashlib.sha256(data).hexdigest(),
    )
    return row


def _encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()
