"""``birdray.plots``: each chart is a real PNG of its stated size that actually shows something."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from birdray import plots


def _drawn(path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, "the chart is blank"
    return image


def test_training_curves(tmp_path):
    history = [
        {"epoch": e, "train_loss": 2 - e / 3, "val_loss": 2.1 - e / 4, "val_top1": 0.1 * e}
        for e in range(4)
    ]
    image = _drawn(plots.training_curves(history, tmp_path / "sub" / "curves.png"))
    assert image.size == (990, 440)  # 9 x 4 in at 110 dpi, parent folder created


def test_confusion_matrix_labels_only_when_readable(tmp_path):
    few = plots.confusion_matrix(np.eye(4, dtype=int) * 5, tmp_path / "few.png", list("abcd"))
    many = plots.confusion_matrix(
        np.eye(60, dtype=int), tmp_path / "many.png", [f"{i:03d}.Bird" for i in range(60)]
    )
    assert _drawn(few).size == _drawn(many).size == (770, 660)
    # an all-zero row (a class never seen) must not divide by zero
    plots.confusion_matrix(np.zeros((3, 3), dtype=int), tmp_path / "empty.png", list("abc"))


def test_reliability_diagram_skips_empty_bins(tmp_path):
    bins = [
        {"before_confidence": 0.9, "before_accuracy": 0.6, "before_count": 10,
         "after_confidence": 0.7, "after_accuracy": 0.65, "after_count": 10},
        {"before_confidence": 0.0, "before_accuracy": 0.0, "before_count": 0},
    ]  # fmt: skip
    _drawn(plots.reliability_diagram(bins, tmp_path / "rel.png", 0.2, 0.05))


@pytest.mark.parametrize("reference", [None, {"a": 0.1, "b": 0.2}])
def test_bar_chart_grows_with_its_bars(tmp_path, reference):
    short = _drawn(plots.bar_chart({"a": 0.5, "b": 0.2}, tmp_path / "s.png", "t", "x", reference))
    long = plots.bar_chart({f"n{i}": i / 30 for i in range(30)}, tmp_path / "l.png", "t", "x")
    assert _drawn(long).size[1] > short.size[1]


def test_line_chart(tmp_path):
    series = {f"trial {i}": ([1, 2, 3], [0.1 * i, 0.2 * i, 0.25 * i]) for i in range(1, 4)}
    _drawn(plots.line_chart(series, tmp_path / "line.png", "t", "epoch", "top-1"))
