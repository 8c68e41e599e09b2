"""Hostile image files through the user's doors: ``birdray ingest`` and ``birdray score``.

A TIFF and a GIF with one byte changed made Pillow raise ``TypeError`` / ``IndexError``, which
escaped the decoder and ended the whole ingest. Saved under ``.jpg`` names among good photos,
each must now be its own quarantine row (ingest) or error row (scoring), with every other file
done and the counts reconciled. (Serve's case is in ``test_serve_api.test_bad_single_file``.)
"""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pyarrow.parquet as pq
import pytest

from birdray.cli import main
from birdray.data.manifest import load_manifest, read_split
from tests.cub_fixture import jpeg_bytes, write_layout
from tests.hostile_files import hostile_gif, hostile_tiff
from tests.model_fixture import make_package

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def test_ingest_quarantines_hostile_files_and_reconciles(ray_cluster, tmp_path):
    good = [(c, jpeg_bytes(color=(60 * c, 90, 200)), t) for c in (1, 2, 3) for t in (1, 1, 1, 0)]
    hostile = [(1, hostile_tiff(), True), (2, hostile_gif(), False)]  # img_13.jpg, img_14.jpg
    root = write_layout(tmp_path / "src", good + hostile)
    out = tmp_path / "pq"
    assert _quiet_main(["ingest", "--source", str(root.parent), "--out", str(out)]) == 0
    manifest = load_manifest(out)
    counts = manifest["counts"]
    assert counts["listed"] == len(good) + len(hostile)
    assert counts["quarantined"] == len(hostile)
    assert counts["ingested"] + counts["quarantined"] == counts["listed"]
    reasons = {q["path"].rsplit("/", 1)[-1]: q["reason"] for q in manifest["quarantine"]}
    assert set(reasons) == {"img_13.jpg", "img_14.jpg"}
    assert reasons["img_13.jpg"].startswith("corrupt") and "TypeError" in reasons["img_13.jpg"]
    assert reasons["img_14.jpg"].startswith("corrupt") and "IndexError" in reasons["img_14.jpg"]
    ingested = set()
    for split in ("train", "val", "test"):
        ingested |= {int(i) for i in read_split(out, split).to_pandas()["image_id"]}
    quarantined = {q["image_id"] for q in manifest["quarantine"]}
    assert ingested | quarantined == set(range(1, len(good) + len(hostile) + 1))
    assert not ingested & quarantined


def test_scoring_gives_hostile_files_error_rows(ray_cluster, tmp_path):
    package = make_package(tmp_path / "pkg", seed=4)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"bird_{i}.jpg").write_bytes(jpeg_bytes(color=(50 * i, 120, 80)))
    (folder / "hostile_tiff.jpg").write_bytes(hostile_tiff())
    (folder / "hostile_gif.jpg").write_bytes(hostile_gif())
    out = tmp_path / "scored"
    argv = ["score", "--input", str(folder), "--model", str(package), "--output", str(out),
            "--batch-size", "2", "--preprocess-cpus", "0.5"]  # fmt: skip
    assert _quiet_main(argv) == 0
    rows = pq.read_table(out / "predictions").to_pandas().set_index("path")
    assert len(rows) == 5
    for name, cause in [("hostile_tiff.jpg", "TypeError"), ("hostile_gif.jpg", "IndexError")]:
        row = rows.loc[str(folder / name)]
        assert not row["ok"] and pd.isna(row["label"])
        assert row["error"].startswith("corrupt: ") and cause in row["error"], row["error"]
    assert rows["ok"].sum() == 3
