"""The record of worker failures Ray Train restarted from (``birdray.train.failures``)."""

from __future__ import annotations

import json

import pytest


class WorkerHealthCheckFailedError(Exception):
    """Ray Train's wrapper of a dead worker: its own text is the worker's long description."""

    def __init__(self, failure: Exception):
        super().__init__("A worker health check failed. Worker info: " + "x" * 900)
        self.health_check_failure = failure


def test_a_failure_is_one_line_with_the_deaths_own_reason():
    from birdray.train.failures import ERROR_CHARS, one_line

    died = WorkerHealthCheckFailedError(RuntimeError("worker OOM-killed\n  (rss 7.9 GiB)"))
    assert one_line(died) == "RuntimeError: worker OOM-killed (rss 7.9 GiB)"
    long = one_line(ValueError("head " + "y" * 2000 + " tail"))
    assert len(long) <= ERROR_CHARS + 5 and long.startswith("ValueError: head")
    assert long.endswith(" tail") and " ... " in long


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_failures_are_kept_per_submission_once_each(tmp_path, where, request):
    from birdray import storage
    from birdray.train.failures import FAILURES_FILE, FailureLog, read_failures

    run = str(tmp_path) if where == "local" else f"{request.getfixturevalue('s3_bucket')}/f/run"
    assert read_failures(run) == []  # none yet: absent, not an error
    first = FailureLog(run, max_failures=2)
    first.after_exception(None, {1: RuntimeError("boom"), 0: RuntimeError("gloo peer gone")})
    first.after_exception(None, {1: RuntimeError("boom"), 0: RuntimeError("gloo peer gone")})
    first.after_exception(None, {0: RuntimeError("boom again")})
    assert [(f["failure"], f["rank"]) for f in read_failures(run)] == [(1, 0), (1, 1), (2, 0)]
    restarted = FailureLog(run, max_failures=2)  # the controller's copy, built again by Ray
    restarted.submission = first.submission
    restarted.after_exception(None, {1: RuntimeError("third")})
    assert read_failures(run)[-1]["failure"] == 3  # counted from the record, not from 0
    later = FailureLog(run, max_failures=2)  # a resubmission of the same run
    later.submission = first.submission + 1
    later.after_exception(None, {0: RuntimeError("again")})
    assert [(f["failure"], f["error"]) for f in read_failures(run, later.submission)] == [
        (1, "RuntimeError: again")
    ]
    assert len(read_failures(run)) == 5  # the earlier submission's are kept
    assert len(json.loads(storage.read_bytes(storage.join(run, FAILURES_FILE)))) == 5


def test_a_record_that_cannot_be_written_does_not_fail_the_run(tmp_path, caplog):
    from birdray.train.failures import FailureLog

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    log = FailureLog(str(blocked), max_failures=1)
    log.after_exception(None, {0: RuntimeError("boom")})  # Ray would end the run on a raise
    assert "not recorded" in caplog.text


@pytest.mark.parametrize("content", [b"{not json", b""])
def test_an_unreadable_record_is_replaced_not_raised(tmp_path, content):
    from birdray.train.failures import FAILURES_FILE, FailureLog, read_failures

    (tmp_path / FAILURES_FILE).write_bytes(content)
    log = FailureLog(str(tmp_path), max_failures=1)
    log.after_exception(None, {0: RuntimeError("boom")})
    assert [f["error"] for f in read_failures(str(tmp_path))] == ["RuntimeError: boom"]
