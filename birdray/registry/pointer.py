"""The ``production`` pointer as an append-only log, so concurrent promoters never lose history.

Every promotion or rollback is a new object ``<registry>/production/<seq>-<ns>-<id>-<action>-<v>``
(the name says everything; the body repeats it for people). Nothing is ever overwritten, so two
promoters racing on a bucket both land their entry: pyarrow's S3/GCS filesystems offer no rename
and no conditional PUT (``open_output_stream`` takes only a few fixed headers; apache/arrow#44281).
The pointer is derived by replaying the entries in name order: ``seq`` is one more than the
entries the writer saw, so an entry always sorts after those it was based on; clock time and a
random id only break ties between writers that saw the same log.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from birdray import storage
from birdray.registry.versions import RegistryError, check_version

LOG = "production"
ENTRY_RE = re.compile(
    r"^(\d{8})-(\d{19})-([0-9a-f]{12})-(promote|rollback)-(v\d{4,})(?:-from-(v\d{4,}))?\.json$"
)


def _log(registry: str) -> str:
    return storage.join(storage.absolute(registry), LOG)


def entries(registry: str) -> list[dict[str, Any]]:
    """The log's entries in replay order, parsed from one listing (bodies are not read)."""
    rows = []
    for name in storage.list_files(_log(registry)):
        match = ENTRY_RE.match(name)
        if match:  # anything else (a stray or half-written temp file) is not an entry
            seq, ns, uid, action, version, previous = match.groups()
            rows.append(
                {
                    "name": name,
                    "seq": int(seq),
                    "ns": int(ns),
                    "id": uid,
                    "action": action,
                    "version": version,
                    "from": previous,
                }
            )
    return sorted(rows, key=lambda r: (r["seq"], r["ns"], r["id"]))


def replay(rows: list[dict[str, Any]]) -> list[str]:
    """The promotion history the entries describe (production is its last item)."""
    history: list[str] = []
    for row in rows:
        if row["action"] == "rollback" and row["from"]:
            history = [v for v in history if v != row["from"]]
        history = [v for v in history if v != row["version"]] + [row["version"]]
    return history


def read_pointer(registry: str) -> dict[str, Any]:
    """``version`` (``None`` before any promotion), ``history``, ``updated_at``, ``entries``."""
    rows = entries(registry)
    history = replay(rows)
    return {
        "version": history[-1] if history else None,
        "history": history,
        "updated_at": rows[-1]["ns"] / 1e9 if rows else None,
        "entries": len(rows),
    }


def append(registry: str, action: str, version: str, previous: str | None = None) -> None:
    """Add one entry after those seen now (never overwrites: retries cannot clobber anyone)."""
    check_version(version)
    seq = len(entries(registry)) + 1
    ns = time.time_ns()
    suffix = f"-from-{check_version(previous)}" if previous else ""
    name = f"{seq:08d}-{ns:019d}-{uuid.uuid4().hex[:12]}-{action}-{version}{suffix}.json"
    body = {"action": action, "version": version, "from": previous, "at": ns / 1e9}
    storage.put_bytes(storage.join(_log(registry), name), json.dumps(body).encode())


def rollback_target(registry: str) -> tuple[str, str]:
    """(current, previous) for a rollback, or a clear error when there is nothing to go back to."""
    history = read_pointer(registry)["history"]
    if len(history) < 2:
        raise RegistryError(f"{registry}: nothing to roll back to (history {history})")
    return history[-1], history[-2]
