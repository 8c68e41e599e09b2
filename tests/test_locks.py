"""Locks between processes: exclusive, announced while waited for, bounded."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from birdray import locks


def _hold(lock: str, taken, seconds: float) -> None:
    with locks.file_lock(Path(lock)) as held:
        assert held
        taken.set()
        time.sleep(seconds)


def test_file_lock_excludes_other_processes_until_released_and_says_it_waits(tmp_path, capsys):
    lock = tmp_path / "job" / ".lock"
    ctx = multiprocessing.get_context("spawn")
    taken = ctx.Event()
    other = ctx.Process(target=_hold, args=(str(lock), taken, 4.0))
    other.start()
    assert taken.wait(timeout=60)
    with locks.file_lock(lock, wait=False) as held:
        assert not held
    # a bounded wait gives up naming the holder, and repeats its note while it waits
    bounded = locks.file_lock(lock, waiting_for="the other job", max_wait_s=1.0, note_every_s=0.3)
    gave_up = f"after 1 s: process {other.pid} still holds"
    with pytest.raises(locks.LockTimeout, match=gave_up), bounded:
        pytest.fail("the lock is held by the other process")
    notes = capsys.readouterr().err.splitlines()
    assert notes[0] == f"birdray: waiting for the other job: process {other.pid} holds {lock}"
    assert len(notes) >= 3 and all("(still, after " in note for note in notes[1:])
    started = time.time()
    with locks.file_lock(lock, waiting_for="the other job") as held:  # waits for the other
        assert held
    other.join(timeout=60)
    assert other.exitcode == 0 and time.time() - started > 0.5
    said = capsys.readouterr().err
    assert f"waiting for the other job: process {other.pid} holds {lock}" in said
    with locks.file_lock(lock) as held:  # free now: taken without a word
        assert held
    assert capsys.readouterr().err == ""
