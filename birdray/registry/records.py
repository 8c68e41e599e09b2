"""Records added to a committed version later: evaluations (calibration) and explanations.

A version is immutable, so ``birdray evaluate`` and ``explain-eval`` add a record beside it
(``evaluations/<id>/`` or ``explanations/<id>/``), its commit marker written last. The marker of an
evaluation record is its ``calibration.json``, which every consumer of the version applies: it is
read and checked here, in one place, so a damaged one is one error naming the file wherever it is
read (``registry show``, serve's and scoring's pre-flight, a replica's download), never a
``KeyError`` or ``TypeError`` traceback from the merge.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.model.package import FIELD_NAMES, FIELD_TYPES
from birdray.registry.versions import (
    COMMITTED,
    EVALUATIONS,
    RegistryError,
    check_version,
    read_marker,
    version_uri,
)

CALIBRATION = "calibration.json"
EXPLANATIONS = "explanations"
EXPLAIN_DIR = "explain"


def committed_records(
    files: list[str], kind: str = EVALUATIONS, marker: str = CALIBRATION
) -> list[str]:
    """Committed records of one kind (ids, oldest first) among a version's files."""
    done = {f.split("/")[1] for f in files if f.count("/") == 2 and f.startswith(f"{kind}/")}
    return sorted(r for r in done if f"{kind}/{r}/{marker}" in files)


def explanations(files: list[str]) -> list[str]:
    return committed_records(files, EXPLANATIONS, COMMITTED)


def _calibration_problem(body: Any) -> str:
    """What is wrong with a parsed ``calibration.json`` ("" if nothing): it must hold what
    ``record_evaluation`` wrote, of the types the merged ``metadata.json`` needs."""
    if not isinstance(body, dict):
        return f"holds a JSON {type(body).__name__}, not an object"
    if "temperature" not in body:
        return "lacks temperature"
    for key in ("temperature", "metrics"):
        if key in body and not FIELD_TYPES[key](body[key]):
            return f"{key} is {repr(body[key])[:40]}, expected {FIELD_NAMES[key]}"
    for name, value in body.get("metrics", {}).items():  # compared and shown as numbers
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"metrics[{name!r}] is {repr(value)[:40]}, expected a number"
    return ""


def latest_calibration(
    registry: str, version: str, files: list[str] | None = None
) -> dict[str, Any] | None:
    """The newest committed evaluation record's ``calibration.json`` (``None`` if none), with
    ``record`` (its id) added; ``files``: the version's listing, when the caller has it.

    A damaged one is a ``RegistryError`` naming it, not a fallback to an older record: the
    version's consumers would otherwise silently disagree about its temperature."""
    src = version_uri(registry, version)
    records = committed_records(storage.list_files(src) if files is None else files)
    if not records:
        return None
    path = storage.join(src, EVALUATIONS, records[-1], CALIBRATION)
    try:
        body = json.loads(storage.read_bytes(path))
        problem = _calibration_problem(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        problem = f"is not valid JSON ({exc})"
    if problem:
        raise RegistryError(
            f"registry entry {version}: corrupt calibration {path}: {problem} (remove that file "
            "to use the version's earlier calibration, then evaluate it again)"
        )
    return {**body, "record": records[-1]}


def merged(meta: dict[str, Any], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The stored ``metadata.json`` with a calibration's temperature and metrics applied."""
    if not calibration:
        return meta
    provenance = {**meta.get("provenance", {}), "evaluation": calibration["record"]}
    metrics = {**meta.get("metrics", {}), **calibration.get("metrics", {})}
    return {
        **meta,
        "temperature": calibration["temperature"],
        "metrics": metrics,
        "provenance": provenance,
    }


def _new_record(registry: str, version: str, kind: str, marker: str) -> str:
    read_marker(registry, check_version(version))
    seq = len(committed_records(storage.list_files(version_uri(registry, version)), kind, marker))
    record = f"{seq + 1:08d}-{time.time_ns():019d}-{uuid.uuid4().hex[:12]}"
    return storage.join(version_uri(registry, version), kind, record)


def _upload_tree(folder: Path, target: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        storage.upload_file(path, storage.join(target, *path.relative_to(folder).parts))


def record_evaluation(
    registry: str, version: str, report_dir: str | Path, temperature: float, metrics: dict
) -> str:
    """Attach an evaluation (reports + calibration) to a committed version; returns its URI.

    The reports are copied first and ``calibration.json`` last, so a record is used only once
    whole; the version's own files are never touched.
    """
    target = _new_record(registry, version, EVALUATIONS, CALIBRATION)
    _upload_tree(Path(report_dir), storage.join(target, "eval"))
    body = {"temperature": float(temperature), "metrics": metrics, "evaluated_at": time.time()}
    storage.put_bytes(storage.join(target, CALIBRATION), json.dumps(body, indent=2).encode())
    return target


def record_explanation(registry: str, version: str, explain_dir: str | Path) -> str:
    """Attach ``explain-eval`` results (``explain/``: part profiles, plots) to a version.

    Written like an evaluation record, committed by ``_COMMITTED`` last; ``local_copy`` serves the
    newest one as the version's ``explain/``, so Serve's part profiles survive a bucket registry.
    """
    target = _new_record(registry, version, EXPLANATIONS, COMMITTED)
    _upload_tree(Path(explain_dir), storage.join(target, EXPLAIN_DIR))
    body = {"version": version, "recorded_at": time.time()}
    storage.put_bytes(storage.join(target, COMMITTED), json.dumps(body).encode())
    return target
