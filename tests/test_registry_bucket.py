"""The registry in a bucket (the session's local moto S3 server), as ``cluster/README.md`` puts it.

Object stores cannot rename a folder, so registering copies to the final prefix and commits with a
marker written last; the production pointer is an append-only log. The end-to-end test walks the
user's path: register a trained model, ``evaluate --model latest --registry s3://...``, promote,
then Serve and batch scoring resolve ``production`` from the bucket with the evaluated calibration.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid

import numpy as np
import pyarrow.dataset as pads
import pytest
import requests

from birdray import storage
from birdray.registry import (
    RegistryConfig,
    RegistryError,
    list_versions,
    local_copy,
    promote,
    read_pointer,
    register,
    resolve,
    rollback,
    run_registry,
    version_metadata,
)
from birdray.registry import versions as registry_versions
from tests.model_fixture import make_package
from tests.serve_fixtures import deployed, post_images, small_app_args


def _fresh(bucket: str) -> str:
    return f"{bucket}/{uuid.uuid4().hex[:8]}/registry"


def _hash(package) -> str:
    return json.loads((package / "metadata.json").read_text())["content_hash"]


def test_register_promote_rollback_list_resolve_in_a_bucket(s3_bucket, tmp_path):
    reg = _fresh(s3_bucket)
    packages = [make_package(tmp_path / f"p{i}", seed=i) for i in range(3)]
    assert [register(reg, p, {"trial": i}) for i, p in enumerate(packages)] == [
        "v0001",
        "v0002",
        "v0003",
    ]
    assert list_versions(reg) == ["v0001", "v0002", "v0003"]
    promote(reg, "v0001")
    promote(reg, "v0003")
    path = resolve("production", reg)  # a local, verified copy of the bucket's version
    assert json.loads((path / "metadata.json").read_text())["content_hash"] == _hash(packages[2])
    assert _hash(resolve("latest", reg)) == _hash(packages[2])
    assert rollback(reg)["version"] == "v0001"
    assert _hash(resolve("production", reg)) == _hash(packages[0])
    rows = run_registry(RegistryConfig(action="list", registry=reg))
    assert [(r["version"], r["production"]) for r in rows] == [
        ("v0001", True),
        ("v0002", False),
        ("v0003", False),
    ]
    shown = run_registry(RegistryConfig(action="show", registry=reg, version="v0002"))
    assert shown["version"] == "v0002" and shown["provenance"]["trial"] == 1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(reg)
    with pytest.raises(RegistryError, match="vNNNN"):
        run_registry(RegistryConfig(action="promote", registry=reg, version="../v0001"))
    with pytest.raises(RegistryError, match="no version"):
        promote(reg, "v0042")


def test_a_crash_mid_register_is_invisible_in_a_bucket(s3_bucket, tmp_path, killed_register):
    reg = _fresh(s3_bucket)
    register(reg, make_package(tmp_path / "a", seed=1))
    killed_register(reg, make_package(tmp_path / "b", seed=2))
    files = storage.list_files(f"{reg}/models/v0002")
    assert "model.safetensors" in files and "metadata.json" in files  # copied, not committed
    assert list_versions(reg) == ["v0001"]
    assert resolve("latest", reg).exists()
    assert version_metadata(reg, "v0001").version == "v0001"
    with pytest.raises(RegistryError, match="no version"):
        resolve("v0002", reg)
    assert register(reg, make_package(tmp_path / "c", seed=3)) == "v0003"
    cleaned = run_registry(RegistryConfig(action="clean", registry=reg, stale_hours=0))
    assert [e["version"] for e in cleaned["removed"]] == ["v0002"]  # the leftover, not v0003
    assert storage.list_files(f"{reg}/models/v0002") == [registry_versions.ABANDONED]
    assert list_versions(reg) == ["v0001", "v0003"]
    assert register(reg, make_package(tmp_path / "d", seed=4)) == "v0004"


def test_racing_writers_in_a_bucket_lose_nothing(s3_bucket, tmp_path):
    reg = _fresh(s3_bucket)
    packages = [make_package(tmp_path / f"p{i}", seed=30 + i) for i in range(3)]
    registered: list[str] = []
    errors: list[Exception] = []

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    def start(targets):
        threads = [threading.Thread(target=run, args=t) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    start([(lambda p=p: registered.append(register(reg, p)),) for p in packages])
    assert not errors and len(set(registered)) == 3  # numbers may skip after a race, never repeat
    assert sorted(registered, key=lambda v: int(v[1:])) == list_versions(reg)
    for p in packages:  # each version holds exactly one writer's files
        version = registry_versions.find_version(reg, _hash(p))
        assert _hash(resolve(version, reg)) == _hash(p)

    def promoter(version):
        for _ in range(4):
            promote(reg, version)

    start([(promoter, v) for v in registered])
    assert not errors
    pointer = read_pointer(reg)
    assert pointer["entries"] == 12  # every promoter's every entry landed
    assert sorted(pointer["history"]) == sorted(registered) and pointer["version"] in registered


def test_aliases_in_a_bucket_race_and_roll_back_per_alias(s3_bucket, tmp_path):
    from birdray.registry import read_aliases, set_alias

    reg = _fresh(s3_bucket)
    versions = [register(reg, make_package(tmp_path / f"p{i}", seed=40 + i)) for i in range(2)]
    promote(reg, versions[0])
    threads = [
        threading.Thread(target=lambda v=v: [set_alias(reg, "candidate", v) for _ in range(3)])
        for v in versions
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    aliases = read_aliases(reg)
    assert aliases["candidate"]["entries"] == 6  # racing movers: every entry landed
    assert sorted(aliases["candidate"]["history"]) == versions
    run_registry(RegistryConfig(action="alias", args=["set", "candidate", "v0002"], registry=reg))
    assert resolve("candidate", reg).name != "v0002"  # a local copy of the bucket's version
    assert version_metadata(reg, "v0002").version == "v0002"
    assert (
        run_registry(RegistryConfig(action="promote", args=["candidate"], registry=reg))["version"]
        == "v0002"
    )
    assert rollback(reg)["version"] == "v0001"  # production back; candidate untouched
    assert read_aliases(reg)["candidate"]["version"] == "v0002"
    with pytest.raises(RegistryError, match="not a valid alias name"):
        set_alias(reg, "latest", "v0001")
    assert sorted(read_aliases(reg)) == ["candidate", "production"]


def test_dashboard_lists_a_bucket_registry_without_downloading_weights(
    s3_bucket, tmp_path, monkeypatch
):
    from birdray.dashboard.stage_reports import registry_versions

    reg = _fresh(s3_bucket)
    for i in range(2):
        register(reg, make_package(tmp_path / f"p{i}", seed=50 + i), {"run": f"r{i}"})
    promote(reg, "v0002")
    monkeypatch.setenv("BIRDRAY_CACHE", str(tmp_path / "cache"))
    shown = registry_versions(reg)
    assert [(r["version"], r["production"]) for r in shown["rows"]] == [
        ("v0001", False),
        ("v0002", True),
    ]
    assert not (tmp_path / "cache").exists()  # metadata only: no version was copied down


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bucket_registry_end_to_end(trained_package, s3_bucket, serve_http, tmp_path):
    """Train's registration, evaluate into the bucket, the Tune hand-off, Serve and scoring."""
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.evaluate.metrics import softmax_np
    from birdray.model.crop import decode_for_model
    from birdray.model.inference import Predictor
    from birdray.model.package import update_metadata
    from birdray.scoring.job import ScoreConfig, run_scoring
    from birdray.tune.promote import register_winner

    reg = _fresh(s3_bucket)
    # what `birdray train --registry` registers: the package before any evaluation
    raw = tmp_path / "raw"
    shutil.copytree(trained_package.package, raw, ignore=shutil.ignore_patterns("eval"))
    update_metadata(raw, temperature=1.0)
    version = register(reg, raw, {"run": "trained"})
    evaluation = run_evaluation(
        EvaluateConfig(model="latest", registry=reg, dataset=str(trained_package.dataset))
    )
    temperature = evaluation["temperature"]
    assert temperature != 1.0 and evaluation["version"] == version
    assert evaluation["report"].startswith(f"{reg}/models/{version}/evaluations/")
    assert "metrics.json" in storage.list_files(evaluation["report"])  # reports kept
    stored = json.loads(storage.read_bytes(f"{reg}/models/{version}/metadata.json"))
    assert stored["temperature"] == 1.0  # the version itself is not edited
    promote(reg, version)
    view = resolve("production", reg)
    assert json.loads((view / "metadata.json").read_text())["temperature"] == temperature
    assert (view / "eval" / "reliability.png").is_file()

    predictor = Predictor(str(view), device="cpu", num_threads=1)
    config = predictor.metadata.data_config

    def shift(path) -> tuple[float, float]:  # (calibrated top confidence, its change)
        image = decode_for_model(path.read_bytes(), config).image
        logits = predictor.logits(predictor.preprocess([image]))
        logits = logits.numpy()[0]
        calibrated = float(softmax_np(logits, temperature).max())
        return calibrated, abs(calibrated - float(softmax_np(logits).max()))

    # bird0 is the first photo of a species whose answer calibration visibly moves (a photo the
    # model is sure of keeps ~1.0 at any temperature, and would not tell the two apart)
    species = sorted(p for p in (trained_package.source / "CUB_200_2011" / "images").iterdir())
    shifts = {photo: shift(photo) for photo in (sorted(f.iterdir())[0] for f in species)}
    ranked = sorted(shifts, key=lambda photo: -shifts[photo][1])
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, photo in enumerate(ranked[:2]):
        shutil.copy(photo, photos / f"bird{i}.jpg")
    calibrated, moved = shifts[ranked[0]]
    assert moved > 1e-4  # calibration shows

    with deployed(serve_http, "bucketreg", **small_app_args("production", registry=reg)) as url:
        model = requests.get(f"{url}/v1/model", timeout=30).json()
        assert model["version"] == version and model["temperature"] == temperature
        data = (photos / "bird0.jpg").read_bytes()
        resp = post_images(url, [("bird0.jpg", data, "image/jpeg")])
        assert resp.status_code == 200, resp.text
        served = resp.json()["results"][0]["prediction"]["confidence"]
        assert served == pytest.approx(calibrated, abs=1e-4)

    score_cfg = dict(batch_size=2, preprocess_cpus=0.5, actor_cpus=1.0)
    out = str(tmp_path / "scored")
    scored = run_scoring(
        ScoreConfig(input=str(photos), output=out, model="production", registry=reg, **score_cfg)
    )
    assert scored["model"]["version"] == version
    rows = pads.dataset(str(tmp_path / "scored" / "predictions")).to_table().to_pandas()
    row = rows[rows["path"].str.endswith("bird0.jpg")].iloc[0]
    assert row["confidence"] == pytest.approx(calibrated, abs=1e-4)

    # the Tune hand-off evaluates before registering: the bucket version carries it from the start
    handoff = _fresh(s3_bucket)
    first = register_winner(handoff, trained_package.package, {"sweep": "s"}, force=False)
    assert first["promoted"] and first["version"] == "v0001"
    meta = version_metadata(handoff, "v0001")
    assert meta.temperature == trained_package.eval_summary["temperature"] != 1.0
    assert (local_copy(handoff, "v0001") / "eval" / "metrics.json").is_file()
    again = register_winner(handoff, trained_package.package, {"sweep": "s"}, force=False)
    assert again == {**again, "version": "v0001", "promoted": False}
    assert list_versions(handoff) == ["v0001"] and np.isfinite(meta.temperature)


