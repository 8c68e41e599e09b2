"""The model registry: versioned model packages and a ``production`` pointer that moves atomically.

A registry is a folder or a cloud URI (any pyarrow filesystem)::

    <registry>/models/v0001/{model.safetensors, metadata.json}
    <registry>/production.json   {"version": "v0003", "history": [...], "updated_at": ...}

Packages are copied in under a temporary name and renamed into place once verified, so a version
that is listed is complete. The pointer is replaced with one atomic rename under a lock (local
folders), so concurrent promotions leave it naming one complete version, never a torn file.
Serve, batch scoring and the dashboard resolve ``production``/``v0003``/a package path here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from birdray import storage
from birdray.config import field
from birdray.model.factory import ModelError
from birdray.model.package import METADATA_FILE, read_metadata, verify_package

POINTER = "production.json"
VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A registry operation refused: unknown version, corrupt entry, empty history."""


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return storage.filesystem(uri)


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


@contextlib.contextmanager
def _lock(registry: str):
    """Serialise writers on a local registry (object stores: one writer at a time, documented)."""
    if not _is_local(registry):
        yield
        return
    root = Path(registry.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_versions(registry: str) -> list[str]:
    fs, root = _fs(registry)
    info = fs.get_file_info(pafs.FileSelector(f"{root}/models", allow_not_found=True))
    names = [i.base_name for i in info if i.type == pafs.FileType.Directory]
    return sorted((n for n in names if VERSION_RE.match(n)), key=lambda n: int(n[1:]))


def read_pointer(registry: str) -> dict[str, Any]:
    fs, root = _fs(registry)
    path = f"{root}/{POINTER}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {"version": None, "history": []}
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read())


def _write_pointer(registry: str, pointer: dict[str, Any]) -> None:
    fs, root = _fs(registry)
    tmp = f"{root}/.{POINTER}.{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as fh:
        fh.write(json.dumps(pointer, indent=2).encode())
    fs.move(tmp, f"{root}/{POINTER}")  # atomic rename on local and POSIX-like filesystems


def local_copy(registry: str, version: str) -> Path:
    """A local folder with the version's files (the registry itself when it is local)."""
    fs, root = _fs(registry)
    src = f"{root}/models/{version}"
    if fs.get_file_info(src).type != pafs.FileType.Directory:
        raise RegistryError(f"{registry}: no version {version!r}; have {list_versions(registry)}")
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(src)
    cache = Path.home() / ".cache" / "birdray" / hashlib.sha256(src.encode()).hexdigest()[:16]
    if not (cache / METADATA_FILE).is_file():
        tmp = Path(
            tempfile.mkdtemp(prefix=".dl-", dir=cache.parent if cache.parent.exists() else None)
        )
        pafs.copy_files(
            src, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cache)
    return cache


def find_version(registry: str, content_hash: str) -> str | None:
    """The version holding exactly these weights, if any (so re-registering is a no-op)."""
    if not content_hash:
        return None
    fs, root = _fs(registry)
    for version in list_versions(registry):
        try:
            with fs.open_input_stream(f"{root}/models/{version}/{METADATA_FILE}") as fh:
                if json.loads(fh.read()).get("content_hash") == content_hash:
                    return version
        except (OSError, json.JSONDecodeError):
            continue  # a corrupt entry is never a match
    return None


def verified(registry: str, version: str) -> Path:
    """The version's local folder after checking metadata and weights hash."""
    path = local_copy(registry, version)
    try:
        verify_package(path)
    except ModelError as exc:
        raise RegistryError(f"registry entry {version} is unusable: {exc}") from exc
    return path


