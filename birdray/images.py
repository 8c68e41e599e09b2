"""Decode untrusted image bytes into a clean RGB picture, or fail with a reason a person can read.

Ingest, training, batch scoring and Serve all receive bytes they did not make. Every one of them
decodes here, so that "what is a valid image" and "how a CMYK or 16-bit image becomes RGB" have
exactly one answer. Nothing here touches the filesystem: uploads are decoded in memory.
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7,300 x 5,500: far above any real CUB photo, far below a bomb
# longest / shortest side: a 100000x1 PNG is a few hundred bytes and 100,000 pixels, but a model's
# resize of its short side to 256 asks for 25.6 M x 256 (GBs); no photo of a bird is that thin
DEFAULT_MAX_ASPECT = 20.0
# frames of an animation or pages of a TIFF the decoder decodes to vouch for a file; a GIF of a
# few bytes a frame can declare hundreds of thousands, each a decode, none of them a photo
MAX_FRAMES = 1_000
FRAMES_PIXELS_FACTOR = 10  # all frames together may hold this many times ``max_pixels``
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
# File name endings of those formats, as Pillow registers them: what a folder listing takes to
# be an image. Written out (asking Pillow loads every plugin, 50 ms at import); a test keeps it
# equal to Pillow's own list, so it cannot drift from what the decoder accepts.
IMAGE_SUFFIXES = (
    ".apng", ".bmp", ".gif", ".jfif", ".jpe", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff",
    ".webp",
)  # fmt: skip


class ImageError(ValueError):
    """The bytes are not a usable image; ``reason`` is a short machine-stable code.

    ``size`` is (width, height) when the header was read before the refusal (too large, too
    elongated), so a scoring row can still say how big the refused photo is.
    """

    def __init__(self, reason: str, detail: str, size: tuple[int, int] | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.size = size


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    format: str
    source_mode: str
    width: int
    height: int
    frames: int


_ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose follows
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_CHUNK_PIXELS = 1 << 18  # rows scaled at a time: float32 temporaries stay ~1 MB


def _extrema(img: Image.Image) -> tuple[float, float]:
    """Smallest and largest finite sample, read by Pillow (no copy of the image)."""
    lo, hi = img.getextrema()
    if np.isfinite(lo) and np.isfinite(hi):
        return float(lo), float(hi)
    finite = [  # float images with NaN/inf: look at finite samples, a few rows at a time
        c[np.isfinite(c)] for c in (np.asarray(img.crop(box)) for box in _row_chunks(img))
    ]
    values = [(float(c.min()), float(c.max())) for c in finite if c.size]
    return (min(v[0] for v in values), max(v[1] for v in values)) if values else (0.0, 0.0)


def _row_chunks(img: Image.Image):
    rows = max(1, _CHUNK_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        yield (0, top, img.width, min(img.height, top + rows))


def _wide_to_gray(img: Image.Image) -> Image.Image:
    """16/32-bit and float samples stretched min..max to 8-bit gray, a few rows at a time.

    A 4-Mpixel 16-bit PNG is a few kB on disk; converting it whole through float64 would hold
    ~100 MB of temporaries per request. Here the only full-size allocation is the 8-bit result.
    """
    lo, hi = _extrema(img)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for box in _row_chunks(img):
        chunk = np.array(img.crop(box), dtype=np.float32)  # a writable copy
        np.nan_to_num(chunk, copy=False, nan=lo, posinf=hi, neginf=lo)
        chunk -= lo
        chunk *= scale
        np.rint(chunk, out=chunk)
        np.clip(chunk, 0, 255, out=chunk)
        out[box[1] : box[3]] = chunk
    return Image.fromarray(out, "L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way a person would expect to see it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_MODES:
        return _wide_to_gray(img)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # over white, pasted through its own alpha: the same bytes as alpha_composite over an
        # opaque white (every colour and alpha checked), at ~40 % of the peak memory (a 38 KB
        # palette PNG of 40 Mpx took ~800 MB with two RGBA copies and an RGB one)
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba)
        return out
    # CMYK (Pillow inverts Adobe CMYK JPEGs itself), YCbCr, LAB, HSV, L, 1 ...
    return img.convert("RGB")


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    min_side: int = 0,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    whole: bool = True,
) -> DecodedImage:
    """Decode bytes to RGB; raise ``ImageError`` for empty, non-image, truncated or bomb input.

    ``min_side > 0`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while
    its shorter side stays at least ``min_side``: 3-4x cheaper, and just as strict, because the
    scaled decoder still reads every byte of the entropy-coded data (a truncated or corrupt
    file fails the same way). ``width``/``height`` stay the full size; ``image`` is smaller.

    Size limits are read from the header, before any pixel is decoded: ``max_pixels`` (bombs)
    and ``max_aspect`` (long / short side; 0 turns it off), so every stage refuses the same
    thin strips instead of one of them resizing them to gigabytes.

    Every ``Exception`` the decoders raise becomes the file's ``ImageError``: Pillow's plugins
    answer hostile bytes with ``TypeError``, ``IndexError``, ``struct.error``... and one bad file
    must be that file's quarantine row / 4xx / error row, never the end of a job. A
    ``MemoryError`` while decoding one file is that file asking for too much (``too_large``).
    ``KeyboardInterrupt``/``SystemExit`` are not ``Exception``s and still stop the process.

    ``whole=False`` skips the check that the pixel data covers the picture
    (``birdray.whole_image``) for bytes this decoder already accepted with it: an ingested
    dataset's images, decoded again every training epoch, or ingest's second decode of a file.
    """
    if not data:
        raise ImageError("empty", "zero-byte file")
    try:
        return _decode(data, max_pixels, min_side, max_aspect, whole)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's own limit (~179 Mpx)
        raise ImageError("too_large", f"over Pillow's decompression-bomb limit: {exc}") from exc
    except MemoryError as exc:
        raise ImageError("too_large", "decoding it needs more memory than is available") from exc
    except UnidentifiedImageError as exc:
        fmt = _sniffed(data)
        if fmt:  # a known signature Pillow cannot open: damaged, or a variant it does not decode
            detail = f"looks like {fmt} but cannot be read (damaged, or a {fmt} variant "
            raise ImageError("corrupt", detail + "the decoder does not support)") from exc
        raise ImageError("not_an_image", "bytes are not a recognised image format") from exc
    except Exception as exc:
        raise ImageError("corrupt", f"cannot decode: {type(exc).__name__}: {exc}") from exc


# magic numbers of the accepted formats: a file that starts like one and still fails to open
# is a damaged (or unsupported) image, not "not an image"
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniffed(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), "")


@functools.cache
def _quiet_libtiff() -> int:
    """Unset libtiff's error handler in the copies Pillow loaded; returns how many were found.

    Pillow silences libtiff's warnings but not its errors, which libtiff prints to the process's
    stderr: each hostile TIFF put lines such as ``tempfile.tif: Using code not yet in table.``
    into every worker's log, naming no file, while the decoder's ``ImageError`` already says
    which file failed and why. Python's ``warnings`` cannot reach them; the C handler can. Pillow's
    TIFF plugin logs one such error itself (more samples per pixel than it decodes): dropped too.
    """
    logging.getLogger("PIL.TiffImagePlugin").addFilter(
        lambda record: record.levelno < logging.ERROR
    )
    maps = Path("/proc/self/maps")  # Linux: the libraries mapped into this process
    if maps.exists():
        paths = {ln.split()[-1] for ln in maps.read_text().splitlines() if "/libtiff" in ln}
    else:  # macOS wheels keep theirs beside the extension
        paths = {str(p) for p in (Path(Image.__file__).parent / ".dylibs").glob("libtiff*")}
    quieted = 0
    for path in sorted(paths):
        try:
            set_handler = ctypes.CDLL(path).TIFFSetErrorHandler
        except (OSError, AttributeError):  # not loadable here, or not libtiff after all
            continue
        set_handler.restype, set_handler.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        set_handler(None)
        quieted += 1
    return quieted


def _decode(
    data: bytes, max_pixels: int, min_side: int, max_aspect: float, whole: bool
) -> DecodedImage:
    from birdray.whole_image import check_whole  # it raises this module's ImageError

    _quiet_libtiff()
    with warnings.catch_warnings():
        # Pillow's per-file warnings about broken metadata would flood a million-file job's log;
        # its bomb warning too: the configured ``max_pixels`` below is the limit, with our words
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        size = (width, height)
        if width <= 0 or height <= 0:
            raise ImageError("bad_dimensions", f"{width}x{height}", size)
        if width * height > max_pixels:
            limit = f"{max_pixels:,}-pixel limit"
            raise ImageError("too_large", f"{width}x{height} exceeds the {limit}", size)
        if max_aspect and max(width, height) / min(width, height) > max_aspect:
            raise ImageError(
                "bad_dimensions", f"{width}x{height} is more elongated than {max_aspect:g}:1", size
            )
        fmt = img.format or "unknown"
        if fmt not in ALLOWED_FORMATS:
            raise ImageError("unsupported_format", f"format {fmt} is not accepted")
        frames = int(getattr(img, "n_frames", 1) or 1)
        source_mode = img.mode
        img.seek(0)
        if min_side > 0 and frames == 1:
            img.draft(None, (min_side, min_side))  # a no-op for formats other than JPEG
        img.load()
        if whole:  # what Pillow decodes without a word: data that stops early
            check_whole(data, fmt)
            if frames > 1:
                _check_later_frames(data, frames, max_pixels)
        turned = img.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
        img = ImageOps.exif_transpose(img) or img
        rgb = _to_rgb(img)
        rgb.load()
    if rgb.mode != "RGB" or min(rgb.size) <= 0:  # what every caller relies on
        raise ImageError("corrupt", f"decoded to {rgb.mode} {rgb.width}x{rgb.height}")
    full_w, full_h = (height, width) if turned else (width, height)
    return DecodedImage(rgb, fmt, source_mode, full_w, full_h, frames)


def _check_later_frames(data: bytes, frames: int, max_pixels: int) -> None:
    """Decode every frame after the first (a second reader: the caller's stays on frame 0), so a
    file cut short in its third frame, or a multi-picture JPEG cut inside its second picture,
    is ``corrupt`` as a single photo cut short is. Every stage uses frame 0 only, but a file
    that stops early is a damaged download, not a photo to vouch for. The frames together may
    hold ``FRAMES_PIXELS_FACTOR`` times ``max_pixels`` (a 150-frame 640x480 GIF, a 24 MP stereo
    pair), so frames cannot multiply a bomb without bound. A multi-picture JPEG whose index
    names pictures that are not there at all (an editor kept the first and the index) is its
    first picture: that is a photo, not a cut."""
    if frames > MAX_FRAMES:
        raise ImageError("too_large", f"too many frames: {frames:,} (at most {MAX_FRAMES:,})")
    later = Image.open(io.BytesIO(data))
    budget, total = FRAMES_PIXELS_FACTOR * max_pixels, later.width * later.height
    for frame in range(1, frames):
        try:
            later.seek(frame)
        except ValueError:
            if later.format == "MPO":  # "No data found for frame": the picture is not there
                return
            raise
        total += later.width * later.height
        if total > budget:
            raise ImageError(
                "too_large",
                f"too many frames: the first {frame + 1} of {frames} hold {total:,} pixels, "
                f"over the {budget:,} all frames may hold",
            )
        later.load()


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