def test_a_version_copied_here_still_resolves_while_the_bucket_is_unreachable(
    s3_bucket, tmp_path, monkeypatch
):
    """A Serve replica restarted (crash, SIGKILL) while the bucket is out of reach loads the copy
    of its pinned version this machine already has, instead of failing its start forever."""
    from birdray.runtime import free_port

    monkeypatch.setenv("BIRDRAY_CACHE", str(tmp_path / "cache"))
    reg = _fresh(s3_bucket)
    packages = [make_package(tmp_path / f"p{i}", seed=i) for i in range(2)]
    for package in packages:
        register(reg, package)
    path = resolve("v0001", reg)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    assert resolve("v0001", reg) == path
    assert _hash(path) == _hash(packages[0])
    with pytest.raises(OSError):  # never copied here: the bucket's error, not a guess
        resolve("v0002", reg)


def test_an_upload_that_lost_its_weights_is_never_committed(s3_bucket, tmp_path, monkeypatch):
    """Arrow's copy can return without an error when a part of a multipart upload failed (a
    10 s outage): ``registry add`` then committed a version without its weights, exit 0, and
    re-adding found that broken version and stopped. The copy is now checked file by file."""
    reg = _fresh(s3_bucket)
    copy = storage.pafs.copy_files

    def losing_the_weights(source, destination, **kw):
        if not destination.endswith("model.safetensors"):
            copy(source, destination, **kw)

    monkeypatch.setattr(storage.pafs, "copy_files", losing_the_weights)
    package = make_package(tmp_path / "a", seed=7)
    with pytest.raises(OSError, match=r"did not arrive whole \(model.safetensors: missing\)"):
        register(reg, package)
    assert list_versions(reg) == []
    monkeypatch.setattr(storage.pafs, "copy_files", copy)
    assert register(reg, package) == "v0002" and resolve("latest", reg).exists()


@pytest.mark.timeout(90)
def test_a_bucket_that_stops_answering_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """A frozen S3 endpoint (connections accepted, nothing answered) held one HEAD for 99 s
    and an upload for over 8 minutes: Arrow retried each request ~33 times."""
    import socket

    hole = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(hole.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{hole.getsockname()[1]}")
    blob = tmp_path / "model.safetensors"
    blob.write_bytes(b"\0" * 1000)
    try:
        with pytest.raises(OSError, match="Timeout was reached"):
            storage.file_type("s3://birds/frozen/x")  # the shipped S3_ATTEMPTS
        # the upload goes through the same bounded client: one attempt proves it (~15 s less)
        monkeypatch.setattr(storage, "S3_ATTEMPTS", 1)
        with pytest.raises(OSError, match="Timeout was reached"):
            storage.upload_file(blob, "s3://birds/frozen/model.safetensors")
    finally:
        hole.close()
        for conn in accepted:
            conn.close()
