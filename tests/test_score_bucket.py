"""Batch scoring whose photos and results live in a bucket (the session's local moto S3 server).

Results are published ``_SUCCESS`` last from a local mirror; a finished result in the bucket is
what "already finished" and ``--resume`` go by, from whichever machine the next run starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from birdray import storage
from birdray.scoring import remote
from birdray.scoring.job import ScoreConfig, run_scoring
from birdray.scoring.output import OutputError
from tests.cub_fixture import jpeg_bytes
from tests.model_fixture import make_package

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _put(uri: str, data: bytes) -> None:
    fs, path = storage.filesystem(uri)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def _exists(uri: str) -> bool:
    return storage.file_type(uri) != pafs.FileType.NotFound


def _remote_rows(uri: str):
    fs, path = storage.filesystem(f"{uri}/predictions")
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()


def test_results_go_to_the_bucket_success_last_and_resume_from_it(ray_cluster, s3_bucket, tmp_path):
    package = make_package(tmp_path / "pkg", num_classes=3)
    photos = f"{s3_bucket}/photos"
    for i in range(4):
        _put(f"{photos}/bird_{i}.jpg", jpeg_bytes(color=(50 * i, 90, 200)))
    _put(f"{photos}/broken.jpg", b"not a photo")
    output = f"{photos}/scored"  # inside the input: its own files must never be scored
    cfg = dict(input=photos, output=output, model=str(package), batch_size=2,
               preprocess_cpus=0.5, actor_cpus=1.0)  # fmt: skip

    first = run_scoring(ScoreConfig(**cfg, explain_lowest=1))
    assert first["output"] == output and first["files_seen"] == 5 and first["failed"] == 1
    assert _exists(f"{output}/_SUCCESS") and _exists(f"{output}/summary.json")
    assert _exists(f"{output}/explanations/index.json")  # a PNG now sits under the input
    rows = _remote_rows(output)
    assert sorted(rows["path"]) == sorted(
        [f"{photos}/bird_{i}.jpg" for i in range(4)] + [f"{photos}/broken.jpg"]
    )
    with pytest.raises(OutputError, match="already holds a finished run"):
        run_scoring(ScoreConfig(**cfg))

    # a later run on another machine: nothing local survives, the bucket is the truth
    shutil.rmtree(remote.mirror_of(output))
    _put(f"{photos}/bird_new.jpg", jpeg_bytes(color=(10, 200, 10)))
    again = run_scoring(ScoreConfig(**cfg, resume=True))
    assert again["files_seen"] == 6  # the output's PNG, JSON and Parquet were not listed
    assert again["resume"] == {"reused": 4, "scored_now": 2}  # the new file and the broken one
    assert len(_remote_rows(output)) == 6

    from birdray.dashboard.stage_reports import scoring_results  # the dashboard reads the result

    shown = scoring_results(output)
    assert shown["state"] == "finished" and len(shown["rows"]) == 6
    assert shown["summary"]["run_id"] == again["run_id"]
    assert scoring_results(f"{s3_bucket}/nothing-here")["state"] == "missing"


def _finished(mirror: Path, run: str) -> None:
    (mirror / "predictions").mkdir(parents=True, exist_ok=True)
    (mirror / "predictions" / "part-00000.parquet").write_bytes(f"rows {run}".encode())
    (mirror / "summary.json").write_text(f'{{"run_id": "{run}"}}')
    (mirror / "_SUCCESS").write_text(f'{{"run_id": "{run}"}}')


def test_a_publish_that_dies_midway_never_looks_finished(s3_bucket, tmp_path, monkeypatch):
    mirror, uri = tmp_path / "mirror", f"{s3_bucket}/publish-test"
    _finished(mirror, "v1")
    remote.publish(mirror, uri, seen=None)
    assert remote.marker(uri) == b'{"run_id": "v1"}'

    _finished(mirror, "v2")
    copies = []
    real_copy = remote.pafs.copy_files

    def dies_on_the_second_copy(*args, **kwargs):
        copies.append(args[0])
        if len(copies) == 2:
            raise OSError("connection reset")
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(remote.pafs, "copy_files", dies_on_the_second_copy)
    with pytest.raises(OSError, match="connection reset"):
        remote.publish(mirror, uri, seen=b'{"run_id": "v1"}')
    monkeypatch.undo()
    # new predictions, no summary (deleted, not yet copied), and no _SUCCESS: "unfinished"
    assert storage.read_bytes(f"{uri}/predictions/part-00000.parquet") == b"rows v2"
    assert not _exists(f"{uri}/summary.json") and remote.marker(uri) is None

    from birdray.dashboard.stage_reports import scoring_results

    assert scoring_results(uri)["state"] == "running"  # shown as still being written
    reader = tmp_path / "reader"
    _finished(reader, "v1")  # a mirror that still holds v1 as finished
    assert not remote.pull(uri, reader)  # the bucket has no finished result now...
    assert not (reader / "_SUCCESS").exists()  # ...so neither does the mirror
    assert (reader / "predictions" / "part-00000.parquet").exists()  # rows kept for --resume

    remote.publish(mirror, uri, seen=None)  # the next attempt completes it
    assert remote.marker(uri) == b'{"run_id": "v2"}'
    assert storage.read_bytes(f"{uri}/summary.json") == b'{"run_id": "v2"}'
    assert remote.pull(uri, reader) and (reader / "summary.json").read_text() == '{"run_id": "v2"}'

    _finished(mirror, "v3")  # a run that started before v2 was published must not clobber it
    with pytest.raises(OutputError, match="another run published"):
        remote.publish(mirror, uri, seen=b'{"run_id": "v1"}')
    assert remote.marker(uri) == b'{"run_id": "v2"}'


def test_a_damaged_shard_of_a_dataset_in_a_bucket_is_named_by_its_uri(s3_bucket, tmp_path):
    """Each shard's footer is read through the bucket's client before any Ray work: a shard of
    another schema is one error naming it; a README beside the shards is not data."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from birdray.scoring.sources import SourceError, list_inputs, open_source

    uri = f"{s3_bucket}/shard-check"
    manifest = {"schema_version": 1, "shards_dir": "shards-1", "splits": {"val": {}},
                "counts": {}, "class_names": ["001.A"], "quarantine": {}}  # fmt: skip
    _put(f"{uri}/manifest.json", json.dumps(manifest).encode())
    table = pa.table({"image_id": [1, 2], "path": ["a.jpg", "b.jpg"], "image": [b"1", b"2"]})
    pq.write_table(table, tmp_path / "good.parquet")
    _put(f"{uri}/shards-1/split=val/good.parquet", (tmp_path / "good.parquet").read_bytes())
    _put(f"{uri}/shards-1/split=val/README.txt", b"not data")
    listing = list_inputs(open_source(uri, "val"), None, exclude=None)
    assert listing["path"].to_pylist() == ["a.jpg", "b.jpg"]
    pq.write_table(pa.table({"foo": [1]}), tmp_path / "foreign.parquet")
    _put(f"{uri}/shards-1/split=val/foreign.parquet", (tmp_path / "foreign.parquet").read_bytes())
    with pytest.raises(SourceError, match=f"shard {uri}/shards-1/split=val/foreign.parquet lacks"):
        open_source(uri, "val")


