"""A user's mistake is one line naming the flag, exit status 2, no traceback, before Ray starts.

The first group runs the real CLI (``python -m birdray.cli`` and ``python jobs/<job>.py``) in
subprocesses, for the invocations a new user was seen to get wrong: before the fix ``serve
--model /nonexistent`` started Ray and Serve and failed after a minute, and ``train``/``ingest``/
``score`` printed tracebacks. RAY_ADDRESS points at a closed port, so a job that got as far as
starting or joining Ray would fail differently (and slowly), never with the one expected line.
The second group calls ``birdray.cli.main`` in-process (cheaper: imports are paid once) for every
other job, with ``ray.init`` replaced by a function that fails the test.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_process import birdray_process

ROOT = Path(__file__).resolve().parents[1]
RAY_LINES = ("Started a local Ray instance", "Connecting to existing Ray cluster", "ray.init")


@pytest.fixture
def places(tmp_path):
    """Things that exist but are the wrong thing: a folder that is no package, an empty registry."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "registry" / "models").mkdir(parents=True)  # a registry with nothing in it
    (tmp_path / "not_a_package").mkdir()
    (tmp_path / "not_a_dataset").mkdir()
    return tmp_path


def _png(seed: int) -> bytes:
    """A small photo-like PNG, different bytes per seed."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _one_line(err: str, job: str, flag: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"birdray {job}: error: "), lines[0]
    assert flag in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


SUBPROCESS_CASES = {
    "serve-missing-model-path": (["serve", "--model", "/nonexistent"], "--model"),
    "train-missing-dataset": (["train", "--dataset", "/nonexistent"], "--dataset"),
    "ingest-missing-source": (["ingest", "--source", "/nonexistent"], "--source"),
    "score-missing-input": (["score", "--input", "x", "--output", "y"], "--input"),
    "score-defaults-need-a-registry": (
        ["score", "--input", "{tmp}/photos", "--output", "{tmp}/out"],
        "--registry",
    ),
    "score-production-without-production": (
        [
            "score",
            "--input",
            "{tmp}/photos",
            "--output",
            "{tmp}/out",
            "--registry",
            "{tmp}/registry",
        ],
        "--model",
    ),
    "serve-default-registry-missing": (["serve"], "--registry"),
    "unknown-flag": (["synth", "--clases", "3"], "--clases"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("argv, flag", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_cli_user_error_is_one_line_before_ray(places, argv, flag):
    argv = [a.format(tmp=places) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "127.0.0.1:9"}
    env.pop("BIRDRAY_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "birdray.cli", *argv],
        cwd=places,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # imports only (torch on a busy 2-core machine); Ray is never reached
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc.stderr, argv[0], flag)
    assert not any(text in proc.stdout + proc.stderr for text in RAY_LINES)
    if "--registry" in argv:  # the message says where it looked and how to fix it
        assert str(places / "registry") in line and "promote" in line


@pytest.mark.timeout(300)
def test_jobs_entry_and_debug_flag(places):
    """``jobs/serve.py`` is the same door; ``--debug`` shows the traceback instead of one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "127.0.0.1:9"}
    run = dict(cwd=places, env=env, capture_output=True, text=True, timeout=240)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "serve.py"), "--model", "/no"], **run
    )
    assert proc.returncode == 2
    _one_line(proc.stderr, "serve", "--model")
    proc = subprocess.run(
        [sys.executable, "-m", "birdray.cli", "synth", "--classes", "0", "--debug"], **run
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "--classes" in proc.stderr


SERVE_VALUES = [
    ("--proxy", "nginx"), ("--colocate", "maybe"), ("--rollout-share", "2"),
    ("--batch-wait-timeout-s", "-1"), ("--num-gpus", "nan"), ("--route-prefix", "v1"),
    ("--name", " "), ("--request-timeout-s", "0"),
]  # fmt: skip
IN_PROCESS_CASES = {
    "evaluate-no-model": (["evaluate", "--dataset", "{tmp}/not_a_dataset"], "--model"),
    "evaluate-latest-of-empty-registry": (
        ["evaluate", "--model", "latest", "--registry", "{tmp}/registry"],
        "--model",
    ),
    "tune-missing-dataset": (["tune", "--dataset", "{tmp}/nope"], "--dataset"),
    "tune-not-a-dataset": (["tune", "--dataset", "{tmp}/not_a_dataset"], "--dataset"),
    "registry-missing": (["registry", "show", "--registry", "{tmp}/nope"], "--registry"),
    "registry-unknown-version": (
        ["registry", "promote", "--version", "v0007", "--registry", "{tmp}/registry"],
        "--version",
    ),
    "registry-rollback-without-history": (
        ["registry", "rollback", "--registry", "{tmp}/registry"],
        "rollback",
    ),
    # these were exit 1 (alias, extra words) or a misleading "nothing to roll back to"
    "registry-alias-unknown-version": (
        ["registry", "alias", "set", "candidate", "v0007", "--registry", "{tmp}/registry"],
        "alias set",
    ),
    "registry-alias-bad-name": (
        ["registry", "alias", "set", "Candidate", "v0007", "--registry", "{tmp}/registry"],
        "not a valid alias name",
    ),
    "registry-alias-bad-words": (
        ["registry", "alias", "get", "candidate", "--registry", "{tmp}/registry"],
        "alias set NAME REF",
    ),
    "registry-list-extra-words": (
        ["registry", "list", "v0001", "--registry", "{tmp}/registry"],
        "list",
    ),
    "registry-rollback-unknown-alias": (
        ["registry", "rollback", "--alias", "nosuch", "--registry", "{tmp}/registry"],
        "'nosuch' was never set",
    ),
    "serve-folder-not-a-package": (["serve", "--model", "{tmp}/not_a_package"], "--model"),
    "serve-latest-of-empty-registry": (
        ["serve", "--model", "latest", "--registry", "{tmp}/registry"],
        "--model",
    ),
    "serve-bad-port": (["serve", "--model", "{tmp}/nope", "--port", "99999"], "--port"),
    # the app's own bounds and Serve's names were tracebacks before Ray started
    **{
        f"serve-bad-{flag[2:]}": (["serve", "--model", "{tmp}/nope", "--port", "0", flag, v], flag)
        for flag, v in SERVE_VALUES
    },
    "score-output-is-input": (
        ["score", "--input", "{tmp}/photos", "--output", "{tmp}/photos"],
        "--output",
    ),
    # a Latin-1 path reaches Python as surrogates: Ray's worker died on it inside ray.init
    "score-non-utf8-path": (["score", "--input", "in\udce9", "--output", "o"], "in\\xe9"),
    "score-bad-pool-size": (
        ["score", "--input", "x", "--output", "y", "--pool-size", "0"],
        "--pool-size",
    ),
    # a folder holding the input listed nothing (exit 1, a stray .lock); one not birdray's lost
    # the user's files; limits below their floor made every row an error row (exit 0)
    "score-output-holds-the-input": (
        ["score", "--input", "{tmp}/photos", "--output", "{tmp}"],
        "--output",
    ),
    "score-output-of-other-files": (
        ["score", "--input", "{tmp}/photos", "--output", "{tmp}/registry"],
        "--output",
    ),
    "score-negative-max-file-mb": (
        ["score", "--input", "x", "--output", "y", "--max-file-mb", "-1"],
        "--max-file-mb",
    ),
    "score-zero-max-pixels": (
        ["score", "--input", "x", "--output", "y", "--max-pixels", "0"],
        "--max-pixels",
    ),
    "explain-missing-image": (["explain", "--image", "{tmp}/nope.jpg"], "--image"),
    "explain-bad-method": (
        ["explain", "--image", "{tmp}/photos/a.png", "--method", "magic"],
        "--method",
    ),
    "explain-eval-not-a-dataset": (
        ["explain-eval", "--dataset", "{tmp}/not_a_dataset"],
        "--dataset",
    ),
    "synth-zero-classes": (["synth", "--classes", "0"], "--classes"),
    "synth-out-under-a-file": (["synth", "--out", "{tmp}/photos/a.png/birds"], "--out"),
    "synth-not-a-number": (["synth", "--classes", "many"], "--classes"),
    "download-bad-md5": (["download", "--md5", "xyz"], "--md5"),
    "ingest-not-cub": (["ingest", "--source", "{tmp}/not_a_dataset"], "--source"),
    "train-not-a-dataset": (
        ["train", "--dataset", "{tmp}/not_a_dataset", "--pretrained-file", "w.safetensors"],
        "--dataset",
    ),
    "dashboard-bad-url": (["dashboard", "--serve-url", "ftp://x"], "--serve-url"),
    "demo-missing-recipe": (["demo", "--train-config", "{tmp}/nope.yaml"], "--train-config"),
    "benchmark-unknown-stage": (["benchmark", "everything"], "stage"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("argv, flag", IN_PROCESS_CASES.values(), ids=IN_PROCESS_CASES.keys())
def test_every_job_checks_its_flags_before_starting(places, monkeypatch, capsys, argv, flag):
    import ray

    from birdray.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a user error")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.chdir(places)
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    assert main([a.format(tmp=places) for a in argv]) == 2
    _one_line(capsys.readouterr().err, argv[0], flag)


@pytest.mark.timeout(300)
def test_with_a_real_package_the_remaining_input_errors_are_one_line(places, monkeypatch, capsys):
    """A usable model, but an unset API key variable (exit 2) or a finished output (a job error,
    exit 1): still one line, still no Ray."""
    import ray

    from birdray.cli import main
    from tests.model_fixture import make_package

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    package = str(make_package(places / "pkg"))
    monkeypatch.delenv("BIRDRAY_TEST_NO_SUCH_KEY", raising=False)
    argv = ["serve", "--model", package, "--api-key-env", "BIRDRAY_TEST_NO_SUCH_KEY"]
    assert main(argv) == 2
    _one_line(capsys.readouterr().err, "serve", "--api-key-env")
    (places / "done").mkdir()
    (places / "done" / "_SUCCESS").write_text('{"run_id": "20260101-120000-0a1b2c"}')
    argv = ["score", "--input", str(places / "photos"), "--output", str(places / "done")]
    assert main([*argv, "--model", package]) == 1
    line = _one_line(capsys.readouterr().err, "score", "--resume")
    assert "already holds a finished run" in line
    # explain: a photo that does not decode, a class the model lacks, an --out that is a file
    (places / "torn.jpg").write_bytes((places / "photos" / "a.png").read_bytes()[:40])
    assert main(["explain", "--image", str(places / "torn.jpg"), "--model", package]) == 1
    assert str(places / "torn.jpg") in _one_line(capsys.readouterr().err, "explain", "corrupt")
    argv = ["explain", "--image", str(places / "photos" / "a.png"), "--model", package]
    assert main([*argv, "--target", "99"]) == 1
    _one_line(capsys.readouterr().err, "explain", "--target 99")
    assert main([*argv, "--out", str(places / "photos" / "a.png")]) == 2
    _one_line(capsys.readouterr().err, "explain", "--out")


def test_registry_alias_names_pass_the_model_check(tmp_path):
    """``--model candidate`` names a registry alias: accepted once the registry has it set (read
    with the registry's own alias reading), one line naming the alias when it is not; before,
    every alias but production was refused as 'neither a folder nor a version'."""
    from birdray import checks
    from birdray.config import UsageError
    from birdray.registry import register, set_alias
    from tests.model_fixture import make_package

    reg = str(tmp_path / "registry")
    register(reg, make_package(tmp_path / "pkg", seed=0), {})
    with pytest.raises(UsageError, match="--model: the registry at .* has no alias 'candidate'"):
        checks.model("candidate", reg)
    set_alias(reg, "candidate", "v0001")
    checks.model("candidate", reg)
    for bad in ("Candidate", "a" * 40, "no spaces"):
        with pytest.raises(UsageError, match="--model"):
            checks.model(bad, reg)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_init_from_must_be_a_package_of_this_arch_and_these_classes(
    trained_package, tmp_path, monkeypatch, capsys
):
    """Fine-tuning keeps the package's head: another arch or other classes are refused before
    Ray starts, by the same check the training job runs."""
    import ray

    from birdray.cli import main
    from tests.model_fixture import make_package

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    (tmp_path / "plain").mkdir()
    other = make_package(tmp_path / "other", arch="test_resnet", num_classes=3)
    dataset = ["train", "--dataset", str(trained_package.dataset)]
    trained = str(trained_package.package)
    cases = [
        (["--init-from", trained, "--arch", "resnet18"], "not --arch resnet18"),
        (["--init-from", str(other), "--arch", "test_resnet"], "other classes"),
        (["--init-from", str(tmp_path / "plain")], "not a model package"),
    ]
    for flags, reason in cases:
        assert main([*dataset, *flags]) == 2
        assert reason in _one_line(capsys.readouterr().err, "train", "--init-from")


def test_an_output_folder_that_cannot_be_written_is_refused_before_ray(
    tmp_path, monkeypatch, capsys
):
    """A read-only mount where --storage-path would go: one line naming it, before Ray starts
    (before, training failed after Ray's start-up). root ignores chmod, so the OS's refusal of
    the probe file is what is simulated; the check and the CLI around it are real."""
    import errno
    import tempfile

    import ray

    from birdray.cli import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    runs = tmp_path / "ro" / "runs"
    assert main(["synth", "--out", str(runs)]) == 2
    line = _one_line(capsys.readouterr().err, "synth", "--out")
    assert f"{runs} cannot be written ({tmp_path}: Read-only file system)" in line


@pytest.mark.parametrize(
    "err", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=["disk-full", "read-only", "no-access"]
)
def test_storage_that_refuses_writes_is_one_line_exit_1(tmp_path, monkeypatch, capsys, err):
    """A full disk or read-only registry/--storage-path: one line naming the path, no traceback."""
    from birdray import storage
    from birdray.cli import main
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg")
    target = tmp_path / "reg"

    def refuse(local, location):
        raise OSError(err, os.strerror(err), str(location))

    monkeypatch.setattr(storage, "upload_file", refuse)
    assert main(["registry", "add", str(package), "--registry", str(target)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("birdray registry: error: ")
    assert str(target) in lines[0] and "Traceback" not in lines[0]


def _unshare_with_tmpfs(folder: Path, size: str) -> list[str] | None:
    """A command prefix that runs a command with a ``size`` tmpfs on ``folder``, seen only by it
    and its children (Ray's too): a full disk without touching this machine's. None where this
    user may not make a mount namespace (no ``unshare``, user namespaces switched off)."""
    unshare = ["unshare", "--mount", "--map-root-user", "--propagation", "private"]
    mount = f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"'
    try:
        probe = subprocess.run([*unshare, "sh", "-c", mount, str(folder), "true"], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return [*unshare, "sh", "-c", mount, str(folder)] if probe.returncode == 0 else None


def _too_long_for_a_file_in(tmp_path: Path) -> Path:
    """A folder path ~4,030 bytes long: it and the shard folder ingest makes in it fit in Linux's
    PATH_MAX (4,096), the Parquet files Ray Data's write tasks open in there do not."""
    out = tmp_path / "long"
    while len(str(out)) < 4030:
        out /= "d" * min(200, 4030 - len(str(out)) - 1)
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["disk-full", "name-too-long"])
def test_ingest_output_refused_inside_ray_write_tasks_is_one_line(synth_root, tmp_path, fault):
    """The OS refusing a shard inside a Ray Data write task reached the CLI as
    ``RayTaskError(OSError)`` (no errno): a disk filling up during ``birdray ingest`` printed
    three tracebacks (287 lines) and no ``birdray ingest: error:`` line. Now one line naming
    --out and the OS's reason, exit 1, and none of Ray Data's tracebacks. A real full disk where
    a mount namespace may be made (a private 64 KiB tmpfs); a path too long for the task's file
    everywhere (the same task-side path, no privileges needed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("RAY_ADDRESS", "BIRDRAY_DEBUG"):  # its own Ray, which sees the mount
        env.pop(name, None)
    argv = [sys.executable, "-m", "birdray.cli", "ingest", "--source", str(synth_root)]
    if fault == "disk-full":
        full = tmp_path / "full"
        full.mkdir()
        prefix = _unshare_with_tmpfs(full, "64k")
        if prefix is None:
            pytest.skip("no mount namespace for this user: the name-too-long case covers it")
        out, reason, argv = full / "ds", "No space left on device", [*prefix, *argv]
    else:
        out, reason = _too_long_for_a_file_in(tmp_path), "File name too long"
    proc = subprocess.run(
        [*argv, "--out", str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Full stack trace" not in proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("birdray ingest:")]
    assert said == [f"birdray ingest: error: --out {out}: {reason}"], proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == said[0]
    assert "execution failed" in proc.stderr  # the failure came from Ray Data's write tasks


def test_a_ray_tasks_refused_write_is_said_as_the_tasks_own_error(monkeypatch, capsys):
    """Any job: an OSError a Ray task raised (``RayTaskError(OSError)``: no errno, the task's
    whole traceback as its text) is judged and said as the task's own error, in one line."""
    from ray.exceptions import RayTaskError

    from birdray import cli

    full = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: No space left on device")
    remote = RayTaskError("write", "Traceback (most recent call last):\n  ...\n", full)
    raised = remote.as_instanceof_cause()
    assert isinstance(raised, OSError) and raised.errno is None  # what the CLI used to judge

    def job_raising(error: BaseException):
        def job(*args, **kwargs):
            raise error

        return job

    monkeypatch.setattr(cli, "_run", job_raising(raised))
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    assert cli.main(["score"]) == 1
    assert capsys.readouterr().err.strip() == f"birdray score: error: {full}"
    bug = RayTaskError("f", "Traceback ...", KeyError("bug")).as_instanceof_cause()
    monkeypatch.setattr(cli, "_run", job_raising(bug))
    with pytest.raises(KeyError):  # anything else stays a traceback
        cli.main(["score"])


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C during a job: one line saying so and the shell's 130, not a traceback and 1."""
    out = tmp_path / "birds"
    argv = ["synth", "--classes", "200", "--per-class", "60", "--out", str(out)]
    proc = birdray_process(argv, PYTHONPATH=str(ROOT), RAY_ADDRESS="127.0.0.1:9")
    deadline = time.time() + 120
    while not out.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the job has started writing: well past Python's own start-up
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "birdray synth: interrupted" and "Traceback" not in err


@pytest.mark.parametrize(
    "body, code, said",
    [
        ("return 0", 0, ""),
        ("return 2", 2, ""),
        ("raise ValueError('a bug')", 1, "ValueError: a bug"),  # what main lets through
        ("raise KeyboardInterrupt", 130, "KeyboardInterrupt"),  # under --debug
        ("raise SystemExit('usage: ...')", 1, "usage: ..."),
        ("raise SystemExit(None)", 0, ""),
    ],
)
def test_every_entry_ends_through_finish_with_the_jobs_code(body, code, said):
    """The console script, ``python -m birdray.cli`` and jobs/*.py end through ``finish``,
    which must keep each outcome's exit code and words (in a process of its own: with Ray up,
    it leaves with ``os._exit``)."""
    script = f"from birdray.cli import finish\ndef job():\n    {body}\nfinish(job)\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    assert said in done.stderr and (said or done.stderr == "")
    for job in (ROOT / "jobs").glob("*.py"):  # each jobs/*.py ends the same way
        assert "finish(lambda: run_job(" in job.read_text(), job


def _children_named(pid: int, name: str) -> list[int]:
    """The processes ``pid`` started that are called ``name`` (from /proc; no psutil here)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm_end = (text := stat.read_text()).rindex(")")
        except (OSError, ValueError):
            continue  # gone meanwhile
        comm, ppid = text[text.index("(") + 1 : comm_end], int(text[comm_end + 2 :].split()[1])
        if ppid == pid and comm == name:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "moment, signum",
    [
        ("ray_starting", signal.SIGINT),
        ("ray_starting", signal.SIGTERM),  # ray.init installs its own (exit 15, no line)
        ("data_running", signal.SIGTERM),  # `ray job stop`, a service manager, `kill`
    ],
    ids=["ctrl_c_ray_starting", "sigterm_ray_starting", "sigterm_data_running"],
)
def test_ctrl_c_during_a_ray_job_is_one_line_and_exit_130(tmp_path, moment, signum):
    """``birdray ingest`` interrupted while Ray started died with SIGSEGV (Ray shut down a node
    whose driver was still connecting); interrupted while Ray Data ran, it printed "The core
    worker has already been shutdown" and exited 1 (Ray's exit handler shut Ray down under Ray
    Data's threads): 3 of 9 tries. SIGTERM, after ``ray.init`` installed Ray's handler, ended a
    job with exit 15 and no line. Now an interrupt while Ray starts acts once it has started,
    and an interrupted process leaves without shutting Ray down under running threads."""
    from tests.cub_fixture import jpeg_bytes, write_layout

    photo = jpeg_bytes(size=(480, 360))  # a few seconds of Ray Data work on 2 cores
    write_layout(tmp_path, [(1 + i % 3, photo, i % 2 == 0) for i in range(900)])
    argv = ["ingest", "--source", str(tmp_path / "CUB_200_2011"), "--out", str(tmp_path / "out")]
    proc = birdray_process(argv, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    lines: list[str] = []
    if moment == "ray_starting":  # Ray's first process is up: ray.init has seconds to go
        deadline = time.time() + 120
        while not _children_named(proc.pid, "gcs_server") and time.time() < deadline:
            time.sleep(0.05)
    else:
        for line in proc.stderr:
            lines.append(line)
            if "Execution plan of Dataset" in line:
                break
    assert proc.poll() is None, "".join(lines)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "birdray ingest: interrupted", err
    assert "Traceback" not in err and "core worker" not in err.lower()
    if moment == "ray_starting":
        assert "birdray: stopping once Ray has started" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_ctrl_c_inside_a_locks_handling_is_still_an_interrupt(monkeypatch, capsys):
    """Ctrl-C during ``birdray score`` once landed while ``queue.get`` restored its lock, and
    CPython raised ``RuntimeError: release unlocked lock`` while handling the KeyboardInterrupt:
    the CLI printed that traceback and exited 1. Whatever an interrupt turns into, it is one
    line and 130."""
    from birdray import cli

    def job_hit_by_ctrl_c(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")  # noqa: B904  (as CPython: implicitly chained)

    monkeypatch.setattr(cli, "_run", job_hit_by_ctrl_c)
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    assert cli.main(["score"]) == 130
    assert capsys.readouterr().err.strip() == "birdray score: interrupted"


@pytest.mark.timeout(300)
def test_a_split_smaller_than_one_batch_per_worker_is_refused_not_trained_on(
    small_dataset, tmp_path, monkeypatch, capsys
):
    """12 train images, 2 workers of batch 8: each worker's 6 images are less than one batch,
    so no step would run. Before, the run ended 'successfully' and registered an untrained
    model; now train and tune refuse it before Ray with the numbers, and the job function does
    too (a Tune trial or a caller of ``run_training`` has no CLI in front of it)."""
    import ray

    from birdray.cli import main
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.data.manifest import DatasetError
    from birdray.train.job import TrainConfig, run_training

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", str(small_dataset), "--arch", "test_resnet", "--epochs", "1"]
    assert main([*argv, "--batch-size", "8", "--num-workers", "2"]) == 2
    line = _one_line(capsys.readouterr().err, "train", "--batch-size")
    assert "12 images, 6 per worker for 2 workers" in line and "--batch-size 6 or less" in line
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("archs: [test_resnet]\ntrain:\n  batch_size: 8\n  num_workers: 2\n")
    assert main(["tune", "--config", str(sweep), "--dataset", str(small_dataset)]) == 2
    assert "train: batch_size 6 or less" in _one_line(capsys.readouterr().err, "tune", "--train")
    assert not (tmp_path / "runs").exists()  # neither job started
    one = tmp_path / "one_species"
    for n in range(12):  # one species: its model would be "right" about every photo
        (one / "Robin").mkdir(parents=True, exist_ok=True)
        (one / "Robin" / f"{n}.png").write_bytes(_png(n))
    run_ingest(IngestConfig(source=str(one), out=str(tmp_path / "one_ds")))
    assert main(["train", "--dataset", str(tmp_path / "one_ds"), "--batch-size", "2"]) == 2
    assert "has 1 class(es) ['Robin']" in _one_line(capsys.readouterr().err, "train", "--dataset")
    with pytest.raises(DatasetError, match="no training step would run"):
        run_training(TrainConfig(dataset=str(small_dataset), batch_size=8, num_workers=2))


def test_serve_on_a_port_in_use_is_one_line_before_ray(tmp_path):
    """A port another program listens on: Serve's proxy failed ~40 s after Ray started, with
    Ray's tracebacks and a Python traceback from ``birdray serve`` (exit 1). A fresh process, as
    a user's: in one that already runs Ray (this session's) the check rightly stands aside, since
    that Ray's own Serve may hold the port."""
    import socket

    from tests.model_fixture import make_package

    package = str(make_package(tmp_path / "pkg"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--model", package, "--registry", "", "--port", str(port)]
        done = subprocess.run(
            [sys.executable, "-m", "birdray.cli", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    line = _one_line(done.stderr, "serve", "--port")
    assert f"127.0.0.1:{port}" in line and "in use" in line
    assert not any(said in done.stderr + done.stdout for said in RAY_LINES)


@pytest.mark.parametrize("port", [0, 8123])
def test_an_unresolvable_host_is_one_line_whatever_the_port(monkeypatch, port):
    """With --port 0 the host went unchecked: Serve's proxy raised socket.gaierror after Ray
    started. (The session's Ray runs in this process, so the check is asked as the CLI does
    before a local Ray exists.)"""
    import ray

    from birdray.checks.serving_jobs import _listenable
    from birdray.config import UsageError

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UsageError, match="--host: cannot resolve 'no-such-host.invalid'"):
        _listenable("no-such-host.invalid", port, None)


def _hand_dataset(root: Path, labelled: dict[str, bool | str], names: list[str]) -> Path:
    """A dataset written by hand (no Ray): per split one shard of three photos, with a ``label``
    column, without one (an unlabelled set, or another tool's Parquet), or with ``"text"``
    labels (species names where class numbers belong)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = {}
    for n, (split, has_label) in enumerate(labelled.items()):
        ids = [10 * n + i for i in range(3)]
        columns = {
            "image_id": pa.array(ids, pa.int64()),
            "path": [f"{split}/{i}.png" for i in ids],
            "image": pa.array([_png(i) for i in ids], pa.binary()),
        }
        if has_label == "text":
            columns["label"] = [names[i % len(names)] for i in ids]
        elif has_label:
            columns["label"] = pa.array([i % len(names) for i in ids], pa.int32())
        folder = root / "shards" / f"split={split}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / "part-00000.parquet")
        splits[split] = {"rows": len(ids)}
    manifest = {"schema_version": 1, "shards_dir": "shards", "splits": splits, "class_names": names,
                "counts": {}, "quarantine": []}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def evaluate_cli(tmp_path, monkeypatch, capsys):
    """``birdray evaluate --model PKG *argv`` in this process, Ray and scoring forbidden:
    returns (exit status, stderr)."""
    import ray

    import birdray.evaluate.job as job
    from birdray.cli import main
    from tests.model_fixture import make_package

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(job, "init_ray", lambda *a, **k: pytest.fail("scoring started"))
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    names = ["001.A", "002.B", "003.C"]
    package = str(make_package(tmp_path / "pkg", num_classes=3, class_names=names))

    def run(*argv: str) -> tuple[int, str]:
        code = main(["evaluate", "--model", package, *argv])
        return code, capsys.readouterr().err

    run.names = names  # type: ignore[attr-defined]
    return run


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "labelled, argv, split",
    [
        ({"test": False}, [], "test"),  # an unlabelled ingest's report split
        ({"test": True, "val": False}, [], "val"),  # val is read too: calibration fits on it
        ({"test": False, "val": True}, ["--split", "test", "--no-calibrate"], "test"),
    ],
)
def test_evaluate_refuses_a_split_without_labels_before_ray(
    tmp_path, evaluate_cli, labelled, argv, split
):
    """Before: the pre-flight passed (it only read the manifest), Ray started, and the job died
    reading ``label`` with a pyarrow traceback naming no split."""
    dataset = _hand_dataset(tmp_path / "ds", labelled, evaluate_cli.names)
    code, err = evaluate_cli("--dataset", str(dataset), *argv)
    assert code == 2, err
    line = _one_line(err, "evaluate", "--dataset")
    assert f"the {split!r} split of {dataset}" in line
    assert "lacks column(s) label" in line and f"split={split}/part-00000.parquet" in line


@pytest.mark.timeout(300)
def test_the_evaluate_job_itself_refuses_unusable_labels_before_ray(tmp_path, evaluate_cli):
    """Without the CLI's pre-flight (a bucket dataset, a caller of ``run_evaluation``), the job
    opens and checks the splits before it starts Ray: one error naming the split."""
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.scoring.sources import SourceError

    dataset = _hand_dataset(tmp_path / "ds", {"test": "text"}, evaluate_cli.names)
    cfg = EvaluateConfig(model=str(tmp_path / "pkg"), dataset=str(dataset))
    with pytest.raises(SourceError, match="the 'test' split .* label is string, expected integer"):
        run_evaluation(cfg)
    code, err = evaluate_cli("--dataset", str(dataset))
    assert code == 2 and "expected integer class labels" in _one_line(err, "evaluate", "--dataset")


@pytest.mark.timeout(300)
def test_evaluate_without_calibration_does_not_need_val_labels(tmp_path, evaluate_cli):
    from birdray import checks
    from birdray.evaluate.job import EvaluateConfig

    dataset = _hand_dataset(tmp_path / "ds", {"test": True, "val": False}, evaluate_cli.names)
    cfg = EvaluateConfig(model=str(tmp_path / "pkg"), dataset=str(dataset), calibrate=False)
    checks.check("evaluate", cfg)  # val is not read: its lack of labels is not an error


@pytest.mark.timeout(300)
def test_exclude_ids_check_reads_the_shards_the_job_reads(tmp_path, evaluate_cli):
    """Before: the --exclude-ids check read the whole split folder with pyarrow, so a README
    or ``_SUCCESS`` beside the shards (which the job skips) was a traceback."""
    from birdray import checks
    from birdray.evaluate.job import EvaluateConfig

    dataset = _hand_dataset(tmp_path / "ds", {"test": True}, evaluate_cli.names)
    split = dataset / "shards" / "split=test"
    (split / "README.txt").write_text("photos from the 2026 survey\n")
    (split / "_SUCCESS").write_text("")
    ids = tmp_path / "ids.txt"
    ids.write_text("0 1 2\n")  # every image of the split
    code, err = evaluate_cli("--dataset", str(dataset), "--exclude-ids", str(ids))
    assert code == 2, err
    assert "excludes all 3 images of the 'test' split" in _one_line(err, "evaluate", "--exclude")
    ids.write_text("0\n")  # some left: the pre-flight passes
    cfg = EvaluateConfig(model=str(tmp_path / "pkg"), dataset=str(dataset), exclude_ids=str(ids))
    checks.check("evaluate", cfg)


def test_evaluate_reads_each_footer_once_and_names_damage_before_labels(tmp_path, monkeypatch):
    """Scoring's column check and evaluation's label check are one pass over the footers (a
    request each from a bucket); a damaged shard is named before a split's missing labels,
    since it is what to mend first."""
    import pyarrow.parquet as pq

    import birdray.scoring.sources as sources
    from birdray.evaluate.inputs import open_splits

    dataset = _hand_dataset(tmp_path / "ds", {"test": True, "val": True}, ["001.A", "002.B"])
    reads = []
    real = pq.read_schema
    monkeypatch.setattr(sources.pq, "read_schema", lambda p, **k: reads.append(p) or real(p, **k))
    opened = open_splits(str(dataset), ["test", "val"])
    assert sorted(opened) == ["test", "val"] and len(reads) == 2, reads

    split = dataset / "shards" / "split=test"
    pq.write_table(pq.read_table(split / "part-00000.parquet").drop(["label"]), split / "b.parquet")
    with pytest.raises(sources.SourceError, match=r"'test' split .*/b\.parquet lacks column"):
        open_splits(str(dataset), ["test"])
    (split / "z.parquet").write_bytes(b"PAR1 not really")  # after b.parquet in shard order
    with pytest.raises(sources.SourceError, match=r"damaged dataset .*/z\.parquet is not a Parq"):
        open_splits(str(dataset), ["test"])
    (split / "z.parquet").unlink()  # test lacks labels, val is damaged: the damage is said first
    (dataset / "shards" / "split=val" / "part-00000.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(sources.SourceError, match=r"damaged dataset .*split=val/part-00000"):
        open_splits(str(dataset), ["test", "val"])
