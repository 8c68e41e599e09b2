"""A synthetic bird as polygons: body, head, beak, wings, tail, eyes and legs of one species.

Built in a canonical frame (facing right, y down, body centre at the origin) in painting order,
each polygon tagged with the CUB part it belongs to, together with the point an annotator would
click for that part. ``synth_draw`` turns this into pixels and checks which parts stay visible.
"""

from __future__ import annotations

import numpy as np

from birdray.synth.species import COLORS, PART_ID, mark_color

NO_PART = 255  # a bird pixel that belongs to no CUB part (eye-ring, eyebrow, mask)
# body half-length, half-height, head radius, leg, tail, tilt (deg), neck
_SHAPES = {
    "perching-like": (40, 24, 15, 22, 36, 20, 2), "duck-like": (50, 22, 14, 7, 18, 0, 6),
    "gull-like": (48, 22, 14, 20, 30, 8, 3), "long-legged-like": (36, 19, 12, 55, 22, 15, 14),
    "owl-like": (32, 32, 19, 10, 18, 35, 3), "pigeon-like": (42, 28, 13, 14, 30, 10, 2),
    "swallow-like": (40, 16, 13, 7, 44, 12, 1), "sandpiper-like": (34, 20, 12, 36, 20, 5, 4),
}  # fmt: skip
# wing length (x body half-length), width (x body half-height), tip bluntness exponent
_WINGS = {"rounded-wings": (1.05, 0.6, 0.5), "pointed-wings": (1.25, 0.55, 1.2),
          "broad-wings": (1.0, 0.8, 0.6), "tapered-wings": (1.2, 0.45, 1.0),
          "long-wings": (1.5, 0.45, 0.9)}  # fmt: skip
# beak depth (x head radius), length factor, down-curve, hook, tip shape
_BILLS = {"cone": (0.8, 0.8, 0, 0, 1.0), "all-purpose": (0.6, 1.0, 0, 0, 1.0),
          "dagger": (0.5, 1.15, 0, 0, 1.0), "needle": (0.28, 1.1, 0, 0, 0.6),
          "curved_(up_or_down)": (0.38, 1.1, 0.35, 0, 0.8), "hooked": (0.8, 0.75, 0, 0.45, 1.0),
          "hooked_seabird": (0.45, 1.0, 0, 0.3, 0.3), "spatulate": (0.35, 1.0, 0, 0, -1.0),
          "specialized": (0.6, 0.9, -0.25, 0, 1.0)}  # fmt: skip
_BILL_LENGTH = {"shorter_than_head": 0.8, "about_the_same_as_head": 1.6, "longer_than_head": 2.6}


# --- geometry -------------------------------------------------------------------------------
def ellipse(cx: float, cy: float, a: float, b: float, n: int = 36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)


