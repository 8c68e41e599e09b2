"""``birdray <job>``: one argument parser and one code path per job, shared with ``jobs/*.py``.

Each job is a config dataclass plus a function taking it. The parser is built from the dataclass
(``birdray.config``), so a flag, its YAML key and its field are the same name. Job modules are
imported only when their job runs: ``birdray synth`` need not import torch or Ray.

A user's mistake is one line on stderr naming the flag, exit status 2, no traceback, and it is
found before Ray starts (``birdray.checks``); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from birdray import checks, storage
from birdray import config as cfglib
from birdray.runtime import keep_local_ray_on_loopback, task_cause

# Errors a job raises about its inputs (a corrupt CUB line, a finished output, a broken registry
# entry): one line, exit 1, like a usage error but found while running. By (module, class) name,
# looked up only in modules already imported: listing them costs no import.
JOB_ERRORS = (
    ("birdray.data.cub", "CubFormatError"),
    ("birdray.data.download", "ArchiveError"),
    ("birdray.data.write_guard", "WriteError"),  # --out refused the shards (disk full, gone)
    ("birdray.data.manifest", "DatasetError"),
    ("birdray.feedback.store", "FeedbackError"),  # a torn or foreign file in a feedback store
    ("birdray.images", "ImageError"),  # an input image that does not decode (explain --image)
    ("birdray.model.factory", "ModelError"),
    ("birdray.registry", "RegistryError"),
    ("birdray.resources", "ResourceError"),  # a request the cluster can never satisfy
    ("birdray.resources", "StallError"),  # no progress for stall_timeout_s: Ray's view in one line
    ("birdray.scoring.output", "OutputError"),
    ("birdray.scoring.sources", "SourceError"),
    ("birdray.locks", "LockTimeout"),  # another job held the lock past the wait's bound
)

# Jobs with ``--dry-run``: the resolved config and the resource plan, nothing started
# (``birdray.plan``; exit 0 when the job would start here, 1 when not).
DRY_RUN = ("train", "tune")
DRY_RUN_HELP = (
    "print the resolved config and the resource plan (workers x CPU/GPU, Ray Data's CPUs, trials"
    " at once) against this machine (no Ray started) or --address's cluster, then exit: 0 if the"
    " job would start there, 1 if not (the reasons listed)"
)


_POSITIONAL = "given_by_position_"  # the dest of a positional word, apart from its flag's


class _Parser(argparse.ArgumentParser):
    """argparse's errors as ``UsageError``: one line instead of the whole usage text.

    No prefix matching (``allow_abbrev``): a misspelt flag is an error, never a different flag
    (``--image`` silently meaning ``--image-size``). ``switches`` take the older ``true|false``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.switches: list[str] = []
        self.positionals: list[str] = []  # fields also given by position (``benchmark train``)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        parsed, rest = super().parse_known_args(
            cfglib.switch_values(argv, self.switches), namespace
        )
        for name in self.positionals:  # the word and the flag fill one field
            word, flag = vars(parsed).pop(_POSITIONAL + name), getattr(parsed, name, None)
            if word not in (None, []) and flag is not None and word != flag:
                self.error(f"{name} given twice: {word!r} by position and {flag!r} by --{name}")
            if word not in (None, []):
                setattr(parsed, name, word)
        return parsed, rest

    def error(self, message: str) -> NoReturn:
        raise cfglib.UsageError(f"{message} (see {self.prog} --help)")


@dataclass(frozen=True)
class Job:
    module: str
    config_cls: str
    function: str
    help: str


