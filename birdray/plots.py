"""PNG plots people would rather look at than read: curves, confusion, calibration, comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float = 7.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110)


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Train/val loss and val accuracy per epoch (the seed project's train_val_losses.png)."""
    plt, fig = _figure(9, 4)
    epochs = [h["epoch"] for h in history]
    ax1 = fig.add_subplot(1, 2, 1)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(epochs, [h["val_top1"] for h in history], "o-", label="val top-1")
    ax2.plot(epochs, [h.get("val_top5", np.nan) for h in history], "o-", label="val top-5")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    return _save(plt, fig, path)


def confusion_matrix(matrix: np.ndarray, path: str | Path, class_names: list[str]) -> Path:
    """Row-normalised confusion matrix; labels only when few enough to read."""
    plt, fig = _figure(7, 6)
    ax = fig.add_subplot(1, 1, 1)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    image = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        short = [n.split(".", 1)[-1][:18] for n in class_names]
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=6)
        ax.set_yticks(range(len(short)), short, fontsize=6)
    return _save(plt, fig, path)


def reliability_diagram(
    bins: list[dict[str, float]], path: str | Path, ece_before: float, ece_after: float
) -> Path:
    """Accuracy vs confidence per bin, before and after temperature scaling."""
    plt, fig = _figure(5.5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for key, label in (
        ("before", f"raw (ECE {ece_before:.3f})"),
        ("after", f"calibrated (ECE {ece_after:.3f})"),
    ):
        pts = [
            (b[f"{key}_confidence"], b[f"{key}_accuracy"])
            for b in bins
            if b.get(f"{key}_count", 0) > 0
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-", label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(plt, fig, path)


def bar_chart(
    values: dict[str, float],
    path: str | Path,
    title: str,
    xlabel: str,
    reference: dict[str, float] | None = None,
) -> Path:
    """Horizontal bars (e.g. accuracy per architecture, attribution share per part vs chance)."""
    plt, fig = _figure(7, max(2.5, 0.35 * len(values) + 1))
    ax = fig.add_subplot(1, 1, 1)
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4C72B0", label="measured")
    if reference:
        ax.scatter(
            [reference.get(n, np.nan) for n in names],
            names,
            color="#DD8452",
            marker="|",
            s=200,
            label="reference",
            zorder=3,
        )
        ax.legend()
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(plt, fig, path)


def line_chart(
    series: dict[str, tuple[list[float], list[float]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Several named curves on one axis (val accuracy per trial, deletion curves, ...)."""
    plt, fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    return _save(plt, fig, path)
