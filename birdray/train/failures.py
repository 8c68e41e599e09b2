"""Why a run restarted: each worker failure Ray Train recovered from, kept beside its checkpoints.

Ray Train retries a failed worker group from the last checkpoint (``max_failures``) and says so
only in its controller's log, so a summary showed a run that quietly redid its epochs from a
checkpoint, and nobody could tell a recovery from a bug. ``FailureLog`` runs in the controller
and writes every failure it sees to ``<storage_path>/<name>/failures.json``, local or bucket (the
checkpoints' storage, which every node reaches); ``run_training`` adds them to its summary.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ray.train import UserCallback

from birdray import storage

logger = logging.getLogger(__name__)
FAILURES_FILE = "failures.json"
ERROR_CHARS = 400  # one line of the error: the controller's log keeps the traceback


class FailureLog(UserCallback):
    """Records each worker's error as Ray Train's controller sees it, before it retries."""

    def __init__(self, run_location: str, max_failures: int):
        self.location = storage.join(run_location, FAILURES_FILE)
        self.max_failures = max_failures
        self.failures: list[dict[str, Any]] = []

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        seen = round(time.time(), 3)  # one failure, however many workers it took down
        for rank, error in sorted(worker_exceptions.items()):
            said = " ".join(f"{type(error).__name__}: {error}".split())[:ERROR_CHARS]
            self.failures.append({"time": seen, "rank": rank, "error": said})
            logger.warning(
                "birdray: training worker %d failed (%s); failure %d, max_failures %d",
                rank, said, len(self.failures), self.max_failures,
            )  # fmt: skip
        try:
            storage.write_bytes_atomic(self.location, json.dumps(self.failures).encode())
        except OSError as exc:  # the retry matters more than its record
            logger.warning("birdray: %s not written: %s", self.location, exc)


def read_failures(run_location: str) -> list[dict[str, Any]]:
    """The run's recorded worker failures (none when the file is absent)."""
    try:
        return json.loads(storage.read_bytes(storage.join(run_location, FAILURES_FILE)))
    except FileNotFoundError:
        return []
