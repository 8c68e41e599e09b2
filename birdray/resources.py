"""Fit every job's Ray requests to the cluster before submitting anything, and notice stalls.

Ray never rejects a request that fits no node: it waits. On a 2-CPU laptop, two 1-CPU training
workers leave nothing for Ray Data's file listing (a whole-CPU task), and the job hangs silently.
So each job asks here first: a plan that fits (fractional worker CPUs, a capped actor pool) is
printed in one line; one that cannot fit stops at once with the numbers. What still stalls at run
time (another job holding the CPUs) is caught by ``watched``, which names Ray's pending demand.
"""

from __future__ import annotations

import contextlib
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

DATA_CPUS = 1.0  # Ray Data's ListFiles/read tasks take one whole CPU (no API to lower it in 2.60)
MIN_WORKER_CPUS = 0.1  # below this a training worker is not worth starting


class ResourceError(ValueError):
    """A request the cluster can never satisfy (it would sit PENDING forever)."""


class StallError(RuntimeError):
    """A running pipeline produced nothing for ``stall_timeout_s`` seconds."""


def cluster_cpus_gpus(cluster: dict[str, float]) -> tuple[float, float]:
    return float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))


def say(message: str) -> None:
    """The one line a job prints about what it chose (stderr: stdout may be a JSON result)."""
    print(f"birdray: {message}", file=sys.stderr, flush=True)


def check_gpus(what: str, need: float, cluster: dict[str, float]) -> None:
    have_cpu, have_gpu = cluster_cpus_gpus(cluster)
    if need > have_gpu + 1e-9:
        hint = " (--device cpu --num-gpus 0 runs on CPU)" if have_gpu == 0 else ""
        raise ResourceError(
            f"{what} need {need:g} GPU; the cluster has {have_cpu:g} CPU and {have_gpu:g} GPU{hint}"
        )


def plan_workers(
    num_workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    data_cpus: float,
    cluster: dict[str, float],
    copies: int = 1,
    extra_cpus: float = 0.0,
) -> float:
    """CPUs per Train worker that leave ``max(data_cpus, 1)`` free for Ray Data, per copy.

    ``copies`` concurrent runs (Tune trials), each with ``extra_cpus`` of its own (the trial's
    function). Workers asking more than the cluster has is an error; workers that fit but leave
    Ray Data nothing get the largest fraction that does (printed), down to ``MIN_WORKER_CPUS``.
    """
    have_cpu, have_gpu = cluster_cpus_gpus(cluster)
    what = (
        f"{num_workers} workers x {cpus_per_worker:g} CPU"
        + (" + 1 GPU" if use_gpu else "")
        + (f" x {copies} concurrent trials" if copies > 1 else "")
    )
    need_cpu = num_workers * cpus_per_worker * copies
    need_gpu = num_workers * copies if use_gpu else 0
    if need_cpu > have_cpu + 1e-9 or need_gpu > have_gpu + 1e-9:
        hint = " (--use-gpu false runs on CPU)" if need_gpu and not have_gpu else ""
        raise ResourceError(
            f"{what} need {need_cpu:g} CPU and {need_gpu:g} GPU; the cluster has"
            f" {have_cpu:g} CPU and {have_gpu:g} GPU{hint}"
        )
    data = max(DATA_CPUS, data_cpus)
    free = have_cpu / copies - data - extra_cpus
    if num_workers * cpus_per_worker <= free + 1e-9:
        return cpus_per_worker
    fitted = math.floor(free / num_workers * 100 + 1e-6) / 100
    text = (
        f"{what} + {data:g} CPU for Ray Data"
        + (f" + {extra_cpus:g} for the trial" if extra_cpus else "")
        + (" each" if copies > 1 else "")
    )
    if fitted < MIN_WORKER_CPUS:
        total = (num_workers * cpus_per_worker + data + extra_cpus) * copies
        raise ResourceError(
            f"{text} need {total:g} CPU; the cluster has {have_cpu:g} CPU and {have_gpu:g} GPU"
        )
    say(
        f"resources: {text} would not fit the cluster's {have_cpu:g} CPU; each worker reserves"
        f" {fitted:g} CPU instead"
    )
    return fitted