JOBS: dict[str, Job] = {
    "synth": Job("birdray.synth.job", "SynthConfig", "generate", "generate a CUB-layout dataset"),
    "download": Job(
        "birdray.data.download", "DownloadConfig", "download_cub", "download + verify CUB"
    ),
    "ingest": Job(
        "birdray.data.ingest", "IngestConfig", "ingest_and_report", "CUB -> Parquet shards"
    ),
    "train": Job("birdray.train.job", "TrainConfig", "run_training", "train with Ray Train"),
    "evaluate": Job(
        "birdray.evaluate.job", "EvaluateConfig", "run_evaluation", "test metrics, calibration"
    ),
    "tune": Job("birdray.tune.job", "SweepConfig", "run_sweep", "compare models with Ray Tune"),
    "registry": Job(
        "birdray.registry", "RegistryConfig", "run_registry", "list|show|add|promote|rollback|alias"
    ),
    "feedback": Job(
        "birdray.feedback.report", "FeedbackConfig", "run_feedback", "report: corrections"
    ),
    "serve": Job("birdray.serve.job", "ServeConfig", "run_serve", "serve a model over HTTP"),
    "score": Job("birdray.scoring.job", "ScoreConfig", "run_scoring", "batch-score images"),
    "explain": Job("birdray.explain.job", "ExplainConfig", "run_explain", "explain one image"),
    "explain-eval": Job(
        "birdray.explain.evaluation",
        "ExplainEvalConfig",
        "run_explain_eval",
        "score saliency vs parts",
    ),
    "dashboard": Job(
        "birdray.dashboard_launcher", "DashboardConfig", "run_dashboard", "Streamlit UI"
    ),
    "benchmark": Job(
        "birdray.benchmark", "BenchmarkConfig", "run_benchmark", "measure every stage"
    ),
    "demo": Job("birdray.demo", "DemoConfig", "run_demo", "run the whole system end to end"),
}


def _load(job: Job) -> tuple[type, Any]:
    module = importlib.import_module(job.module)
    return getattr(module, job.config_cls), getattr(module, job.function)


def build_parser(name: str, job: Job) -> tuple[argparse.ArgumentParser, type, Any]:
    config_cls, function = _load(job)
    parser: _Parser = _Parser(
        prog=f"birdray {name}",
        description=(function.__doc__ or job.help).strip().splitlines()[0],
    )
    docs = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config_cls)}
    extra = getattr(config_cls, "positional", None)
    if extra:
        parser.add_argument(
            _POSITIONAL + extra,
            metavar=extra,
            nargs="?",
            default=None,
            help=f"{docs[extra]} (the same as --{extra})",
        )
        parser.positionals.append(extra)
    rest = getattr(config_cls, "positional_rest", None)  # e.g. ``registry alias set NAME V``
    if rest:
        help_ = f"{docs.get(rest) or 'further words'} (the same as --{rest})"
        parser.add_argument(_POSITIONAL + rest, metavar=rest, nargs="*", default=None, help=help_)
        parser.positionals.append(rest)
    parser.switches = cfglib.add_config_arguments(parser, config_cls)
    if name in DRY_RUN:
        parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    return parser, config_cls, function


def version() -> str:
    """The installed distribution's version (``pyproject.toml``), not a second copy of it."""
    try:
        return metadata.version("birdray")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _show(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, (str, Path)):
        return f"result: {result}"
    try:
        return json.dumps(result, indent=2, default=str)
    except TypeError:
        return str(result)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = JOBS
    if argv and argv[0] in ("-V", "--version"):
        print(f"birdray {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: birdray [--version] <job> [--config FILE] [--flag VALUE ...]\n\njobs:")
        for name, job in jobs.items():
            print(f"  {name:<13} {job.help}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if not os.environ.get("RAY_ADDRESS"):
        keep_local_ray_on_loopback()  # before any job imports Ray
    if name not in jobs:
        print(f"birdray: unknown job {name!r}; choose from {', '.join(jobs)}", file=sys.stderr)
        return 2
    debug = "--debug" in rest or os.environ.get("BIRDRAY_DEBUG", "") not in ("", "0")
    try:
        return _run(name, jobs[name], rest)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM, see runtime.sigterm_as_ctrl_c) is the user's
        if debug:
            raise
        return _interrupt_ends(name)
    except cfglib.ConfigError as exc:  # UsageError included: the flags, found before starting
        if debug:
            raise
        _say(name, exc)
        return 2
    except Exception as exc:
        if _interrupted(exc) and not debug:  # Ctrl-C that landed inside a lock's handling
            return _interrupt_ends(name)
        said = None if debug else _job_error(exc)
        if said is None:
            raise
        _say(name, said)
        return 1


