"""Shadow and canary rollout of a ``candidate`` model beside ``production`` (no Ray in here).

The ingress owns one ``Rollout``: its ``mode`` and ``share`` come from the ingress deployment's
``user_config`` (``{"rollout": "shadow", "rollout_share": 0.1}``), so ``serve deploy`` with new
values changes them live through ``reconfigure`` (no replica restarts, no dropped requests).

- ``off``: production answers everything.
- ``shadow``: production answers everything; a ``share`` of requests is also sent, in the
  background, to the candidate, and the two answers are compared (same top-1, confidence delta).
- ``canary``: a ``share`` of requests is answered by the candidate. A request that sends
  ``X-Client-Key`` (any opaque client id: a user, a session, a device) is sticky: the key's hash
  places the client in [0, 1), and it goes to the candidate while that point is below the share,
  so raising the share only ever moves more clients over. Requests without it are drawn at random.

``Tally`` keeps what this ingress replica saw, for ``GET /v1/rollout`` (the dashboard reads it);
the same events go to Ray's metrics endpoint (``birdray.serve.metrics``), summed over replicas.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from birdray.serve.metrics import CONFIDENCE_BUCKETS

MODES = ("off", "shadow", "canary")
PRODUCTION, CANDIDATE = "production", "candidate"


def check_rollout(mode: str, share: float, has_candidate: bool) -> None:
    """Fail loudly on a mode or share that cannot be served (before or while deploying)."""
    if mode not in MODES:
        raise ValueError(f"rollout must be one of {', '.join(MODES)} (got {mode!r})")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"rollout_share must be between 0 and 1 (got {share})")
    if mode != "off" and not has_candidate:
        raise ValueError(f"rollout {mode!r} needs a candidate model (--candidate)")


def client_point(key: str) -> float:
    """A client key's fixed place in [0, 1) (the first 8 bytes of its SHA-256)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def agreement(production: dict[str, Any], candidate: dict[str, Any]) -> tuple[bool, float]:
    """Same top-1 species? And the candidate's top-1 confidence minus production's."""
    p, c = production["prediction"], candidate["prediction"]
    return p["label"] == c["label"], float(c["confidence"]) - float(p["confidence"])


@dataclass
class Rollout:
    """Which model answers a request, and whether production's answer is shadowed."""

    mode: str = "off"
    share: float = 0.0
    has_candidate: bool = False
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        check_rollout(self.mode, self.share, self.has_candidate)

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        """Apply ``rollout``/``rollout_share`` from a ``user_config``; absent keys stay."""
        config = config or {}
        mode = str(config.get("rollout", self.mode))
        share = float(config.get("rollout_share", self.share))
        check_rollout(mode, share, self.has_candidate)
        self.mode, self.share = mode, share  # one request sees the old or the new pair

    def answering(self, client_key: str | None) -> str:
        """``candidate`` for the canary's share of requests, ``production`` otherwise."""
        if self.mode != "canary":
            return PRODUCTION
        point = client_point(client_key) if client_key else self._rng.random()
        return CANDIDATE if point < self.share else PRODUCTION

    def shadowed(self) -> bool:
        """Whether to copy this (production-answered) request to the candidate."""
        return self.mode == "shadow" and self._rng.random() < self.share


def _histogram() -> list[int]:
    return [0] * (len(CONFIDENCE_BUCKETS) + 1)


@dataclass
class Tally:
    """What one ingress replica saw since it started: per version, answers and a confidence
    histogram (bucket upper bounds ``CONFIDENCE_BUCKETS`` then 1.0); per production/candidate
    pair, shadow comparisons."""

    answered: dict[str, dict[str, Any]] = field(default_factory=dict)
    shadowed: dict[str, dict[str, Any]] = field(default_factory=dict)
    shadow_confidence: dict[str, list[int]] = field(default_factory=dict)

    def answer(self, version: str, role: str, confidences: list[float]) -> None:
        row = self.answered.setdefault(
            version, {"role": role, "requests": 0, "images": 0, "confidence": _histogram()}
        )
        row["role"] = role
        row["requests"] += 1
        row["images"] += len(confidences)
        for conf in confidences:
            row["confidence"][bisect.bisect_left(CONFIDENCE_BUCKETS, conf)] += 1

    def shadow(
        self, production: str, candidate: str, same: bool | None, delta: float, conf: float
    ) -> None:
        """One comparison (``same`` None: the candidate failed to answer)."""
        key = f"{production}->{candidate}"
        row = self.shadowed.setdefault(
            key,
            {"production": production, "candidate": candidate, "compared": 0, "agreed": 0,
             "failed": 0, "confidence_delta_sum": 0.0},
        )  # fmt: skip
        if same is None:
            row["failed"] += 1
            return
        row["compared"] += 1
        row["agreed"] += int(same)
        row["confidence_delta_sum"] += delta
        hist = self.shadow_confidence.setdefault(candidate, _histogram())
        hist[bisect.bisect_left(CONFIDENCE_BUCKETS, conf)] += 1

    def snapshot(self) -> dict[str, Any]:
        shadow = []
        for row in self.shadowed.values():
            n = row["compared"]
            shadow.append(
                {
                    **{k: v for k, v in row.items() if k != "confidence_delta_sum"},
                    "agreement": row["agreed"] / n if n else None,
                    "mean_confidence_delta": row["confidence_delta_sum"] / n if n else None,
                }
            )
        return {
            "confidence_buckets": [*CONFIDENCE_BUCKETS, 1.0],
            "answered": {v: dict(r, confidence=list(r["confidence"])) for v, r in
                         self.answered.items()},
            "shadow": shadow,
            "shadow_confidence": {v: list(h) for v, h in self.shadow_confidence.items()},
        }  # fmt: skip