def register(
    registry: str, package_dir: str | Path, provenance: dict[str, Any] | None = None
) -> str:
    """Copy a verified package in as the next version; returns the version name."""
    meta = verify_package(package_dir)
    fs, root = _fs(registry)
    fs.create_dir(f"{root}/models", recursive=True)
    with _lock(registry):
        versions = list_versions(registry)
        version = f"v{(int(versions[-1][1:]) + 1) if versions else 1:04d}"
        staging = f"{root}/models/.tmp-{uuid.uuid4().hex}"
        fs.create_dir(staging, recursive=True)
        pafs.copy_files(
            str(Path(package_dir).resolve()),
            staging,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
        meta.version = version
        meta.provenance = {**meta.provenance, **(provenance or {}), "registered_at": time.time()}
        with fs.open_output_stream(f"{staging}/{METADATA_FILE}") as fh:
            fh.write(json.dumps(asdict(meta), indent=2, default=str).encode())
        fs.move(staging, f"{root}/models/{version}")
    return version


def promote(registry: str, version: str) -> dict[str, Any]:
    """Point ``production`` at ``version``, verified first: a bad entry never becomes production."""
    verified(registry, version)
    with _lock(registry):
        pointer = read_pointer(registry)
        history = [v for v in pointer.get("history", []) if v != version] + [version]
        pointer = {"version": version, "history": history, "updated_at": time.time()}
        _write_pointer(registry, pointer)
    return pointer


def rollback(registry: str) -> dict[str, Any]:
    """Return ``production`` to the version promoted before the current one."""
    with _lock(registry):
        pointer = read_pointer(registry)
        history = pointer.get("history", [])
        if len(history) < 2:
            raise RegistryError(f"{registry}: nothing to roll back to (history {history})")
        previous = history[-2]
        verified(registry, previous)
        pointer = {"version": previous, "history": history[:-1], "updated_at": time.time()}
        _write_pointer(registry, pointer)
    return pointer


def resolve(ref: str, registry: str | None = None) -> Path:
    """A local, verified package folder for ``ref``: a package path, or a version in ``registry``.

    ``ref`` may be ``production``, ``latest`` or ``v0003`` (with ``registry``), or a package path.
    """
    if ref and Path(ref).is_dir() and (Path(ref) / METADATA_FILE).is_file():
        verify_package(ref)
        return Path(ref)
    if not registry:
        raise RegistryError(f"model {ref!r} is not a package folder and no registry was given")
    if ref in ("production", "", None):
        version = read_pointer(registry).get("version")
        if not version:
            raise RegistryError(f"{registry}: no production model yet (promote one first)")
    elif ref == "latest":
        versions = list_versions(registry)
        if not versions:
            raise RegistryError(f"{registry}: registry is empty")
        version = versions[-1]
    else:
        version = ref
    return verified(registry, version)


@dataclass
class RegistryConfig:
    positional = "action"
    action: str = field("list", "list | show | promote | rollback")
    registry: str = field("runs/registry", "registry folder or URI")
    version: str = field("production", "version for show/promote (v0003, latest, production)")


def run_registry(cfg: RegistryConfig) -> Any:
    """Inspect the registry or move its production pointer."""
    if cfg.action == "list":
        current = read_pointer(cfg.registry).get("version")
        rows = []
        for version in list_versions(cfg.registry):
            try:
                meta = read_metadata(local_copy(cfg.registry, version))
                top1 = meta.metrics.get("test_top1", meta.metrics.get("val_top1"))
                rows.append(
                    {
                        "version": version,
                        "arch": meta.arch,
                        "top1": top1,
                        "production": version == current,
                    }
                )
            except (ModelError, RegistryError) as exc:
                rows.append({"version": version, "error": str(exc)})
        return rows
    if cfg.action == "show":
        return asdict(read_metadata(resolve(cfg.version, cfg.registry)))
    if cfg.action == "promote":
        version = list_versions(cfg.registry)[-1] if cfg.version == "latest" else cfg.version
        return promote(cfg.registry, version)
    if cfg.action == "rollback":
        return rollback(cfg.registry)
    raise RegistryError(f"unknown registry action {cfg.action!r}")
