"""Drawing the photos in worker processes, and stopping them cleanly on Ctrl-C.

A photo's bytes depend only on ``(seed, image id)``, so chunks can go to any worker. The pool's
life is guarded twice: Ctrl-C waits for its bookkeeping (``runtime.interrupts_held``), and the
workers start deaf to it (``_workers_start_deaf_to_ctrl_c``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from birdray.runtime import interrupts_held
from birdray.synth.draw import render
from birdray.synth.photo import IMAGE_STREAM, attribute_labels, clicks, image_size, seeded_rng
from birdray.synth.species import Species, class_attribute_ids


@dataclass(frozen=True)
class DrawJob:
    """One photo to draw: everything about it that is fixed before drawing."""

    image_id: int
    class_index: int
    relpath: str
    gray: bool


_SPECIES: list[Species] = []


def _init_worker(species: list[Species], in_pool: bool = False) -> None:
    _SPECIES[:] = species
    if in_pool:  # Ctrl-C is the parent's to handle: it cancels the queue and stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _draw_chunk(args: tuple[str, int, int, int, list[DrawJob]]) -> list[dict]:
    """Draw, save and annotate a run of images; returns their metadata lines in id order."""
    images_dir, seed, lo, hi, jobs = args
    records = []
    for job in jobs:
        species = _SPECIES[job.class_index]
        rng = seeded_rng(seed, IMAGE_STREAM, job.image_id)
        width, height = image_size(rng, lo, hi)
        drawn = render(species.traits, rng, width, height, gray=job.gray)
        path = Path(images_dir) / job.relpath
        drawn.image.save(path, format="JPEG", quality=90)
        labels, present = attribute_labels(rng, job.image_id, class_attribute_ids(species.traits))
        records.append({
            "bbox": " ".join(f"{v}.0" for v in drawn.bbox),
            "parts": [f"{x}.0 {y}.0 {v}" if v else "0.0 0.0 0" for x, y, v in drawn.parts],
            "clicks": clicks(rng, job.image_id, drawn.parts, drawn.bbox, (width, height)),
            "attributes": labels,
            "present": present,
        })  # fmt: skip
    return records


def draw_all(
    workers: int,
    seed_and_sides: tuple[int, int, int],
    species: list[Species],
    jobs: list[DrawJob],
    images_dir: Path,
) -> list[dict]:
    """Draw every job in ``workers`` processes (0: all cores); their records in job order."""
    workers = workers or os.cpu_count() or 1
    chunk = 32
    tasks = [
        (str(images_dir), *seed_and_sides, jobs[i : i + chunk]) for i in range(0, len(jobs), chunk)
    ]
    if workers == 1 or len(tasks) == 1:
        _init_worker(species)
        return [r for task in tasks for r in _draw_chunk(task)]
    # spawn: forking a parent that may hold Ray or torch threads is unsafe. Ctrl-C is held for
    # the pool's whole life (runtime.interrupts_held says why) and acted on within a poll.
    with interrupts_held() as interrupted:
        pool = ProcessPoolExecutor(
            min(workers, len(tasks)),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(species, True),
        )
        try:
            with _workers_start_deaf_to_ctrl_c():  # the pool starts them in its first submits
                chunks = [pool.submit(_draw_chunk, task) for task in tasks]
            pending = set(chunks)
            while pending and not interrupted:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for chunk in done:
                    chunk.result()  # one that failed raises now, not after the chunks before it
            if not interrupted:
                return [r for chunk in chunks for r in chunk.result()]
        finally:
            # Cancelling leaves only the chunks already running to finish, not all submitted
            # (minutes for a big set).
            pool.shutdown(cancel_futures=True)
    raise KeyboardInterrupt  # a held SIGTERM whose handler returned


@contextlib.contextmanager
def _workers_start_deaf_to_ctrl_c() -> Iterator[None]:
    """Processes started in the block inherit SIGINT blocked (a signal mask survives exec) until
    ``_init_worker`` ignores it: a terminal's Ctrl-C reaches the whole process group, and a
    worker still starting Python died of it with a "Fatal Python error" traceback. The parent's
    interrupt is not lost: it waits, pending, for the mask to come back (as multiprocessing's own
    resource tracker is started)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
