"""Helpers for tests that interrupt Ray Train runs and check what a resume starts from."""

from __future__ import annotations

import json
from pathlib import Path


def committed_checkpoint(run: Path) -> str | None:
    """The checkpoint Ray Train has committed last for this run (what a resume starts from; a
    newer folder may exist, written but not yet committed when the driver died)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
