"""Pre-flight checks: a user's mistake is found before Ray starts and said in one line.

``birdray <job>`` (and ``jobs/<job>.py``, the same code path) runs ``check(job, cfg)`` after the
flags are parsed and before the job function: missing paths, folders that are not datasets, model
references that do not resolve, values out of range. Each problem raises ``UsageError`` whose
message starts with the flag and says what was expected; ``birdray.cli.main`` prints it as one
line and exits with status 2. Without this, ``birdray serve --model /nonexistent`` started Ray and
Serve and failed a minute later with ``Deploying application birdray failed``.

Only what can be judged cheaply and without Ray is checked here: bucket paths are taken on trust
(reading them is the job's business), local paths are not. The checks every job uses are in
``common``; each job's own check is in ``data_jobs``, ``train_jobs`` or ``serving_jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from birdray.checks import data_jobs, serving_jobs, train_jobs
from birdray.checks.common import model  # noqa: F401  (a model reference's check, for callers)

CHECKS: dict[str, Callable[[Any], None]] = {
    "synth": data_jobs.synth,
    "download": data_jobs.download,
    "ingest": data_jobs.ingest,
    "train": train_jobs.train,
    "tune": train_jobs.tune,
    "evaluate": data_jobs.evaluate,
    "registry": serving_jobs.registry,
    "serve": serving_jobs.serve,
    "score": serving_jobs.score,
    "feedback": data_jobs.feedback,
    "explain": serving_jobs.explain,
    "explain-eval": serving_jobs.explain_eval,
    "dashboard": serving_jobs.dashboard,
    "demo": serving_jobs.demo,
    "benchmark": train_jobs.benchmark,
}


def check(job: str, cfg: Any) -> None:
    """Raise ``UsageError`` (flag first, one line) if ``cfg`` cannot work; nothing is started."""
    validate = CHECKS.get(job)
    if validate is not None:
        validate(cfg)
