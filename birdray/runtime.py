"""Connect to Ray the same way from every job: an existing cluster, or a local one on loopback.

Under ``ray job submit`` the job joins the cluster it was submitted to (RAY_ADDRESS is set).
Run by hand on a laptop, it starts a local Ray bound to 127.0.0.1, dashboard included (on
loopback only): Ray Train V2 frees the placement group of a run whose controller died (a trial
stopped by Tune's scheduler) through the dashboard's state API, so without it a long-lived driver
(the demo: a sweep, then training) leaks CPU reservations until nothing can be scheduled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
# Ray's workers listen on 10002-19999 unless told otherwise; the rest of Ray binds port 0.
RAY_WORKER_PORTS_END = 19999
_handed_out: set[int] = set()


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for port-0 binds (Linux default when it can't be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return (49152, 65535) if sys.platform == "darwin" else (32768, 60999)


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free now and stays out of the way of everything else starting meanwhile.

    A port is chosen here and bound later by another process (Ray's GCS or dashboard, Serve's
    proxy, Streamlit, an S3 server). One taken with a port-0 bind comes from the kernel's
    ephemeral range, which Ray's own processes draw from in that gap too; two of them once got
    the same port and the Ray dashboard could not start. So the port is drawn between Ray's
    worker ports and the ephemeral range, and never twice by one process.
    """
    low, high = RAY_WORKER_PORTS_END + 1, _ephemeral_ports()[0] - 1
    for port in random.sample(range(low, high + 1), min(200, max(0, high + 1 - low))):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # the gap is full or absent: let the kernel choose
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def sigterm_as_ctrl_c() -> bool:
    """Let ``kill`` (a service manager) stop a blocking command the way Ctrl-C does.

    Python's default for SIGTERM ends the process at once, leaving Streamlit or a Serve app
    behind; as KeyboardInterrupt it runs the command's own clean-up. Only the main thread can
    install handlers; returns whether it did (``ray.init`` replaces it: call again after).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return True


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


STARTING_SAYS = "birdray: stopping once Ray has started (interrupt again to stop now)"
TRAIN_POLL_S = 0.25  # Ray Train's controller poll (see train_polls_often)


@contextlib.contextmanager
def interrupts_held(say: str = "") -> Iterator[list[int]]:
    """Ctrl-C or SIGTERM inside the block acts when it ends; the block sees them in the list.

    Some bookkeeping must not be cut in half. Interrupted inside ``Popen`` (after the fork,
    before it returns), the dashboard launcher lost its only handle on a Streamlit that went on
    running. Interrupted between starting a pool worker and recording it, ``ProcessPoolExecutor``
    sent its stop sentinels to the wrong workers and ``shutdown`` waited forever for one that
    never got its own (``birdray synth``, CI caught both). A block that waits for long can poll
    the list and wind down at once, or ``say`` what it waits for: then the first signal prints
    that, and a second one ends the process at once (exit 130), since whatever the block
    guards would break if cut. A handler the block installs itself stays. Outside the main
    thread Python delivers no signals, so there is nothing to hold.
    """
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum: int, _: Any) -> None:
        held.append(signum)
        if say:  # os.write: print() in a handler can meet a half-done write to stderr
            os.write(2, f"{say}\n".encode() if len(held) == 1 else b"birdray: interrupted\n")
        if say and len(held) > 1:
            os._exit(130)

    # one the process ignores (a script's ``birdray synth &``) stays ignored, not held
    signals = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, hold) for sig in signals}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is hold:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in held[:1]:
            signal.raise_signal(signum)  # now handled as it would have been


@contextlib.contextmanager
def _ray_keeps_our_sigterm() -> Iterator[None]:
    """``ray.init`` in the main thread replaces the SIGTERM handler with its own (exit 15, no
    "interrupted" line), in the middle of starting. It sets it through this one function,
    silenced here so that a SIGTERM is held like Ctrl-C while Ray starts and acts as Ctrl-C
    after."""
    from ray._private import utils

    install = getattr(utils, "set_sigterm_handler", None)
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if install is not None:
            utils.set_sigterm_handler = install


def keep_local_ray_on_loopback() -> None:
    """Make a locally started Ray bind 127.0.0.1 instead of the machine's network address.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; the CLI calls this before
    importing any job. For library use after ``import ray`` the constant is set directly too.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in (
            "0",
            "false",
            "False",
        )


def quiet_progress_when_logged(interactive: bool | None = None) -> bool:
    """Turn Ray Data's progress bars off unless stderr is a terminal; returns whether they stay.

    Redrawn bars are fine on a terminal, but in a file or ``ray job submit``'s log each redraw is
    a line (a one-minute training run wrote over 1,100); jobs print one line per epoch/stage
    instead. Datasets copy the current DataContext when created, so this runs before any.
    """
    interactive = sys.stderr.isatty() if interactive is None else interactive
    if not interactive:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # processes started later
    return interactive


