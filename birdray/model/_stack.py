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

The fix: every ``birdray.model`` module imports this one first. A module that another thread is
still initialising makes Python wait on that module's lock, so whichever thread comes first
imports the complete stack here while the others wait for it, instead of racing into timm through
different doors. A partially initialised parent *package* does not make Python wait, which is why
this is a module of its own and not ``birdray/model/__init__.py``. ``tests/test_imports.py``
starts concurrent first imports in a fresh interpreter and fails without this.
"""

# ruff: noqa: I001, F401  (imported for their side effect, in this order: the point of the module)
import torch  # first: everything below imports it
import torch._dynamo  # torch loads it lazily, timm eagerly: here one thread loads it, once
import torchvision  # timm.layers reaches into torchvision.ops
import timm  # timm.layers and timm.models, in timm's own order
import timm.data
import timm.optim
import timm.scheduler
