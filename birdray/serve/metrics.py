"""birdray's application metrics, exported on Ray's own Prometheus endpoint (no second exporter).

Every metric is defined here, once, with a ``birdray_`` name; on export Ray adds its ``ray_``
prefix, counters get ``_total`` (``ray_birdray_requests_total``), and ``ray.serve.metrics`` adds
``deployment``/``replica``/``application`` tags. Metric objects are made inside replicas
(``ServeMetrics()``), never at import time, so the FastAPI contract stays Ray-free.
``cluster/grafana/birdray.json`` queries exactly these names (``tests/test_serve_metrics.py``).
Ray 2.60's OpenTelemetry export approximates a histogram's ``_sum`` from bucket midpoints: use
the buckets (``histogram_quantile``) and ``_count``, not ``_sum / _count``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Seconds: a decode is ~ms, a CPU batch ~0.1-1 s, a queued request up to request_timeout_s (50 s).
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
CONFIDENCE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
# |candidate - production| top-1 confidence (Ray's histogram bounds must be positive; the
# direction shows in the per-version ``birdray_confidence`` histograms)
DELTA_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75]
LOW_CONFIDENCE = 0.5  # the same default threshold as ``birdray score --low-confidence``


@dataclass(frozen=True)
class Spec:
    """One metric: its kind, Ray name, help text, tag keys and (histograms) bucket boundaries."""

    kind: str  # counter | histogram
    name: str
    description: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def exported(self) -> list[str]:
        """The Prometheus series names Ray exports for this metric."""
        base = f"ray_{self.name}"
        if self.kind == "counter":
            return [f"{base}_total"]
        return [f"{base}_bucket", f"{base}_count", f"{base}_sum"]


SPECS = {
    s.name: s
    for s in [
        Spec(
            "counter",
            "birdray_requests",
            "HTTP requests by route, status and error code",
            ("route", "status", "code"),
        ),
        Spec(
            "histogram",
            "birdray_request_seconds",
            "HTTP request latency (whole request)",
            ("route",),
            tuple(LATENCY_BUCKETS_S),
        ),
        Spec(
            "histogram",
            "birdray_upload_seconds",
            "reading and parsing the multipart upload",
            ("route",),
            tuple(LATENCY_BUCKETS_S),
        ),
        Spec(
            "histogram",
            "birdray_step_seconds",
            "per image: decode (decode + preprocess), queue_model (queue + batch), total",
            ("step", "model_version"),
            tuple(LATENCY_BUCKETS_S),
        ),
        Spec(
            "counter", "birdray_image_errors", "images refused inside a request, by code", ("code",)
        ),
        Spec(
            "histogram",
            "birdray_batch_size",
            "images per @serve.batch forward pass",
            ("model_version",),
            tuple(BATCH_BUCKETS),
        ),
        Spec(
            "histogram",
            "birdray_confidence",
            "calibrated top-1 confidence per image",
            ("model_version",),
            tuple(CONFIDENCE_BUCKETS),
        ),
        Spec(
            "counter",
            "birdray_low_confidence",
            f"images answered with top-1 confidence below {LOW_CONFIDENCE}",
            ("model_version",),
        ),
        Spec(
            "counter",
            "birdray_explanations",
            "explanations by method and outcome",
            ("method", "outcome"),
        ),
        Spec(
            "histogram",
            "birdray_explain_seconds",
            "explanation compute time by method",
            ("method",),
            tuple(LATENCY_BUCKETS_S),
        ),
        Spec(
            "counter",
            "birdray_feedback",
            "POST /v1/feedback by outcome (confirmed, corrected, not_a_bird, unsure or error code)",
            ("outcome",),
        ),
        # shadow and canary rollout (``birdray.serve.rollout``), counted by the ingress
        Spec(
            "counter",
            "birdray_rollout_requests",
            "/v1/predict requests by rollout mode, answering role and model version",
            ("mode", "role", "model_version"),
        ),
        Spec(
            "counter",
            "birdray_shadow_comparisons",
            "shadowed images: candidate's top-1 agrees, disagrees, or it failed",
            ("production_version", "candidate_version", "outcome"),
        ),
        Spec(
            "histogram",
            "birdray_shadow_confidence_delta",
            "shadowed images: |candidate's top-1 confidence - production's|",
            ("production_version", "candidate_version"),
            tuple(DELTA_BUCKETS),
        ),
        # batch scoring (``birdray score``'s actor pool; ``ray.util.metrics``, no Serve tags)
        Spec(
            "counter",
            "birdray_score_rows",
            "scored rows by model version and outcome (ok or the error reason)",
            ("model_version", "outcome"),
        ),
    ]
}


def exported_names() -> set[str]:
    """Every Prometheus series name birdray's metrics appear under (for dashboards and tests)."""
    return {name for spec in SPECS.values() for name in spec.exported()}


