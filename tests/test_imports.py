"""Concurrent first imports of birdray's model code must not race (a CI flake that was a real bug).

Ray runs birdray code in several threads of one worker process (actor ``__init__`` and
``__call__``, Train's loop thread beside Ray Data's prefetch threads, Serve's thread pool). Two
threads that first import different parts of the torch/timm stack at once used to get a partially
initialised ``timm.data``/``torch._dynamo`` and kill the task (see ``birdray/model/_stack.py``).
The script below starts the threads together in a fresh interpreter, with a tiny switch interval
so they interleave inside the imports: without the fix it fails every time on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        importlib.import_module(name)
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
