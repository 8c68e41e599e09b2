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


# ---- a store that is not one: one line naming the path and what was expected ----------------


def _one_line(err: str, job: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"birdray {job}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_ray(monkeypatch):
    """These errors are all found before Ray starts."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)


def _bad_parts(tmp_path) -> dict[str, tuple[str, str]]:
    """Stores with one good answer and one bad part: (location, bad file, what is said)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stores = {}
    for kind in ("empty", "other_schema", "not_parquet"):
        location = tmp_path / kind
        append(str(location), [Feedback(b"img-a", "a.jpg", "v0001", "001.A", "002.B")])
        bad = location / "00000000000000000001-bad.parquet"  # sorts first: read before the good
        if kind == "empty":
            bad.write_bytes(b"")
            said = "is empty (0 bytes)"
        elif kind == "other_schema":
            pq.write_table(pa.table({"image_id": [1], "label": [0]}), bad)
            said = "Parquet file of another schema (no sha256"
        else:
            bad.write_bytes(b"PAR1 but not really")
            said = "is not a readable Parquet file"
        stores[kind] = (str(location), str(bad), said)
    return stores


def test_a_bad_part_is_named_and_the_others_are_said_to_be_intact(tmp_path):
    from birdray.feedback.store import FeedbackError

    for location, bad, said in _bad_parts(tmp_path).values():
        with pytest.raises(FeedbackError) as caught:
            read_feedback(location)
        message = str(caught.value)
        assert message.startswith(bad) and said in message, message
        assert "the other 1 of 2 files are readable" in message  # not silently dropped
        assert "\n" not in message


def test_a_file_or_a_dataset_is_not_a_store(tmp_path):
    from birdray.feedback.store import FeedbackError

    (tmp_path / "answers.parquet").write_bytes(b"")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text("{}")
    with pytest.raises(FeedbackError, match=r"answers.parquet is a file, not a folder; expected"):
        read_all(str(tmp_path / "answers.parquet"))
    with pytest.raises(FeedbackError, match=r"/ds is an ingested dataset \(it has manifest.json"):
        read_all(str(tmp_path / "ds"))


def test_feedback_report_on_a_bad_store_is_one_line(tmp_path, no_ray, capsys):
    """Before: a traceback from pyarrow (or from ``cast``) for each of these."""
    from birdray.cli import main

    for location, bad, said in _bad_parts(tmp_path).values():
        assert main(["feedback", "report", "--feedback", location]) == 1
        line = _one_line(capsys.readouterr().err, "feedback")
        assert bad in line and said in line
    (tmp_path / "answers.parquet").write_bytes(b"")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text("{}")
    for given, said in (("answers.parquet", "is a file"), ("ds", "is an ingested dataset")):
        assert main(["feedback", "report", "--feedback", str(tmp_path / given)]) == 2
        line = _one_line(capsys.readouterr().err, "feedback")
        assert f"--feedback: {tmp_path / given} {said}" in line and "feedback_dir" in line


def test_ingest_with_a_bad_store_is_one_line_before_ray(tmp_path, no_ray, capsys):
    from PIL import Image

    from birdray.cli import main

    for species in ("robin", "wren"):
        (tmp_path / "photos" / species).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (60 * i, 90, 30)).save(
                tmp_path / "photos" / species / f"{i}.png"
            )
    ingest = ["ingest", "--source", str(tmp_path / "photos"), "--out", str(tmp_path / "out")]
    location, bad, _ = _bad_parts(tmp_path)["empty"]
    assert main([*ingest, "--feedback", location]) == 1
    assert bad in _one_line(capsys.readouterr().err, "ingest")
    (tmp_path / "answers").write_text("not a folder")
    assert main([*ingest, "--feedback", str(tmp_path / "answers")]) == 2
    assert "--feedback: " in _one_line(capsys.readouterr().err, "ingest")


# ---- a store that cannot be written now (2026-12-07: it was a 500 with a traceback in Serve) --


def test_a_store_that_cannot_be_written_says_why_in_one_line_and_keeps_nothing(tmp_path):
    from birdray.feedback.store import FeedbackUnavailable

    (tmp_path / "feedback").write_text("x")  # the folder replaced by a plain file
    item = Feedback(b"img-a", "a.jpg", "v0001", "001.A", "001.A")
    with pytest.raises(FeedbackUnavailable) as info:
        append(str(tmp_path / "feedback"), [item])
    assert info.value.reason == "a file stands where its folder should be"
    assert str(tmp_path / "feedback") in str(info.value) and str(tmp_path) not in info.value.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback"]


@pytest.mark.timeout(120)
def test_a_bucket_that_is_not_there_is_unavailable_not_a_crash(s3_bucket):
    from birdray.feedback.store import FeedbackUnavailable

    item = Feedback(b"img-a", "a.jpg", "v0001", "001.A", "001.A")
    with pytest.raises(FeedbackUnavailable) as info:
        append("s3://no-such-bucket-for-feedback/feedback", [item])
    reason = info.value.reason
    assert "\n" not in reason and "no-such-bucket-for-feedback" not in reason, reason
    assert 0 < len(reason) <= 200


def test_an_answer_that_is_a_class_named_like_a_reserved_answer_is_a_species(tmp_path):
    """A class ``not_a_bird`` (an own-photos folder name): Serve says it is a class
    (``is_class``), the verdict follows, and ingest reads it by the verdict."""
    from birdray.feedback.store import is_reserved

    assert Feedback(b"x", "x.jpg", "v1", "not_a_bird", "not_a_bird").verdict == "not_a_bird"
    as_class = Feedback(b"x", "x.jpg", "v1", "not_a_bird", "not_a_bird", is_class=True)
    assert as_class.verdict == "confirmed"
    assert Feedback(b"x", "x.jpg", "v1", "Robin", "unsure", is_class=True).verdict == "corrected"
    assert Feedback(b"x", "x.jpg", "v1", "Robin", "unsure", is_class=False).verdict == "unsure"
    with pytest.raises(ValueError):
        Feedback(b"x", "x.jpg", "v1", "Robin", "Wren", is_class=False)
    assert is_reserved("unsure", "unsure") and not is_reserved("corrected", "unsure")
    assert is_reserved(None, "not_a_bird") and not is_reserved(None, "Robin")


def test_the_feedback_report_counts_a_class_named_unsure_as_a_species():
    """An own-photos model may have a class ``unsure``: its rows (verdict confirmed/corrected)
    are answers about that species; only a reserved verdict is "unsure" the answer."""
    from birdray.feedback.report import species_report

    rows = [
        {"answer": "unsure", "predicted": "unsure", "verdict": "confirmed"},
        {"answer": "unsure", "predicted": "robin", "verdict": "corrected"},
        {"answer": "unsure", "predicted": "robin", "verdict": "unsure"},
        {"answer": "not_a_bird", "predicted": "robin", "verdict": "not_a_bird"},
        {"answer": "unsure", "predicted": "robin"},  # stored before verdicts: the answer decides
    ]
    report = species_report(rows)
    assert report["unsure"] == 2 and report["not_a_bird"] == 1
    assert report["species"]["unsure"]["answers"] == 2
    assert report["species"]["unsure"]["predicted_instead"] == {"robin": 1}
