"""What consumers load: a local folder for a committed version, with its latest calibration applied.

Versions are immutable; evaluation adds to them instead of editing them. ``birdray evaluate`` on a
registry version writes an *evaluation record*: ``models/vNNNN/evaluations/<seq>-<ns>-<id>/eval/``
(the reports) and then ``calibration.json`` (temperature and metrics) as that record's commit
marker. ``local_copy`` builds the folder every consumer reads (Serve replicas, batch scoring,
explanations, the dashboard): the version's files with the newest committed record's temperature
and metrics merged into ``metadata.json`` and its reports as ``eval/``. ``explain-eval`` likewise
writes an *explanation record* (``explanations/<id>/explain/``, then ``_COMMITTED``) served as the
version's ``explain/`` (Serve's part profiles); ``records`` writes and reads both. Such a folder
lives in a cache keyed by the version's commit id and the records' ids, so it is never stale; a
local version without records is used where it lies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from birdray import storage
from birdray.model.errors import ModelError
from birdray.model.package import METADATA_FILE, WEIGHTS_FILE, PackageMetadata
from birdray.model.safetensors_check import check_safetensors
from birdray.registry import pointer
from birdray.registry.records import (
    CALIBRATION,
    EXPLAIN_DIR,
    EXPLANATIONS,
    committed_records,
    explanations,
    latest_calibration,
    merged,
)
from birdray.registry.versions import (
    COMMITTED,
    EVALUATIONS,
    VERSION_RE,
    RegistryError,
    check_alias,
    check_ref,
    check_version,
    list_versions,
    read_marker,
    stored_metadata,
    verify_files,
    version_uri,
)

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("BIRDRAY_CACHE", Path.home() / ".cache" / "birdray")) / "registry"


def version_metadata(registry: str, version: str) -> PackageMetadata:
    """The metadata a consumer of ``version`` sees (calibration applied), without the weights."""
    meta = merged(stored_metadata(registry, version), latest_calibration(registry, version))
    try:
        return PackageMetadata.from_json(meta)
    except ModelError as exc:  # a registry command's one line (ModelError alone may not be)
        raise RegistryError(f"registry entry {version} is unusable: {exc}") from None


def check_usable(registry: str, version: str) -> None:
    """``version`` is committed and whole: its marker and metadata read, its weights file is
    there (and, on this machine's disk, is a whole safetensors file). No weights are downloaded:
    this is the serve/score pre-flight, which must answer before Ray starts, not after."""
    version_metadata(registry, version)
    weights = storage.join(version_uri(registry, version), WEIGHTS_FILE)
    if storage.file_type(weights) != pafs.FileType.File:
        raise RegistryError(f"registry entry {version} has no {WEIGHTS_FILE} ({weights})")
    if not storage.is_remote(weights):
        try:
            check_safetensors(storage.local_path(weights))
        except ModelError as exc:
            raise RegistryError(f"registry entry {version} is unusable: {exc}") from None


def _own_file(name: str) -> bool:
    first = name.split("/")[0]
    own = first not in (COMMITTED, EVALUATIONS, EXPLANATIONS, METADATA_FILE)
    return own and not first.startswith(".")


def _fetch_record(src: str, files: list[str], record: str, marker: str, tmp: Path) -> str:
    """Download one record's files (not its marker) into ``tmp``, as if the package's own."""
    for name in files:
        if name.startswith(record) and name != record + marker:
            storage.download_file(storage.join(src, name), tmp / name[len(record) :])
    return record


def local_copy(registry: str, version: str) -> Path:
    """A local folder: the committed version's files, its newest calibration and explanations."""
    src = version_uri(registry, version)
    # the newest copy of this version made here: a replica restarted while the bucket is out
    # of reach serves it (versions are immutable) instead of failing its start-up over and over
    kept = cache_root() / f"{hashlib.sha256(src.encode()).hexdigest()[:16]}.last"
    try:
        marker = read_marker(registry, version)
        files = storage.list_files(src)
    except OSError as exc:
        copy = cache_root() / kept.read_text() if kept.is_file() else None
        unreachable = storage.is_remote(src) and not isinstance(exc, FileNotFoundError)
        if not unreachable or copy is None or not (copy / METADATA_FILE).is_file():
            raise  # a version that is gone, or never copied here: the bucket's own error
        logger.warning("%s cannot be read (%s); using this machine's copy %s", src, exc, copy)
        return copy
    records, explained = committed_records(files), explanations(files)
    if not storage.is_remote(src) and not records and not explained:
        return storage.local_path(src)
    newest = f"{records[-1] if records else ''}|{explained[-1] if explained else ''}"
    key = f"{src}|{marker.get('commit')}|{newest}"
    cache = cache_root() / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (cache / METADATA_FILE).is_file():
        return _remember(kept, cache)
    calibration = latest_calibration(registry, version, files)  # checked before any download
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache.parent))
    try:
        replaced = (["eval/"] if records else []) + ([f"{EXPLAIN_DIR}/"] if explained else [])
        for name in files:  # newer records' reports replace those registered with the package
            if _own_file(name) and not any(name.startswith(r) for r in replaced):
                storage.download_file(storage.join(src, name), tmp / name)
        if explained:
            _fetch_record(src, files, f"{EXPLANATIONS}/{explained[-1]}/", COMMITTED, tmp)
        if records:
            _fetch_record(src, files, f"{EVALUATIONS}/{records[-1]}/", CALIBRATION, tmp)
        meta = merged(stored_metadata(registry, version), calibration)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        try:
            os.replace(tmp, cache)
        except OSError:  # another process built the same folder first: theirs is identical
            if not (cache / METADATA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _remember(kept, cache)


def _remember(kept: Path, cache: Path) -> Path:
    """Point ``kept`` at ``cache`` (written only when it changes: most resolves are cache hits,
    and an fsync'd write each time would be I/O on every replica start and page view)."""
    if not (kept.is_file() and kept.read_text() == cache.name):
        storage.write_bytes_atomic(kept, cache.name.encode())
    return cache


def verified(registry: str, version: str) -> Path:
    """The version's local folder after checking metadata and weights hash."""
    path = local_copy(registry, check_version(version))
    verify_files(path, version)
    return path


def version_of(ref: str, registry: str) -> str:
    """The concrete version a reference names now (an alias or ``latest`` looked up)."""
    ref = check_ref(ref)
    if VERSION_RE.fullmatch(ref):
        return ref
    if ref == "latest":
        versions = list_versions(registry)
        if not versions:
            raise RegistryError(f"{registry}: registry is empty")
        return versions[-1]
    version = pointer.read_pointer(registry, ref)["version"]
    if not version:
        if ref == pointer.PRODUCTION:
            raise RegistryError(f"{registry}: no production model yet (promote one first)")
        known = sorted(pointer.read_aliases(registry))
        raise RegistryError(
            f"{registry}: alias {ref!r} is not set (set: {known}; or use latest or vNNNN)"
        )
    return version


def is_package_dir(ref: str | Path | None) -> bool:
    return bool(ref) and Path(ref).is_dir() and (Path(ref) / METADATA_FILE).is_file()


def resolve(ref: str, registry: str | None = None) -> Path:
    """A local, verified package folder for ``ref``: a package path, or a version in ``registry``.

    ``ref`` may be an alias (``production``, ``candidate``, ...), ``latest`` or ``v0003`` (with
    ``registry``), or a package path.
    """
    if is_package_dir(ref):
        verify_files(Path(ref), str(ref))
        return Path(ref)
    if not registry:
        raise RegistryError(f"model {ref!r} is not a package folder and no registry was given")
    return verified(registry, version_of(ref or "production", registry))


def set_alias(registry: str, alias: str, version: str) -> dict[str, Any]:
    """Point ``alias`` at ``version``, verified first: a bad entry is never aliased."""
    check_alias(alias)
    verified(registry, check_version(version))
    action = "promote" if alias == pointer.PRODUCTION else "set"
    pointer.append(registry, action, version, alias=alias)
    return {"alias": alias, **pointer.read_pointer(registry, alias)}


def promote(registry: str, version: str) -> dict[str, Any]:
    """Point ``production`` at ``version`` (verified first)."""
    return set_alias(registry, pointer.PRODUCTION, version)


def rollback(registry: str, alias: str = pointer.PRODUCTION) -> dict[str, Any]:
    """Return ``alias`` to the version it pointed at before the current one."""
    current, previous = pointer.rollback_target(registry, check_alias(alias))
    verified(registry, previous)
    pointer.append(registry, "rollback", previous, current, alias=alias)
    return {"alias": alias, **pointer.read_pointer(registry, alias)}
