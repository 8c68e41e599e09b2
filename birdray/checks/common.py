"""The checks every job's pre-flight is made of: paths, datasets, model references, values.

Each raises ``UsageError`` whose message starts with the flag and says what was expected.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.config import UsageError
from birdray.data.manifest import DatasetError, load_manifest
from birdray.devices import DEVICES, check_local

MODEL_HELP = "a model package folder, or production|latest|vNNNN|ALIAS with --registry"
# A registry alias (``candidate``, ``champion``), read with the registry's own alias reading.
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")  # \Z: "$" lets a final newline in


def full_path(location: str) -> str:
    return location if storage.is_remote(location) else str(storage.local_path(location).resolve())


def require(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise UsageError(f"{flag}: {message}")


def exists(flag: str, location: str, what: str) -> None:
    """A local path must exist (a bucket path is the job's to read)."""
    require(bool(location), flag, f"is required ({what})")
    if not storage.is_remote(location):
        path = storage.local_path(location)
        require(path.exists(), flag, f"{full_path(location)} does not exist (expected {what})")


def file(flag: str, location: str, what: str) -> None:
    exists(flag, location, what)
    if not storage.is_remote(location):
        require(storage.local_path(location).is_file(), flag, f"{location} is not a file ({what})")


def output(flag: str, location: str) -> None:
    """An output location must be given, must not be an existing file, and its folder (or the
    nearest one that exists) must take a new file: a read-only mount or a folder the user may
    not write fails here, in a second, not after Ray has started and the job has run."""
    require(bool(location), flag, "is required (an output folder or bucket URI)")
    if storage.is_remote(location):
        return
    path = storage.local_path(location)
    require(not path.is_file(), flag, f"{location} is a file; expected a folder")
    nearest = next(p for p in (path, *path.parents) if p.exists())
    require(nearest.is_dir(), flag, f"{nearest} is a file, so {location} cannot be made")
    try:
        tempfile.TemporaryFile(dir=nearest).close()
    except OSError as exc:
        raise UsageError(
            f"{flag}: {location} cannot be written ({nearest}: {exc.strerror})"
        ) from None


def dataset(flag: str, location: str, split: str | None = None) -> dict[str, Any]:
    """An ingested dataset (a manifest with its shards); its manifest is returned."""

    exists(flag, location, "an ingested dataset folder (birdray ingest --out)")
    try:
        manifest = load_manifest(location)
    except DatasetError as exc:
        raise UsageError(f"{flag}: {exc}") from exc
    if split is not None:
        have = sorted(manifest.get("splits") or {})
        require(split in have, "--split", f"{location} has no {split!r} split (has {have})")
    return manifest


def model(model_ref: str, registry: str | None, flag: str = "--model", usable: bool = True) -> None:
    """``model_ref`` names a model package folder or a version the registry really has.

    The kind of reference comes from ``ModelRef`` (the one parser Serve, scoring and evaluation
    resolve with); only the registry's public functions are read. ``usable``: the version it
    names now must also be whole (marker, metadata, weights file): a ghost version or deleted
    weights otherwise failed Serve's deployment after Ray had started (``registry show`` of a
    broken entry passes ``False``: looking at it is how one finds what broke).
    """
    from birdray.registry.ref import ModelRef

    parsed = ModelRef(model_ref, registry or "")
    ref, kind = parsed.name, parsed.kind
    if kind == "package":
        return
    if kind == "missing_path":
        path = Path(ref).expanduser()
        if path.is_dir():
            raise UsageError(
                f"{flag}: {full_path(ref)} is a folder but not a model package (no metadata.json); "
                f"expected {MODEL_HELP}"
            )
        raise UsageError(f"{flag}: {full_path(ref)} does not exist; expected {MODEL_HELP}")
    if kind == "invalid":
        raise UsageError(
            f"{flag}: {ref!r} is neither a folder, a version nor an alias; expected {MODEL_HELP}"
        )
    alias = kind == "alias" and ref != "production"
    if not registry:
        raise UsageError(
            f"{flag} {ref} names a registry version but no --registry was given "
            "(pass --registry PATH|URI, or --model PATH to a package folder)"
        )
    root = full_path(registry)
    if not storage.is_remote(registry) and not storage.local_path(registry).is_dir():
        raise UsageError(
            f"{flag} {ref}: no registry at {root} (--registry); pass --registry PATH to an "
            "existing registry, or --model PATH to a model package folder"
        )
    from birdray import registry as reglib  # imports torch: not at the CLI's start-up

    try:
        versions = reglib.list_versions(registry)
        aliases = reglib.read_aliases(registry) if alias or ref == "production" else {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--registry: cannot read the registry at {root}: {exc}") from exc
    current = aliases.get(ref, {}).get("version")
    if alias:
        set_ = ", ".join(f"{k}={v['version']}" for k, v in aliases.items() if v.get("version"))
        require(
            bool(current),
            flag,
            f"the registry at {root} has no alias {ref!r} (set: {set_ or 'none'}); set it with "
            f"'birdray registry alias set {ref} vNNNN --registry {registry}'",
        )
    elif ref == "production":
        require(
            bool(current),
            flag,
            f"the registry at {root} has no production model yet (versions: "
            f"{', '.join(versions) or 'none'}); promote one with 'birdray registry promote "
            f"--version vNNNN --registry {registry}', or pass --model latest|vNNNN|PATH",
        )
    elif ref == "latest":
        require(bool(versions), flag, f"the registry at {root} is empty (train with --registry)")
    else:
        require(
            ref in versions,
            flag,
            f"the registry at {root} has no {ref} (it has: {', '.join(versions) or 'none'})",
        )
    version = current if current else (versions[-1] if ref == "latest" else ref)
    require(
        version in versions,
        flag,
        f"{ref} in the registry at {root} points at {version}, which the registry does not "
        f"have (it has: {', '.join(versions) or 'none'}); point {ref} at one it has",
    )
    if usable:
        try:  # read through the registry: a folder or a bucket alike, no weights downloaded
            reglib.check_usable(registry, version)
        except (OSError, ValueError) as exc:  # RegistryError included
            named = f"{ref} ({version})" if ref != version else version
            raise UsageError(f"{flag} {named} cannot be used: {exc}") from None


def positive(values: dict[str, float], minimum: float = 1) -> None:
    for flag, value in values.items():
        require(value >= minimum, flag, f"must be >= {minimum:g}, got {value:g}")


def choice(flag: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    require(value in options, flag, f"{value!r} is not one of {', '.join(options)}")


def url(flag: str, value: str) -> None:
    require(value.startswith(("http://", "https://")), flag, f"{value!r} is not an http(s) URL")


def port(value: int) -> None:
    require(0 <= value <= 65535, "--port", f"{value} is not a port (0-65535; 0 picks one)")


def md5(value: str) -> None:
    require(
        not value or re.fullmatch(r"[0-9a-fA-F]{32}", value) is not None,
        "--md5",
        f"{value!r} is not an MD5 (32 hex digits; empty skips the check)",
    )


def device(device: str | None, address: str | None) -> None:
    """``--device`` is a known one, and cuda has a GPU where Ray will start (a remote cluster's
    GPUs are checked by the job once it has connected: ``devices.gpus_to_use``)."""

    if device is not None:
        choice("--device", device, DEVICES)
    check_local(device, address)


def feedback_store(location: str) -> None:
    """A feedback store that exists and is one: a plain file or an ingested dataset given as
    ``--feedback`` is said here (its parts' contents are the store reader's to judge)."""
    from birdray.feedback.store import EXPECTED, location_problem

    exists("--feedback", location, EXPECTED)
    problem = None if storage.is_remote(location) else location_problem(location)
    require(problem is None, "--feedback", problem or "")