def _one_photo_and_a_model(tmp_path: Path) -> tuple[Path, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(jpeg_bytes())
    return photos, make_package(tmp_path / "pkg", num_classes=3)


def test_a_prefix_of_someone_elses_objects_is_refused_and_left_alone(s3_bucket, tmp_path):
    """Publishing replaces every result name under the prefix: a team's ``summary.json`` and
    ``review/notes.txt`` there were overwritten and deleted (the local check skipped buckets)."""
    uri = f"{s3_bucket}/team-space"
    _put(f"{uri}/summary.json", b"their summary")
    _put(f"{uri}/review/notes.txt", b"their notes")
    photos, package = _one_photo_and_a_model(tmp_path)
    cfg = ScoreConfig(input=str(photos), output=uri, model=str(package), registry="")
    with pytest.raises(OutputError, match=r"not a birdray result \(review, summary.json\)"):
        run_scoring(cfg)
    assert storage.read_bytes(f"{uri}/summary.json") == b"their summary"
    assert storage.read_bytes(f"{uri}/review/notes.txt") == b"their notes"
    mirror = tmp_path / "mirror"
    assert remote.foreign_prefix(f"{s3_bucket}/nothing-here", mirror) == ""  # a new prefix
    _finished(mirror, "v1")  # this machine's committed run whose publish died: it may finish
    assert remote.foreign_prefix(uri, mirror) == ""


def test_a_prefix_with_another_tools_success_is_refused_and_left_alone(s3_bucket, tmp_path):
    """Spark and Hadoop write an empty ``_SUCCESS`` beside their part files: any ``_SUCCESS`` made
    the prefix birdray's, so a publish (``--overwrite``) replaced it. Only birdray's own marker
    (``output.is_result``, as for a folder) makes a prefix birdray's now."""
    uri = f"{s3_bucket}/spark-out"
    _put(f"{uri}/_SUCCESS", b"")
    _put(f"{uri}/part-0000.parquet", b"PAR1 their rows")
    photos, package = _one_photo_and_a_model(tmp_path)
    for flag in ("overwrite", "resume"):
        cfg = ScoreConfig(input=str(photos), output=uri, model=str(package), registry="")
        setattr(cfg, flag, True)
        with pytest.raises(OutputError, match=r"not a birdray result \(_SUCCESS, part-0000"):
            run_scoring(cfg)
    assert storage.read_bytes(f"{uri}/_SUCCESS") == b""
    assert storage.read_bytes(f"{uri}/part-0000.parquet") == b"PAR1 their rows"
    mirror = tmp_path / "mirror"
    _finished(mirror, "v1")  # even beside a committed mirror: the bucket's _SUCCESS is theirs
    assert "not a birdray result" in remote.foreign_prefix(uri, mirror)
    assert not remote.pull(uri, mirror)  # not a finished result to show or resume from
    from birdray.dashboard.stage_reports import scoring_results

    assert scoring_results(uri)["state"] == "foreign"  # not "a job may still be writing"
    assert not (mirror / "_SUCCESS").exists() and (mirror / "summary.json").exists()
    _put(f"{uri}/_SUCCESS", b'{"run_id": "20260101-120000-0a1b2c", "committed_at": 1.0}')
    assert remote.foreign_prefix(uri, tmp_path / "fresh") == ""  # birdray's marker: birdray's


def test_a_huge_success_object_is_someone_elses_and_not_read_whole(s3_bucket, monkeypatch):
    """birdray's ``_SUCCESS`` is ~100 bytes; a bucket's was read whole (a 2 GB object would have
    been held in memory to decide it is not ours). One byte over the cap decides it now."""
    uri = f"{s3_bucket}/huge-marker"
    big = b'{"run_id": "20260101-120000-0a1b2c", "pad": "' + b"x" * (2 << 20) + b'"}'
    _put(f"{uri}/_SUCCESS", big)
    _put(f"{uri}/part-0000.parquet", b"PAR1 their rows")
    seen = remote.marker(uri)
    assert seen is not None and len(seen) == remote.MARKER_MAX_BYTES + 1 and big.startswith(seen)
    assert "not a birdray result" in remote.foreign_prefix(uri, Path("/nonexistent-mirror"))


def test_an_output_spelt_with_escapes_is_still_left_out_of_the_listing(s3_bucket):
    """``--input s3://b/my%20photos --output s3://b/my%20photos/scored`` (a space must be
    escaped): the listing's paths are the store's decoded keys (``my photos/...``) and the output
    was compared as typed, so a rerun scored its own overlays."""
    from birdray.scoring.places import clash, odd_bucket_path
    from birdray.scoring.sources import list_inputs, open_source

    photos, output = f"{s3_bucket}/my%20photos", f"{s3_bucket}/my%20photos/scored"
    _put(f"{s3_bucket}/my photos/a.jpg".replace(" ", "%20"), jpeg_bytes())
    _put(f"{output}/explanations/a.png", b"an overlay of ours")
    assert clash(output, photos) == "" and odd_bucket_path(output) == ""  # a subfolder: allowed
    listed = list_inputs(open_source(photos), None, exclude=output)["path"].to_pylist()
    assert listed == [f"{s3_bucket}/my photos/a.jpg"], listed
