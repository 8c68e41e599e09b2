"""``BirdIngress``: the CPU HTTP front of the app (decode, validate, preprocess, fan out).

Uploads are checked and decoded here (``birdray.serve.uploads``), preprocessed with the served
model's own eval transform, and sent to ``BirdClassifier`` as float32 arrays, so model replicas
(GPUs on a cluster) only run the network. Each array carries the fingerprint of the data config
it was made with; after a model swap that changes preprocessing, the classifier refuses stale
arrays and the ingress redoes them once with the new transform.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from birdray.feedback import store as feedback_store
from birdray.model.factory import set_threads
from birdray.model.preprocess import build_transform
from birdray.serve.api import create_api
from birdray.serve.errors import ApiError
from birdray.serve.metrics import ServeMetrics
from birdray.serve.uploads import Limits, Upload, decode_upload

PROBE_SLOTS = 8  # requests Serve lets in beyond the app's own limit: probes, quick 503s
MAX_NOTE_CHARS = 1000
FEEDBACK_ANSWERS = (feedback_store.NOT_A_BIRD, feedback_store.UNSURE)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def _answer(response: DeploymentResponse, what: str) -> Any:
    """Await a deployment call; overload and absence become 503s in the API's error shape."""
    try:
        return await response
    except BackPressureError as exc:
        raise ApiError(503, "busy", f"too many {what} requests queued; retry shortly") from exc
    except DeploymentUnavailableError as exc:
        raise ApiError(503, "unavailable", f"the {what} deployment is not available") from exc


def admission_limit(limits: Limits) -> Limits:
    """``limits`` with ``max_concurrent_requests`` set: when 0, this replica's Serve
    ``max_ongoing_requests`` (as a config file may have set it) less ``PROBE_SLOTS``, so the app
    turns overload away in its JSON shape before Serve's proxy queues or drops it in plain text."""
    if limits.max_concurrent_requests:
        return limits
    # Serve has no public getter for a running replica's own options
    ongoing = serve.get_replica_context()._deployment_config.max_ongoing_requests
    return dataclasses.replace(limits, max_concurrent_requests=max(1, ongoing - PROBE_SLOTS))


def api_key_from_env(name: str | None) -> str | None:
    """The key in variable ``name`` (None: no key configured); fails closed on unset or blank.

    A named but missing key is a deployment mistake (a secret that did not mount), never a
    reason to serve ``/v1`` to anyone: the replica refuses to start and Serve reports why.
    """
    if not name:
        return None
    key = os.environ.get(name, "")
    if not key.strip():
        raise RuntimeError(
            f"api_key_env names {name}, but {name} is unset or empty in this replica: "
            "refusing to serve /v1 without an API key"
        )
    return key


