"""Registry in a folder: versions, promotion log, rollback; corrupt entries and bad names refused.

The same code runs against a bucket in ``tests/test_registry_bucket.py``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from birdray.registry import (
    RegistryConfig,
    RegistryError,
    list_versions,
    promote,
    read_pointer,
    register,
    resolve,
    rollback,
    run_registry,
    versions,
)
from tests.model_fixture import make_package


@pytest.fixture
def registry(tmp_path):
    reg = str(tmp_path / "registry")
    for seed in range(3):
        register(reg, make_package(tmp_path / f"pkg{seed}", seed=seed), {"trial": seed})
    return reg


def test_register_versions_and_resolve(registry):
    assert list_versions(registry) == ["v0001", "v0002", "v0003"]
    with pytest.raises(RegistryError, match="no production model"):
        resolve("production", registry)
    promote(registry, "v0002")
    path = resolve("production", registry)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["version"] == "v0002" and meta["provenance"]["trial"] == 1
    assert resolve("latest", registry).name == "v0003"


def test_promote_and_rollback(registry):
    promote(registry, "v0001")
    promote(registry, "v0003")
    assert read_pointer(registry)["version"] == "v0003"
    assert rollback(registry)["version"] == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(registry)


def test_corrupt_entry_never_becomes_production(registry, tmp_path):
    promote(registry, "v0001")
    weights = tmp_path / "registry" / "models" / "v0002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(RegistryError, match="unusable"):
        promote(registry, "v0002")
    assert read_pointer(registry)["version"] == "v0001"
    with pytest.raises(RegistryError, match="no version"):
        promote(registry, "v0042")


def test_concurrent_promotions_leave_a_whole_pointer(registry, tmp_path):
    errors = []

    def worker(version):
        try:
            for _ in range(10):
                promote(registry, version)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(v,)) for v in list_versions(registry)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pointer = read_pointer(registry)
    assert pointer["version"] in list_versions(registry)
    assert sorted(pointer["history"]) == list_versions(registry)
    assert pointer["entries"] == 30  # every promotion is in the log: none overwrote another


def test_half_registered_version_is_invisible_and_skipped(registry, tmp_path, killed_register):
    killed_register(registry, make_package(tmp_path / "pkg9", seed=9))
    assert (tmp_path / "registry" / "models" / "v0004" / "model.safetensors").is_file()
    assert list_versions(registry) == ["v0001", "v0002", "v0003"]  # v0004 has no marker
    assert resolve("latest", registry).name == "v0003"
    with pytest.raises(RegistryError, match="no version"):
        promote(registry, "v0004")
    assert register(registry, make_package(tmp_path / "pkg10", seed=10)) == "v0005"


def test_clean_removes_what_killed_registrations_left_and_spares_running_ones(
    registry, tmp_path, killed_register, monkeypatch
):
    killed_register(registry, make_package(tmp_path / "pkg9", seed=9))
    left = tmp_path / "registry" / "models" / "v0004"
    assert (left / "model.safetensors").is_file()
    clean = RegistryConfig(action="clean", registry=registry)  # 24 h: it may still be copying
    kept = run_registry(clean)
    assert kept["removed"] == [] and [e["version"] for e in kept["in_progress"]] == ["v0004"]
    assert kept["in_progress"][0]["files"] >= 2 and kept["in_progress"][0]["age_hours"] < 1
    gone = run_registry(RegistryConfig(action="clean", registry=registry, stale_hours=0))
    assert [e["version"] for e in gone["removed"]] == ["v0004"] and gone["in_progress"] == []
    assert sorted(p.name for p in left.iterdir()) == [versions.ABANDONED]  # the number stays taken
    assert list_versions(registry) == ["v0001", "v0002", "v0003"]
    assert register(registry, make_package(tmp_path / "pkg10", seed=10)) == "v0005"
    assert run_registry(clean) == {"removed": [], "in_progress": []}  # committed ones untouched
    assert resolve("v0005", registry).is_dir()

    # a copy so slow that a clean removed its version meanwhile: it refuses to commit, and what it
    # wrote after the clean is removed by the next one, whatever its age
    real_upload, cleaned = versions.storage.upload_file, []

    def clean_midway(local, location):
        real_upload(local, location)
        if not cleaned:
            cleaned.append(versions.clean_abandoned(registry, 0))

    monkeypatch.setattr(versions.storage, "upload_file", clean_midway)
    with pytest.raises(RegistryError, match="v0006 was removed as an abandoned registration"):
        register(registry, make_package(tmp_path / "pkg11", seed=11))
    monkeypatch.undo()
    assert [e["version"] for e in cleaned[0]["removed"]] == ["v0006"]
    assert list_versions(registry) == ["v0001", "v0002", "v0003", "v0005"]
    again = run_registry(clean)
    assert [e["version"] for e in again["removed"]] == ["v0006"]
    assert [p.name for p in (left.parent / "v0006").iterdir()] == [versions.ABANDONED]


@pytest.mark.parametrize(
    "words, settings, message",
    [
        (["v0001"], {}, "usage"),
        ([], {"stale_hours": -1.0}, "must be >= 0"),
        ([], {"stale_hours": float("nan")}, "must be >= 0"),  # nan < 0 is False too
    ],
)
def test_clean_refuses_bad_arguments(registry, words, settings, message):
    with pytest.raises(RegistryError, match=message):
        run_registry(RegistryConfig(action="clean", args=words, registry=registry, **settings))


def test_concurrent_registrations_get_distinct_whole_versions(tmp_path):
    reg = str(tmp_path / "race")
    packages = [make_package(tmp_path / f"p{i}", seed=20 + i) for i in range(4)]
    got: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda i=i: got.__setitem__(i, register(reg, packages[i])))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got.values(), key=lambda v: int(v[1:])) == list_versions(reg)
    assert len(set(got.values())) == 4  # numbers may skip after a race, never repeat
    for i, version in got.items():
        want = json.loads((packages[i] / "metadata.json").read_text())["content_hash"]
        assert (
            json.loads((resolve(version, reg) / "metadata.json").read_text())["content_hash"]
            == want
        )


@pytest.mark.parametrize(
    "bad", ["v1", "../v0001", "v0001/../../x", "V0001", "prod", "/nonexistent", "v0001\n"]
)
def test_malformed_version_names_are_refused(registry, bad):
    with pytest.raises(RegistryError, match="vNNNN"):
        resolve(bad, registry)
    with pytest.raises(RegistryError, match="vNNNN"):
        promote(registry, bad)
    with pytest.raises(RegistryError, match="vNNNN"):
        run_registry(RegistryConfig(action="promote", registry=registry, version=bad))
    with pytest.raises(RegistryError, match="vNNNN"):
        run_registry(RegistryConfig(action="show", registry=registry, version=bad))
    assert read_pointer(registry)["entries"] == 0


def test_an_evaluation_record_calibrates_the_version_without_editing_it(registry, tmp_path):
    from birdray.registry import latest_calibration, record_evaluation, version_metadata

    stored = (tmp_path / "registry" / "models" / "v0002" / "metadata.json").read_bytes()
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text('{"top1": 0.5}')
    record_evaluation(registry, "v0002", report, 1.7, {"test_top1": 0.5})
    assert (tmp_path / "registry" / "models" / "v0002" / "metadata.json").read_bytes() == stored
    assert latest_calibration(registry, "v0002")["temperature"] == 1.7
    view = resolve("v0002", registry)
    meta = json.loads((view / "metadata.json").read_text())
    assert meta["temperature"] == 1.7 and meta["metrics"]["test_top1"] == 0.5
    assert (view / "eval" / "metrics.json").read_text() == '{"top1": 0.5}'
    assert version_metadata(registry, "v0002").temperature == 1.7
    assert resolve("v0001", registry).name == "v0001"  # other versions untouched, used in place
    rows = run_registry(RegistryConfig(action="list", registry=registry))
    assert [r["temperature"] for r in rows] == [1.0, 1.7, 1.0]


def test_aliases_move_with_history_and_roll_back_on_their_own(registry):
    from birdray.registry import read_aliases, set_alias

    promote(registry, "v0001")
    set_candidate = ["set", "candidate", "v0002"]
    run_registry(RegistryConfig(action="alias", args=set_candidate, registry=registry))
    set_alias(registry, "candidate", "v0003")
    assert resolve("candidate", registry).name == "v0003"  # --model candidate works
    assert rollback(registry, "candidate")["version"] == "v0002"
    assert read_pointer(registry)["version"] == "v0001"  # production untouched
    aliases = run_registry(RegistryConfig(action="alias", args=["list"], registry=registry))
    assert aliases["candidate"]["history"] == ["v0002"]
    assert aliases["production"]["version"] == "v0001"
    # promote candidate: production takes the version candidate points to (ends a rollout)
    assert (
        run_registry(RegistryConfig(action="promote", args=["candidate"], registry=registry))[
            "version"
        ]
        == "v0002"
    )
    assert read_aliases(registry)["production"]["history"] == ["v0001", "v0002"]
    rows = run_registry(RegistryConfig(action="list", registry=registry))
    assert rows[1]["aliases"] == ["production", "candidate"] and rows[1]["production"]
    with pytest.raises(RegistryError, match="alias 'champion' is not set"):
        resolve("champion", registry)


@pytest.mark.parametrize(
    "bad", ["latest", "v0007", "v12", "Candidate", "a" * 33, "../x", "-x", "beta\n", "latest\n"]
)
def test_bad_alias_names_are_refused(registry, bad):
    from birdray.registry import set_alias

    with pytest.raises(RegistryError, match="not a valid alias name"):
        set_alias(registry, bad, "v0001")
    with pytest.raises(RegistryError, match="alias"):
        run_registry(RegistryConfig(action="alias", args=["set", bad, "v0001"], registry=registry))
    with pytest.raises(RegistryError, match="not a valid alias name"):
        run_registry(RegistryConfig(action="rollback", alias=bad, registry=registry))
    assert not (Path(registry) / "aliases").exists()


def test_racing_alias_moves_lose_nothing(registry):
    from birdray.registry import read_aliases, set_alias

    def worker(version):
        for _ in range(5):
            set_alias(registry, "candidate", version)

    threads = [threading.Thread(target=worker, args=(v,)) for v in list_versions(registry)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    candidate = read_aliases(registry)["candidate"]
    assert candidate["entries"] == 15 and sorted(candidate["history"]) == list_versions(registry)
    assert read_pointer(registry)["entries"] == 0  # other aliases untouched


def _cli(*args: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "birdray.cli", "registry", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_registry_add_and_alias_through_the_cli(tmp_path):
    reg = str(tmp_path / "reg")
    package = make_package(tmp_path / "runs" / "train" / "a" / "package", seed=5)
    done = _cli("add", str(package), "--promote", "--registry", reg)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout[done.stdout.index("{") :])
    assert out == {"version": "v0001", "added": True, "production": "v0001"}
    moved = _cli("alias", "set", "candidate", "latest", "--registry", reg)
    assert moved.returncode == 0 and '"alias": "candidate"' in moved.stdout, moved.stderr
    add = RegistryConfig(action="add", args=[str(package)], registry=reg)
    assert run_registry(add) == {"version": "v0001", "added": False}  # same weights: no new one
    (package / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RegistryError, match="not a usable model package"):
        run_registry(add)
    with pytest.raises(RegistryError, match="not a model package folder"):
        run_registry(RegistryConfig(action="add", args=[str(tmp_path)], registry=reg))
    assert list_versions(reg) == ["v0001"]
    cleaned = _cli("clean", "--stale-hours", "0", "--registry", reg)
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout[cleaned.stdout.index("{") :]) == {
        "removed": [],
        "in_progress": [],
    }


def _main(monkeypatch, *argv: str) -> int:
    """``birdray *argv`` in this process, as a user runs it (no ``BIRDRAY_DEBUG``, no Ray)."""
    import ray

    from birdray.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    return main(list(argv))


def _one_error_line(err: str, job: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"birdray {job}: error: "), err
    return lines[0]


def _break(package: Path, how: str) -> None:
    """A package broken the ways `registry add` used to accept or crash on."""
    import hashlib

    meta_file, weights = package / "metadata.json", package / "model.safetensors"
    meta = json.loads(meta_file.read_text())
    if how == "random-weights-no-hash":
        weights.write_bytes(bytes(range(256)) * 20)
        meta["content_hash"] = ""
    elif how == "truncated-weights-rehashed":
        cut = weights.read_bytes()[:5000]
        weights.write_bytes(cut)
        meta["content_hash"] = hashlib.sha256(cut).hexdigest()
    elif how == "no-hash":
        del meta["content_hash"]
    elif how == "wrong-types":
        meta.update(num_classes="many", class_names=7)
    elif how == "schema-string":
        meta["schema_version"] = "2"
    if how in ("non-utf8", "top-level-number", "top-level-string"):
        raw = {
            "non-utf8": b"\xff\xfe{}",
            "top-level-number": b"42",
            "top-level-string": b'"arch num_classes class_names data_config"',
        }
        meta_file.write_bytes(raw[how])
    else:
        meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "how",
    [
        "random-weights-no-hash",
        "truncated-weights-rehashed",
        "no-hash",
        "wrong-types",
        "schema-string",
        "non-utf8",
        "top-level-number",
        "top-level-string",
    ],
)
def test_registry_add_refuses_a_package_that_cannot_load_in_one_line(
    tmp_path, monkeypatch, capsys, how
):
    package = make_package(tmp_path / "pkg")
    _break(package, how)
    reg = tmp_path / "reg"
    assert _main(monkeypatch, "registry", "add", str(package), "--registry", str(reg)) == 1
    line = _one_error_line(capsys.readouterr().err, "registry")
    assert "not a usable model package" in line and str(package) in line
    assert not (reg / "models").exists() or list_versions(str(reg)) == []


def test_registry_add_into_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    package = make_package(tmp_path / "pkg")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        (tmp_path / "file").write_text("x")
        assert _main(monkeypatch, "registry", "add", str(package), "--registry", str(target)) == 2
        assert "is a file" in _one_error_line(capsys.readouterr().err, "registry")
    with pytest.raises(RegistryError, match="is a file"):  # the job function, without the CLI
        run_registry(RegistryConfig(action="add", args=[str(package)], registry=str(target.parent)))


def test_concurrent_adds_of_one_package_make_one_version(tmp_path, monkeypatch):
    """Two `registry add` of the same weights at once: the second waits for the first and finds
    its version (before: both looked, found nothing, and registered the weights twice)."""
    import time

    from birdray import storage

    package = make_package(tmp_path / "pkg")
    reg = str(tmp_path / "reg")
    upload = storage.upload_file

    def slow_upload(local, location):  # a big package: copying outlasts the other's lookup
        time.sleep(0.5)
        upload(local, location)

    monkeypatch.setattr(storage, "upload_file", slow_upload)
    got: list[dict] = []
    add = RegistryConfig(action="add", args=[str(package)], registry=reg)
    threads = [threading.Thread(target=lambda: got.append(run_registry(add))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list_versions(reg) == ["v0001"]
    assert sorted(r["added"] for r in got) == [False, True]
    assert {r["version"] for r in got} == {"v0001"}


def test_a_corrupt_commit_marker_is_one_line_and_list_shows_the_rest(registry, monkeypatch, capsys):
    marker = Path(registry) / "models" / "v0002" / versions.COMMITTED
    marker.write_text('{"version": "v00')  # truncated
    rows = run_registry(RegistryConfig(action="list", registry=registry))
    assert [r["version"] for r in rows] == ["v0001", "v0002", "v0003"]
    assert "arch" in rows[0] and "arch" in rows[2]
    assert str(marker) in rows[1]["error"]
    for action in ("show", "promote"):
        with pytest.raises(RegistryError, match="corrupt commit marker"):
            run_registry(RegistryConfig(action=action, registry=registry, version="v0002"))
    assert _main(monkeypatch, "registry", "show", "v0002", "--registry", registry) == 1
    assert str(marker) in _one_error_line(capsys.readouterr().err, "registry")


@pytest.mark.parametrize(
    "how, message",
    [
        ("ghost", "points at v0009, which the registry does not have"),
        ("bad-marker", "corrupt commit marker"),
        ("no-weights", "has no model.safetensors"),
        ("bad-weights", "not a whole safetensors file"),
        ("bad-metadata", "corrupt metadata"),
    ],
)
def test_serve_preflight_refuses_a_broken_registry_before_ray(
    registry, monkeypatch, capsys, how, message
):
    """Before: each passed the pre-flight, and Serve failed 30-55 s after Ray had started."""
    from birdray.registry import pointer

    promote(registry, "v0002")
    v2 = Path(registry) / "models" / "v0002"
    if how == "ghost":
        pointer.append(registry, "promote", "v0009")
    elif how == "bad-marker":
        (v2 / versions.COMMITTED).write_text('{"version": "v00')
    elif how == "no-weights":
        (v2 / "model.safetensors").unlink()
    elif how == "bad-weights":
        (v2 / "model.safetensors").write_bytes(b"garbage\n")
    else:
        (v2 / "metadata.json").write_text('{"arch": ')
    assert _main(monkeypatch, "serve", "--registry", registry, "--port", "0") == 2
    line = _one_error_line(capsys.readouterr().err, "serve")
    assert "--model" in line and message in line
    if how != "ghost":  # promoting it is refused the same way; looking at it is not
        assert _main(monkeypatch, "registry", "promote", "v0002", "--registry", registry) == 2
        assert message in _one_error_line(capsys.readouterr().err, "registry")


CORRUPT_CALIBRATIONS = {
    "not-json": (b'{"temperature": 1.', "is not valid JSON"),
    "not-utf8": (b"\xff\xfe{}", "is not valid JSON"),
    "a-list": (b"[1.5]", "holds a JSON list, not an object"),
    "no-temperature": (b'{"metrics": {}}', "lacks temperature"),
    "temperature-text": (b'{"temperature": "hot"}', "temperature is 'hot', expected a positive"),
    "temperature-zero": (b'{"temperature": 0}', "temperature is 0, expected a positive number"),
    "metrics-number": (b'{"temperature": 1.5, "metrics": 3}', "metrics is 3, expected an object"),
    "metric-text": (
        b'{"temperature": 1.5, "metrics": {"test_top1": "high"}}',
        "metrics['test_top1'] is 'high', expected a number",
    ),
}


@pytest.mark.parametrize(
    "body, message", CORRUPT_CALIBRATIONS.values(), ids=CORRUPT_CALIBRATIONS.keys()
)
def test_a_corrupt_calibration_is_one_line_naming_it_wherever_it_is_read(
    registry, tmp_path, monkeypatch, capsys, body, message
):
    """Before: `registry show` printed a JSONDecodeError, TypeError or KeyError traceback (or
    blamed metadata.json for the calibration's temperature); serve, scoring and the dashboard
    read the same file through ``version_metadata``/``local_copy``."""
    from birdray.registry import latest_calibration, local_copy, record_evaluation

    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    record = Path(record_evaluation(registry, "v0002", report, 1.7, {"test_top1": 0.5}))
    calibration = record / "calibration.json"
    calibration.write_bytes(body)
    assert _main(monkeypatch, "registry", "show", "v0002", "--registry", registry) == 1
    line = _one_error_line(capsys.readouterr().err, "registry")
    assert str(calibration) in line and message in line and "corrupt calibration" in line
    for read in (latest_calibration, local_copy):  # a consumer's download refuses it the same
        with pytest.raises(RegistryError, match="corrupt calibration"):
            read(registry, "v0002")
    rows = run_registry(RegistryConfig(action="list", registry=registry))
    assert str(calibration) in rows[1]["error"] and "arch" in rows[0] and "arch" in rows[2]
    promote(registry, "v0001")
    set_production = ["registry", "alias", "set", "production", "v0002", "--registry", registry]
    assert _main(monkeypatch, *set_production) == 2  # the pre-flight
    assert str(calibration) in _one_error_line(capsys.readouterr().err, "registry")
    assert _main(monkeypatch, "serve", "--model", "v0002", "--registry", registry) == 2
    line = _one_error_line(capsys.readouterr().err, "serve")
    assert "--model v0002 cannot be used" in line and str(calibration) in line
    calibration.unlink()  # what the message advises: the record is then ignored
    assert latest_calibration(registry, "v0002") is None
    assert _main(monkeypatch, "registry", "show", "v0002", "--registry", registry) == 0


def test_register_once_hashes_the_weights_once_and_still_verifies(tmp_path, monkeypatch):
    """Before: ``verify_package`` hashed the weights in ``register_once`` and again inside
    ``register`` (two full reads of a file of hundreds of MB for every `registry add`)."""
    from birdray.model import package as pkg
    from birdray.registry import register_once

    package = make_package(tmp_path / "pkg")
    hashed: list[str] = []
    real = pkg.file_sha256
    monkeypatch.setattr(pkg, "file_sha256", lambda path: hashed.append(str(path)) or real(path))
    reg = str(tmp_path / "reg")
    assert register_once(reg, package) == ("v0001", True)
    assert hashed == [str(package / "model.safetensors")]
    assert register_once(reg, package) == ("v0001", False)
    weights = package / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes
    with pytest.raises(RegistryError, match="weights hash .* does not match"):
        register_once(reg, package)
    assert list_versions(reg) == ["v0001"]
