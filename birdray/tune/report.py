"""The sweep's comparison report: one row per trial, as CSV, Markdown and PNG plots.

Written to ``<storage_path>/<name>/report/`` so the dashboard (or a person) can read a finished
sweep later without Ray:

- ``trials.csv`` / ``trials.md``: every trial with its architecture, hyper-parameters, best val
  top-1/top-5, val loss at that epoch, epochs run, images/s, parameters, wall time, status;
- ``curves.csv``: val top-1/top-5/loss and train loss per trial and epoch (long format);
- ``val_top1_curves.png``: val accuracy per epoch, one line per trial;
- ``best_val_top1_by_arch.png``: the best val top-1 each architecture reached;
- ``sweep.yaml`` (the resolved sweep config) and ``summary.json`` (winner, test metrics,
  registry version, promotion decision) are added by the sweep.
"""

from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.data.manifest import load_manifest
from birdray.plots import bar_chart, line_chart

COLUMNS = [
    "trial",
    "arch",
    "lr",
    "weight_decay",
    "label_smoothing",
    "image_size",
    "pretrained",
    "val_top1",
    "val_top5",
    "val_loss",
    "best_epoch",
    "epochs",
    "images_per_s",
    "parameters",
    "wall_s",
    "status",
    "error",
]
FILES = {
    "csv": "trials.csv",
    "markdown": "trials.md",
    "curves": "curves.csv",
    "curves_png": "val_top1_curves.png",
    "arch_png": "best_val_top1_by_arch.png",
}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def parameter_count(arch: str, num_classes: int) -> int:
    from birdray.model.factory import create_model

    model = create_model(arch, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def build_rows(results, base) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Rows for the table and per-trial epoch curves, from Tune's ``ResultGrid``."""

    num_classes = len(load_manifest(base.dataset)["class_names"])
    params: dict[str, int] = {}
    rows, curves = [], {}
    for result in results:
        config = result.config or {}
        trial = (result.metrics or {}).get("trial_id") or Path(result.path).name
        frame = result.metrics_dataframe
        history: list[dict[str, Any]] = []
        if frame is not None and "epoch" in frame and "val_top1" in frame:
            frame = frame.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last")
            history = frame.sort_values("epoch").to_dict("records")
        arch = config.get("arch", base.arch)
        if arch not in params:
            params[arch] = parameter_count(arch, num_classes)
        best = max(history, key=lambda h: _number(h.get("val_top1")) or -1.0) if history else {}
        epochs = int(history[-1]["epoch"]) if history else 0
        status = (
            "error" if result.error else "finished" if epochs >= base.epochs else "stopped early"
        )
        speeds = [v for v in (_number(h.get("images_per_s")) for h in history) if v is not None]
        rows.append(
            {
                "trial": trial,
                "arch": arch,
                **{k: config.get(k, getattr(base, k)) for k in COLUMNS[2:7]},
                "val_top1": _number(best.get("val_top1")),
                "val_top5": _number(best.get("val_top5")),
                "val_loss": _number(best.get("val_loss")),
                "best_epoch": int(best["epoch"]) if best else None,
                "epochs": epochs,
                "images_per_s": sum(speeds) / len(speeds) if speeds else None,
                "parameters": params[arch],
                "wall_s": _number(history[-1].get("time_total_s")) if history else None,
                "status": status,
                "error": str(result.error).splitlines()[0][:200] if result.error else "",
            }
        )
        curves[trial] = [
            {
                "trial": trial,
                "arch": arch,
                **{
                    k: h.get(k) for k in ("epoch", "val_top1", "val_top5", "val_loss", "train_loss")
                },
            }
            for h in history
        ]
    rows.sort(key=lambda r: -(r["val_top1"] if r["val_top1"] is not None else -1.0))
    return rows, curves


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table, best first (printed at the end of the sweep, saved as trials.md)."""
    columns = [c for c in COLUMNS if c != "error"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    errors = [f"- {row['trial']}: {row['error']}" for row in rows if row["error"]]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else []))


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_report(
    rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]], out: str | Path
) -> dict[str, Path]:
    """Write the table, the curves and the two plots into ``out``; returns their paths."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in FILES.items()}
    _write_csv(paths["csv"], rows, COLUMNS)
    paths["markdown"].write_text(markdown_table(rows) + "\n")
    points = [p for trial in curves.values() for p in trial]
    _write_csv(
        paths["curves"],
        points,
        ["trial", "arch", "epoch", "val_top1", "val_top5", "val_loss", "train_loss"],
    )
    series = {
        f"{trial} ({pts[0]['arch']})": ([p["epoch"] for p in pts], [p["val_top1"] for p in pts])
        for trial, pts in curves.items()
        if pts
    }
    line_chart(series, paths["curves_png"], "val top-1 per trial", "epoch", "val top-1")
    by_arch: dict[str, float] = {}
    for row in rows:
        if row["val_top1"] is not None:
            by_arch[row["arch"]] = max(by_arch.get(row["arch"], 0.0), row["val_top1"])
    bar_chart(by_arch, paths["arch_png"], "best val top-1 per architecture", "val top-1")
    return paths


def staging_dir(dest: str) -> Path:
    """Where to write the report: ``dest`` itself when local, a temporary folder otherwise."""
    if not storage.is_remote(dest):
        return storage.local_path(dest)
    return Path(tempfile.mkdtemp(prefix="birdray-report-"))


def publish(local: Path, dest: str) -> None:
    """Copy a locally written report to a cloud destination (no-op when it is already there)."""
    if not storage.is_remote(dest):
        return
    storage.upload_dir(local, dest)
