"""``birdray score --review-below``: the unsure photos become a review set for people to label.

Real local Ray, a real (untrained) model package, real files in a folder and in a bucket (the
session's moto S3). The threshold is the median confidence of a first run, so the review set
must split the photos, not take all or none.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from birdray.scoring.job import ScoreConfig, run_scoring
from birdray.scoring.review import REVIEW_SCHEMA, THUMBNAIL_SIDE, read_review
from tests.cub_fixture import jpeg_bytes
from tests.model_fixture import make_package

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _photos(root, n: int = 8) -> None:
    root.mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((200 + 10 * i, 150), Image.Resampling.BILINEAR)
        img.save(root / f"bird_{i}.jpg", quality=85)
    (root / "broken.jpg").write_bytes(b"not a photo")


def _cfg(src, out, package, **kw) -> ScoreConfig:
    base = dict(batch_size=4, preprocess_cpus=0.5, actor_cpus=1.0)
    return ScoreConfig(input=str(src), output=str(out), model=str(package), **{**base, **kw})


def test_review_set_holds_the_unsure_rows_with_thumbnails_and_overlays(
    ray_cluster, tmp_path, capsys
):
    package = make_package(tmp_path / "pkg", num_classes=4, seed=5, temperature=1.5)
    src, out = tmp_path / "in", tmp_path / "out"
    _photos(src)
    first = run_scoring(_cfg(src, out, package))
    assert "review" not in first and not (out / "review").exists()  # off by default
    preds = pq.read_table(out / "predictions").to_pandas()
    ok = preds[preds["ok"]]
    threshold = float(np.median(ok["confidence"]))

    # everything is reused: the review set is built from rows scored by the first run
    second = run_scoring(
        _cfg(src, out, package, resume=True, review_below=threshold, explain_lowest=1)
    )
    expected = ok[ok["confidence"] < threshold].sort_values(["confidence", "path"])
    assert 0 < len(expected) < len(ok)
    review = pq.read_table(out / "review" / "review.parquet")
    assert review.schema.equals(REVIEW_SCHEMA)
    rows = review.to_pylist()
    assert [r["path"] for r in rows] == list(expected["path"])  # least sure first
    assert second["review"] == {
        "threshold": threshold, "rows": len(expected), "thumbnails_failed": 0, "overlays": 1,
    }  # fmt: skip
    assert str(src / "broken.jpg") not in {r["path"] for r in rows}
    assert f"; {len(expected)} to review in review/" in capsys.readouterr().out
    by_path = expected.set_index("path")
    for row in rows:
        want = by_path.loc[row["path"]]
        assert (
            row["confidence"] == pytest.approx(want["confidence"]) and row["confidence"] < threshold
        )
        assert row["species"] == want["species"] == row["top_k"][0]["species"]
        assert [t["label"] for t in row["top_k"]] == [t["label"] for t in want["top_k"]]
        thumb = Image.open(io.BytesIO(row["thumbnail"]))
        original = Image.open(row["path"])
        assert thumb.format == "JPEG" and max(thumb.size) == THUMBNAIL_SIDE
        assert thumb.size[0] / thumb.size[1] == pytest.approx(
            original.size[0] / original.size[1], abs=0.02
        )
    # the explained photo (the least sure) carries its overlay, the same bytes as explanations/
    index = json.loads((out / "explanations" / "index.json").read_text())
    assert rows[0]["path"] == index["items"][0]["path"]
    assert rows[0]["overlay"] == "explanations/" + index["items"][0]["overlay"]
    assert rows[0]["overlay_png"] == (out / rows[0]["overlay"]).read_bytes()
    assert all(r["overlay"] is None and r["overlay_png"] is None for r in rows[1:])

    # a later run without --review-below leaves no stale review set behind
    run_scoring(_cfg(src, out, package, resume=True))
    assert not (out / "review").exists()


def test_review_set_in_a_bucket_output(ray_cluster, s3_bucket, tmp_path):
    from birdray import storage

    package = make_package(tmp_path / "pkg", num_classes=3, seed=2)
    photos = f"{s3_bucket}/review-photos"
    fs, root = storage.filesystem(photos)
    for i in range(3):
        with fs.open_output_stream(f"{root}/b{i}.jpg") as stream:
            stream.write(jpeg_bytes(color=(60 * i, 90, 200)))
    output = f"{s3_bucket}/review-out"
    summary = run_scoring(_cfg(photos, output, package, review_below=1.0))
    review = read_review(output).to_pylist()  # read back from the bucket, not the mirror
    assert summary["review"]["rows"] == len(review) == 3
    assert {r["path"] for r in review} == {f"{photos}/b{i}.jpg" for i in range(3)}
    assert all(Image.open(io.BytesIO(r["thumbnail"])).format == "JPEG" for r in review)
