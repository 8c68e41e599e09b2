"""The feedback dataset (``birdray.feedback.store``) in a folder and in a bucket (moto S3).

Writers only ever add files; the same image answered twice is one row, the newest answer, when
read. A temporary left by a crashed local writer is not read as data.
"""

from __future__ import annotations

import uuid

import pytest

from birdray.feedback.store import Feedback, append, feedback_files, read_all, read_feedback


def _fill(location: str) -> None:
    append(location, [Feedback(b"img-a", "a.jpg", "v0001", "001.A", "001.A")])
    append(location, [Feedback(b"img-b", "b.jpg", "v0001", "001.A", "not_a_bird", "a cat")])
    append(location, [Feedback(b"img-a", "a2.jpg", "v0001", "001.A", "002.B", "looked again")])


def _check(location: str) -> None:
    assert read_all(location).num_rows == 3  # append-only: nothing was rewritten
    assert len(feedback_files(location)) == 3
    rows = {r["file"]: r for r in read_feedback(location).to_pylist()}
    assert set(rows) == {"a2.jpg", "b.jpg"}  # one row per image, the newest answer
    assert rows["a2.jpg"]["answer"] == "002.B" and rows["a2.jpg"]["verdict"] == "corrected"
    assert rows["a2.jpg"]["image"] == b"img-a" and rows["a2.jpg"]["note"] == "looked again"
    assert rows["b.jpg"]["verdict"] == "not_a_bird" and len(rows["b.jpg"]["sha256"]) == 64


def test_folder_store_appends_and_dedupes_by_hash_on_read(tmp_path):
    location = str(tmp_path / "feedback")
    assert read_feedback(location).num_rows == 0  # nothing yet: an empty table, not an error
    _fill(location)
    (tmp_path / "feedback" / ".half.parquet.123.tmp").write_bytes(b"torn")  # a crashed writer
    _check(location)


@pytest.mark.timeout(120)
def test_bucket_store_appends_and_dedupes_by_hash_on_read(s3_bucket):
    location = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/feedback"
    _fill(location)
    _check(location)