def plan_pool(
    what: str,
    size: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    cluster: dict[str, float],
    data_cpus: float = DATA_CPUS,
) -> int:
    """Actors of a Ray Data pool that fit beside its ``data_cpus`` of read/decode tasks."""
    have_cpu, have_gpu = cluster_cpus_gpus(cluster)
    if gpus_per_actor > 0:
        check_gpus(f"{what} actors x {gpus_per_actor:g} GPU", gpus_per_actor, cluster)
    fits_cpu = (have_cpu - data_cpus) / cpus_per_actor if cpus_per_actor > 0 else size
    fits_gpu = have_gpu / gpus_per_actor if gpus_per_actor > 0 else size
    fits = min(size, math.floor(fits_cpu + 1e-9), math.floor(fits_gpu + 1e-9))
    if fits < 1:
        raise ResourceError(
            f"needs 1 {what} actor x {cpus_per_actor:g} CPU + {data_cpus:g} CPU for its data"
            f" tasks = {cpus_per_actor + data_cpus:g} CPU; the cluster has {have_cpu:g} CPU"
        )
    if fits < size:
        say(
            f"resources: {size} {what} actors x {cpus_per_actor:g} CPU + {data_cpus:g} for data"
            f" tasks would not fit the cluster's {have_cpu:g} CPU / {have_gpu:g} GPU; using {fits}"
        )
    return fits


def pending_report() -> str:
    """Ray's view, as ``ray status`` shows it: free/total CPU and GPU, and what waits for them."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        if not ray.is_initialized():  # asking the runtime context would start a Ray of its own
            return "(not connected to Ray)"
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        total, free = status.total_resources(), status.available_resources()
        demands = status.resource_demands
        waiting = [str(b) for d in demands.ray_task_actor_demand for b in d.bundles_by_count]
        groups = demands.placement_group_demand
        waiting += [f"placement group {b}" for d in groups for b in d.bundles_by_count]
    except Exception as exc:  # the report must never hide the stall itself
        return f"(Ray's resource view unavailable: {exc})"
    have = ", ".join(f"{free.get(k, 0):g}/{total[k]:g} {k}" for k in ("CPU", "GPU") if k in total)
    return f"free {have or 'nothing'}; waiting for resources: {', '.join(waiting) or 'nothing'}"


def watched(items: Iterable[T], timeout_s: float, what: str) -> Iterator[T]:
    """Yield ``items``; raise ``StallError`` (with Ray's pending demand) after ``timeout_s``
    without a new item. Only waiting counts: the caller's own work between items does not.

    Ray Data iterators have no timeout, so a small thread pulls the items; ``timeout_s <= 0``
    iterates directly.
    """
    if timeout_s <= 0:
        yield from items
        return
    box: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def offer(entry: tuple) -> bool:
        while not stop.is_set():  # the consumer may be gone: never block for good
            try:
                box.put(entry, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((end, None))
        except BaseException as exc:  # handed to the consumer, raised there
            offer((end, exc))
        finally:  # a consumer that gave up must not leave the pipeline running in this thread
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                # after Ctrl-C the driver may already have shut Ray down: there is nothing left to
                # stop, and Ray Data's failing shutdown was ~150 lines of tracebacks after
                # "interrupted"
                with contextlib.suppress(Exception):
                    close()

    threading.Thread(target=pull, name=f"birdray-watch-{what}", daemon=True).start()
    try:
        while True:
            try:
                item, error = box.get(timeout=timeout_s)
            except queue.Empty:
                raise StallError(
                    f"{what}: nothing for {timeout_s:g} s (stall_timeout_s); {pending_report()}"
                ) from None
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def watched_call(
    call: Callable[[], T], progress: Callable[[], Any], timeout_s: float, what: str
) -> T:
    """Run a blocking Ray call (``write_parquet`` has no iterator to watch); raise ``StallError``
    when ``progress()`` (e.g. the files written so far) stays the same for ``timeout_s``.

    The call runs in a daemon thread; on a stall it is abandoned, as the job ends anyway.
    """
    if timeout_s <= 0:
        return call()
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((call(), None))
        except BaseException as exc:  # raised in the caller's thread
            result.append((None, exc))

    worker = threading.Thread(target=run, name=f"birdray-watch-{what}", daemon=True)
    worker.start()
    poll = min(5.0, max(0.5, timeout_s / 10))
    last, since = progress(), time.monotonic()
    while worker.is_alive():
        worker.join(poll)
        if not worker.is_alive():
            break
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= timeout_s:
            raise StallError(
                f"{what}: nothing for {timeout_s:g} s (stall_timeout_s); {pending_report()}"
            )
    value, error = result[0]
    if error is not None:
        raise error
    return value