def _interrupt_ends(name: str) -> int:
    """One line and the shell's code for SIGINT. Ray's loggers go quiet first: Ray shuts down at
    exit under a Ray Data pipeline still running in its threads, which otherwise logs ~100 lines
    of "Ray is not initialized" tracebacks after the user's Ctrl-C."""
    logging.getLogger("ray").setLevel(logging.CRITICAL + 1)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL + 1)
    print(f"birdray {name}: interrupted", file=sys.stderr, flush=True)
    return 130


def _interrupted(exc: BaseException) -> bool:
    """Whether a Ctrl-C is what went wrong: CPython turns a KeyboardInterrupt that arrives while
    ``queue.get`` or ``Condition.wait`` restores its lock into ``RuntimeError: release unlocked
    lock``, raised while handling it (Ctrl-C during ``birdray score``: a traceback, exit 1)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _run(name: str, job: Job, argv: list[str]) -> int:
    cfglib.check_text_arguments(argv)
    parser, config_cls, function = build_parser(name, job)
    args = parser.parse_args(argv)
    del args.debug
    dry_run = vars(args).pop("dry_run", False)
    cfg = cfglib.resolve(config_cls, args)
    if dry_run:  # the plan judges GPUs and inputs itself and lists every problem
        from birdray.plan import dry_run as plan

        return plan(name, cfg)
    checks.check(name, cfg)  # before the job starts anything (Ray, Serve, downloads)
    result = function(cfg)
    text = _show(result)
    if text:
        print(text)
    return 0


def _say(name: str, exc: BaseException) -> None:
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"birdray {name}: error: {text}", file=sys.stderr)


def _job_error(exc: BaseException) -> BaseException | None:
    """The error to say in one line, or None for a traceback (a bug is shown whole).

    Storage refusing a write is the user's, wherever it was raised. An error raised in a Ray
    task reaches the driver as ``RayTaskError(<its class>)``: an ``OSError`` there has no
    ``errno``, and its text is the task's whole traceback, so what is judged and said is the
    task's own error (its ``cause``).
    """
    exc = task_cause(exc)
    if isinstance(exc, OSError) and exc.errno in storage.REFUSED_WRITE:
        return exc
    for module, cls_name in JOB_ERRORS:
        cls = getattr(sys.modules.get(module), cls_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return exc
    return None


def finish(job: Callable[[], int]) -> NoReturn:
    """Run ``job`` (``main``, or a jobs/*.py ``run_job``) and end the process with its code: the
    console script, ``python -m birdray.cli`` and jobs/*.py all end here.

    A job that ended early (Ctrl-C, an error) can leave Ray Data's threads running; Ray's exit
    handler then shut Ray down under them, and an interrupted ingest died with SIGSEGV, or
    printed "The core worker has already been shutdown" and exited 1, instead of 130. The
    job's own cleanup has run by now (its ``finally`` blocks), so such a process leaves at once
    (``_leave``); what ``main`` lets through (a bug, ``--debug``) is printed first, as Python
    would, and leaves the same way.
    """
    try:
        code = job()
    except SystemExit as exc:  # argparse's usage errors and --help
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # printed, then the exit code says it
        traceback.print_exc()
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    _leave(code)


def entry() -> NoReturn:
    """The ``birdray`` console script."""
    finish(main)


def _leave(code: int) -> NoReturn:
    """Exit; with Ray started in this process, without Ray's exit handler where it would race
    threads still running. The local Ray's processes end with this one (they share its fate);
    what ``ray.shutdown`` would also have done, deleting the objects Ray spilled to disk (its
    session folders stay), is done here. A finished job exits normally, ignoring Ctrl-C once
    its threads are joined: cut short, Ray's shutdown printed a traceback under the result."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        raise SystemExit(code)
    if code == 0:  # atexit runs the last registered first: before Ray's own shutdown
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(0)
    with contextlib.suppress(Exception):  # Ray's own cleanup: best effort, on the way out
        from ray._private import worker

        node = worker._global_node
        if node is not None and node.is_head():
            node.destroy_external_storage()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # `birdray ... | head`: a closed pipe
            stream.flush()
    os._exit(code)


def run_job(name: str, argv: list[str] | None = None) -> int:
    """Entry point for ``jobs/<name>.py``: the same parser and code path as ``birdray <name>``."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    entry()