class _StaleNoCpuWarning(logging.Filter):
    """Drop Ray Data's "no available CPUs ... will hang" warning when its reading was stale.

    Ray Data checks ``ray.available_resources()`` once as an execution starts. That view lags the
    release of task leases, so right after other tasks (``from_arrow_refs`` runs one metadata
    task per block) it reads 0 free CPUs while nothing holds them: on 2 cores, 4 of 10 ingests'
    writes warned that they would hang, and ran. The warning passes only if no CPU frees up
    within ``settle_s``; a real stall still ends with birdray's ``StallError`` and its numbers.
    """

    MESSAGE = "does not have any available CPUs"

    def __init__(self, settle_s: float = 3.0) -> None:
        super().__init__()
        self.settle_s = settle_s

    def filter(self, record: logging.LogRecord) -> bool:
        if self.MESSAGE not in record.getMessage():
            return True
        import ray

        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            try:
                if ray.available_resources().get("CPU", 0) > 0:
                    return False
            except Exception:  # a filter must never break the execution it logs for
                return True
            time.sleep(0.1)
        return True


def quiet_stale_cpu_warning(settle_s: float = 3.0) -> None:
    """Install ``_StaleNoCpuWarning`` on Ray Data's logger (once per process)."""
    ray_data_log = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _StaleNoCpuWarning) for f in ray_data_log.filters):
        ray_data_log.addFilter(_StaleNoCpuWarning(settle_s))


def train_polls_often() -> None:
    """Ray Train's controller collects each worker's report when it polls (every 2 s by default),
    and a worker's second report waits for the first to be collected: epochs shorter than the
    poll (a small dataset, a GPU) lasted a poll, and every run's end was noticed up to 2 s late.
    Read where ``fit()`` runs (the driver; a Tune trial's actor); a value the user set wins."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(TRAIN_POLL_S))


def init_ray(
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: int | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Start or join Ray once per process; returns the cluster's resources.

    An address (argument or RAY_ADDRESS, as under ``ray job submit``) joins that cluster; none
    starts a private local Ray on loopback (never silently joining some other local cluster).
    """
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    train_polls_often()
    import ray

    quiet_progress_when_logged()
    quiet_stale_cpu_warning()
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ctrl-C in ray.init, while its driver was still connecting, made Ray shut the new node down
    # under it, and the process died with SIGSEGV instead of saying "interrupted" (exit 130);
    # SIGTERM stops a job as Ctrl-C does (README), not with Ray's own exit 15
    sigterm_as_ctrl_c()
    with interrupts_held(STARTING_SAYS), _ray_keeps_our_sigterm():
        if address and address != "local":
            ray.init(address=address, **kwargs)
        else:
            keep_local_ray_on_loopback()
            with _own_address_for_cluster_processes():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    include_dashboard=kwargs.pop("include_dashboard", True),
                    dashboard_host=kwargs.pop("dashboard_host", LOOPBACK),
                    _node_ip_address=LOOPBACK,
                    **kwargs,
                )
    # From here this process never calls ray.init() by itself: a Ray Data thread still running
    # at exit (a job that failed mid-stream) did, after Ray's atexit shutdown, and joined another
    # user's Ray on the machine ("Found multiple active Ray instances ... Connecting to latest").
    # The same switch as RAY_ENABLE_AUTO_CONNECT=0, which Ray reads only when imported.
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = False
    return ray.cluster_resources()


@contextlib.contextmanager
def _own_address_for_cluster_processes() -> Iterator[None]:
    """Start the local Ray on a chosen GCS port, with RAY_ADDRESS naming it in its processes.

    Ray Train's placement-group cleaner asks the state API with no address; with a second Ray
    on the machine (another user's, the test session's) that lookup fails, and the reservation
    of a Tune trial stopped by its scheduler is never freed: the next trial waits forever.
    The raylet and its workers inherit this environment; the driver's own is put back.
    """
    port = free_port()
    env = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{LOOPBACK}:{port}"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def signals_received() -> Iterator[Callable[[], set[int]]]:
    """The signals this process received while the block ran, whichever handler took them.

    Ray Train V2's ``fit()`` installs its own Ctrl-C handler: it aborts the run gracefully (the
    workers stopped, committed checkpoints kept, so the same ``--name`` resumes) and then calls
    ``sys.exit(0)`` inside ``ray.get``, which Ray turns into ``SystemExit(1)`` out of ``fit()``:
    ``birdray train`` exited 1 without a word. Tune's handler stops the sweep and returns, so a
    sweep went on to evaluate a half-trained winner. Python writes the number of every signal it
    handles to the wakeup fd before any handler runs, so the caller can tell that Ctrl-C ended
    the run and say so (``KeyboardInterrupt``: the CLI's one line and exit 130) once Ray's
    abort has run. Only the main thread receives signals; elsewhere the set stays empty.
    """
    if threading.current_thread() is not threading.main_thread():
        yield set
        return
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    seen: set[int] = set()

    def received() -> set[int]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 256):
                seen.update(chunk)
        return seen

    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)


def task_cause(error: BaseException) -> BaseException:
    """The error a Ray task raised, for ``error`` as the driver got it: Ray re-raises it as
    ``RayTaskError(<its class>)``, whose ``errno`` (for an ``OSError``) is None and whose text
    is the task's whole traceback; the task's own error is its ``cause``. Any other error, and
    any error while Ray was never imported, is itself."""
    task_error = getattr(sys.modules.get("ray.exceptions"), "RayTaskError", None)
    if isinstance(task_error, type) and isinstance(error, task_error) and error.cause is not None:
        return error.cause
    return error
