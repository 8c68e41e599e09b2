"""``birdray.data.rows``: what one image becomes, decided per file without Ray."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from birdray.data.cub import CubRecord
from birdray.data.rows import ITEM_SCHEMA, QUARANTINE, SCHEMA, _read_bytes, item_row, load_images

PARTS = [[10.0, 20.0, 1.0], [0.0, 0.0, 0.0]]


def _encoded(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90 if mode in ("L", "P") else (30, 120, 200)[: len(mode)]).save(
        buf, format=fmt
    )
    return buf.getvalue()


def _batch(*datas: bytes | None, problems: str = "") -> dict[str, np.ndarray]:
    """Items as Ray Data hands them to the task: a column batch built from ITEM_SCHEMA rows."""
    rec = CubRecord(1, "001.A/a.jpg", 0, "001.A", True, [4.0, 8.0, 40.0, 20.0], PARTS, [3, 7])
    items = [{**item_row(rec, "train"), "data": d, "problems": problems} for d in datas]
    table = pa.Table.from_pylist(items, schema=ITEM_SCHEMA)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.schema.names}


def test_a_good_jpeg_is_stored_as_sent_with_its_labels():
    data = _encoded("RGB", (64, 48), "JPEG")
    row = load_images(_batch(data), max_side=512, max_pixels=10**7).to_pylist()[0]
    assert load_images(_batch(data), 512, 10**7).schema == SCHEMA
    assert row["error"] is None and row["split"] == "train"
    assert row["image"] == data and row["format"] == "JPEG"
    assert (row["width"], row["height"]) == (64, 48)
    assert row["bbox"] == [4.0, 8.0, 40.0, 20.0]
    assert row["parts"][0] == {"x": 10.0, "y": 20.0, "visible": True}
    assert row["attributes"] == [3, 7] and len(row["content_hash"]) == 64


def test_other_modes_and_formats_become_one_plain_format():
    cmyk = _encoded("CMYK", (96, 64), "JPEG")
    row = load_images(_batch(cmyk), 512, 10**7).to_pylist()[0]
    assert row["error"] is None and row["format"] == "PNG" and row["source_mode"] == "CMYK"
    stored = Image.open(io.BytesIO(row["image"]))
    assert stored.mode == "RGB" and stored.size == (96, 64)  # full size, not the 1/8 draft


def test_jpegs_validated_in_draft_mode_still_quarantine_truncation_and_keep_full_sizes():
    photo = Image.effect_noise((160, 96), 60).convert("RGB")
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    good, cut = load_images(_batch(data, data[: len(data) * 2 // 3]), 0, 10**7).to_pylist()
    assert good["error"] is None and good["image"] == data
    assert (good["width"], good["height"]) == (160, 96)
    assert cut["split"] == QUARANTINE and cut["error"].startswith("corrupt"), cut["error"]
    shrunk = load_images(_batch(data), 80, 10**7).to_pylist()[0]  # re-encoded from full pixels
    assert Image.open(io.BytesIO(shrunk["image"])).size == (80, 48)


def test_a_large_photo_is_shrunk_and_its_annotations_with_it():
    row = load_images(_batch(_encoded("RGB", (800, 400), "PNG")), 200, 10**7).to_pylist()[0]
    assert (row["width"], row["height"]) == (200, 100) and row["format"] == "JPEG"
    assert row["bbox"] == [1.0, 2.0, 10.0, 5.0]  # scale 1/4
    assert (row["parts"][0]["x"], row["parts"][0]["y"]) == (2.5, 5.0)


def test_bad_files_become_quarantine_rows_that_say_why():
    batch = _batch(b"not an image at all", _encoded("RGB", (4000, 4000), "PNG"))
    junk, huge = load_images(batch, 512, max_pixels=10**6).to_pylist()
    assert junk["split"] == huge["split"] == QUARANTINE
    assert junk["error"].startswith("not_an_image") and junk["image"] is None
    assert huge["error"].startswith("too_large")
    listed = load_images(_batch(None, problems="missing: gone"), 512, 10**7).to_pylist()[0]
    assert listed["split"] == QUARANTINE and listed["error"] == "missing: gone"


def test_the_driver_reads_bytes_or_records_why_it_could_not(tmp_path):
    (tmp_path / "001.A").mkdir()
    (tmp_path / "001.A" / "a.jpg").write_bytes(b"bytes")
    rec = CubRecord(1, "001.A/a.jpg", 0, "001.A", True)
    assert _read_bytes(item_row(rec, "train"), tmp_path)["data"] == b"bytes"
    gone = CubRecord(2, "001.A/gone.jpg", 0, "001.A", True)
    assert _read_bytes(item_row(gone, "train"), tmp_path)["problems"].startswith("missing")


def test_a_fifo_or_an_oversized_file_is_quarantined_without_being_read(tmp_path):
    """Reading a FIFO blocks until a writer comes (ingest hung); a 2 GB file filled the driver."""
    import os

    (tmp_path / "001.A").mkdir()
    os.mkfifo(tmp_path / "001.A" / "pipe.jpg")
    (tmp_path / "001.A" / "big.jpg").write_bytes(b"x" * 2048)
    pipe = item_row(CubRecord(1, "001.A/pipe.jpg", 0, "001.A", True), "train")
    assert _read_bytes(pipe, tmp_path)["problems"].startswith("unreadable: not a regular file")
    big = item_row(CubRecord(2, "001.A/big.jpg", 0, "001.A", True), "train")
    assert _read_bytes(big, tmp_path, max_bytes=1024)["problems"].startswith("file_too_big")
    assert len(_read_bytes(big, tmp_path, max_bytes=4096)["data"]) == 2048