class ServeMetrics:
    """The metric objects of one Serve replica (``ray.serve.metrics`` adds the Serve tags)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._m: dict[str, Any] = {}
        for spec in SPECS.values():
            if spec.kind == "counter":
                self._m[spec.name] = metrics.Counter(
                    spec.name, description=spec.description, tag_keys=spec.tags
                )
            else:
                self._m[spec.name] = metrics.Histogram(
                    spec.name,
                    description=spec.description,
                    boundaries=list(spec.buckets),
                    tag_keys=spec.tags,
                )

    def _inc(self, name: str, **tags: Any) -> None:
        self._m[name].inc(1, tags={k: str(v) for k, v in tags.items()})

    def _observe(self, name: str, value: float, **tags: Any) -> None:
        self._m[name].observe(value, tags={k: str(v) for k, v in tags.items()})

    # the ``birdray.serve.api.Recorder`` protocol (the HTTP layer)
    def request(self, route: str, status: int, code: str, seconds: float) -> None:
        self._inc("birdray_requests", route=route, status=status, code=code)
        self._observe("birdray_request_seconds", seconds, route=route)

    def upload(self, route: str, seconds: float) -> None:
        self._observe("birdray_upload_seconds", seconds, route=route)

    # the ingress
    def image(self, version: str, decode_s: float, queue_model_s: float, total_s: float) -> None:
        for step, value in (
            ("decode", decode_s),
            ("queue_model", queue_model_s),
            ("total", total_s),
        ):
            self._observe("birdray_step_seconds", value, step=step, model_version=version)

    def image_error(self, code: str) -> None:
        self._inc("birdray_image_errors", code=code)

    def feedback(self, outcome: str) -> None:
        self._inc("birdray_feedback", outcome=outcome)

    # the rollout (ingress)
    def routed(self, mode: str, role: str, version: str) -> None:
        self._inc("birdray_rollout_requests", mode=mode, role=role, model_version=version)

    def shadow(self, production: str, candidate: str, outcome: str, delta: float | None) -> None:
        versions = {"production_version": production, "candidate_version": candidate}
        self._inc("birdray_shadow_comparisons", outcome=outcome, **versions)
        if delta is not None:
            self._observe("birdray_shadow_confidence_delta", abs(delta), **versions)

    # the classifier
    def batch(self, version: str, confidences: list[float]) -> None:
        self._observe("birdray_batch_size", len(confidences), model_version=version)
        for conf in confidences:
            self._observe("birdray_confidence", conf, model_version=version)
            if conf < LOW_CONFIDENCE:
                self._inc("birdray_low_confidence", model_version=version)

    # the explainer
    def explanation(self, method: str, outcome: str, seconds: float) -> None:
        self._inc("birdray_explanations", method=method, outcome=outcome)
        if outcome == "ok":
            self._observe("birdray_explain_seconds", seconds, method=method)


class ScoreMetrics:
    """The metric of one batch-scoring actor: rows by outcome, so a long job's error mix shows
    in Grafana while it runs (the summary file only appears at the end)."""

    def __init__(self, model_version: str) -> None:
        from ray.util import metrics

        spec = SPECS["birdray_score_rows"]
        self._rows = metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
        self._version = model_version

    def rows(self, errors: list[str]) -> None:
        """One count per row: ``ok``, or the error's reason (the word before ``:``)."""
        counts: dict[str, int] = {}
        for error in errors:
            outcome = error.split(":", 1)[0] if error else "ok"
            counts[outcome] = counts.get(outcome, 0) + 1
        for outcome, n in counts.items():
            self._rows.inc(n, tags={"model_version": self._version, "outcome": outcome})


def metrics_url() -> str:
    """Ray's Prometheus endpoint on the driver's node (where the ``ray_birdray_*`` series are)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == here)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
