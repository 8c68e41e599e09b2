"""Whether a JPEG's or PNG's compressed pixel data covers the whole picture.

Pillow decodes both without a word when the data stops early in a way their libraries only
warn about: a JPEG cut short and closed with an end-of-image marker (as a download cut off and
"repaired" is) comes back with its missing rows flat gray, and a PNG whose zlib stream ends
cleanly before the last row comes back with black rows. Without the closing marker the same cut
is refused as truncated, so these are the same broken file in another shape, and the one decoder
(``birdray.images``) refuses them the same way: ``corrupt``.

JPEG: libjpeg-turbo's own warning, read through simplejpeg in strict mode at 1/8 scale (the
entropy-coded data is still read to its end; ~0.3 ms a 500x400 photo, ~45 ms a 12-megapixel
one). Only a premature end is refused: other warnings (a few extraneous bytes before a marker)
are common in real cameras' files that look right. Strict mode stops at the first warning, so a
file that warns about something else first is not checked further. PNG: the rows the header
declares against the bytes the zlib stream inflates to, counted without keeping them. Bytes this
decoder already accepted (an ingested dataset's, read again each epoch) skip the check.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import simplejpeg

from birdray.images import ImageError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7's passes: (first column, first row, column step, row step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip
_JPEG_SPACES = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}  # decode in what it holds
_INFLATE_STEP = 1 << 20  # bytes inflated at a time: the count never holds the image
_FEED_STEP = 1 << 16  # compressed bytes fed at a time: zlib's leftover copy stays this small


def check_whole(data: bytes, fmt: str) -> None:
    """Raise ``ImageError("corrupt")`` when a JPEG's or PNG's pixel data ends before its picture
    does; every other format, and anything this check cannot parse, is left to the decoder."""
    if fmt in ("JPEG", "MPO"):
        _check_jpeg(data)
    elif fmt == "PNG":
        _check_png(data)


def _check_jpeg(data: bytes) -> None:
    try:
        _, _, space, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # a header only Pillow reads: nothing to compare against
        return
    try:
        simplejpeg.decode_jpeg(
            data, colorspace=_JPEG_SPACES.get(space, "RGB"), strict=True, min_width=1,
            min_height=1,
        )  # fmt: skip
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            raise ImageError(
                "corrupt", "the JPEG data ends before the picture does (cut short)"
            ) from exc


def _png_raw_bytes(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes the header's rows inflate to: each row its filter byte and its packed pixels."""

    def rows(w: int, h: int) -> int:
        return 0 if w <= 0 or h <= 0 else h * ((w * bits_per_pixel + 7) // 8 + 1)

    if not interlaced:
        return rows(width, height)
    return sum(
        rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7
    )


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, body) of each chunk, up to IEND or the end of the bytes (views, not copies)."""
    view, at = memoryview(data), len(_PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", view[at : at + 8])
        yield kind, view[at + 8 : at + 8 + length]
        if kind == b"IEND":
            return
        at += 12 + length


def _check_png(data: bytes) -> None:
    if not data.startswith(_PNG_SIGNATURE):
        return
    chunks = _png_chunks(data)
    kind, ihdr = next(chunks, (b"", b""))
    if kind != b"IHDR" or len(ihdr) < 13:
        return
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
    if colour not in _PNG_CHANNELS:
        return
    expected = _png_raw_bytes(width, height, depth * _PNG_CHANNELS[colour], interlace == 1)
    inflater, produced = zlib.decompressobj(), 0
    try:
        for kind, body in chunks:
            if kind != b"IDAT":
                continue
            for start in range(0, len(body), _FEED_STEP):
                pending = body[start : start + _FEED_STEP]
                while pending and produced < expected:
                    produced += len(inflater.decompress(pending, _INFLATE_STEP))
                    pending = inflater.unconsumed_tail
                if produced >= expected:
                    return
    except zlib.error as exc:
        raise ImageError("corrupt", f"the PNG's pixel data is damaged: {exc}") from exc
    raise ImageError(
        "corrupt", f"the PNG's pixel data ends after {produced:,} of its {expected:,} bytes"
    )
