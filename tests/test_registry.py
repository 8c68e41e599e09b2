"""Registry in a folder: versions, promotion log, rollback; corrupt entries and bad names refused.

The same code runs against a bucket in ``tests/test_registry_bucket.py``.
"""

from __future__ import annotations

import json
import threading

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


def test_half_registered_version_is_invisible_and_skipped(registry, tmp_path, monkeypatch):
    from birdray.registry import versions

    real_put = versions.storage.put_bytes

    def crash_before_commit(location, data):
        if str(location).endswith(versions.COMMITTED):
            raise OSError("node lost")
        real_put(location, data)

    monkeypatch.setattr(versions.storage, "put_bytes", crash_before_commit)
    with pytest.raises(OSError, match="node lost"):
        register(registry, make_package(tmp_path / "pkg9", seed=9))
    monkeypatch.undo()
    assert (tmp_path / "registry" / "models" / "v0004" / "model.safetensors").is_file()
    assert list_versions(registry) == ["v0001", "v0002", "v0003"]  # v0004 has no marker
    assert resolve("latest", registry).name == "v0003"
    with pytest.raises(RegistryError, match="no version"):
        promote(registry, "v0004")
    assert register(registry, make_package(tmp_path / "pkg10", seed=10)) == "v0005"


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
    "bad", ["v1", "../v0001", "v0001/../../x", "V0001", "prod", "/nonexistent"]
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
