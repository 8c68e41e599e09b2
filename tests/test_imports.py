"""Concurrent first imports of birdray's model code must not race (a CI flake that was a real bug).

Ray runs birdray code in several threads of one worker process (actor ``__init__`` and
``__call__``, Train's loop thread beside Ray Data's prefetch threads, Serve's thread pool). Two
threads that first import different parts of the torch/timm stack at once used to get a partially
initialised ``timm.data``/``torch._dynamo`` and kill the task (see ``birdray/model/_stack.py``).
The script below starts the threads together in a fresh interpreter, with a tiny switch interval
so they interleave inside the imports: without the fix it fails every time on this machine.

The second test is CI's other face of the same message: a task cancelled in the middle of the first
import leaves a half-imported package in a worker Ray then reuses (``interrupt_ends_ray_worker``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib, sys, threading
sys.setswitchinterval(1e-6)  # interleave the threads inside the imports
modules = sys.argv[1:]
barrier = threading.Barrier(len(modules))
errors = []
def first_import(name):
    barrier.wait()
    try:
        module, _, call = name.partition(":")  # "module:function": a lazy door, called
        loaded = importlib.import_module(module)
        if call:
            getattr(loaded, call)()
    except Exception as exc:
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
threads = [threading.Thread(target=first_import, args=(m,)) for m in modules]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(errors) or "ok")
sys.exit(1 if errors else 0)
"""

# the doors through which Ray workers first reach torch/timm (scoring, evaluation, training)
ENTRY_MODULES = [
    "birdray.model.preprocess",
    "birdray.model.inference",
    "birdray.model.factory",
    "birdray.model.package",
    "birdray.model.package:_model_stack",  # the package loads torch/timm on first use only
    "birdray.train.loop",
]


def test_concurrent_first_imports_of_model_code_do_not_race():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *ENTRY_MODULES],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


# Holds the import inside torch._dynamo's __init__, after ``.decorators`` is loaded: the point
# where an interrupt leaves the exact half-package CI saw (``torch._dynamo`` gone from
# sys.modules, ``torch._dynamo.decorators`` still there).
HOLD_AT = "torch._dynamo.polyfills.loader"


class _HoldImport:
    """A meta-path finder that stops one import until the task is cancelled."""

    def __init__(self, name: str, marker: str) -> None:
        self.name, self.marker = name, marker

    def find_spec(self, name, path=None, target=None):
        if name == self.name:
            Path(self.marker).write_text(str(os.getpid()))
            for _ in range(1200):  # short sleeps: a cancel's KeyboardInterrupt lands between them
                time.sleep(0.1)
        return None


def _import_model_code(marker: str | None) -> int:
    if marker is not None:
        assert "torch._dynamo" not in sys.modules, "this worker imported torch already"
        sys.meta_path.insert(0, _HoldImport(HOLD_AT, marker))
    import birdray.model.preprocess  # noqa: F401

    return os.getpid()


@pytest.mark.slow
def test_a_task_cancelled_inside_the_first_torch_import_leaves_no_poisoned_worker(
    ray_cluster, tmp_path
):
    """Ray Data cancels in-flight tasks when a dataset stops; the next task must still import.

    CI saw scoring tasks die with ``partially initialized module 'torch._dynamo'`` in a worker
    whose earlier task had been cancelled mid-import. A runtime env of its own gives this test
    fresh workers that no other test has warmed up.
    """
    import ray

    env = {"env_vars": {"BIRDRAY_TEST_WORKER": tmp_path.name}}
    load = ray.remote(_import_model_code).options(runtime_env=env, max_retries=0)
    marker = tmp_path / "holding"
    ref = load.remote(str(marker))
    deadline = time.monotonic() + 480  # a fresh worker's start and torch import, under load
    while not marker.exists():
        assert time.monotonic() < deadline, "the task never reached the held import"
        time.sleep(0.2)
    ray.cancel(ref)
    ended = (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)
    with pytest.raises(ended):  # cancelled, or its worker ended itself: either way no result
        ray.get(ref, timeout=120)
    # the next tasks of this runtime env import the model code as if nothing had happened
    pids = ray.get([load.remote(None) for _ in range(2)], timeout=300)
    assert all(isinstance(pid, int) for pid in pids)
