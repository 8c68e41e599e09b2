"""``birdray.runtime``: how every job meets Ray, checked without starting one where possible."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from birdray import runtime


def test_progress_bars_go_quiet_only_when_logged(monkeypatch):
    from ray.data import DataContext

    monkeypatch.delenv("RAY_DATA_DISABLE_PROGRESS_BARS", raising=False)
    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.enable_operator_progress_bars
    try:
        ctx.enable_progress_bars = ctx.enable_operator_progress_bars = True
        assert runtime.quiet_progress_when_logged(interactive=True) is True
        assert ctx.enable_progress_bars and "RAY_DATA_DISABLE_PROGRESS_BARS" not in os.environ
        assert runtime.quiet_progress_when_logged(interactive=False) is False
        assert not ctx.enable_progress_bars and not ctx.enable_operator_progress_bars
        assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        ctx.enable_progress_bars, ctx.enable_operator_progress_bars = saved


def test_the_cluster_address_is_lent_to_rays_processes_and_given_back(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "somewhere:6379")
    monkeypatch.delenv("RAY_GCS_SERVER_PORT", raising=False)
    with runtime._own_address_for_cluster_processes():
        port = os.environ["RAY_GCS_SERVER_PORT"]
        assert os.environ["RAY_ADDRESS"] == f"{runtime.LOOPBACK}:{port}" and int(port) > 0
    assert os.environ["RAY_ADDRESS"] == "somewhere:6379"
    assert "RAY_GCS_SERVER_PORT" not in os.environ


def test_loopback_is_set_before_ray_reads_it():
    """In a fresh interpreter: set before ``import ray``, Ray's constant follows it."""
    code = (
        "from birdray import runtime; runtime.keep_local_ray_on_loopback();"
        "from ray._private import ray_constants; print(ray_constants.ENABLE_RAY_CLUSTER)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == "False"


def test_ports_handed_out_stay_clear_of_rays_own_and_of_each_other():
    """Ray's processes bind port 0 (the ephemeral range) while a chosen port waits to be bound;
    CI once had the Ray dashboard's chosen port taken by the GCS that way."""
    ephemeral_low, _ = runtime._ephemeral_ports()
    ports = [runtime.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(runtime.RAY_WORKER_PORTS_END < port < ephemeral_low for port in ports)
    for port in ports[:5]:  # free now: binding it works
        with socket.socket() as sock:
            sock.bind((runtime.LOOPBACK, port))


def test_without_a_gap_below_the_ephemeral_range_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(runtime, "_ephemeral_ports", lambda: (10000, 65535))
    port = runtime.free_port()
    with socket.socket() as sock:
        sock.bind((runtime.LOOPBACK, port))


def test_after_init_ray_nothing_reconnects_by_itself():
    """A Ray Data thread left running when a job fails mid-stream calls Ray after the atexit
    shutdown; it must fail there, not ray.init() into whatever other Ray runs on the machine."""
    code = (
        "from birdray.runtime import init_ray; init_ray(num_cpus=1, include_dashboard=False)\n"
        "import ray; ray.shutdown()\n"
        "try:\n    ray.put(1)\nexcept Exception as exc:\n    print('refused', type(exc).__name__)\n"
        "else:\n    print('reconnected')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1].startswith("refused"), done.stderr[-2000:]


@pytest.mark.parametrize("exported, polls", [(None, str(runtime.TRAIN_POLL_S)), ("3", "3")])
def test_ray_trains_controller_polls_often_unless_the_user_says(
    ray_cluster, monkeypatch, exported, polls
):
    """Its 2 s default held every epoch shorter than that to 2 s (a worker's next report waits
    for the previous one to be collected); the variable is read by the driver's trainer."""
    if exported is None:
        monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    else:
        monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", exported)
    runtime.init_ray()  # joined: the session's Ray is already up
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == polls


def test_an_interrupt_inside_interrupts_held_acts_when_the_block_ends():
    seen_inside = None
    with pytest.raises(KeyboardInterrupt), runtime.interrupts_held() as held:
        signal.raise_signal(signal.SIGINT)
        seen_inside = list(held)  # reached: not raised inside the block
    assert seen_inside == [signal.SIGINT]


def test_a_held_wait_says_what_it_waits_for_and_a_second_ctrl_c_ends_it_at_once():
    """Ray's start holds Ctrl-C (interrupted halfway it crashed): the first says so, and a
    user who presses it again is not made to wait, nor sent into the half-started Ray's
    crash: the process ends there, 130. One press acts when the block ends."""
    code = (
        "import signal, sys\n"
        "from birdray.runtime import interrupts_held\n"
        "presses = int(sys.argv[1])\n"
        "try:\n"
        "    with interrupts_held('waiting for X'):\n"
        "        for _ in range(presses):\n"
        "            signal.raise_signal(signal.SIGINT)\n"
        "        print('block ran to its end', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after the block', flush=True)\n"
    )
    runs = {
        presses: subprocess.run(
            [sys.executable, "-c", code, str(presses)], capture_output=True, text=True, timeout=60
        )
        for presses in (1, 2)
    }
    once, twice = runs[1], runs[2]
    assert once.returncode == 0 and once.stderr == "waiting for X\n"
    assert once.stdout.splitlines() == ["block ran to its end", "interrupted after the block"]
    assert twice.returncode == 130 and twice.stdout == ""
    assert twice.stderr == "waiting for X\nbirdray: interrupted\n"


def test_a_handler_installed_inside_interrupts_held_stays():
    """``ray.init`` installs its own SIGTERM handler; putting the old one back over it undid
    what the block did (and a held signal then met a handler nobody chose)."""

    def theirs(signum, frame):
        return None

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with runtime.interrupts_held():
            signal.signal(signal.SIGTERM, theirs)
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_the_process_ignores_stays_ignored_inside_interrupts_held():
    """A script's ``birdray synth &`` runs with SIGINT ignored: holding it turned the Ctrl-C
    meant for the script into one that stopped the job."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with runtime.interrupts_held() as held:
            signal.raise_signal(signal.SIGINT)
        assert held == [] and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


_NO_CPU_WARNINGS = """
import logging, sys, threading, time
import pyarrow as pa
from ray.util.debug import reset_log_once
from birdray.runtime import init_ray
import ray

init_ray(include_dashboard=False)  # the machine's real CPUs, as a user's job starts Ray
warned = []
class Count(logging.Handler):
    def emit(self, record):
        warned.append("does not have any available CPUs" in record.getMessage())
logging.getLogger("ray.data.dataset").addHandler(Count())

def dataset():
    reset_log_once("cpu_warning")  # Ray warns once per process; each round may warn again
    blocks = [ray.put(pa.table({"x": list(range(50))})) for _ in range(32)]
    return ray.data.from_arrow_refs(blocks).map_batches(lambda b: b)

for _ in range(10):  # on 2 cores the stale reading came in 4 of 10 rounds without the filter
    dataset().materialize()
print("idle:", sum(warned))

@ray.remote
class Hog:
    def ready(self):
        return True

held_back = dataset()
hog = Hog.options(num_cpus=ray.cluster_resources()["CPU"]).remote()
ray.get(hog.ready.remote())
warned.clear()
threading.Thread(target=held_back.materialize, daemon=True).start()  # every CPU is held
deadline = time.time() + 8  # Ray warns once (log_once): the first warning is the count
while not any(warned) and time.time() < deadline:
    time.sleep(0.1)
print("held:", sum(warned))
sys.stdout.flush()
import os; os._exit(0)
"""


def test_ray_datas_no_cpu_warning_only_when_no_cpu_frees_up():
    """Ray Data warned "will hang" when its one reading of free CPUs lagged the leases of tasks
    that had just ended (every ingest's write runs right after from_arrow_refs' metadata tasks);
    the warning stays when the CPUs really are all held."""
    done = subprocess.run(
        [sys.executable, "-c", _NO_CPU_WARNINGS], capture_output=True, text=True, timeout=300,
        env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert "idle: 0" in lines, done.stdout + done.stderr[-3000:]
    assert "held: 1" in lines, done.stdout + done.stderr[-3000:]


def test_signals_received_sees_a_ctrl_c_another_handler_took():
    """Ray Train's and Tune's handlers take Ctrl-C inside ``fit()`` and end it their way (one
    with ``SystemExit``, one by returning): the train and tune jobs still learn it was pressed."""
    import os
    import signal

    from birdray.runtime import signals_received

    taken: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: taken.append(number))
    try:
        with signals_received() as received:
            assert signal.SIGINT not in received()
            os.kill(os.getpid(), signal.SIGINT)
            assert taken == [signal.SIGINT] and signal.SIGINT in received()
        with signals_received() as received:  # a new block starts with none
            assert not received()
    finally:
        signal.signal(signal.SIGINT, previous)