@serve.deployment(name="BirdIngress", max_ongoing_requests=64)
@serve.ingress()
class BirdIngress:
    """HTTP front: validate and preprocess on CPU, then hand tensors to the model deployment."""

    def __init__(
        self,
        classifier: DeploymentHandle,
        explainer: DeploymentHandle | None,
        limits: Limits,
        api_key_env: str | None,
        feedback_dir: str | None = None,
    ):
        set_threads(1)  # transforms are small; leave the cores to the model
        self._api_key = api_key_from_env(api_key_env)
        self._classifier, self._explainer = classifier, explainer
        self._limits = admission_limit(limits)
        self._info: dict[str, Any] | None = None  # model info + its eval "transform"
        self._metrics = ServeMetrics()
        self._feedback_dir = feedback_dir or None

    def __serve_build_asgi_app__(self):
        return create_api(self, self._limits, self._api_key, recorder=self._metrics)

    async def _current(self, refresh: bool = False) -> dict[str, Any]:
        """The served model's info with its eval transform (kept together so they always match)."""
        if self._info is None or refresh:
            info = await _answer(self._classifier.info.remote(), "model")
            info["transform"] = build_transform(info["data_config"], training=False)
            self._info = info
        return self._info

    async def model_info(self) -> dict[str, Any]:
        info = await self._current(refresh=True)
        hidden = ("data_config", "config_key", "transform")
        return {k: v for k, v in info.items() if k not in hidden}

    async def readiness(self) -> dict[str, Any]:
        try:
            info = await asyncio.wait_for(self._current(refresh=True), timeout=10)
        except Exception as exc:
            raise ApiError(503, "not_ready", f"model not answering: {type(exc).__name__}") from exc
        return {"status": "ready", "model_version": info["version"]}

    def _prepare(self, upload: Upload, info: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        decoded = decode_upload(upload, self._limits)
        pixels = info["transform"](decoded.image).numpy()
        return {
            "decoded": decoded,
            "pixels": pixels,
            "key": info["config_key"],
            "decode_ms": _ms(start),
        }

    async def _classify(self, upload: Upload, top_k: int) -> dict[str, Any] | ApiError:
        result = await self._classify_one(upload, top_k)
        if isinstance(result, ApiError):
            self._metrics.image_error(result.code)
        else:
            timing = result["timing_ms"]
            self._metrics.image(
                result["model_version"],
                *(timing[k] / 1000 for k in ("decode", "queue_and_model", "total")),
            )
        return result

    async def _classify_one(self, upload: Upload, top_k: int) -> dict[str, Any] | ApiError:
        start = time.perf_counter()
        info = await self._current()
        try:
            item = await asyncio.to_thread(self._prepare, upload, info)
        except ApiError as exc:
            return exc
        for _attempt in range(2):  # a swap may change the preprocessing: redo it once
            queued = time.perf_counter()
            request = {"pixels": item["pixels"], "key": item["key"], "top_k": top_k}
            try:
                result = await _answer(self._classifier.predict.remote(request), "model")
            except ApiError as exc:
                exc.file = upload.name
                return exc
            if not result.get("stale"):
                break
            info = await self._current(refresh=True)
            item["pixels"] = info["transform"](item["decoded"].image).numpy()
            item["key"] = info["config_key"]
        else:
            return ApiError(503, "model_updating", "the model changed twice; retry", upload.name)
        decoded = item["decoded"]
        return {
            "file": upload.name,
            "ok": True,
            "prediction": result["prediction"],
            "top_k": result["top_k"],
            "model_version": result["model_version"],
            "image": {"width": decoded.width, "height": decoded.height},
            "timing_ms": {
                "decode": item["decode_ms"],
                "queue_and_model": _ms(queued),
                "total": _ms(start),
            },
        }

    async def predict(
        self, uploads: list[Upload], top_k: int
    ) -> tuple[dict[str, Any], list[dict[str, Any] | ApiError]]:
        results = await asyncio.gather(*(self._classify(u, top_k) for u in uploads))
        served = [r["model_version"] for r in results if isinstance(r, dict)]
        info = await self._current()
        if served and served[0] != info["version"]:  # the model was swapped: describe the new one
            info = await self._current(refresh=True)
        model = {"name": info["name"], "version": info["version"], "arch": info["arch"]}
        return model, list(results)

    async def feedback(self, upload: Upload, fields: dict[str, str]) -> dict[str, Any]:
        try:
            result = await self._feedback(upload, fields)
        except ApiError as exc:
            self._metrics.feedback(exc.code)
            raise
        self._metrics.feedback(result["verdict"])
        return result

    async def _feedback(self, upload: Upload, fields: dict[str, str]) -> dict[str, Any]:
        """Check everything (labels against the served model, the image with the one decoder),
        then append one row; a refused answer stores nothing."""
        if self._feedback_dir is None:
            raise ApiError(404, "feedback_disabled", "this app was built without feedback_dir")
        missing = [k for k in ("predicted", "model_version", "species") if not fields.get(k)]
        if missing:
            raise ApiError(422, "missing_field", f"missing form field(s): {', '.join(missing)}")
        note = fields.get("note", "")
        if len(note) > MAX_NOTE_CHARS:
            raise ApiError(422, "note_too_long", f"note is longer than {MAX_NOTE_CHARS} characters")
        info = await self._current()
        if fields["model_version"] != info["version"]:
            info = await self._current(refresh=True)  # the model may have been swapped
        if fields["model_version"] != info["version"]:
            raise ApiError(
                422,
                "wrong_model_version",
                f"model_version {fields['model_version']!r} is not the served {info['version']!r}",
            )
        predicted = self._class_name(fields["predicted"], info["classes"], "predicted")
        answer = fields["species"].strip()
        if answer not in FEEDBACK_ANSWERS:
            answer = self._class_name(answer, info["classes"], "species")
        await asyncio.to_thread(decode_upload, upload, self._limits)
        item = feedback_store.Feedback(
            upload.data, upload.name, info["version"], predicted, answer, note
        )
        await asyncio.to_thread(feedback_store.append, self._feedback_dir, [item])
        return {"stored": True, "sha256": item.sha256, "verdict": item.verdict, "species": answer}

    def _class_name(self, given: str, classes: list[str], what: str) -> str:
        """The served model's own spelling of ``given`` (full class name or the part after the
        number, any case); 422 ``unknown_species`` otherwise."""
        wanted = given.strip().lower()
        for name in classes:
            if wanted in (name.lower(), name.split(".", 1)[-1].lower()):
                return name
        raise ApiError(422, "unknown_species", f"{what} {given!r} is not a class of this model")

    def _target(self, target: str | None, classes: list[str]) -> int | None:
        if target is None or target == "":
            return None
        if target.isascii() and target.isdigit() and int(target) < len(classes):  # not "²"
            return int(target)
        wanted = target.lower()
        for index, name in enumerate(classes):
            if wanted in (name.lower(), name.split(".", 1)[-1].lower()):
                return index
        raise ApiError(422, "invalid_parameter", f"unknown target class {target!r}")

    async def explain(
        self, upload: Upload, method: str | None, target: str | None
    ) -> dict[str, Any]:
        if self._explainer is None:
            raise ApiError(404, "explain_disabled", "this app was built with explain=false")
        info = await self._current()
        label = self._target(target, info["classes"])
        decoded = await asyncio.to_thread(decode_upload, upload, self._limits)
        result = await _answer(
            self._explainer.explain.remote(decoded.image, method, label), "explain"
        )
        result["image"] = {"width": decoded.width, "height": decoded.height}
        return result
