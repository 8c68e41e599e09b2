"""Registry: versions, atomic production pointer, promotion/rollback, corrupt entries refused."""

from __future__ import annotations

import json
import threading

import pytest

from birdray.registry import (
    RegistryError,
    list_versions,
    promote,
    read_pointer,
    register,
    resolve,
    rollback,
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
    pointer = json.loads((tmp_path / "registry" / "production.json").read_text())
    assert pointer["version"] in list_versions(registry)
    assert sorted(pointer["history"]) == list_versions(registry)