def clip(poly: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Keep the part of ``poly`` left of the line a->b (y down: "below" for a rear->front line)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    side = dx * (poly[:, 1] - a[1]) - dy * (poly[:, 0] - a[0])
    out = []
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if side[i] >= 0:
            out.append(poly[i])
        if (side[i] >= 0) != (side[j] >= 0):
            out.append(poly[i] + side[i] / (side[i] - side[j]) * (poly[j] - poly[i]))
    return np.array(out, dtype=float).reshape(-1, 2)


def stroke(points: np.ndarray, half_widths: np.ndarray | float) -> np.ndarray:
    """A filled band along a polyline (legs, beaks, eyebrows)."""
    tangent = np.gradient(points, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    w = np.broadcast_to(np.asarray(half_widths, float), (len(points),))[:, None]
    return np.concatenate([points + normal * w, (points - normal * w)[::-1]])


def centroid(poly: np.ndarray) -> np.ndarray:
    x, y = poly[:, 0], poly[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    if abs(area) < 1e-9:
        return poly.mean(axis=0)
    return np.array(
        [((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]
    ) / (6 * area)


def area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return abs((x * np.roll(y, -1) - np.roll(x, -1) * y).sum()) / 2


def _inside(poly: np.ndarray, p: np.ndarray) -> bool:
    x, y = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    crosses = ((y > p[1]) != (y2 > p[1])) & (p[0] < (x2 - x) * (p[1] - y) / (y2 - y + 1e-12) + x)
    return bool(crosses.sum() % 2)


# --- the bird -------------------------------------------------------------------------------
def rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _dim(color: tuple[int, ...]) -> tuple[int, ...]:
    """The far wing and leg are in shadow."""
    return tuple(int(c * 0.78) for c in color)


class Bird:
    """Polygons (canonical frame) in painting order, plus each part's intended location.

    ``near`` is the side facing the camera: a bird facing right shows its right side, so
    mirroring the photo must swap which of left/right eye, wing and leg can be seen.
    """

    def __init__(self, traits: dict[str, str], rng: np.random.Generator, mirrored: bool):
        self.t, self.rng = traits, rng
        self.ops: list[tuple[np.ndarray, tuple[int, ...], int]] = []
        self.nominal: dict[str, np.ndarray] = {}
        self.full_area: dict[str, float] = {}
        self.near, self.far = ("left", "right") if mirrored else ("right", "left")
        self.col = {  # this individual's shades of its species' colours
            k: tuple(int(c) for c in np.clip(np.add(COLORS[v], rng.integers(-8, 9, 3)), 0, 255))
            for k, v in traits.items()
            if v in COLORS
        }

    def add(self, poly: np.ndarray, color: tuple[int, ...], part: str | None) -> None:
        self.ops.append((poly, color, PART_ID[part] if part else NO_PART))
        if part and part not in self.full_area:
            self.full_area[part] = area(poly)

    def mark(self, trait: str) -> tuple[int, ...]:
        return COLORS[mark_color(self.t[trait])]

    def world(self, local: np.ndarray) -> np.ndarray:
        """Body frame (x toward the head along the body axis, y toward the belly) to canonical."""
        local = np.atleast_2d(local)
        return local[:, :1] * self.u + local[:, 1:] * self.v

    def build(self) -> Bird:
        bw, bh, hr, leg, tail, tilt, neck = np.array(_SHAPES[self.t["shape"]]) * self.rng.uniform(
            0.93, 1.07, 7
        )
        tilt = np.radians(tilt + self.rng.uniform(-6, 6))
        self.u, self.v = (
            np.array([np.cos(tilt), -np.sin(tilt)]),
            np.array([np.sin(tilt), np.cos(tilt)]),
        )
        self.bw, self.bh, self.hr = bw, bh, hr
        far_offset = self.rng.uniform(-0.05, 0.3) * bw  # near 0: the far leg hides behind the near
        hips = {
            side: self.world(np.array([0.1 * bw - o, 0.75 * bh]))[0]
            for side, o in ((self.near, 0), (self.far, far_offset))
        }
        self.foot_y = max(h[1] for h in hips.values()) + 0.3 * bh + leg
        self._leg(hips[self.far], self.far)
        self._wing(self.far)
        self._tail(tail)
        self._body()
        self._wing(self.near)
        head = bw * 0.78 * self.u + np.array([0.0, -(0.55 * hr + neck)])
        self._head(head)
        self._beak(head)
        self._eye(head)
        self._leg(hips[self.near], self.near)
        return self

    def _leg(self, hip: np.ndarray, side: str) -> None:
        foot = np.array([hip[0] + 0.1 * (self.foot_y - hip[1]), self.foot_y])
        knee = (hip + foot) / 2 + np.array([0.08 * (foot[1] - hip[1]), 0])
        color, w = self.col["leg_color"], 0.1 * self.hr
        color = _dim(color) if side == self.far else color
        self.add(stroke(np.array([hip, knee, foot]), w), color, f"{side} leg")
        for toe in ((0.55, 0.05), (0.45, 0.15), (-0.35, 0.02)):
            tip = foot + np.array(toe) * self.hr
            self.add(stroke(np.array([foot, (foot + tip) / 2, tip]), w * 0.7), color, f"{side} leg")
        self.nominal[f"{side} leg"] = hip + 0.75 * (foot - hip)

    def _wing(self, side: str) -> None:
        length, width, blunt = _WINGS[self.t["wing_shape"]]
        length, width = length * self.bw, width * self.bh
        s = np.linspace(0, 1, 24)
        center = np.stack([s * length, 0.45 * width + 0.15 * width * s], axis=1)
        half = 0.5 * width * np.sin(np.pi * np.clip(s, 0.02, 0.98) ** 0.7) ** blunt
        half = np.maximum(half, 0.03 * width)
        lift = np.radians(self.rng.uniform(-5, 40)) if side == self.far else 0.0
        turn = rotation(-lift)  # wing frame points backwards: a negative turn raises the tip

        def to_world(wing: np.ndarray) -> np.ndarray:
            p = wing @ turn.T
            return self.world(np.stack([0.45 * self.bw - p[:, 0], -0.5 * self.bh + p[:, 1]], 1))

        def band(lo: float, hi: float) -> np.ndarray:
            keep = (s >= lo) & (s <= hi)
            offset = np.stack([np.zeros(keep.sum()), half[keep]], axis=1)
            return to_world(np.concatenate([center[keep] - offset, (center[keep] + offset)[::-1]]))

        color, mark = self.col["wing_color"], self.mark("wing_color")
        if side == self.far:
            color, mark = _dim(color), _dim(mark)
        outline, part = band(0, 1), f"{side} wing"
        self.add(outline, color, part)
        pattern = self.t["wing_pattern"]
        if pattern == "striped":  # wing bars
            for lo in (0.3, 0.47):
                self.add(band(lo, lo + 0.08), mark, part)
        elif pattern == "multi-colored":  # contrasting primaries
            self.add(band(0.62, 1), mark, part)
        elif pattern == "spotted":
            r = 0.07 * width + 0.5
            for k, x in enumerate(np.linspace(0.2, 0.75, 5) * length):
                y = (0.7 if k % 2 else 0.3) * width
                self.add(to_world(ellipse(x, y, r, r, 12)), mark, part)
        self.nominal[part] = centroid(outline)

    def _tail(self, length: float) -> None:
        shape, w0 = self.t["tail_shape"], 0.32 * self.bh
        w1 = w0 * (2.0 if shape == "fan-shaped_tail" else 1.15)
        arc = np.linspace(np.pi / 2, -np.pi / 2, 9)
        round_end = np.stack([length - w1 + w1 * np.cos(arc), w1 * np.sin(arc)], 1)
        end = {
            "squared_tail": [[length, w1], [length, -w1]],
            "rounded_tail": round_end,
            "fan-shaped_tail": round_end,
            "pointed_tail": [[0.6 * length, 0.8 * w0], [length, 0], [0.6 * length, -0.8 * w0]],
            "forked_tail": [[length, 1.2 * w1], [0.6 * length, 0], [length, -1.2 * w1]],
            "notched_tail": [[length, w1], [0.82 * length, 0], [length, -w1]],
        }[shape]
        local = np.concatenate([[[0, w0]], end, [[0, -w0]]])
        turn = rotation(np.radians(self.rng.uniform(-12, 12)))

        def to_world(p: np.ndarray) -> np.ndarray:
            p = p @ turn.T
            return self.world(np.stack([-0.85 * self.bw - p[:, 0], -0.15 * self.bh + p[:, 1]], 1))

        self.add(to_world(local), self.col["upper_tail_color"], "tail")
        mark, pattern = self.mark("upper_tail_color"), self.t["tail_pattern"]
        if pattern in ("striped", "multi-colored"):
            bands = ((0.75, 1.0),) if pattern == "multi-colored" else ((0.45, 0.55), (0.7, 0.8))
            for lo, hi in (np.array(b) * length for b in bands):
                self.add(
                    to_world(clip(clip(local, (lo, 1), (lo, 0)), (hi, 0), (hi, 1))), mark, "tail"
                )
        elif pattern == "spotted":
            for x, y in ((0.45, -0.35), (0.6, 0.35), (0.75, -0.3), (0.9, 0.3)):
                spot = ellipse(x * length, y * w0, 0.15 * w0, 0.15 * w0, 12)
                self.add(to_world(spot), mark, "tail")
        middle = 0.5 if shape == "forked_tail" else 0.6
        self.nominal["tail"] = to_world(np.array([[middle * length, 0]]))[0]

    def _body(self) -> None:
        bw, bh = self.bw, self.bh
        body = ellipse(0, 0, bw, bh, 48)
        self.add(self.world(body), self.col["back_color"], "back")
        self.nominal["back"] = self.world(np.array([-0.15 * bw, -0.82 * bh]))[0]
        under = clip(body, (-bw, 0.15 * bh), (0.9 * bw, -0.55 * bh))
        breast = clip(under, (-0.15 * bw, 0), (-0.15 * bw, -1))
        belly = clip(under, (-0.15 * bw, -1), (-0.15 * bw, 0))
        self.add(self.world(belly), self.col["belly_color"], "belly")
        self.add(self.world(breast), self.col["breast_color"], "breast")
        self.nominal["belly"] = self.world(centroid(belly))[0]
        self.nominal["breast"] = self.world(centroid(breast))[0]
        mark, pattern = self.mark("breast_color"), self.t["breast_pattern"]
        if pattern == "multi-colored":  # a band across the upper breast
            self.add(self.world(clip(breast, (0.6 * bw, 0), (0.6 * bw, -1))), mark, "breast")
        elif pattern in ("spotted", "striped"):
            step = 0.28 * bh
            for gx in np.arange(-0.1 * bw, bw, step):
                for k, gy in enumerate(np.arange(-0.5 * bh, bh, step)):
                    p = np.array([gx + (step / 2 if k % 2 else 0), gy])
                    if (p[0] / bw) ** 2 + (p[1] / bh) ** 2 > 0.7 or not _inside(breast, p):
                        continue
                    if pattern == "spotted":
                        shape = ellipse(p[0], p[1], 0.07 * bh, 0.07 * bh, 10)
                    else:
                        streak = p + np.array([[0, -0.1 * bh], [0, 0], [0.02 * bw, 0.1 * bh]])
                        shape = stroke(streak, 0.025 * bh)
                    self.add(self.world(shape), mark, "breast")

    def _head(self, c: np.ndarray) -> None:
        """Nape-coloured head with forehead, crown cap, throat and the head pattern."""
        hr, (hx, hy), pattern = self.hr, c, self.t["head_pattern"]
        head = ellipse(hx, hy, hr, hr, 40)
        self.add(head, self.col["nape_color"], "nape")
        self.nominal["nape"] = c + np.array([-0.7, 0.05]) * hr
        front = hx + 0.35 * hr
        forehead = clip(clip(head, (front, 1), (front, 0)), (1, hy), (0, hy))
        self.add(forehead, self.col["nape_color"], "forehead")
        cap_y = hy - (0.05 if pattern == "capped" else 0.3) * hr
        crown = clip(clip(head, (0, cap_y), (-1, cap_y)), (front, 0), (front, 1))
        self.add(crown, self.col["crown_color"], "crown")
        if pattern == "crested":
            crest = c + np.array([[-0.1, -0.8], [-1.0, -1.45], [-0.65, -0.45]]) * hr
            self.add(crest, self.col["crown_color"], "crown")
        chin, back = hy + 0.3 * hr, hx - 0.25 * hr
        throat = clip(clip(head, (0, chin), (1, chin)), (back, 1), (back, 0))
        self.add(throat, self.col["throat_color"], "throat")
        for name, poly in (("forehead", forehead), ("crown", crown), ("throat", throat)):
            self.nominal[name] = centroid(poly)
        eye, ring = c + np.array([0.3, -0.12]) * hr, 0.35 * hr
        line = {
            "eyebrow": ([[0.6, -0.42], [0.0, -0.5], [-0.55, -0.4]], 0.06),
            "eyeline": ([[0.85, 0.0], [0.3, -0.12], [-0.7, -0.05]], 0.07),
            "malar": ([[0.75, 0.2], [0.45, 0.32], [0.2, 0.42]], 0.06),
        }
        contrast = COLORS[mark_color(self.t["nape_color"])]
        if pattern in line:
            points, half_width = line[pattern]
            self.add(stroke(c + np.array(points) * hr, half_width * hr), contrast, None)
        elif pattern == "eyering":
            self.add(ellipse(eye[0], eye[1], ring, ring, 24), contrast, None)
        elif pattern == "masked":
            self.add(ellipse(eye[0] + 0.05 * hr, eye[1], 0.5 * hr, 0.3 * hr, 24), contrast, None)

    def _beak(self, c: np.ndarray) -> None:
        depth, factor, curve, hook, tip = _BILLS[self.t["bill_shape"]]
        length = _BILL_LENGTH[self.t["bill_length"]] * factor * self.hr
        s = np.linspace(0, 1, 16)
        bend = curve * s**2 + hook * np.clip((s - 0.7) / 0.3, 0, 1) ** 2
        line = np.stack([s * length, bend * length], 1) + c + np.array([0.62, 0.05]) * self.hr
        if tip > 0:  # tapering to a point
            half = 0.5 * depth * self.hr * (1 - s) ** max(tip, 0.3)
        else:  # spoon-shaped tip
            half = 0.5 * depth * self.hr * (0.8 + 0.9 * np.exp(-(((s - 0.85) / 0.1) ** 2)))
        self.add(stroke(line, np.maximum(half, 0.04 * self.hr)), self.col["bill_color"], "beak")
        self.nominal["beak"] = line[6]

    def _eye(self, c: np.ndarray) -> None:
        eye, part = c + np.array([0.3, -0.12]) * self.hr, f"{self.near} eye"
        r, pupil = 0.26 * self.hr, 0.12 * self.hr
        self.add(ellipse(eye[0], eye[1], r, r, 20), self.col["eye_color"], part)
        self.add(ellipse(eye[0], eye[1], pupil, pupil, 12), COLORS["black"], part)
        self.nominal[part] = eye
