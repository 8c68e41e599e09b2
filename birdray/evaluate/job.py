"""``birdray evaluate``: test metrics, calibration and plots for a model package.

The report split and val are scored as one stream by a Ray Data actor pool holding the package's
model (loaded once). Temperature scaling is fitted on val (never on test) and written into the
package, so every consumer's confidence is calibrated; the report shows ECE before and after on
test. A registry version is never edited: its temperature, metrics and reports become an
evaluation record in the registry (folder or bucket) that every consumer resolving the version
applies.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from birdray import plots
from birdray.config import UsageError, field
from birdray.data.manifest import DatasetError, load_manifest
from birdray.devices import DEVICE_HELP, gpus_to_use
from birdray.evaluate.exclude import nothing_left, read_exclude_ids
from birdray.evaluate.inputs import open_splits, splits_read
from birdray.evaluate.metrics import (
    calibration_bins,
    classification_metrics,
    fit_temperature,
    softmax_np,
)
from birdray.model.package import read_metadata, update_metadata
from birdray.registry import record_evaluation
from birdray.registry.ref import ModelChoice
from birdray.resources import plan_pool, watched
from birdray.runtime import init_ray

if TYPE_CHECKING:
    from birdray.scoring.sources import Source


@dataclass
class EvaluateConfig(ModelChoice):
    dataset: str = field("data/cub_parquet", "ingested dataset folder")
    split: str = field("test", "split to report on")
    exclude_ids: str = field("", "file of image ids to leave out (e.g. ImageNet overlaps)")
    calibrate: bool = field(True, "fit the temperature on val and store it in the package")
    batch_size: int = field(32, "images per model call")
    actors: int = field(1, "model replicas scoring in parallel")
    num_gpus: float = field(0.0, "GPUs per scoring actor (0: as --device decides)")
    device: str = field("auto", DEVICE_HELP)
    stall_timeout_s: float = field(300.0, "stop when no scores arrive this long (0: never)")
    out: str = field("", "report folder (default: <package>/eval; registry: the version's record)")
    address: str = field("", "Ray address")


def score_splits(
    package: Path,
    dataset: str,
    splits: list[str],
    cfg: EvaluateConfig,
    sources: dict[str, Source] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Logits of each split, through batch scoring's own two stages (decode + eval transform in
    CPU tasks, the model in an actor pool): evaluation sees exactly the pixels scoring does.

    The splits are read as one stream through one actor pool: the model loads once (a second
    pool's process start, torch import and model load cost ~4 s on 2 cores). ``sources``: the
    splits as ``open_splits`` opened and checked them (opened here when not given)."""
    from birdray.scoring.sources import split_columns
    from birdray.scoring.stages import (
        StagePlan,
        add_stages,
        config_json,
        listed_rows,
        ship_package,
    )

    cluster = init_ray(cfg.address or None)
    cfg.num_gpus = gpus_to_use(cfg.device, cfg.num_gpus, cluster)
    actors = plan_pool("evaluation", cfg.actors, 0.5, cfg.num_gpus, cluster)
    plan = StagePlan(cfg.batch_size, actors, actor_cpus=0.5, num_gpus=cfg.num_gpus,
                     preprocess_cpus=0.5)  # fmt: skip
    shipped = ship_package(package, cfg.address)
    data_config = config_json(read_metadata(package).data_config)
    sources = sources or open_splits(dataset, splits)
    rows = [listed_rows(source, None, plan) for source in sources.values()]
    first = next(iter(sources.values()))
    built = add_stages(
        rows[0].union(*rows[1:]) if len(rows) > 1 else rows[0],
        first, plan, shipped, data_config, scorer_kwargs={"logits": True},
    )  # fmt: skip
    batches = built.iter_batches(batch_size=None, batch_format="numpy")
    parts = list(watched(batches, cfg.stall_timeout_s, f"evaluation of {' and '.join(splits)}"))
    ids = np.concatenate([b["image_id"] for b in parts])
    errors = np.concatenate([b["error"] for b in parts]).astype(str)
    logits = np.concatenate([b["logits"] for b in parts]).astype(np.float64)
    out = {}
    for split, source in sources.items():
        labels = split_columns(source, ["image_id", "label"])
        ids_of, labels_of = labels["image_id"].to_pylist(), labels["label"].to_pylist()
        label_of = dict(zip(ids_of, labels_of, strict=True))
        mine = np.isin(ids, list(label_of))
        bad = mine & (errors != "")
        if bad.any():  # ingest validated every row: a failure here is worth saying, not hiding
            print(f"evaluation of {split}: {int(bad.sum())} images could not be scored and are "
                  f"left out (first: {errors[bad][0]})", flush=True)  # fmt: skip
        good = mine & (errors == "")
        order = np.argsort(ids[good], kind="stable")
        kept = ids[good][order]
        out[split] = {
            "listed": np.array(ids_of),  # every row of the split, scored or not
            "image_id": kept,
            "label": np.array([label_of[int(i)] for i in kept]),
            "logits": logits[good][order],
        }
    return out


