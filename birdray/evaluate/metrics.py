"""The numbers of an evaluation, in plain numpy: top-k accuracy, NLL, temperature, ECE.

Apart from the Ray pipeline in ``job`` so they are testable (and reusable) without a cluster.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

ECE_BINS = 15


def softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities in numpy (evaluation's drivers need no torch)."""
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = softmax_np(logits, temperature)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising val NLL (1-D bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(-3.0, 4.0),
        method="bounded",
    )
    return float(np.exp(result.x))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """Expected calibration error and per-bin (confidence, accuracy, count)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else 0.0
        mean_conf = float(conf[mask].mean()) if count else 0.0
        ece += count / max(len(labels), 1) * abs(acc - mean_conf)
        rows.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "count": count,
                "accuracy": acc,
                "confidence": mean_conf,
            }
        )
    return float(ece), rows


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, Any]:
    order = np.argsort(-logits, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, : min(5, num_classes)] == labels[:, None]).any(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, order[:, 0]), 1)
    per_class = [
        float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None
        for c in range(num_classes)
    ]
    return {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "count": len(labels),
        "per_class_accuracy": per_class,
        "confusion": confusion,
    }
