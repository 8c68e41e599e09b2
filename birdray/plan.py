"""``birdray train|tune --dry-run``: the resolved config and the resource plan, before any work.

A recipe written for 4 GPUs and 33 CPUs should not have to be started to learn that this machine
has neither. The dry run prints the resolved config and what ``birdray.resources`` would ask Ray
for (training workers x CPU/GPU, the CPUs kept free for Ray Data, Tune trials at once) against
what is there: without ``--address`` (or RAY_ADDRESS) this machine, with no Ray started (the CPUs
a local Ray would declare, the CUDA GPUs torch sees); with one, that cluster's totals. Then the
verdict, each reason one line: exit status 0 when the job would start here, 1 when it would not,
so ``birdray train --config X --dry-run && birdray train --config X`` starts only what fits.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from birdray import checks
from birdray.config import UsageError, to_dict
from birdray.devices import joins_cluster, local_gpus
from birdray.resources import DATA_CPUS, ResourceError, plan_workers


@dataclass
class Plan:
    """What the job would ask for (label, numbers), and why it would not start (empty: it would)."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fits: str = ""  # what the verdict adds when there are no problems


def local_cpus() -> int:
    """The CPUs a local ``ray.init()`` would declare here (Ray's own count honours container
    limits); ``os.cpu_count()`` where Ray's private helper is not there."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:  # a private helper: never let it break the plan
        return os.cpu_count() or 1


def resources_here(address: str) -> tuple[dict[str, float], str, str]:
    """(CPU/GPU totals, a long and a short name of where): a cluster only when one is named."""

    if joins_cluster(address):
        from birdray.runtime import init_ray

        where = address or os.environ.get("RAY_ADDRESS", "")
        return init_ray(address or None), f"the Ray cluster at {where}", "the cluster"
    cluster = {"CPU": float(local_cpus()), "GPU": float(local_gpus())}
    return (
        cluster,
        "no Ray started: the CPUs Ray would declare, the CUDA GPUs torch sees",
        "this machine",
    )


def _gpus(n: float) -> str:
    return f"{n:g} GPU"


def _gpu_problem(
    need: float, cluster: dict[str, float], short: str, what: str, on_cpu: str
) -> str | None:
    have = float(cluster.get("GPU", 0.0))
    if need <= have + 1e-9:
        return None
    none = " (torch sees no CUDA device)" if short == "this machine" and have == 0 else ""
    return (
        f"needs {_gpus(need)} ({what}); {short} has {_gpus(have)}{none}: run it on a machine with"
        f" {_gpus(need)}, give --address of a Ray cluster with them, or train on CPU ({on_cpu})"
    )


def _quiet(call: Any, *args: Any) -> tuple[Any, str]:
    """Run a planning function, keeping its ``birdray: resources:`` line for the plan itself."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        value = call(*args)
    return value, " ".join(said.getvalue().replace("birdray: resources: ", "").split())


def _here(text: str, short: str) -> str:
    """``birdray.resources`` speaks of the cluster; a dry run may be judging this machine."""
    return " ".join(text.split()).replace("the cluster", short)


def _problem_of(call: Any, *args: Any) -> str | None:
    try:
        call(*args)
    except (UsageError, ResourceError) as exc:
        return " ".join(str(exc).split())
    return None


def train_plan(cfg: Any, cluster: dict[str, float], where: str, short: str) -> Plan:
    """Train workers and Ray Data's share, fitted by ``plan_workers`` as ``run_training`` does."""
    from birdray.train.job import check_reachable

    n, cpus = cfg.num_workers, cfg.cpus_per_worker
    data = max(DATA_CPUS, cfg.data_cpus)
    gpu = " + 1 GPU" if cfg.use_gpu else ""
    need_gpu = float(n) if cfg.use_gpu else 0.0
    plan = Plan()
    plan.rows += [
        ("training workers", f"{n} x ({cpus:g} CPU{gpu}) = {n * cpus:g} CPU + {_gpus(need_gpu)}"),
        (
            "Ray Data",
            f"{data:g} CPU kept free (file listing, reads); decode/augment tasks"
            f" {cfg.data_cpus:g} CPU each on what is left",
        ),
        ("needs at least", f"{n * cpus + data:g} CPU + {_gpus(need_gpu)}"),
        (short, f"{cluster.get('CPU', 0):g} CPU + {_gpus(cluster.get('GPU', 0))} ({where})"),
    ]
    if not cfg.use_gpu and cluster.get("GPU", 0) > 0:
        plan.rows.append(("GPUs", "not used (--use-gpu gives each worker one)"))
    gpu_short = _gpu_problem(need_gpu, cluster, short, f"{n} x 1 GPU", "--no-use-gpu")
    plan.problems += [gpu_short] if gpu_short else []
    try:  # the CPU side, judged by the same function the job uses
        fitted, note = _quiet(plan_workers, n, cpus, False, cfg.data_cpus, cluster)
        left = cluster.get("CPU", 0) - n * fitted
        plan.rows.append(
            ("CPU plan", _here(note, short) or f"as asked; {left:g} CPU left for Ray Data")
        )
        plan.fits = f"{left:g} CPU for Ray Data's tasks"
    except ResourceError as exc:
        plan.problems.append(_here(str(exc), short))
    plan.problems += filter(None, [_problem_of(check_reachable, cfg)])
    plan.problems += filter(None, [_problem_of(checks.check, "train", replace(cfg, use_gpu=False))])
    return plan


