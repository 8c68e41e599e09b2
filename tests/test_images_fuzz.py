"""The one decoder against hostile bytes: every input is an RGB image or an ``ImageError``.

A seeded fuzz over byte mutations and truncations of small PNG, GIF, TIFF (8- and 16-bit),
BMP, WebP and JPEG files (12,000 cases, ~2 s), the two files that escaped as ``TypeError`` /
``IndexError`` before, and the memory a 16-bit image costs to decode.
"""

from __future__ import annotations

import io
import random
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from birdray.images import ImageError, decode_image
from tests.hostile_files import hostile_gif, hostile_tiff

CASES = 12_000
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x21, 0x2C, 0x3B)


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(14)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16))
    frames = [rgb.convert("P"), Image.fromarray(255 - np.asarray(rgb)).convert("P")]
    seeds: dict[str, bytes] = {}
    for name, img, fmt, save in [
        ("png", rgb, "PNG", {}),
        ("png16", gray16, "PNG", {}),
        ("png_rgba", rgb.convert("RGBA"), "PNG", {}),
        ("gif", frames[0], "GIF", {"save_all": True, "append_images": frames[1:]}),
        ("tiff", rgb, "TIFF", {}),
        ("tiff16", gray16, "TIFF", {}),
        ("tiff_lzw", rgb, "TIFF", {"compression": "tiff_lzw"}),
        ("bmp", rgb, "BMP", {}),
        ("webp", rgb, "WEBP", {"quality": 80}),
        ("jpeg", rgb, "JPEG", {"quality": 80}),
        ("jpeg_exif", rgb, "JPEG", {"exif": _exif_rotated()}),
    ]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **save)
        seeds[name] = buf.getvalue()
    return seeds


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return exif.tobytes()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: truncation, byte overwrites, bit flips, a deleted or duplicated slice."""
    out = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(out[: rng.randrange(len(out))])
    if kind == 1:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.choice((*INTERESTING, rng.randrange(256)))
    elif kind == 2:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 3:
        start = rng.randrange(len(out))
        del out[start : start + rng.randint(1, 16)]
    else:
        start = rng.randrange(len(out))
        chunk = out[start : start + rng.randint(1, 32)]
        out[start:start] = chunk
    return bytes(out)


def test_fuzzed_inputs_decode_to_rgb_or_raise_image_error():
    seeds = _seeds()
    names = sorted(seeds)
    rng = random.Random(20260101)
    outcomes = {"decoded": 0, "rejected": 0}
    for case in range(CASES):
        name = names[case % len(names)]
        data = _mutate(seeds[name], rng)
        try:
            decoded = decode_image(data, max_pixels=4_000_000)
        except ImageError as exc:
            assert exc.reason and exc.detail, (name, case)
            outcomes["rejected"] += 1
            continue
        except Exception as exc:  # what the test exists to catch: name the case to replay it
            pytest.fail(f"case {case} ({name}) escaped as {type(exc).__name__}: {exc}")
        assert decoded.image.mode == "RGB", (name, case)
        assert decoded.image.size == (decoded.width, decoded.height)
        assert decoded.width > 0 and decoded.height > 0
        outcomes["decoded"] += 1
    # the mutations really exercise both sides (a fuzz that only ever fails proves little)
    assert outcomes["decoded"] > CASES // 10 and outcomes["rejected"] > CASES // 10, outcomes


@pytest.mark.parametrize("make", [hostile_tiff, hostile_gif])
def test_pillow_errors_that_escaped_are_image_errors(make):
    with pytest.raises(ImageError) as info:
        decode_image(make())
    assert info.value.reason == "corrupt"
    assert isinstance(info.value.__cause__, (TypeError, IndexError))  # what escaped before
    assert type(info.value.__cause__).__name__ in info.value.detail


def test_16_bit_image_decodes_without_float64_copies():
    """A 4-Mpixel 16-bit PNG is ~13 kB; decoding may allocate about the 8-bit result, not 25x."""
    ramp = np.tile(np.arange(2048, dtype=np.uint16) * 30 + 100, (2048, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    pixels = ramp.size
    tracemalloc.start()
    try:
        decoded = decode_image(buf.getvalue())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.source_mode == "I;16"
    assert peak < 3 * pixels, f"{peak / 2**20:.0f} MB for {pixels / 1e6:.0f} Mpixel"
    gray = np.asarray(decoded.image)[..., 0]
    expected = np.round((ramp - ramp.min()) / float(ramp.max() - ramp.min()) * 255)
    assert np.array_equal(gray, expected.astype(np.uint8))  # stretched min..max, rounded


@pytest.mark.parametrize("mode", ["F", "I"])
def test_wide_samples_with_nan_and_negative_values(mode):
    values = np.linspace(-5, 5, 32 * 32).reshape(32, 32)
    if mode == "F":
        values = values.astype(np.float32)
        values[0, 0], values[0, 1] = np.nan, np.inf
    else:
        values = (values * 1000).astype(np.int32)
    buf = io.BytesIO()
    Image.fromarray(values, mode).save(buf, format="TIFF")
    gray = np.asarray(decode_image(buf.getvalue()).image)[..., 0]
    assert gray.min() == 0 and gray.max() == 255
    lowest = (0, 2) if mode == "F" else (0, 0)  # NaN became the lowest finite value
    assert gray[-1, -1] == 255 and gray[lowest] == 0 and gray[0, 0] == 0


def _jpeg_seeds() -> dict[str, bytes]:
    """JPEGs large enough for draft mode to scale (1/8): baseline, progressive, gray, CMYK, EXIF."""
    rng = np.random.default_rng(16)
    smooth = np.kron(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), np.ones((8, 8, 1)))
    rgb = Image.fromarray(smooth.astype(np.uint8))  # 96 x 80, blocky like a photo's low detail
    seeds = {}
    for name, img, save in [
        ("baseline", rgb, {"quality": 85}),
        ("progressive", rgb, {"quality": 85, "progressive": True}),
        ("gray", rgb.convert("L"), {}),
        ("cmyk", rgb.convert("CMYK"), {}),
        ("exif_rotated", rgb, {"exif": _exif_rotated()}),
    ]:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", **save)
        seeds[name] = buf.getvalue()
    return seeds


def _outcome(data: bytes, min_side: int) -> tuple:
    try:
        decoded = decode_image(data, max_pixels=4_000_000, min_side=min_side)
    except ImageError as exc:
        return ("rejected", exc.reason)
    return ("decoded", decoded.width, decoded.height, decoded.source_mode)


def test_draft_mode_jpeg_decoding_accepts_and_rejects_exactly_what_full_decoding_does():
    """Ingest validates JPEGs at 1/8 scale; that is only sound if it judges every file alike."""
    seeds = _jpeg_seeds()
    names = sorted(seeds)
    for name in names:  # the draft really is smaller, and reports the full size
        small, full = (decode_image(seeds[name], min_side=m) for m in (1, 0))
        assert max(small.image.size) < max(full.image.size), name
        assert (small.width, small.height) == full.image.size, name
    rng = random.Random(20261201)
    counts = {"decoded": 0, "rejected": 0}
    for case in range(3_000):
        name = names[case % len(names)]
        data = _mutate(seeds[name], rng)
        full, draft = _outcome(data, 0), _outcome(data, 1)
        assert draft == full, f"case {case} ({name}): full decode {full}, draft {draft}"
        counts[full[0]] += 1
    assert counts["decoded"] > 300 and counts["rejected"] > 300, counts


def test_broken_tiffs_print_nothing_to_stderr(capfd):
    """libtiff printed its errors (``tempfile.tif: Using code not yet in table.``) to the
    process's stderr, several lines a hostile TIFF naming no file, in every worker's log; the
    file's ``ImageError`` is the one report. (Pillow's own Python log records are not stderr.)"""
    seeds, rng, refused = _seeds(), random.Random(3), 0
    for _ in range(400):
        try:
            decode_image(_mutate(seeds["tiff_lzw"], rng))
        except ImageError:
            refused += 1
    assert refused > 200  # the LZW data really was broken, and libtiff saw it
    printed = capfd.readouterr().err.splitlines()
    assert not [ln for ln in printed if "TIFF" in ln or ".tif" in ln], printed[:5]
