"""The torch/timm stack, imported once per process in one fixed order (a race fix, not style).

Why this module exists: Python's import of a package from several threads at once is only safe
for packages without import cycles, and timm has them (``timm.data`` <-> ``timm.layers`` <->
``timm.models``, with ``torch._dynamo`` and ``torchvision.ops`` loaded lazily underneath). Ray
runs birdray code in several threads of one worker process: a Ray Data actor's ``__init__`` runs
on the main thread and its ``__call__`` on a second one (Ray's single-threaded UDF wrapper), Ray
Train runs the training function in a thread beside Ray Data's prefetch threads, Serve runs sync
methods in a thread pool, and birdray imports model code lazily inside functions. When two threads
first import different parts of the stack (``birdray.model.preprocess`` needs ``timm.data``,
``birdray.model.factory`` needs ``timm``), Python's deadlock detection hands one of them a
*partially initialised* module: ``cannot import name 'IMAGENET_DEFAULT_MEAN' from partially
initialized module 'timm.data'``, ``partially initialized module 'torch._dynamo'``, and a scoring,
evaluation, explanation or training task dies at random (seen in CI, in a fresh worker).

The fix: every ``birdray.model`` module that uses torch or timm imports this one first (``package``
only on first use, through ``factory``: reading a package's metadata needs no torch). A module
that another thread is still initialising makes Python wait on that module's lock, so whichever
thread comes first imports the complete stack here while the others wait for it, instead of
racing into timm through different doors. A partially initialised parent *package* does not make
Python wait, which is why this is a module of its own and not ``birdray/model/__init__.py``.
``tests/test_imports.py`` starts concurrent first imports in a fresh interpreter and fails
without this.
"""

# ruff: noqa: I001, F401  (imported for their side effect, in this order: the point of the module)
import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def interrupt_ends_ray_worker() -> Iterator[None]:
    """Around a heavy first import: if a task cancel interrupts it, end this Ray worker.

    Ray cancels a task by raising KeyboardInterrupt in its worker (Ray Data does so for every
    in-flight task when a dataset stops early or fails). Landing inside a multi-second first import
    it leaves half a package behind: Python drops ``torch._dynamo`` from sys.modules but keeps
    ``torch._dynamo.decorators``, and every later task Ray sends to this reused worker dies with
    ``partially initialized module 'torch._dynamo'`` (seen in CI). No import can repair that
    process, so a Ray worker ends itself and Ray starts a clean one for the next task; anywhere
    else (a CLI the user interrupted) the interrupt goes on as usual.
    """
    try:
        yield
    except KeyboardInterrupt:
        ray_worker = sys.modules.get("ray._private.worker")
        if ray_worker is not None and ray_worker.global_worker.mode == ray_worker.WORKER_MODE:
            print(
                "birdray: a cancelled task interrupted this Ray worker's first import of "
                "torch/timm/captum; ending the worker so Ray replaces it with a clean one",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)
        raise


with interrupt_ends_ray_worker():
    import torch  # first: everything below imports it
    import torch._dynamo  # torch loads it lazily, timm eagerly: here one thread loads it, once
    import torchvision  # timm.layers reaches into torchvision.ops
    import timm  # timm.layers and timm.models, in timm's own order
    import timm.data
    import timm.optim
    import timm.scheduler