def tune_plan(cfg: Any, cluster: dict[str, float], where: str, short: str) -> Plan:
    """Trials at once and each trial's share, from ``plan_trials`` as ``run_sweep`` does."""
    from birdray.train.job import check_reachable
    from birdray.tune.job import base_train_config, plan_trials, search_space

    base = base_train_config(cfg)  # a bad train: block or search space is a usage error
    search_space(cfg)
    if cfg.cluster_resources:
        cluster, where = dict(cfg.cluster_resources), "cluster_resources in the config"
        short = "the planned cluster"
    total = len(cfg.archs) * cfg.num_samples
    n, cpus = base.num_workers, base.cpus_per_worker
    data = max(cfg.data_cpus_per_trial, base.data_cpus, DATA_CPUS)
    gpu = " + 1 GPU" if base.use_gpu else ""
    per_gpu = float(n) if base.use_gpu else 0.0
    plan = Plan()
    plan.rows += [
        (
            "trials",
            f"{total} ({len(cfg.archs)} archs x {cfg.num_samples} samples),"
            f" up to {cfg.epochs} epochs each",
        ),
        (
            "each trial",
            f"{cfg.trial_cpus:g} CPU (Tune function) + {n} x ({cpus:g} CPU{gpu})"
            f" + {data:g} CPU for Ray Data = {n * cpus + cfg.trial_cpus + data:g} CPU"
            f" + {_gpus(per_gpu)}",
        ),
        (short, f"{cluster.get('CPU', 0):g} CPU + {_gpus(cluster.get('GPU', 0))} ({where})"),
    ]
    gpu_short = _gpu_problem(
        per_gpu, cluster, short, f"each trial {n} x 1 GPU", "train: {use_gpu: false}"
    )
    plan.problems += [gpu_short] if gpu_short else []
    try:  # on GPUs it lacks, the CPU side is still worth knowing
        sized = base if not gpu_short else replace(base, use_gpu=False)
        trial, note = _quiet(plan_trials, cfg, sized, cluster)
        limit = "" if trial.max_concurrent < total else " (all)"
        plan.rows.append(
            (
                "at once",
                f"{trial.max_concurrent} trials{limit}, each"
                f" {trial.trial_cpus:g} CPU + {_gpus(trial.trial_gpus)}",
            )
        )
        if note:
            plan.rows.append(("CPU plan", _here(note, short)))
        plan.fits = f"{trial.max_concurrent} of {total} trials at once"
    except ResourceError as exc:
        plan.problems.append(_here(str(exc), short))
    pretrained = replace(base, pretrained=any(cfg.pretrained), storage_path=cfg.storage_path)
    plan.problems += filter(None, [_problem_of(check_reachable, pretrained)])
    no_gpu = replace(cfg, train={**cfg.train, "use_gpu": False})
    plan.problems += filter(None, [_problem_of(checks.check, "tune", no_gpu)])
    return plan


PLANS = {"train": train_plan, "tune": tune_plan}


def dry_run(job: str, cfg: Any) -> int:
    """Print the config and the plan; 0 if the job would start here, 1 if not (nothing starts)."""
    cluster, where, short = resources_here(cfg.address)
    plan = PLANS[job](cfg, cluster, where, short)
    out = [f"birdray {job} --dry-run: nothing is started", "", "resolved config:"]
    out += ["  " + line for line in yaml.safe_dump(to_dict(cfg), sort_keys=False).splitlines()]
    out += ["", "resource plan (what birdray would ask Ray for):"]
    width = max(len(label) for label, _ in plan.rows)
    out += [f"  {label:<{width}}  {text}" for label, text in plan.rows]
    if plan.problems:
        out += ["", f"would NOT start on {short}:"] + [f"  - {p}" for p in plan.problems]
    else:
        out += ["", f"would start on {short}: {plan.fits}"]
    print("\n".join(out), flush=True)
    if plan.problems:
        count = len(plan.problems)
        print(
            f"birdray {job}: dry run: would not start here ({count} problem"
            f"{'s' if count > 1 else ''} listed above)",
            file=sys.stderr,
        )
    return 1 if plan.problems else 0
