"""Each step's default output is the next step's default input (issue 17 item 5)."""

from __future__ import annotations

from pathlib import Path

from birdray.cli import JOBS, build_parser
from birdray.config import resolve
from birdray.dashboard_launcher import DashboardConfig
from birdray.data.download import DownloadConfig
from birdray.data.ingest import IngestConfig
from birdray.demo import next_commands
from birdray.evaluate.job import EvaluateConfig
from birdray.explain.evaluation import ExplainEvalConfig
from birdray.serve.args import AppArgs
from birdray.train.config import TrainConfig
from birdray.tune.config import SweepConfig


def test_download_ingest_train_defaults_chain():
    assert IngestConfig().source == f"{DownloadConfig().out}/extracted"
    for consumer in (TrainConfig, EvaluateConfig, ExplainEvalConfig, SweepConfig):
        assert consumer().dataset == IngestConfig().out, consumer
    assert SweepConfig().registry == AppArgs().registry == DashboardConfig().registry


def test_demo_prints_commands_that_parse_and_name_its_registry(tmp_path):
    out = tmp_path / "demo"
    commands = next_commands(out, out / "registry", str(out / "dataset"), str(out / "tune"))
    jobs = []
    for command in commands:
        birdray, job, *argv = command.split()
        assert birdray == "birdray"
        parser, config_cls, _ = build_parser(job, JOBS[job])
        args = parser.parse_args(argv)
        del args.debug
        cfg = resolve(config_cls, args)  # what `birdray <job>` itself does with the flags
        assert Path(cfg.registry) == out / "registry", command
        jobs.append(job)
    assert jobs[:3] == ["serve", "score", "dashboard"]
