"""What an ingest says: the counts, what was quarantined and why, and what was skipped.

``summary`` is the one line (the demo prints it); ``report`` adds the quarantine counted by
reason with a few example files, and the dataset's warnings (files skipped by the layout,
classes left without an image). Output stays a few lines however many files were rejected:
the manifest's ``quarantine`` list has them all.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from birdray import storage

EXAMPLES = 5  # quarantined files shown by name
WIDTH = 160  # characters of one example's reason


def reason_code(reason: str) -> str:
    """``not_an_image`` of ``not_an_image: bytes are not ...``."""
    return reason.split(":", 1)[0].strip() or "unknown"


def reason_counts(quarantine: list[dict[str, Any]]) -> str:
    counts = Counter(reason_code(q["reason"]) for q in quarantine)
    return ", ".join(f"{code} {n}" for code, n in counts.most_common())


def empty_classes(class_names: list[str], splits: dict[str, Any]) -> list[str]:
    """A warning naming the classes with no ingested image (every file of theirs quarantined)."""
    kept = {int(label) for s in splits.values() for label in s["per_class"]}
    empty = [name for i, name in enumerate(class_names) if i not in kept]
    if not empty:
        return []
    shown = ", ".join(repr(n) for n in empty[:EXAMPLES])
    more = f" and {len(empty) - EXAMPLES} more" if len(empty) > EXAMPLES else ""
    return [
        f"{len(empty)} class(es) have no usable image (all quarantined) and cannot be learned: "
        f"{shown}{more}"
    ]


def summary(manifest_path: str | Path) -> str:
    return _summary(json.loads(storage.read_bytes(manifest_path)))


def _summary(manifest: dict[str, Any]) -> str:
    parts = [f"{k}={v['rows']}" for k, v in manifest["splits"].items()]
    feedback = manifest.get("feedback")
    extra = f", {feedback['used']} of them from feedback" if feedback else ""
    return (
        f"{manifest['counts']['ingested']} images ingested ({', '.join(parts)}{extra}), "
        f"{manifest['counts']['quarantined']} quarantined"
    )


def report(manifest_path: str | Path) -> str:
    """A few lines for the terminal: summary, quarantine by reason with examples, warnings."""
    manifest = json.loads(storage.read_bytes(manifest_path))
    lines = [_summary(manifest)]
    quarantine = manifest.get("quarantine") or []
    if quarantine:
        lines.append(f"quarantined by reason: {reason_counts(quarantine)}")
        for q in quarantine[:EXAMPLES]:
            text = f"{q['path']}: {' '.join(q['reason'].split())}"
            lines.append(f"  {text[:WIDTH]}{'...' if len(text) > WIDTH else ''}")
        if len(quarantine) > EXAMPLES:
            lines.append(f"  ... all {len(quarantine)} in {manifest_path} (quarantine)")
    lines += [f"warning: {w}" for w in manifest.get("warnings") or []]
    return "\n".join(lines)
