"""Draw one synthetic bird photo and report where its 15 CUB parts truly are.

The bird's polygons (``synth_bird``) are scaled, rotated, mirrored and placed on a cluttered
background. Every polygon is drawn twice: in colour (2x supersampled, for smooth edges) and into
a label image holding the CUB part id of each pixel. Part locations and visibility are read back
from the label image, so a location is always a pixel where that part was really painted and not
covered by anything drawn later; a part with too few such pixels (the far eye, a hidden far wing
or leg) is recorded as invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from birdray.synth.bird import Bird, ellipse, rotation
from birdray.synth.species import COLORS, PART_ID, PART_NAMES

_SIZE_FRACTION = {"very_small_(3_-_5_in)": (0.45, 0.6), "small_(5_-_9_in)": (0.5, 0.65),
                  "medium_(9_-_16_in)": (0.55, 0.72), "large_(16_-_32_in)": (0.6, 0.8),
                  "very_large_(32_-_72_in)": (0.65, 0.85)}  # fmt: skip
_NATURE = np.array(  # foliage, sky, bark, soil, stone, sand
    [[70, 120, 50], [110, 150, 70], [150, 190, 225], [190, 210, 235], [120, 95, 60],
     [160, 140, 100], [90, 90, 85], [200, 190, 150]], float)  # fmt: skip


@dataclass
class Drawn:
    image: Image.Image  # RGB, or L for the few grayscale photos
    bbox: tuple[int, int, int, int]  # x, y, width, height of the painted bird
    parts: np.ndarray  # (15, 3) int: x, y, visible; (0, 0, 0) when not visible


# --- the photo ------------------------------------------------------------------------------
def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(values, 0, 255).astype(int)
    return int(r), int(g), int(b)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Gradient, blurred blobs, sharp twigs and leaves: new for every photo, never a class cue."""
    top, bottom = _NATURE[rng.integers(len(_NATURE), size=2)] + rng.uniform(-25, 25, (2, 3))
    sw, sh = max(width // 4, 8), max(height // 4, 8)
    ramp = np.linspace(0, 1, sh)[:, None, None]
    small = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (sh, sw, 3))
    img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    palette = np.array(list(COLORS.values()), float)
    for _ in range(rng.integers(6, 16)):
        pool = _NATURE if rng.random() < 0.7 else palette  # bird colours appear in backgrounds too
        color = _rgb(pool[rng.integers(len(pool))] + rng.uniform(-20, 20, 3))
        cx, cy, rx, ry = rng.uniform(0, 1, 4) * [sw, sh, sw / 3, sh / 3] + [0, 0, 2, 2]
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    img = img.resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 5)):  # twigs
        (ax, ay), (bx, by) = rng.uniform(0, 1, (2, 2)) * [width, height]
        shade = rng.uniform(40, 120)
        draw.line(
            [(ax, ay), (bx, by)],
            fill=_rgb(shade * np.array([1, 0.8, 0.6])),
            width=int(rng.integers(2, 9)),
        )
    for _ in range(rng.integers(0, 9)):  # leaves
        leaf = (
            ellipse(0, 0, rng.uniform(6, 22), rng.uniform(3, 9), 16)
            @ rotation(rng.uniform(0, np.pi)).T
        )
        leaf += rng.uniform(0, 1, 2) * [width, height]
        draw.polygon(
            [tuple(p) for p in leaf], fill=_rgb(_NATURE[rng.integers(2)] + rng.uniform(-30, 30, 3))
        )
    return img


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _deep(mask: np.ndarray, depth: int) -> np.ndarray:
    """Pixels at least ``depth`` steps inside ``mask``, or the deepest there are."""
    for _ in range(depth):
        inner = _erode(mask)
        if not inner.any():
            break
        mask = inner
    return mask


