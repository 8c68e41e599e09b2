"""``BirdClassifier``: the model deployment (GPU replicas on a cluster, CPU here), batched.

Requests arrive already resized and cropped by the ingress (uint8 CHW arrays from the model's
own eval transform: 4x fewer bytes per hop than float32; normalised here, as batch scoring
does) and are grouped by ``@serve.batch`` into one forward pass. ``user_config`` carries the
batch knobs and the model reference, so a config update swaps the model in place: the new
package loads in a thread while the old one keeps answering, then one assignment switches them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from birdray.registry.ref import ModelRef
from birdray.serve.metrics import ServeMetrics

if TYPE_CHECKING:  # torch and timm load in the replica, not in the driver that builds the app
    from birdray.model.inference import Predictor

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.002


def config_key(data_config: dict[str, Any]) -> str:
    """Fingerprint of a preprocessing config: a tensor made for one key fits only that model."""
    text = json.dumps(data_config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_predictor(
    ref: ModelRef,
    device: str | None,
    threads: int,
    amp: bool,
    channels_last: bool = True,
) -> Predictor:
    path = ref.resolve()
    from birdray.model.inference import Predictor

    return Predictor(
        str(path), device=device, num_threads=threads, amp=amp, channels_last=channels_last
    )


def describe(predictor: Predictor) -> dict[str, Any]:
    """What ``GET /v1/model`` shows, plus the data config the ingress preprocesses with.

    ``explain_method`` is what ``/v1/explain`` uses when a request names no method: the method
    ``explain-eval`` measured best for this package (clients such as the dashboard preselect it).
    """
    from birdray.explain.compare import default_method

    meta = predictor.metadata
    return {
        "explain_method": default_method(predictor.package.path),
        "name": predictor.package.name,
        "version": predictor.version,
        "arch": meta.arch,
        "num_classes": meta.num_classes,
        "classes": list(meta.class_names),
        "metrics": meta.metrics,
        "temperature": meta.temperature,
        "image_size": meta.image_size,
        "created_at": meta.created_at,
        "data_config": meta.data_config,
        "config_key": config_key(meta.data_config),
    }


@serve.deployment(name="BirdClassifier", max_ongoing_requests=2 * DEFAULT_MAX_BATCH_SIZE)
class BirdClassifier:
    """Holds one ``Predictor``; answers batches of preprocessed images with calibrated top-k."""

    def __init__(
        self,
        model: ModelRef,
        device: str | None = None,
        torch_threads: int = 1,
        amp: bool = False,
    ):
        self._device, self._threads, self._amp = device, torch_threads, amp
        self._ref: ModelRef | None = None
        self._predictor: Predictor | None = None
        self._key = ""
        self._calls = 0
        self._items = 0
        self._largest = 0
        self._swaps = 0
        self._batching: dict[str, Any] = {}
        self._in_flight = 0
        self._metrics = ServeMetrics()
        # loaded here, so a replica is ready with or without a user_config; one that names
        # another model swaps it in reconfigure
        self._swap(model)

    def _swap(self, ref: ModelRef) -> None:
        predictor = load_predictor(ref, self._device, self._threads, self._amp)
        # one assignment: a batch already running keeps the old model, the next gets the new one
        self._predictor, self._key, self._ref = (
            predictor,
            config_key(predictor.metadata.data_config),
            ref,
        )
        self._swaps += 1

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply batch knobs; load and swap the model when its reference changed."""
        config = config or {}
        self._batching = {
            "max_batch_size": int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            "batch_wait_timeout_s": float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S)),
        }
        self._predict_batch.set_max_batch_size(self._batching["max_batch_size"])
        self._predict_batch.set_batch_wait_timeout_s(self._batching["batch_wait_timeout_s"])
        ref = ModelRef.from_config(config, self._ref)
        if ref != self._ref:
            await asyncio.to_thread(self._swap, ref)

    def _ready(self) -> Predictor:
        if self._predictor is None:
            raise RuntimeError("model not loaded yet")
        return self._predictor

    def check_health(self) -> None:
        self._ready()

    async def info(self) -> dict[str, Any]:
        return describe(self._ready())

    async def stats(self) -> dict[str, Any]:
        """Counters that show batching at work (model calls vs images)."""
        return {
            "calls": self._calls,
            "items": self._items,
            "largest_batch": self._largest,
            "version": self._ready().version,
            "device": str(self._ready().device),
            "swaps": self._swaps,
            **self._batching,
        }

    async def predict(self, item: dict[str, Any]) -> dict[str, Any]:
        """One preprocessed image, answered from a batch (``_predict_batch``).

        ``batch_wait_timeout_s`` is spent only when company can come: another request in flight
        here, or more images on their way from the ingress (``item["company"]``: the same HTTP
        request's others, and other requests' still being decoded). A lone
        request does not wait for nobody: at concurrency 1 that wait was ~2 ms of a ~21 ms
        request (BENCHMARKS.md). Serve reads the timeout when a batch takes its first item.
        """
        self._in_flight += 1
        try:
            alone = self._in_flight == 1 and not item.get("company")
            wait = self._batching.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S)
            self._predict_batch.set_batch_wait_timeout_s(0.0 if alone else wait)
            return await self._predict_batch(item)
        finally:
            self._in_flight -= 1

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _predict_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """items: ``{"pixels": uint8 CHW, "key": config_key, "top_k": int, "company": int}``.

        An item preprocessed for another model (a swap happened between preprocessing and now)
        comes back ``{"stale": True}`` so the ingress redoes it with the current config.
        """
        predictor, key = self._ready(), self._key
        fresh = [i for i, item in enumerate(items) if item["key"] == key]
        out: list[dict[str, Any]] = [{"stale": True} for _ in items]
        if not fresh:
            return out
        import torch  # loaded with the model in __init__: a dictionary lookup here

        pixels = torch.from_numpy(np.stack([items[i]["pixels"] for i in fresh]))
        start = time.perf_counter()
        batch = predictor.from_uint8(pixels)
        # inline, not in a worker thread: torch's thread count was set on this thread, and the
        # same forward pass from a pool thread ran ~15x slower with 2 threads on 2 shared cores
        probs = predictor.probabilities(predictor.logits(batch))
        model_ms = (time.perf_counter() - start) * 1000
        self._calls += 1
        self._items += len(fresh)
        self._largest = max(self._largest, len(fresh))
        self._metrics.batch(predictor.version, probs.max(dim=1).values.tolist())
        for row, i in enumerate(fresh):
            pred = predictor.to_predictions(probs[row : row + 1], items[i]["top_k"])[0]
            out[i] = {
                "prediction": {
                    "label": pred.label,
                    "species": pred.species,
                    "confidence": pred.confidence,
                },
                "top_k": pred.top_k,
                "model_version": predictor.version,
                "batch_size": len(fresh),
                "model_ms": model_ms,
            }
        return out
