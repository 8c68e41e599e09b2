"""Model versions in a registry folder or bucket: no directory moves, a commit marker written last.

A version is ``<registry>/models/vNNNN/``. Registering claims the next number with a unique claim
object, copies the package files to the final prefix, and writes ``_COMMITTED`` last; readers list
only versions that have the marker, so a crash mid-copy leaves nothing a reader can see (object
stores cannot rename a folder, so "copy then rename" is not available there). The same code runs
on local folders, where the marker write is an atomic rename.

Two writers that pick the same number both see each other's claim (S3 and GCS list strongly after
a write), so at most one proceeds; the others drop their claim and try a higher number (so after
a race numbers may skip one; they never repeat). A registration killed mid-copy leaves its files
behind, invisible; ``registry clean`` deletes those older than ``--stale-hours``.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from birdray import locks, storage
from birdray.model.errors import ModelError
from birdray.model.package import METADATA_FILE, PackageMetadata, verify_package

# Anchored with \Z, never $: "$" also matches before a final newline, so $'beta\n' passed as an
# alias name and became a log folder no reader finds (``fullmatch`` is used all the same).
VERSION_RE = re.compile(r"^v(\d{4,})\Z")
COMMITTED = "_COMMITTED"
ABANDONED = "_ABANDONED"  # left by ``registry clean`` where a never-committed version was
CLAIM_PREFIX = ".claim-"
EVALUATIONS = "evaluations"
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
NOT_ALIASES = re.compile(r"^(latest|v\d+)\Z")
CLAIM_ATTEMPTS = 30
STALE_HOURS = 24.0  # ``registry clean``: a never-committed version older than this was killed


class RegistryError(ValueError):
    """A registry operation refused: unknown or malformed version, corrupt entry, empty history."""


def check_version(version: str) -> str:
    """``version`` if it is a version name (``v0003``); a clear error otherwise."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise RegistryError(f"{version!r} is not a registry version (expected vNNNN, e.g. v0003)")
    return version


