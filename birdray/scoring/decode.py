"""Scoring's CPU stage: read, decode and crop each listed file into one row, never raising.

A file that cannot be read, is too big, or is not a usable image gets its error here and passes
through the model's actor untouched, so one broken photo never stops a million-file job. The
crops are uint8 (4x smaller than float tensors, timm's prefetcher mode), made in Pillow
(``birdray.model.crop``, byte for byte timm's): decode workers never import torch and timm, ~3 s
of CPU saved in each new worker process. A bucket that stops answering is the job's error
(``UNREACHABLE``), found at the first failed read, not every file's.
"""

from __future__ import annotations

import errno
import functools
import json
from typing import Any

import numpy as np
import pyarrow as pa

from birdray.images import ImageError
from birdray.model.crop import decode_for_model, uint8_eval_transform
from birdray.scoring.sources import Source, read_file
from birdray.scoring.walk import GONE
from birdray.storage import FileTooBig

UNREACHABLE = "unreachable"  # the error of a row whose bucket could not be reached at all: the
# driver ends the job on it (a bucket that is gone is the job's error, not every file's)
MISSING = -1  # integer sentinel between the stages (numpy batches have no nullable ints)


@functools.lru_cache(maxsize=4)
def _transform(data_config_json: str):
    return uint8_eval_transform(json.loads(data_config_json))


def _load_one(
    source: Source,
    path: str,
    size: int,
    data: bytes | None,
    max_bytes: int,
    max_pixels: int,
    transform,
    data_config: dict[str, Any],
    listing_error: str | None = None,
) -> tuple[np.ndarray | None, int, int, str]:
    """(uint8 CHW crop, width, height, "") or (None, width, height, "code: reason"); a refused
    image's width and height are -1 unless its header was read (too large, too elongated)."""
    if listing_error:  # found while listing (not a regular file, a name that is not UTF-8...)
        return None, MISSING, MISSING, listing_error
    try:
        if data is None and source.kind == "dataset":
            raise ImageError("missing", "the dataset row holds no image bytes")
        if data is None:
            if max_bytes and size > max_bytes:
                raise ImageError("file_too_big", f"{size:,} bytes (limit {max_bytes:,})")
            data = read_file(source, path, max_bytes)
        if max_bytes and len(data) > max_bytes:
            raise ImageError("file_too_big", f"{len(data):,} bytes (limit {max_bytes:,})")
        decoded = decode_for_model(data, data_config, max_pixels)
        return transform(decoded.image), decoded.width, decoded.height, ""
    except ImageError as exc:
        width, height = exc.size or (MISSING, MISSING)
        return None, width, height, str(exc)
    except FileTooBig as exc:
        return None, MISSING, MISSING, f"file_too_big: {exc}"
    except OSError as exc:
        if source.prefix and not bucket_reachable(source):
            return None, MISSING, MISSING, f"{UNREACHABLE}: cannot reach {source.uri}: {exc}"
        if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
            return None, MISSING, MISSING, GONE  # deleted since the listing: as if gone then
        return None, MISSING, MISSING, f"unreadable: {exc}"
    except Exception as exc:  # any other failure is still this file's row, never the job's end
        return None, MISSING, MISSING, f"preprocess_failed: {type(exc).__name__}: {exc}"


def bucket_reachable(source: Source) -> bool:
    """Whether the input's bucket answers at all (one object failing is that file's row)."""
    fs, root = source.filesystem()
    try:
        fs.get_file_info(root)
    except OSError:
        return False
    return True


def _ints(batch: pa.Table, name: str) -> np.ndarray:
    """A nullable integer column as int64 with ``MISSING`` for nulls (absent: all missing)."""
    if name not in batch.column_names:
        return np.full(len(batch), MISSING, dtype=np.int64)
    return np.array([MISSING if v is None else v for v in batch[name].to_pylist()], np.int64)


def prepare_batch(
    batch: pa.Table,
    source: Source,
    data_config_json: str,
    max_bytes: int,
    max_pixels: int,
) -> dict[str, np.ndarray]:
    """CPU task: read + decode + eval-transform each file; failures become error strings."""
    transform = _transform(data_config_json)
    data_config = json.loads(data_config_json)
    _, height, width = data_config["input_size"]
    paths = batch["path"].to_pylist()
    images = batch["image"].to_pylist() if "image" in batch.column_names else [None] * len(paths)
    sizes = _ints(batch, "file_size")
    listed = batch["error"].to_pylist() if "error" in batch.column_names else [None] * len(paths)
    pixels = np.zeros((len(paths), 3, height, width), dtype=np.uint8)
    widths, heights, errors = [], [], []
    gone = ""  # the bucket is gone: the rest are not tried (each read waits out S3's retries)
    for i, (path, size, data, listing_error) in enumerate(
        zip(paths, sizes, images, listed, strict=True)
    ):
        if gone:
            arr, w, h, error = None, MISSING, MISSING, gone
        else:
            arr, w, h, error = _load_one(
                source, path, size, data, max_bytes, max_pixels, transform, data_config,
                listing_error,
            )  # fmt: skip
            gone = error if error.startswith(UNREACHABLE + ":") else ""
        if arr is not None:
            pixels[i] = arr
        widths.append(w)
        heights.append(h)
        errors.append(error)

    return {
        "path": np.array(paths, dtype=object),
        "error": np.array(errors, dtype=object),
        "width": np.array(widths, dtype=np.int32),
        "height": np.array(heights, dtype=np.int32),
        "image_id": _ints(batch, "image_id"),
        "file_size": sizes,
        "mtime_ns": _ints(batch, "mtime_ns"),
        "pixels": pixels,
    }
