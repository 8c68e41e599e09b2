"""Why a run restarted: each worker failure Ray Train saw, kept beside its checkpoints.

Ray Train retries a failed worker group from the last checkpoint (``max_failures``) and says so
only in its controller's log, so a summary showed a run that quietly redid its epochs from a
checkpoint, and nobody could tell a recovery from a bug. ``FailureLog`` runs in the controller
and writes every failure it sees to ``<storage_path>/<name>/failures.json``, local or bucket (the
checkpoints' storage, which every node reaches), each tagged with its submission;
``run_training`` puts this submission's in its summary. A worker group that never started is
retried by Ray as a controller failure, which reaches no callback: not recorded here.
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
ERROR_CHARS = 600  # its head and tail: the controller's log keeps the traceback


def one_line(error: BaseException) -> str:
    """The error in one line; a dead worker's health check gives the death's own reason."""
    error = getattr(error, "health_check_failure", None) or error  # Ray's wrapper says "failed"
    said = " ".join(f"{type(error).__name__}: {error}".split())
    if len(said) <= ERROR_CHARS:
        return said
    half = ERROR_CHARS // 2
    return f"{said[:half]} ... {said[-half:]}"


def read_failures(run_location: str, submission: float | None = None) -> list[dict[str, Any]]:
    """The run's recorded worker failures (of one submission when given); none when absent."""
    try:
        failures = json.loads(storage.read_bytes(storage.join(run_location, FAILURES_FILE)))
    except FileNotFoundError:
        return []
    return [f for f in failures if submission is None or f.get("submission") == submission]


class FailureLog(UserCallback):
    """Records each worker failure as Ray Train's controller sees it, before it retries."""

    def __init__(self, run_location: str, max_failures: int):
        self.run_location = run_location
        self.max_failures = max_failures
        self.submission = round(time.time(), 3)  # a resubmitted run keeps earlier ones apart
        self._last_seen: list[tuple[int, str]] = []

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        try:  # anything raised here would fail the run instead of letting Ray retry it
            self._record(worker_exceptions)
        except Exception:
            logger.exception("birdray: a worker failure was not recorded")

    def _record(self, worker_exceptions: dict[int, Exception]) -> None:
        seen = [(rank, one_line(error)) for rank, error in sorted(worker_exceptions.items())]
        if seen == self._last_seen:  # polled again while Ray waits out a preemption
            return
        self._last_seen = seen
        try:
            kept = read_failures(self.run_location)
        except (OSError, ValueError):  # unreadable: replaced by this failure's record
            kept = []
        # counted from the record: a restarted controller gets this callback as it was built
        number = 1 + len({f["failure"] for f in kept if f.get("submission") == self.submission})
        for rank, said in seen:
            logger.warning(
                "birdray: training worker %d failed (%s); failure %d, max_failures %d",
                rank, said, number, self.max_failures,
            )  # fmt: skip
        at = round(time.time(), 3)
        kept += [
            {"submission": self.submission, "failure": number, "time": at, "rank": r,
             "error": said}
            for r, said in seen
        ]  # fmt: skip
        storage.write_bytes_atomic(
            storage.join(self.run_location, FAILURES_FILE), json.dumps(kept).encode()
        )
