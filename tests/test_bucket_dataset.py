"""A dataset that lives in a bucket: ingest writes it there, every consumer reads it from there.

The bucket is a local moto S3 server speaking the real S3 protocol over HTTP (``s3_bucket`` in
conftest); pyarrow's S3 client in the driver and in every Ray worker reaches it through
``AWS_ENDPOINT_URL``, as it would reach AWS, so the same code paths run as on a cluster whose
dataset is ``s3://bucket/cub``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from birdray import storage
from birdray.data.download import ArchiveError
from birdray.data.ingest import IngestConfig, run_ingest
from birdray.data.manifest import (
    DatasetError,
    is_dataset,
    load_manifest,
    manifest_checksum,
    read_split,
)
from tests.cub_fixture import jpeg_bytes, write_layout

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture
def bucket(s3_bucket):
    return s3_bucket


def _layout(root: Path) -> Path:
    images = [
        (c, jpeg_bytes(color=(60 * c, 90, 200 - 40 * c)), t)
        for c in (1, 2, 3)
        for t in (1, 1, 1, 1, 0, 0)
    ]
    images.append((2, b"not an image", True))  # quarantined: listed in the manifest, no row
    return write_layout(root, images)


def test_ingest_writes_the_same_dataset_into_a_bucket(ray_cluster, bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI mistaken for a path would show up here as ./s3:
    source = str(_layout(tmp_path / "src").parent)
    local = tmp_path / "local"
    uri = f"{bucket}/cub"
    run_ingest(IngestConfig(source=source, out=str(local), val_fraction=0.25))
    assert not is_dataset(uri)
    with pytest.raises(DatasetError, match="no manifest.json"):
        load_manifest(uri)

    archive = f"{bucket}/raw/CUB_200_2011.tgz"  # the source, too, can sit in the bucket
    fs, path = storage.filesystem(archive)
    with fs.open_output_stream(path) as stream, tarfile.open(fileobj=stream, mode="w:gz") as tar:
        tar.add(Path(source) / "CUB_200_2011", arcname="CUB_200_2011")
    with pytest.raises(FileNotFoundError, match="is a folder: in a bucket, give the archive"):
        run_ingest(IngestConfig(source=f"{bucket}/raw", out=uri))
    md5 = hashlib.md5(storage.read_bytes(archive), usedforsecurity=False).hexdigest()
    with pytest.raises(ArchiveError, match="refusing it"):
        run_ingest(IngestConfig(source=archive, md5="0" * 32, out=uri))
    manifest_uri = run_ingest(IngestConfig(source=archive, md5=md5, out=uri, val_fraction=0.25))
    assert manifest_uri == f"{uri}/manifest.json"
    in_bucket, on_disk = load_manifest(uri), load_manifest(local)
    assert in_bucket["content_checksum"] == on_disk["content_checksum"] != ""
    assert (
        in_bucket["counts"] == on_disk["counts"] == {"listed": 19, "ingested": 18, "quarantined": 1}
    )
    assert in_bucket["quarantine"][0]["reason"].startswith("not_an_image")
    assert storage.child_dirs(uri) == [in_bucket["shards_dir"]]  # no quarantine folder left
    assert storage.child_dirs(f"{uri}/{in_bucket['shards_dir']}") == [
        "split=test",
        "split=train",
        "split=val",
    ]
    for split, info in in_bucket["splits"].items():
        assert read_split(uri, split).count() == info["rows"]  # Ray Data reads it from S3
        assert read_split(uri, split, list_once=True).count() == info["rows"]  # as training does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "src"]

    before = manifest_checksum(uri)  # same source, same settings: nothing is rewritten
    again = IngestConfig(source=archive, md5=md5, out=uri, val_fraction=0.25)
    assert run_ingest(again) == manifest_uri
    assert manifest_checksum(uri) == before
    run_ingest(IngestConfig(**{**again.__dict__, "force": True}))
    again = load_manifest(uri)  # a forced run replaces the shards; the old ones are deleted
    assert again["shards_dir"] != in_bucket["shards_dir"]
    assert storage.child_dirs(uri) == [again["shards_dir"]]
    assert again["content_checksum"] == in_bucket["content_checksum"]

    fs, path = storage.filesystem(f"{uri}/{again['shards_dir']}")
    fs.delete_dir(path)  # shards gone behind the manifest's back: refused, not half-read
    with pytest.raises(DatasetError, match="missing shards"):
        load_manifest(uri)


@pytest.mark.slow
def test_evaluate_score_and_explain_read_a_bucket_dataset(
    ray_cluster, trained_package, bucket, tmp_path, monkeypatch
):
    """Training from a bucket is in test_train's GPU test; here, the model's other readers."""
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.explain.job import load_dataset_image
    from birdray.scoring.job import ScoreConfig, run_scoring

    monkeypatch.chdir(tmp_path)
    uri = f"{bucket}/trained"
    fs, path = storage.filesystem(uri)
    pafs.copy_files(str(trained_package.dataset), path, destination_filesystem=fs)
    manifest = load_manifest(uri)
    package = tmp_path / "package"  # evaluation recalibrates it: keep the shared one as it is
    shutil.copytree(trained_package.package, package)

    report = run_evaluation(
        EvaluateConfig(
            model=str(package),
            dataset=uri,
            batch_size=16,
            calibrate=False,
            out=str(tmp_path / "eval"),
        )
    )
    metrics = json.loads((Path(report["report"]) / "metrics.json").read_text())
    assert metrics["count"] == manifest["splits"]["test"]["rows"]
    assert report["test_top1"] == pytest.approx(trained_package.eval_summary["test_top1"])

    scored = run_scoring(
        ScoreConfig(
            input=uri,
            output=str(tmp_path / "scored"),
            model=str(package),
            batch_size=8,
            preprocess_cpus=0.5,
            actor_cpus=1.0,
        )
    )
    assert scored["input_kind"] == "dataset"
    assert scored["files_seen"] == scored["scored"] == manifest["splits"]["test"]["rows"]

    image_id = int(read_split(uri, "test", columns=["image_id"]).take(1)[0]["image_id"])
    image, row = load_dataset_image(uri, image_id)  # an explanation's input and its parts
    assert image.size[0] > 0 and row["image_id"] == image_id and len(row["parts"]) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "package", "scored"]
