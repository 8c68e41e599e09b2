"""The sweep's hand-off: export the winning checkpoint, test it, register it, maybe promote it.

The winner becomes production only when it beats the current production model on val top-1
(the metric the sweep optimised; test stays untouched by every choice) or when forced. Running the
hand-off again for the same weights reuses their registry version instead of adding a duplicate.
The package is evaluated (calibrated, reports in ``eval/``) before it is registered, so the
registered version, in a folder or a bucket, carries its temperature and reports from the start.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from birdray import storage
from birdray.data.manifest import load_manifest, manifest_checksum
from birdray.tune.config import METRIC, SEARCHED, SweepConfig, join_path, trial_config


def best_checkpoint(result, storage_path: str):
    """The trial's checkpoint from its best epoch (Ray Train keeps the best by val top-1)."""
    from ray.train import Checkpoint

    fs = storage.filesystem(storage_path)[0]
    frame = result.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame:
        raise RuntimeError(f"trial {result.path} reported no checkpoints")
    frame = frame.dropna(subset=["checkpoint_path"]).sort_values([METRIC, "epoch"], ascending=False)
    for path in frame["checkpoint_path"]:
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            return Checkpoint(path, filesystem=fs)
    raise RuntimeError(f"none of trial {result.path}'s checkpoints is still in storage")


def decide(registry: str, version: str, force: bool) -> tuple[bool, str]:
    """Whether ``version`` should replace production, and why (in words for the log)."""
    from birdray.model.errors import ModelError
    from birdray.registry import RegistryError, read_pointer, version_metadata

    current = read_pointer(registry).get("version")
    new = version_metadata(registry, version).metrics.get(METRIC)  # metadata only, no weights
    if current is None:
        return True, f"no production model yet; {version} ({METRIC} {new:.4f}) becomes production"
    if current == version:
        return False, f"{version} is already production"
    try:
        old = version_metadata(registry, current).metrics.get(METRIC)
    except (ModelError, RegistryError, OSError) as exc:
        return True, f"production {current} is unreadable ({exc}); replacing it with {version}"
    compared = f"{version} {METRIC} {new:.4f} vs production {current} {old or 0:.4f}"
    if force:
        return True, f"forced: {compared}"
    if old is None or new > old:
        return True, f"better: {compared}"
    return False, f"not better: {compared} (use --force to promote anyway)"


def register_winner(
    registry: str, package: Path, provenance: dict[str, Any], force: bool
) -> dict[str, Any]:
    """Register the package (once per weights) and promote it if it wins."""
    from birdray.registry import promote, register_once

    version, _ = register_once(registry, package, provenance)  # as `registry add`: one lock
    promoted, reason = decide(registry, version, force)
    if promoted:
        promote(registry, version)
    print(f"registry {registry}: {reason}")
    return {"version": version, "promoted": promoted, "reason": reason}


def hand_off(cfg: SweepConfig, base, best, report_dir: Path) -> dict[str, Any]:
    """Export the best trial's best checkpoint, evaluate it on test, register and maybe promote."""
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.model.factory import arch_data_config
    from birdray.train.job import export_package

    trial = best.metrics.get("trial_id") or Path(best.path).name
    trial_cfg = trial_config(asdict(base), best.config, trial)
    manifest = load_manifest(trial_cfg.dataset)
    classes = len(manifest["class_names"])
    data_config = arch_data_config(trial_cfg.arch, classes, trial_cfg.image_size)
    experiment = join_path(cfg.storage_path, cfg.name)
    remote = storage.is_remote(experiment)
    out = (Path("runs/tune") / cfg.name if remote else storage.local_path(experiment)) / "package"
    provenance = {
        "sweep": cfg.name,
        "sweep_dir": experiment,
        "trial": trial,
        "trial_config": {k: best.config.get(k) for k in SEARCHED},
        "manifest_checksum": manifest_checksum(trial_cfg.dataset),
    }
    checkpoint = best_checkpoint(best, cfg.storage_path)
    package = export_package(checkpoint, trial_cfg, data_config, manifest, out, provenance)
    evaluation = run_evaluation(
        EvaluateConfig(
            model=str(package), dataset=trial_cfg.dataset, split=cfg.eval_split, address=cfg.address
        )
    )
    summary: dict[str, Any] = {
        "best_trial": trial,
        "arch": trial_cfg.arch,
        "config": provenance["trial_config"],
        METRIC: float(best.metrics_dataframe[METRIC].max()),
        "trial_error": str(best.error).splitlines()[0] if best.error else None,
        "package": str(package),
        "evaluation": evaluation,
        "report": str(report_dir),
    }
    if cfg.registry:
        summary["registry"] = register_winner(cfg.registry, package, provenance, cfg.force)
    (Path(report_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
