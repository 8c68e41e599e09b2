"""One generated photo's randomness, size and annotations (CUB's noisy worker clicks and
attribute labels): a function of ``(seed, stream, image id)`` alone, so the bytes do not depend
on which process draws them."""

from __future__ import annotations

import numpy as np

from birdray.synth.species import ATTRIBUTE_NAMES

IMAGE_STREAM = 0x1A6E  # the RNG stream every photo is drawn from (others: see ``job``)


def seeded_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *key]))


def image_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    long_side = int(rng.integers(lo, hi + 1))
    short_side = int(np.clip(round(long_side * rng.uniform(0.66, 1.0)), lo, long_side))
    return (long_side, short_side) if rng.random() < 0.8 else (short_side, long_side)


def clicks(rng: np.random.Generator, image_id: int, parts: np.ndarray, box, size) -> list[str]:
    """A few noisy worker clicks per part, like CUB's part_click_locs.txt."""
    sigma = 0.02 * max(box[2], box[3]) + 1.0
    lines = []
    for pid, (x, y, vis) in enumerate(parts, start=1):
        for _ in range(int(rng.integers(3, 6))):
            seen = rng.random() < (0.95 if vis else 0.05)
            if seen and vis:
                cx, cy = np.clip(np.array([x, y]) + rng.normal(0, sigma, 2), 0, np.array(size) - 1)
            elif seen:  # a worker who clicks a part that is not there
                cx, cy = box[0] + rng.uniform(0, box[2]), box[1] + rng.uniform(0, box[3])
            else:
                cx = cy = 0.0
            lines.append(
                f"{image_id} {pid} {round(cx)}.0 {round(cy)}.0 {int(seen)} {rng.gamma(2, 1.5):.3f}"
            )
    return lines


def attribute_labels(
    rng: np.random.Generator, image_id: int, attrs: list[int]
) -> tuple[str, np.ndarray]:
    """One noisy annotator: misses some true attributes, marks a few false ones, rates certainty."""
    n = len(ATTRIBUTE_NAMES)
    truth = np.zeros(n, dtype=bool)
    truth[np.asarray(attrs) - 1] = True
    certainty = rng.choice(4, size=n, p=[0.03, 0.1, 0.32, 0.55]) + 1
    hit = np.where(certainty == 2, 0.7, 0.92)
    false_alarm = np.where(certainty == 2, 0.05, 0.01)
    present = np.where(truth, rng.random(n) < hit, rng.random(n) < false_alarm) & (certainty > 1)
    times = rng.gamma(2.0, 4.0, n)
    lines = [
        f"{image_id} {a} {int(p)} {c} {t:.4f}"
        for a, p, c, t in zip(range(1, n + 1), present, certainty, times, strict=True)
    ]
    return "\n".join(lines), present
