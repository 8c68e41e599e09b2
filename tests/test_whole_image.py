"""Pixel data that stops before the picture does: refused as ``corrupt`` by the one decoder,
however the file was closed; whole files of every kind still pass."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from birdray.images import ImageError, decode_image
from birdray.model.crop import decode_for_model

CONFIG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic"}


def _photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x // 3) % 256, (y // 2) % 256, ((x + y) // 4) % 256], -1)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with_rows(width: int, height: int, share: float, interlace: int = 0) -> bytes:
    """An RGB PNG whose complete zlib stream holds only ``share`` of the bytes its header's rows
    need (zero bytes: filter 0, black): a stream that ends cleanly, too early."""
    from birdray.whole_image import _png_raw_bytes

    raw = bytes(int(_png_raw_bytes(width, height, 24, interlace == 1) * share))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_short_is_corrupt_with_or_without_its_end_marker(kept, progressive):
    """Without EOI Pillow says truncated; with EOI appended it filled the rest with gray."""
    whole = _saved(_photo(), "JPEG", quality=90, progressive=progressive)
    cut = whole[: int(len(whole) * kept)]
    for data in (cut, cut + b"\xff\xd9"):
        for decode in (decode_image, lambda d: decode_for_model(d, CONFIG)):
            with pytest.raises(ImageError) as raised:
                decode(data)
            assert raised.value.reason == "corrupt"


def test_a_jpeg_whose_header_claims_more_than_its_data_holds_is_corrupt():
    """A 16x16 JPEG's frame header patched to 1600x1600: accepted at that size before."""
    data = bytearray(_saved(_photo(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 1600, 1600)
    with pytest.raises(ImageError, match="corrupt: the JPEG data ends"):
        decode_image(bytes(data))


@pytest.mark.parametrize("interlace", [0, 1])
def test_a_png_whose_pixel_data_ends_early_is_corrupt(interlace):
    with pytest.raises(ImageError) as raised:
        decode_image(_png_with_rows(40, 30, 0.5, interlace))
    assert raised.value.reason == "corrupt"  # interlaced: Pillow says truncated itself
    assert interlace or "pixel data ends" in raised.value.detail  # the case it accepted
    assert decode_image(_png_with_rows(40, 30, 1.0, interlace)).image.size == (40, 30)


def test_adam7_row_bytes_counted_by_hand():
    """A 3x5 RGB interlaced PNG: passes of 1x1, 0, 1x1, 1x2, 2x1, 1x3, 3x2 pixels, each row a
    filter byte more: 4 + 0 + 4 + 8 + 7 + 12 + 20 bytes (Pillow cannot write interlaced PNGs,
    so whole ones are made here)."""
    from birdray.whole_image import _png_raw_bytes

    assert _png_raw_bytes(3, 5, 24, interlaced=True) == 55
    assert _png_raw_bytes(3, 5, 24, interlaced=False) == 5 * (1 + 9)
    assert _png_raw_bytes(1, 1, 1, interlaced=True) == 2  # one bit packed in one byte
    ihdr = struct.pack(">IIBBBBB", 3, 5, 8, 2, 0, 0, 1)
    whole = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(55)))
    assert decode_image(whole + _chunk(b"IEND", b"")).image.size == (3, 5)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (17, 9), (333, 211)])
def test_whole_files_of_every_kind_still_decode(size):
    """No false refusal: PNG in every colour type and bit depth (interlaced: above); JPEG
    baseline, progressive, grey, CMYK, every subsampling; animated PNG and MPO."""
    img = _photo(*size)
    files = []
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        converted = img.convert("L").convert(mode) if mode == "I;16" else img.convert(mode)
        files.append(_saved(converted, "PNG"))
    for bits in (1, 2, 4):
        files.append(_saved(img.convert("P"), "PNG", bits=bits))
    for mode in ("RGB", "L", "CMYK"):
        for kw in ({}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 2}):
            files.append(_saved(img.convert(mode), "JPEG", **kw))
    files.append(_saved(img, "PNG", save_all=True, append_images=[img.transpose(0)]))
    files.append(_saved(img, "MPO", save_all=True, append_images=[img]))
    for data in files:
        assert decode_image(data).image.mode == "RGB"
