"""``birdray tune``: compare architectures and hyper-parameters with Ray Tune, promote the winner.

Each Tune trial is a small driver function that builds the same ``TorchTrainer`` as
``birdray train`` (``build_trainer``) and fits it; ``TuneReportCallback`` forwards every epoch's
metrics, with the checkpoint path, to Tune, where ASHA stops weak trials early. How many trials run
at once is derived from the cluster before anything starts, so no trial sits PENDING forever.

Layout under ``<storage_path>/<name>/``: Tune's experiment (trial folders, experiment state), the
trials' Train runs in ``trainers/<trial_id>/`` (checkpoints), the comparison in ``report/`` and
the winner's model package in ``package/``. Running again with the same name resumes the sweep
(``Tuner.restore``): finished trials are kept, interrupted ones continue from their checkpoints.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.config import ConfigError, from_dict, save_config
from birdray.resources import DATA_CPUS
from birdray.runtime import init_ray, signals_received, train_polls_often
from birdray.train.config import TrainConfig
from birdray.train.job import build_trainer, check_reachable, check_resources
from birdray.tune.config import (
    METRIC,
    MODE,
    SEARCHED,
    SWEEP_OWNED,
    SweepConfig,
    join_path,
    trial_config,
)
from birdray.tune.promote import hand_off
from birdray.tune.report import build_rows, markdown_table, publish, staging_dir, write_report


@dataclass
class TrialPlan:
    """Resources of one trial and how many fit on the cluster at once."""

    function_resources: dict[str, float]  # the Tune function's own bundle
    trial_cpus: float  # function + Train workers + one data task
    trial_gpus: float
    max_concurrent: int


def base_train_config(cfg: SweepConfig) -> TrainConfig:
    """The recipe every trial starts from (absolute paths: trial functions run elsewhere)."""
    clash = sorted(set(cfg.train) & set(SEARCHED + SWEEP_OWNED))
    if clash:
        raise ConfigError(f"train: {', '.join(clash)} are sweep settings, not train settings")
    base = from_dict(TrainConfig, dict(cfg.train))
    base.dataset = storage.absolute(cfg.dataset)
    base.epochs = cfg.epochs
    base.storage_path = join_path(cfg.storage_path, cfg.name, "trainers")
    if base.pretrained_file:
        base.pretrained_file = str(Path(base.pretrained_file).resolve())
    base.arch, base.registry, base.package_out = cfg.archs[0], "", ""
    return base


def search_space(cfg: SweepConfig) -> dict[str, Any]:
    """Architectures as a grid (all compared); the other knobs sampled per trial."""
    from ray import tune

    def log_range(name: str, values: list[float]) -> Any:
        if len(values) == 1 or values[0] == values[-1]:
            return float(values[0])
        if len(values) != 2 or not 0 < values[0] < values[1]:
            raise ConfigError(f"{name}: give one value or a range [low, high] with 0 < low < high")
        return tune.loguniform(values[0], values[1])

    def choice(values: list) -> Any:
        return values[0] if len(values) == 1 else tune.choice(list(values))

    if not cfg.archs:
        raise ConfigError("archs: name at least one timm architecture")
    return {
        "arch": tune.grid_search(list(cfg.archs)),
        "lr": log_range("lr", cfg.lr),
        "weight_decay": log_range("weight_decay", cfg.weight_decay),
        "label_smoothing": choice(cfg.label_smoothing),
        "image_size": choice(cfg.image_size),
        "pretrained": choice(cfg.pretrained),
    }


def plan_trials(cfg: SweepConfig, base: TrainConfig, cluster: dict[str, float]) -> TrialPlan:
    """How many trials fit at once; an error naming the cluster's resources if not even one does.

    A running trial holds its Tune function (``trial_cpus``) and its Train workers, and its Ray
    Data pipeline needs CPUs nobody holds: Ray Data lists and reads files in 1-CPU tasks and
    budgets itself from what Train workers leave free. Without that share a trial never gets its
    first batch (measured on a 2-CPU Ray: a 1-CPU worker plus a 0.1-CPU trial hung for good), so
    when only that share is missing the workers get fractional CPUs (``birdray.resources``).
    """
    have_cpu, have_gpu = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    data_share = max(cfg.data_cpus_per_trial, base.data_cpus, DATA_CPUS)
    per_cpu = base.num_workers * base.cpus_per_worker + cfg.trial_cpus + data_share
    per_gpu = float(base.num_workers) if base.use_gpu else 0.0
    fits = math.floor(have_cpu / per_cpu + 1e-9)
    if per_gpu:
        fits = min(fits, math.floor(have_gpu / per_gpu + 1e-9))
    total = len(cfg.archs) * cfg.num_samples
    concurrent = max(1, min(fits, total, cfg.max_concurrent_trials or total))
    check_resources(base, cluster, concurrent, cfg.trial_cpus, data_share)  # may lower CPUs
    per_cpu = base.num_workers * base.cpus_per_worker + cfg.trial_cpus + data_share
    return TrialPlan({"CPU": cfg.trial_cpus}, per_cpu, per_gpu, concurrent)


def train_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function: fit the trial's TorchTrainer (resuming its Train run if it has one)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    train_polls_often()  # this actor runs fit(): on a joined cluster it has Ray's env, not ours
    cfg = trial_config(base, config, tune.get_context().get_trial_id())
    trainer, _, _ = build_trainer(cfg, callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error:
        raise result.error


def make_trainable(base: TrainConfig, plan: TrialPlan):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(train_trial, base=asdict(base)), plan.function_resources
    )


def build_tuner(cfg: SweepConfig, base: TrainConfig, plan: TrialPlan):
    """A fresh Tuner, or the restored one when this sweep already has an experiment folder."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    path = join_path(cfg.storage_path, cfg.name)
    trainable = make_trainable(base, plan)
    if tune.Tuner.can_restore(path):
        print(f"resuming sweep {path} (finished trials are kept)")
        return tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=True
        ), True
    if cfg.resume:
        raise FileNotFoundError(f"--resume: no sweep to resume at {path}")
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.epochs,
        grace_period=min(cfg.grace_period, cfg.epochs),  # fewer epochs: all run
        reduction_factor=cfg.reduction_factor,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=cfg.num_samples,
            scheduler=scheduler,
            # the limit goes on the generator: Tune ignores TuneConfig.max_concurrent_trials
            # when a BasicVariantGenerator is passed in (it only wraps Searchers)
            search_alg=BasicVariantGenerator(
                max_concurrent=plan.max_concurrent, random_state=cfg.seed
            ),
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=join_path(cfg.storage_path),
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=cfg.trial_max_failures),
        ),
    )
    return tuner, False


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep, report every trial, then test, register and promote the winner."""

    cfg.name = cfg.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    base = base_train_config(cfg)
    search_space(cfg)  # validate the search space before starting anything
    cluster = init_ray(cfg.address or None)
    plan = plan_trials(cfg, base, cfg.cluster_resources or cluster)
    check_reachable(replace(base, pretrained=any(cfg.pretrained), storage_path=cfg.storage_path))
    print(
        f"sweep {cfg.name}: {len(cfg.archs) * cfg.num_samples} trials, {plan.max_concurrent} at "
        f"once ({plan.trial_cpus:g} CPU + {plan.trial_gpus:g} GPU each)"
    )
    tuner, resumed = build_tuner(cfg, base, plan)
    with signals_received() as received:
        results = tuner.fit()
        if signal.SIGINT in received():  # Tune stopped the sweep and saved it, then returned:
            raise KeyboardInterrupt  # its half-trained "winner" is not evaluated nor promoted
    rows, curves = build_rows(results, base)
    if all(r["val_top1"] is None for r in rows):
        raise RuntimeError(f"every trial failed: {[r['error'] for r in rows]}")
    report_dest = join_path(cfg.storage_path, cfg.name, "report")
    report_dir = staging_dir(report_dest)
    write_report(rows, curves, report_dir)
    save_config(cfg, report_dir / "sweep.yaml")
    print(markdown_table(rows))
    best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
    summary = hand_off(cfg, base, best, report_dir)
    publish(report_dir, report_dest)
    summary.update(
        {
            "experiment": join_path(cfg.storage_path, cfg.name),
            "report": report_dest,
            "resumed": resumed,
            "trials": len(rows),
            "concurrent_trials": plan.max_concurrent,
        }
    )
    return summary
