"""Sweep planning, search space, report files and promotion rules, without a Ray cluster."""

from __future__ import annotations

import csv

import pytest

from birdray.config import ConfigError
from birdray.model.package import update_metadata
from birdray.registry import find_version, promote, read_pointer, register
from birdray.train.job import ResourceError
from birdray.tune.job import SweepConfig, base_train_config, plan_trials, search_space
from birdray.tune.promote import register_winner
from birdray.tune.report import FILES, markdown_table, write_report
from tests.model_fixture import make_package

ONE_WORKER = dict(num_workers=1, cpus_per_worker=0.9)


def _plan(cluster, archs=("a", "b"), **train):
    cfg = SweepConfig(archs=list(archs), train={**ONE_WORKER, **train})
    return plan_trials(cfg, base_train_config(cfg), cluster)


def test_concurrency_is_derived_from_the_cluster():
    # each trial: 0.9 CPU worker + 0.1 CPU Tune function + 1 CPU free for Ray Data
    assert _plan({"CPU": 4}).max_concurrent == 2
    assert _plan({"CPU": 3}).max_concurrent == 1
    assert _plan({"CPU": 2}).max_concurrent == 1  # the demo on a 2-core laptop
    assert _plan({"CPU": 4}, cpus_per_worker=1.0).max_concurrent == 1  # 2.1 CPU per trial
    assert _plan({"CPU": 64}, archs="abc").max_concurrent == 3  # never more than there are trials
    gpu = _plan(
        {"CPU": 64, "GPU": 8}, archs="abcdef", num_workers=4, cpus_per_worker=6, use_gpu=True
    )
    assert gpu.max_concurrent == 2  # 8 GPUs / 4 per trial
    assert gpu.trial_gpus == 4 and gpu.function_resources == {"CPU": 0.1}


def test_a_trial_worker_gets_one_thread_per_reserved_cpu_not_the_node():
    """Trials at once share a node: unset torch threads would give each worker every core."""
    from dataclasses import asdict

    from birdray.tune.config import trial_config

    cfg = SweepConfig(archs=["a"], train={**ONE_WORKER})
    base = asdict(base_train_config(cfg))
    assert trial_config(base, {}, "t1").torch_threads == 1  # 0.9 CPU, rounded up
    assert trial_config({**base, "cpus_per_worker": 2.5}, {}, "t2").torch_threads == 3
    assert trial_config({**base, "torch_threads": 4}, {}, "t3").torch_threads == 4  # as set


def test_a_trial_that_can_never_fit_is_an_error_naming_the_cluster():
    # only Ray Data's share is missing: the worker gets what is left instead of hanging
    assert _plan({"CPU": 2}, cpus_per_worker=1.0).trial_cpus == pytest.approx(2.0)
    with pytest.raises(ResourceError, match=r"need 2\.1 CPU; the cluster has 1 CPU"):
        _plan({"CPU": 1}, cpus_per_worker=1.0)
    with pytest.raises(ResourceError, match="the cluster has 8 CPU and 0 GPU"):
        _plan({"CPU": 8}, use_gpu=True)
    with pytest.raises(ResourceError, match=r"need 8 CPU .* the cluster has 4 CPU"):
        _plan({"CPU": 4}, num_workers=2, cpus_per_worker=4)


def test_search_space_and_config_validation():
    space = search_space(SweepConfig(archs=["resnet50", "densenet121"], lr=[0.01, 0.1]))
    assert space["arch"] == {"grid_search": ["resnet50", "densenet121"]}
    assert 0.01 <= space["lr"].sample() <= 0.1
    assert space["weight_decay"] == 1e-4  # one value: fixed
    with pytest.raises(ConfigError, match="lr: give one value or a range"):
        search_space(SweepConfig(lr=[0.1, 0.01]))
    with pytest.raises(ConfigError, match="arch, lr are sweep settings"):
        base_train_config(SweepConfig(train={"lr": 0.1, "arch": "resnet18"}))
    with pytest.raises(ConfigError, match="unknown TrainConfig keys: batchsize"):
        base_train_config(SweepConfig(train={"batchsize": 8}))


def test_report_files(tmp_path):
    rows = [
        {
            "trial": "t1",
            "arch": "resnet18",
            "lr": 0.01,
            "val_top1": 0.8,
            "status": "finished",
            "error": "",
        },
        {
            "trial": "t2",
            "arch": "test_resnet",
            "lr": 0.1,
            "val_top1": None,
            "status": "error",
            "error": "boom",
        },
    ]
    curves = {"t1": [{"trial": "t1", "arch": "resnet18", "epoch": 1, "val_top1": 0.8}], "t2": []}
    rows = [
        {
            **{
                c: None
                for c in (
                    "weight_decay",
                    "label_smoothing",
                    "image_size",
                    "pretrained",
                    "val_top5",
                    "val_loss",
                    "best_epoch",
                    "epochs",
                    "images_per_s",
                    "parameters",
                    "wall_s",
                )
            },
            **r,
        }
        for r in rows
    ]
    paths = write_report(rows, curves, tmp_path)
    assert {p.name for p in paths.values()} == set(FILES.values())
    assert all(p.stat().st_size > 0 for p in paths.values())
    table = list(csv.DictReader(paths["csv"].open()))
    assert [r["trial"] for r in table] == ["t1", "t2"] and table[1]["error"] == "boom"
    text = markdown_table(rows)
    assert "| t1 | resnet18 |" in text and "- t2: boom" in text


def test_winner_promoted_only_when_better_or_forced(tmp_path):
    registry = str(tmp_path / "registry")
    champion = make_package(tmp_path / "champion", seed=1)
    update_metadata(champion, metrics={"val_top1": 0.9})
    promote(registry, register(registry, champion))
    weaker = make_package(tmp_path / "weaker", seed=2)
    update_metadata(weaker, metrics={"val_top1": 0.6})

    decision = register_winner(registry, weaker, {"sweep": "s"}, force=False)
    assert not decision["promoted"] and "not better" in decision["reason"]
    assert read_pointer(registry)["version"] == "v0001"
    assert decision["version"] == "v0002"

    forced = register_winner(registry, weaker, {"sweep": "s"}, force=True)
    assert forced["promoted"] and forced["version"] == "v0002"  # same weights: no new version
    assert read_pointer(registry)["version"] == "v0002"
    assert find_version(registry, "not-a-hash") is None

    better = make_package(tmp_path / "better", seed=3)
    update_metadata(better, metrics={"val_top1": 0.95})
    assert register_winner(registry, better, {}, force=False)["promoted"]
    assert read_pointer(registry)["version"] == "v0003"