def _read_parts(bird: Bird, labels: np.ndarray, to_layer, scale: float, bbox) -> np.ndarray:
    """Each part's location: its intended point if painted, uncovered and not at an edge, else
    the nearest pixel well inside what is left of it; invisible when too little is left."""
    parts = np.zeros((len(PART_NAMES), 3), dtype=int)
    bx, by, bw, bh = bbox
    x0, y0 = to_layer.origin
    depth = max(1, round(0.012 * max(bw, bh)))
    for name, nominal in bird.nominal.items():
        pid = PART_ID[name]
        mask = labels == pid
        if mask.sum() < max(6.0, 0.15 * bird.full_area[name] * scale**2):
            continue
        rows, cols = np.nonzero(mask)
        top, left = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
        deep = _deep(mask[top : rows.max() + 2, left : cols.max() + 2], depth)  # part's box only
        col, row = np.rint(to_layer(nominal)).astype(int) - (left, top)
        if not (0 <= row < deep.shape[0] and 0 <= col < deep.shape[1] and deep[row, col]):
            rows, cols = np.nonzero(deep)
            k = int(np.argmin((rows - row) ** 2 + (cols - col) ** 2))
            row, col = rows[k], cols[k]
        row, col = row + top, col + left
        parts[pid - 1] = (np.clip(x0 + col, bx, bx + bw - 1), np.clip(y0 + row, by, by + bh - 1), 1)
    return parts


def render(
    traits: dict[str, str], rng: np.random.Generator, width: int, height: int, gray: bool = False
) -> Drawn:
    """One photo of a bird with these traits, in a random pose, on a random background."""
    mirrored = bool(rng.random() < 0.5)
    bird = Bird(traits, rng, mirrored).build()
    linear = rotation(np.radians(rng.uniform(-12, 12))) @ np.diag([-1.0 if mirrored else 1.0, 1.0])
    pts = np.concatenate([poly for poly, _, _ in bird.ops]) @ linear.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ext = hi - lo
    frac = rng.uniform(*_SIZE_FRACTION[traits["size"]])
    margin = 4  # the whole bird stays inside the photo, as CUB's boxes do
    room = np.minimum([0.9 * width, 0.88 * height], np.array([width, height]) - 2 * margin - 1)
    scale = min(frac * width / ext[0], room[0] / ext[0], room[1] / ext[1])
    shift = rng.uniform(margin - lo * scale, np.array([width, height]) - margin - hi * scale)
    matrix = linear * scale

    x0, y0 = np.floor(lo * scale + shift).astype(int) - 2
    x1, y1 = np.ceil(hi * scale + shift).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)

    def to_layer(p: np.ndarray) -> np.ndarray:
        return p @ matrix.T + shift - (x0, y0)

    to_layer.origin = (x0, y0)  # type: ignore[attr-defined]
    lw, lh = x1 - x0, y1 - y0
    layer, labels = Image.new("RGBA", (2 * lw, 2 * lh)), Image.new("L", (lw, lh))
    draw_layer, draw_labels = ImageDraw.Draw(layer), ImageDraw.Draw(labels)
    for poly, rgb, label in bird.ops:
        q = to_layer(poly)
        draw_layer.polygon((2 * q).ravel().tolist(), fill=(*rgb, 255))
        draw_labels.polygon(q.ravel().tolist(), fill=label)
    layer = layer.reduce(2)  # 2x supersampling: smooth edges, alpha = coverage

    background = _background(rng, width, height)
    if rng.random() < 0.8:  # a perch under the feet
        foot = np.array([bird.nominal[f"{bird.near} leg"][0], bird.foot_y]) @ matrix.T + shift
        along = rotation(rng.uniform(-0.2, 0.2)) @ matrix[:, 0] / scale
        ends = [
            foot - along * rng.uniform(0.3, 1.2) * width,
            foot + along * rng.uniform(0.3, 1.2) * width,
        ]
        shade = _rgb(rng.uniform(50, 130) * np.array([1, 0.8, 0.6]))
        width_px = max(3, int(0.3 * bird.hr * scale))
        ImageDraw.Draw(background).line([tuple(e) for e in ends], fill=shade, width=width_px)
    background.paste(layer, (x0, y0), layer)

    gain = rng.uniform(0.94, 1.06) * rng.uniform(0.97, 1.03, 3)  # light and white balance
    lut = np.clip(np.rint(np.arange(256)[None, :] * gain[:, None]), 0, 255).astype(int).ravel()
    pixels = np.asarray(background.point(lut.tolist()), dtype=np.int16)
    amp = int(rng.integers(3, 10))  # sensor noise
    pixels = pixels + rng.integers(-amp, amp + 1, pixels.shape, dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    rows, cols = np.nonzero(np.asarray(layer.getchannel("A")) >= 64)
    bbox = (
        int(x0 + cols.min()),
        int(y0 + rows.min()),
        int(cols.max() - cols.min() + 1),
        int(rows.max() - rows.min() + 1),
    )
    parts = _read_parts(bird, np.asarray(labels), to_layer, scale, bbox)
    return Drawn(image.convert("L") if gray else image, bbox, parts)
