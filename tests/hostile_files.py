"""Small hostile image files that made Pillow raise past ``decode_image`` (issue 14, item 3).

Each is a valid file Pillow wrote, with one byte changed: the TIFF's ImageWidth tag type (Pillow
then raises ``TypeError: Missing dimensions``), the GIF's image-descriptor byte (``IndexError``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _saved(img: Image.Image, fmt: str) -> bytearray:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return bytearray(buf.getvalue())


def _flat() -> Image.Image:
    return Image.fromarray(np.full((8, 8, 3), 120, np.uint8))


def hostile_tiff() -> bytes:
    """332 bytes; Pillow 13 raises ``TypeError`` while loading it."""
    data = _saved(_flat(), "TIFF")
    data[130] = 0xFF
    return bytes(data)


def hostile_gif() -> bytes:
    """65 bytes; Pillow 13 raises ``IndexError`` while loading it."""
    data = _saved(_flat().convert("P"), "GIF")
    data[64] = 0x21
    return bytes(data)
