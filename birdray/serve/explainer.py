"""``BirdExplainer``: attribution maps from the exact model version that serves predictions.

A separate deployment with a small ``max_ongoing_requests`` and a bounded queue, so slow
explanations (Integrated Gradients takes seconds on CPU) never starve ``/v1/predict``: excess
explain requests are refused with 503 instead of piling up. It follows the same ``user_config``
model reference as ``BirdClassifier``, so a swap moves both. A request that names no method gets
the one ``explain-eval`` measured best for this model (``explain/methods.json`` in the package,
``gradcam`` when it was never evaluated), so a swap moves the default too. The answer comes in
parts (``explain/answer.py``): located parts, "why not the runner-up", and whether explain-eval
found the method faithful for this model.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from PIL import Image
from ray import serve

from birdray.registry.ref import ModelRef
from birdray.serve.classifier import load_predictor
from birdray.serve.metrics import ServeMetrics

if TYPE_CHECKING:  # torch and timm load in the replica, not in the driver
    from birdray.model.inference import Predictor


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars and arrays become Python numbers and lists)."""
    return json.loads(json.dumps(value, default=_jsonable))


@serve.deployment(name="BirdExplainer", max_ongoing_requests=2, max_queued_requests=8)
class BirdExplainer:
    """Runs ``birdray.explain.explain`` on the served package's model, one image at a time."""

    def __init__(
        self,
        model: ModelRef,
        device: str | None = None,
        torch_threads: int = 1,
    ):
        self._device, self._threads = device, torch_threads
        self._ref: ModelRef | None = None
        self._predictor: Predictor | None = None
        self._profiles: dict[str, Any] | None = None
        self._locator: dict[str, Any] | None = None
        self._comparison: dict[str, Any] | None = None
        self._method = "gradcam"
        self._metrics = ServeMetrics()
        self._swap(model)  # ready without a user_config; one naming another model swaps it

    def _swap(self, ref: ModelRef) -> None:
        from birdray.explain import METHODS, load_part_profiles
        from birdray.explain.compare import default_method, load_comparison
        from birdray.explain.locate import load_part_locator

        # Captum hooks want plain NCHW modules: no channels_last conversion here
        predictor = load_predictor(ref, self._device, self._threads, False, False)
        path = predictor.package.path
        profiles, locator = load_part_profiles(path), load_part_locator(path)
        method = default_method(path, METHODS)  # the measured best
        self._predictor, self._profiles, self._ref = predictor, profiles, ref
        self._locator, self._comparison = locator, load_comparison(path)
        self._method = method

    async def reconfigure(self, config: dict[str, Any]) -> None:
        ref = ModelRef.from_config(config, self._ref)
        if ref != self._ref:
            await asyncio.to_thread(self._swap, ref)

    @property
    def default_method(self) -> str:
        """The method used when a request names none (the package's measured best)."""
        return self._method

    def check_health(self) -> None:
        if self._predictor is None:
            raise RuntimeError("model not loaded yet")

    def _explain(self, image: Image.Image, method: str, target: int | None) -> dict[str, Any]:
        """``method`` is already resolved (``explain`` fills in the default)."""
        from birdray.explain import explain, species_profile
        from birdray.explain.answer import answer_in_parts
        from birdray.model.factory import set_threads

        set_threads(self._threads)  # torch's thread setting is per OS thread: set it here too
        predictor, profiles = self._predictor, self._profiles
        assert predictor is not None
        meta = predictor.metadata
        names = meta.class_names
        start = time.perf_counter()
        result = explain(
            predictor.model,
            meta.data_config,
            image,
            method=method,
            target=target,
            temperature=float(meta.temperature or 1.0),
        )
        explained, predicted = int(result.target), int(result.predicted)
        answer = answer_in_parts(
            predictor.model, meta.data_config, image, result, names, self._locator, profiles,
            self._comparison,
        )  # fmt: skip
        return {
            "model_version": predictor.version,
            "method": method,
            "default_method": self._method,
            "target": {"label": explained, "species": names[explained]},
            "prediction": {
                "label": predicted,
                "species": names[predicted],
                "confidence": result.confidence,
            },
            "overlay_png_base64": answer["overlay_png_base64"],
            "regions": _plain(result.regions(k=3)),
            "parts": _plain(answer["parts"]),
            "contrast": _plain(answer["contrast"]),
            "reliability": answer["reliability"],
            "part_profile": _plain(species_profile(profiles, explained)),
            "timing_ms": {"explain": (time.perf_counter() - start) * 1000},
        }

    async def explain(
        self, image: Image.Image, method: str | None, target: int | None
    ) -> dict[str, Any]:
        self.check_health()
        method = method or self._method
        start = time.perf_counter()
        try:
            result = await asyncio.to_thread(self._explain, image, method, target)
        except Exception:
            self._metrics.explanation(method, "error", time.perf_counter() - start)
            raise
        self._metrics.explanation(method, "ok", time.perf_counter() - start)
        return result
