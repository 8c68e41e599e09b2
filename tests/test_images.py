"""The one decoder's limits: read from the header, the same for every stage, in its own words."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from birdray import images
from birdray.images import DEFAULT_MAX_ASPECT, ImageError, decode_image
from birdray.model.crop import decode_for_model
from birdray.serve.uploads import Limits, Upload, decode_upload
from tests.serve_fixtures import encode, random_rgb

CONFIG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear"}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` and holds almost no data (a few dozen bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + crc + end


@pytest.mark.parametrize("size", [(100_000, 1), (1, 100_000), (3, 20_000), (500, 1)])
def test_thin_strips_are_refused_from_the_header_by_every_stage(size):
    """A 100000x1 PNG is a few hundred bytes; a model's eval resize would make it 25.6 M x 256."""
    data = encode(random_rgb(1, size), "PNG")
    with pytest.raises(ImageError) as raised:
        decode_for_model(data, CONFIG)  # scoring, evaluation, validation, Serve's model input
    assert raised.value.reason == "bad_dimensions" and "elongated" in raised.value.detail
    with pytest.raises(ImageError, match="bad_dimensions"):
        decode_image(data)  # ingest, training, explanations
    limits = Limits(2**24, 2**25, 4, 40_000_000, DEFAULT_MAX_ASPECT)
    with pytest.raises(Exception) as served:
        decode_upload(Upload("strip.png", "image/png", data), limits)
    assert (served.value.status, served.value.code) == (422, "bad_dimensions")


def test_the_aspect_limit_is_a_setting_and_ordinary_photos_pass():
    wide = encode(random_rgb(2, (600, 40)), "PNG")  # 15:1
    assert decode_image(wide).width == 600
    with pytest.raises(ImageError, match="more elongated than 10:1"):
        decode_image(wide, max_aspect=10)
    assert decode_image(encode(random_rgb(3, (500, 1)), "PNG"), max_aspect=0).height == 1


@pytest.mark.parametrize("max_pixels", [40_000_000, 200_000_000])
def test_the_configured_pixel_limit_is_the_one_applied_and_named(max_pixels):
    """Pillow's own bomb limit (~89 Mpx) used to answer first, in its words, whatever was set."""
    data = _png_header(10_000, 10_000)  # 100 Mpx claimed
    with pytest.raises(ImageError) as raised:
        decode_image(data, max_pixels=max_pixels)
    if max_pixels < 100_000_000:
        assert raised.value.reason == "too_large"
        assert raised.value.detail == "10000x10000 exceeds the 40,000,000-pixel limit"
    else:  # allowed through the size check: the missing pixel data is what fails
        assert raised.value.reason == "corrupt"


def test_a_damaged_file_of_a_known_format_is_corrupt_not_not_an_image():
    png = bytearray(encode(random_rgb(4), "PNG"))
    png[29] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(ImageError) as raised:
        decode_image(bytes(png))
    assert raised.value.reason == "corrupt" and "PNG" in raised.value.detail
    with pytest.raises(ImageError, match="not_an_image"):
        decode_image(b"plain text that happens to be long enough to sniff")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_flattened_over_white_as_alpha_composite_does(mode):
    """Every colour value under every alpha: the low-memory paste gives alpha_composite's bytes."""
    import io

    import numpy as np
    from PIL import Image

    value, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = Image.fromarray(np.stack([value, value, 255 - value, alpha], -1).astype(np.uint8))
    saved, options = {"RGBA": rgba, "LA": rgba.convert("LA")}.get(mode), {}
    if mode == "P":  # 256 palette entries, each with its own alpha (tRNS)
        saved = Image.fromarray(value.astype(np.uint8), "L").convert("P")
        saved.putpalette([c for i in range(256) for c in (i, (3 * i) % 256, 255 - i)])
        options["transparency"] = bytes((7 * i) % 256 for i in range(256))
        saved.info["transparency"] = options["transparency"]
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, saved.convert("RGBA")).convert("RGB"))
    buf = io.BytesIO()
    saved.save(buf, "PNG", **options)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode
    assert np.array_equal(np.asarray(decode_image(buf.getvalue()).image), expected)


def _animation(fmt: str, frames: int = 3, size: tuple[int, int] = (120, 90)) -> bytes:
    """``frames`` different random pictures saved as one file of ``fmt`` (all frames kept)."""
    pictures = [random_rgb(seed, size) for seed in range(frames)]
    if fmt == "GIF":
        pictures = [p.convert("P") for p in pictures]
    buf = io.BytesIO()
    pictures[0].save(buf, format=fmt, save_all=True, append_images=pictures[1:])
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "MPO"])
def test_a_many_frame_file_cut_short_in_a_later_frame_is_corrupt(fmt):
    """Frame 0 is whole, so it alone decoded fine and half a download passed as a photo."""
    data = _animation(fmt)
    whole = decode_image(data)
    assert whole.frames == 3 and whole.format == ("PNG" if fmt == "PNG" else fmt)
    for kept in (0.8, 0.5):
        with pytest.raises(ImageError) as raised:
            decode_image(data[: int(len(data) * kept)])
        assert raised.value.reason == "corrupt", (kept, raised.value)
    # bytes already vouched for (an ingested image each epoch) are not decoded frame by frame
    assert decode_image(data[: int(len(data) * 0.8)], whole=False).frames == 3


def test_frames_share_a_bounded_pixel_budget_and_a_frame_count_cap(monkeypatch):
    """All frames together may hold 10x the one-picture limit: a long 640x480 animation or a
    stereo pair passes, while frames cannot multiply a bomb without bound."""
    data = _animation("GIF", frames=12, size=(100, 100))
    assert decode_image(data, max_pixels=12_000).frames == 12  # 120,000 <= 10 x 12,000
    with pytest.raises(ImageError) as raised:
        decode_image(data, max_pixels=10_000)
    assert raised.value.reason == "too_large"
    assert "too many frames: the first 11 of 12 hold 110,000 pixels" in str(raised.value)
    monkeypatch.setattr(images, "MAX_FRAMES", 11)
    with pytest.raises(ImageError, match="too_large: too many frames: 12 \\(at most 11\\)"):
        decode_image(data)


def test_a_multi_picture_jpeg_whose_later_pictures_are_not_there_is_its_first_picture():
    """An editor that keeps the first picture and the MPF index (not a cut: the first picture
    ends whole) made an ordinary photo; cut inside its second picture, it is a cut download."""
    from PIL import Image

    data = _animation("MPO", frames=2, size=(160, 120))
    second = Image.open(io.BytesIO(data))._MpoImageFile__mpoffsets[1]
    assert decode_image(data[:second]).format == "MPO"
    with pytest.raises(ImageError, match="corrupt"):
        decode_image(data[: second + (len(data) - second) // 2])


def test_a_tiff_with_impossible_samples_is_corrupt_without_a_log_line_naming_no_file(caplog):
    """Pillow logs "More samples per pixel than can be decoded" at ERROR, naming no file, before
    failing: in a worker's log among thousands of files that line says nothing useful."""
    buf = io.BytesIO()
    random_rgb(0, (8, 8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    (ifd,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 277:  # SamplesPerPixel
            data[entry + 8 : entry + 10] = struct.pack("<H", 255)
    with caplog.at_level("DEBUG"), pytest.raises(ImageError, match="corrupt"):
        decode_image(bytes(data))
    assert not [r for r in caplog.records if r.name.startswith("PIL") and r.levelno >= 40]
