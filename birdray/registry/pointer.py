"""Aliases (``production``, ``candidate``, ...) as append-only logs: racing movers lose nothing.

Every move of an alias is a new object ``<log>/<seq>-<ns>-<id>-<action>-<v>.json`` (the name says
everything; the body repeats it for people), where ``<log>`` is ``<registry>/production`` for
production (where it always lived) and ``<registry>/aliases/<name>`` for any other alias. Nothing
is ever overwritten, so two writers racing on a bucket both land their entry: pyarrow's S3/GCS
filesystems offer no rename and no conditional PUT (``open_output_stream`` takes only a few fixed
headers; apache/arrow#44281). An alias is derived by replaying its entries in name order: ``seq``
is one more than the entries the writer saw, so an entry always sorts after those it was based
on; clock time and a random id only break ties between writers that saw the same log.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from birdray import storage
from birdray.registry.versions import ALIAS_RE, RegistryError, check_alias, check_version

PRODUCTION = "production"
ALIASES = "aliases"
ENTRY_RE = re.compile(
    r"^(\d{8})-(\d{19})-([0-9a-f]{12})-(promote|set|rollback)-(v\d{4,})(?:-from-(v\d{4,}))?\.json\Z"
)


def _log(registry: str, alias: str = PRODUCTION) -> str:
    root = storage.absolute(registry)
    if check_alias(alias) == PRODUCTION:
        return storage.join(root, PRODUCTION)
    return storage.join(root, ALIASES, alias)


def _parse(name: str) -> dict[str, Any] | None:
    match = ENTRY_RE.fullmatch(name)
    if not match:  # anything else (a stray or half-written temp file) is not an entry
        return None
    seq, ns, uid, action, version, previous = match.groups()
    return {
        "name": name,
        "seq": int(seq),
        "ns": int(ns),
        "id": uid,
        "action": action,
        "version": version,
        "from": previous,
    }


def _order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["seq"], r["ns"], r["id"]))


def entries(registry: str, alias: str = PRODUCTION) -> list[dict[str, Any]]:
    """The alias's log entries in replay order, parsed from one listing (bodies are not read)."""
    rows = [_parse(name) for name in storage.list_files(_log(registry, alias))]
    return _order([r for r in rows if r])


def replay(rows: list[dict[str, Any]]) -> list[str]:
    """The history the entries describe (the alias's version is its last item)."""
    history: list[str] = []
    for row in rows:
        if row["action"] == "rollback" and row["from"]:
            history = [v for v in history if v != row["from"]]
        history = [v for v in history if v != row["version"]] + [row["version"]]
    return history


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    history = replay(rows)
    return {
        "version": history[-1] if history else None,
        "history": history,
        "updated_at": rows[-1]["ns"] / 1e9 if rows else None,
        "entries": len(rows),
    }


def read_pointer(registry: str, alias: str = PRODUCTION) -> dict[str, Any]:
    """``version`` (``None`` before the alias is set), ``history``, ``updated_at``, ``entries``."""
    return _summary(entries(registry, alias))


def read_aliases(registry: str) -> dict[str, dict[str, Any]]:
    """Every alias that has entries (production first), from two listings."""
    found = {PRODUCTION: entries(registry, PRODUCTION)}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for name in storage.list_files(storage.join(storage.absolute(registry), ALIASES)):
        alias, _, entry = name.partition("/")
        row = _parse(entry)
        if row and ALIAS_RE.fullmatch(alias):
            grouped.setdefault(alias, []).append(row)
    found.update({alias: _order(rows) for alias, rows in sorted(grouped.items())})
    return {alias: _summary(rows) for alias, rows in found.items() if rows}


def append(
    registry: str,
    action: str,
    version: str,
    previous: str | None = None,
    alias: str = PRODUCTION,
) -> None:
    """Add one entry after those seen now (never overwrites: retries cannot clobber anyone)."""
    check_version(version)
    seq = len(entries(registry, alias)) + 1
    ns = time.time_ns()
    suffix = f"-from-{check_version(previous)}" if previous else ""
    name = f"{seq:08d}-{ns:019d}-{uuid.uuid4().hex[:12]}-{action}-{version}{suffix}.json"
    body = {"alias": alias, "action": action, "version": version, "from": previous, "at": ns / 1e9}
    storage.put_bytes(storage.join(_log(registry, alias), name), json.dumps(body).encode())


def rollback_target(registry: str, alias: str = PRODUCTION) -> tuple[str, str]:
    """(current, previous) for a rollback, or a clear error when there is nothing to go back to."""
    history = read_pointer(registry, alias)["history"]
    if len(history) < 2:
        raise RegistryError(f"{registry}: {alias}: nothing to roll back to (history {history})")
    return history[-1], history[-2]
