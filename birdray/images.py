"""Decode untrusted image bytes into a clean RGB picture, or fail with a reason a person can read.

Ingest, training, batch scoring and Serve all receive bytes they did not make. Every one of them
decodes here, so that "what is a valid image" and "how a CMYK or 16-bit image becomes RGB" have
exactly one answer. Nothing here touches the filesystem: uploads are decoded in memory.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7,300 x 5,500: far above any real CUB photo, far below a bomb
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})


class ImageError(ValueError):
    """The bytes are not a usable image; ``reason`` is a short machine-stable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    format: str
    source_mode: str
    width: int
    height: int
    frames: int


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way a person would expect to see it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (Pillow inverts Adobe CMYK JPEGs itself), YCbCr, LAB, HSV, L, 1 ...
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode bytes to RGB; raise ``ImageError`` for empty, non-image, truncated or bomb input."""
    if not data:
        raise ImageError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError("bad_dimensions", f"{width}x{height}")
            if width * height > max_pixels:
                raise ImageError(
                    "too_large", f"{width}x{height} exceeds the {max_pixels:,}-pixel limit"
                )
            fmt = img.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise ImageError("unsupported_format", f"format {fmt} is not accepted")
            frames = int(getattr(img, "n_frames", 1) or 1)
            source_mode = img.mode
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "bytes are not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", f"cannot decode: {exc}") from exc
    return DecodedImage(rgb, fmt, source_mode, rgb.width, rgb.height, frames)


def reencode_max_side(decoded: DecodedImage, max_side: int, quality: int = 90) -> bytes | None:
    """JPEG bytes of the image shrunk to ``max_side`` (None when already small enough)."""
    img = decoded.image
    if max_side <= 0 or max(img.size) <= max_side:
        return None
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