def run_evaluation(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score val + the report split, fit calibration, write metrics.json and plots."""

    # a registry version is immutable: its evaluation becomes a record beside it (see below)
    ref = cfg.ref.pinned()  # an alias is looked up once, up front
    version = ref.model if ref.registry else None
    package = ref.resolve()
    meta = read_metadata(package)
    manifest = load_manifest(cfg.dataset)
    if manifest["class_names"] != meta.class_names:
        theirs, ours = manifest["class_names"], meta.class_names
        diff = sorted(set(theirs) ^ set(ours))[:5] or ["same names, other order"]
        raise DatasetError(
            f"{cfg.dataset}: its {len(theirs)} classes differ from the model's {len(ours)} "
            f"(e.g. {', '.join(diff)}): wrong dataset for this model"
        )
    exclude = read_exclude_ids(cfg.exclude_ids)  # a bad token is an error before Ray starts
    calibrates = cfg.calibrate and "val" in manifest["splits"]
    splits = splits_read(cfg.split, cfg.calibrate, manifest["splits"])  # val in the same pool
    sources = open_splits(cfg.dataset, splits)  # unlabelled or damaged shards: before Ray too
    init_ray(cfg.address or None)
    scored = score_splits(package, cfg.dataset, splits, cfg, sources)
    report = scored[cfg.split]
    keep = ~np.isin(report["image_id"], exclude)
    absent = len(set(exclude) - set(report["listed"].tolist()))
    if absent:  # a list for another dataset (or another split) excludes less than it seems
        print(f"--exclude-ids: {absent} of {len(exclude)} ids are not in the {cfg.split!r} split "
              f"of {cfg.dataset}", flush=True)  # fmt: skip
    if not keep.any():  # metrics of nothing are NaN: never written into a package or registry
        listed = len(report["listed"])
        if exclude and not set(report["listed"].tolist()) - set(exclude):
            why = nothing_left(cfg.exclude_ids, cfg.split, len(exclude), listed)
            raise UsageError(f"--exclude-ids: {why}")
        raise DatasetError(
            f"{cfg.dataset}: none of the {listed} images of the {cfg.split!r} split is left to "
            f"evaluate ({int((~keep).sum())} excluded, the others could not be scored)"
        )
    logits, labels = report["logits"][keep], report["label"][keep]
    temperature, calibration = _calibration(cfg, meta.temperature or 1.0, scored, calibrates)
    print(f"evaluate: calibration {calibration}", flush=True)
    metrics = classification_metrics(logits, labels, meta.num_classes)
    ece_before, bins_before = calibration_bins(softmax_np(logits), labels)
    ece_after, bins_after = calibration_bins(softmax_np(logits, temperature), labels)
    bins = [
        {**{f"before_{k}": v for k, v in b.items()}, **{f"after_{k}": v for k, v in a.items()}}
        for b, a in zip(bins_before, bins_after, strict=True)
    ]
    staging = (
        tempfile.TemporaryDirectory(prefix="birdray-eval-") if version and not cfg.out else None
    )
    out = Path(cfg.out or (staging.name if staging else package / "eval"))
    confusion = metrics.pop("confusion")
    result = {
        "split": cfg.split,
        "excluded": int((~keep).sum()),
        "exclude_ids_not_in_split": absent,
        "calibration": calibration,
        **metrics,
        "ece_before": ece_before,
        "ece_after": ece_after,
        "temperature": temperature,
        "reliability_bins": bins,
        "confusion_matrix": confusion.tolist(),
        "class_names": meta.class_names,
        "model_version": meta.version or meta.content_hash[:12],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    plots.confusion_matrix(confusion, out / "confusion_matrix.png", meta.class_names)
    plots.reliability_diagram(bins, out / "reliability.png", ece_before, ece_after)
    history = meta.provenance.get("history") or []
    if history:
        plots.training_curves(history, out / "train_val_losses.png")
    summary = {
        f"{cfg.split}_top1": metrics["top1"],
        f"{cfg.split}_top5": metrics["top5"],
        "ece_before": ece_before,
        "ece_after": ece_after,
    }
    report = str(out)
    if version:  # into the registry, where every consumer of the version applies it
        report = record_evaluation(cfg.registry, version, out, temperature, summary) + "/eval"
        if staging:
            staging.cleanup()
    else:
        update_metadata(package, temperature=temperature, metrics={**meta.metrics, **summary})
    return {
        "report": report,
        **summary,
        "temperature": temperature,
        "calibration": calibration,
        "excluded": result["excluded"],
        "exclude_ids_not_in_split": absent,
        "version": version,
    }


def _calibration(
    cfg: EvaluateConfig,
    kept: float,
    scored: dict[str, dict[str, np.ndarray]],
    calibrates: bool,
) -> tuple[float, str]:
    """The temperature to store and how it was chosen: a skipped fit is said, never silent
    (the model's old temperature kept looked like a fresh calibration)."""
    if not cfg.calibrate:
        return kept, f"skipped: --no-calibrate (the model's temperature {kept:.4g} is kept)"
    if not calibrates:
        return kept, (
            f"skipped: no val split in {cfg.dataset} to fit on (the model's temperature "
            f"{kept:.4g} is kept)"
        )
    val = scored.get("val", scored[cfg.split])
    if not len(val["label"]):
        return kept, f"skipped: no val image could be scored (temperature {kept:.4g} kept)"
    temperature = fit_temperature(val["logits"], val["label"])
    return temperature, f"fitted on val ({len(val['label'])} images): temperature {temperature:.4g}"