def check_alias(alias: str) -> str:
    """``alias`` if it can name an alias: a short lower-case word, not ``latest`` nor ``vNNNN``."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or NOT_ALIASES.fullmatch(alias):
        raise RegistryError(
            f"{alias!r} is not a valid alias name (expected [a-z][a-z0-9_-]{{0,31}}, "
            "not 'latest' and not a version name like vNNNN)"
        )
    return alias


def check_ref(ref: str) -> str:
    """A registry reference: ``latest``, a version name or an alias (``production``, ...)."""
    if ref == "latest" or (isinstance(ref, str) and VERSION_RE.fullmatch(ref)):
        return ref
    try:
        return check_alias(ref)
    except RegistryError:
        raise RegistryError(
            f"{ref!r} is neither a model package folder nor a registry reference "
            "(latest, vNNNN, or an alias such as production)"
        ) from None


def version_uri(registry: str, version: str) -> str:
    return storage.join(storage.absolute(registry), "models", check_version(version))


def _number(version: str) -> int:
    return int(version[1:])


def _files_by_version(registry: str) -> dict[str, list[str]]:
    """Every version prefix in use and its files (relative to it), from one listing."""
    by_version: dict[str, list[str]] = {}
    for name in storage.list_files(storage.join(storage.absolute(registry), "models")):
        version, _, rest = name.partition("/")
        if rest and VERSION_RE.fullmatch(version):
            by_version.setdefault(version, []).append(rest)
    return by_version


def _scan(registry: str) -> tuple[list[str], set[str]]:
    """(committed versions in order, every version prefix in use) from one listing."""
    by_version = _files_by_version(registry)
    committed = [v for v, files in by_version.items() if COMMITTED in files]
    return sorted(committed, key=_number), set(by_version)


def list_versions(registry: str) -> list[str]:
    """Committed versions, oldest first (half-registered ones are invisible)."""
    return _scan(registry)[0]


def read_marker(registry: str, version: str) -> dict[str, Any]:
    """The version's commit marker; ``RegistryError`` when the version is not committed, or
    when its marker is not the JSON object ``register`` wrote (a truncated or edited file)."""
    location = storage.join(version_uri(registry, version), COMMITTED)
    try:
        marker = json.loads(storage.read_bytes(location))
    except FileNotFoundError:
        raise RegistryError(
            f"{registry}: no version {version!r}; have {list_versions(registry)}"
        ) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise RegistryError(
            f"registry entry {version}: corrupt commit marker {location}: {exc}"
        ) from None
    if not isinstance(marker, dict):
        raise RegistryError(f"registry entry {version}: corrupt commit marker {location}")
    return marker


def stored_metadata(registry: str, version: str) -> dict[str, Any]:
    """``metadata.json`` as registered (without later calibration)."""
    read_marker(registry, version)
    location = storage.join(version_uri(registry, version), METADATA_FILE)
    try:
        meta = json.loads(storage.read_bytes(location))
    except FileNotFoundError:
        raise RegistryError(f"registry entry {version} has no {location}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise RegistryError(f"registry entry {version} has corrupt metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise RegistryError(f"registry entry {version} has corrupt metadata: {location}")
    return meta


def find_version(registry: str, content_hash: str) -> str | None:
    """The version holding exactly these weights, if any (so re-registering is a no-op)."""
    if not content_hash:
        return None
    for version in list_versions(registry):
        try:
            if stored_metadata(registry, version).get("content_hash") == content_hash:
                return version
        except (OSError, RegistryError):
            continue  # a corrupt entry is never a match
    return None


def _claim(registry: str) -> tuple[str, str]:
    """Reserve the next free version number; returns (version, claim object's URI)."""
    me = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    for _ in range(CLAIM_ATTEMPTS):
        used = _scan(registry)[1]
        version = f"v{max((_number(v) for v in used), default=0) + 1:04d}"
        claim = storage.join(version_uri(registry, version), me)
        storage.put_bytes(claim, json.dumps({"claimed_at": time.time()}).encode())
        others = [n for n in storage.list_files(version_uri(registry, version)) if n != me]
        if not others:
            return version, claim
        storage.delete_file(claim)  # someone else is writing this number: take another
        time.sleep(random.uniform(0.01, 0.2))
    raise RegistryError(f"{registry}: could not claim a version number (too many writers)")


def _package_files(package_dir: Path) -> list[Path]:
    files = [p for p in package_dir.rglob("*") if p.is_file()]
    return [
        p
        for p in files
        if not any(part.startswith(".") for part in p.relative_to(package_dir).parts)
        and p.name != METADATA_FILE
    ]


def register(
    registry: str,
    package_dir: str | Path,
    provenance: dict[str, Any] | None = None,
    digest: str = "",
) -> str:
    """Copy a verified package in as the next version; returns the version name. ``digest``:
    the weights' SHA-256 the caller has just verified (``register_once``), not hashed again."""
    package_dir = Path(package_dir).resolve()
    meta: PackageMetadata = verify_package(package_dir, digest)
    version, claim = _claim(registry)
    target = version_uri(registry, version)
    for path in _package_files(package_dir):  # weights, and reports made before registering
        storage.upload_file(path, storage.join(target, *path.relative_to(package_dir).parts))
    meta.version = version
    meta.provenance = {**meta.provenance, **(provenance or {}), "registered_at": time.time()}
    metadata = json.dumps(asdict(meta), indent=2, default=str).encode()
    storage.put_bytes(storage.join(target, METADATA_FILE), metadata)
    marker = {
        "version": version,
        "commit": uuid.uuid4().hex,
        "content_hash": meta.content_hash,
        "committed_at": time.time(),
    }
    if ABANDONED in storage.list_files(target):  # cleaned away while this copy ran
        raise RegistryError(
            f"{registry}: {version} was removed as an abandoned registration while this one was "
            "still copying (`registry clean --stale-hours` shorter than the upload); register again"
        )
    storage.put_bytes(storage.join(target, COMMITTED), json.dumps(marker).encode())  # last
    storage.delete_file(claim)
    return version


def register_once(
    registry: str, package_dir: str | Path, provenance: dict[str, Any] | None = None
) -> tuple[str, bool]:
    """(version, added): the committed version already holding these weights, else a new one.

    Looking and registering happen under one lock per registry on this machine, so two
    ``registry add`` of one package at once make one version, not two of the same weights.
    The lock is this machine's (``birdray.locks``, works for bucket registries too, since it
    lives in the temp folder): writers on other machines are kept apart only by ``_claim``,
    which keeps their numbers distinct but not their contents.
    """
    try:  # the one hash of the weights: ``register`` checks the package against it
        content_hash = verify_package(package_dir).content_hash
    except ModelError as exc:
        raise RegistryError(f"{package_dir}: not a usable model package: {exc}") from exc
    lock = locks.machine_lock_file("registry-add", storage.absolute(registry))
    with locks.file_lock(lock, waiting_for=f"another registration into {registry}"):
        found = find_version(registry, content_hash)
        if found:
            return found, False
        return register(registry, package_dir, provenance, content_hash), True


def _claimed_at(registry: str, version: str, claim: str) -> float | None:
    try:
        when = json.loads(storage.read_bytes(storage.join(version_uri(registry, version), claim)))
        return float(when["claimed_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # gone meanwhile, or not a claim this code wrote


def uncommitted_versions(registry: str) -> list[dict[str, Any]]:
    """Versions claimed and never committed: a registration killed mid-copy (or one still
    running). Readers never see them, but their files stay until ``clean_abandoned``."""
    out = []
    for version, files in sorted(_files_by_version(registry).items(), key=lambda v: _number(v[0])):
        if COMMITTED in files or files == [ABANDONED]:
            continue
        claims = [f for f in files if f.startswith(CLAIM_PREFIX)]
        started = [t for t in (_claimed_at(registry, version, c) for c in claims) if t]
        out.append(
            {
                "version": version,
                "files": len([f for f in files if f != ABANDONED]) - len(claims),
                "claimed_at": max(started, default=None),
                # files a killed copy went on writing after a clean: removed whatever their age
                "abandoned": ABANDONED in files,
            }
        )
    return out


def clean_abandoned(registry: str, stale_hours: float) -> dict[str, Any]:
    """Delete the files of registrations claimed more than ``stale_hours`` ago and never
    committed; younger ones may still be copying and are kept. A removed version keeps an
    ``_ABANDONED`` marker, so its number stays taken (numbers never repeat)."""
    if not stale_hours >= 0:  # nan compares False with everything: "< 0" let it through
        raise RegistryError(f"--stale-hours {stale_hours}: must be >= 0 (a number; inf: never)")
    now, removed, in_progress = time.time(), [], []
    for entry in uncommitted_versions(registry):
        claimed_at, abandoned = entry.pop("claimed_at"), entry.pop("abandoned")
        if not abandoned and claimed_at is not None and now - claimed_at < stale_hours * 3600:
            in_progress.append({**entry, "age_hours": round((now - claimed_at) / 3600, 2)})
            continue
        target = version_uri(registry, entry["version"])
        if not abandoned:  # the marker first: from here the number stays taken, files or not
            tombstone = {"abandoned_at": now, "claimed_at": claimed_at, "files": entry["files"]}
            storage.put_bytes(storage.join(target, ABANDONED), json.dumps(tombstone).encode())
        for name in storage.list_files(target):
            if name != ABANDONED:
                storage.delete_file(storage.join(target, name))
        removed.append({"version": entry["version"], "files": entry["files"]})
    return {"removed": removed, "in_progress": in_progress}


def verify_files(path: Path, version: str) -> PackageMetadata:
    try:
        return verify_package(path)
    except ModelError as exc:
        raise RegistryError(f"registry entry {version} is unusable: {exc}") from exc
