"""``BirdIngress``: the CPU HTTP front of the app (decode, validate, preprocess, fan out).

Uploads are checked and decoded here (``birdray.serve.uploads``), preprocessed with the served
model's own eval transform, and sent to ``BirdClassifier`` as uint8 arrays, so model replicas
(GPUs on a cluster) only run the network. Each array carries the fingerprint of the data config
it was made with; after a model swap that changes preprocessing, the classifier refuses stale
arrays and the ingress redoes them once with the new transform.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from birdray.images import DecodedImage
from birdray.serve.api import CLIENT_KEY_HEADER, create_api
from birdray.serve.classifier import BirdClassifier
from birdray.serve.errors import ApiError
from birdray.serve.explain_request import at_model_scale, target_label
from birdray.serve.feedback_route import FeedbackRoute
from birdray.serve.metrics import ServeMetrics
from birdray.serve.replica import InProcess, admission_limit, answer, api_key_from_env
from birdray.serve.rollout import (
    CANDIDATE,
    PRODUCTION,
    Rollout,
    Tally,
    agreement,
)
from birdray.serve.uploads import Limits, Upload, decode_upload, in_photo_pixels


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


@serve.deployment(name="BirdIngress", max_ongoing_requests=64)
@serve.ingress()
class BirdIngress(FeedbackRoute):
    """HTTP front: validate and preprocess on CPU, then hand tensors to the model deployment."""

    def __init__(
        self,
        classifier: DeploymentHandle,
        explainer: DeploymentHandle | None,
        limits: Limits,
        api_key_env: str | None,
        feedback_dir: str | None = None,
        candidate: DeploymentHandle | None = None,
        model: dict[str, Any] | None = None,
        candidate_explainer: DeploymentHandle | None = None,
    ):
        self._local = None  # with a model deployment: no torch here (``uint8_eval_transform``)
        if model is not None:  # colocated: BirdClassifier's own code, batching here, inline
            self._local = BirdClassifier.func_or_class(**model)
            classifier = InProcess(self._local)
        self._api_key = api_key_from_env(api_key_env)
        self._classifier, self._explainer = classifier, explainer
        self._models = {PRODUCTION: classifier, CANDIDATE: candidate}
        # an explainer per model version served; a canary's candidate may have none (then its
        # clients' explanations come from production's, and say so: ``explain``)
        self._explainers = {PRODUCTION: explainer, CANDIDATE: candidate_explainer}
        self._limits = admission_limit(limits)
        self._infos: dict[str, dict[str, Any]] = {}  # per role: model info + its "transform"
        self._metrics = ServeMetrics()
        self._feedback_dir = feedback_dir or None
        # off until reconfigure() applies the user_config (Serve calls it before the first request)
        self._rollout = Rollout(has_candidate=candidate is not None)
        self._tally = Tally()
        self._background: set[asyncio.Task] = set()  # shadow calls in flight (kept referenced)
        # images being decoded here that will reach a model soon: the company worth a batch wait
        self._on_the_way = 0

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``rollout`` (off | shadow | canary) and ``rollout_share``, live;
        colocated, also the model's batch knobs and reference (``BirdClassifier.reconfigure``)."""
        self._rollout.reconfigure(config)
        if self._local is not None:
            await self._local.reconfigure(config)

    def __serve_build_asgi_app__(self):
        return create_api(self, self._limits, self._api_key, recorder=self._metrics)

    async def _current(self, refresh: bool = False, role: str = PRODUCTION) -> dict[str, Any]:
        """A model's info with its eval transform (kept together so they always match)."""
        if role not in self._infos or refresh:
            from birdray.model.crop import decode_side, uint8_eval_transform

            info = await answer(self._models[role].info.remote(), "model")
            info["transform"] = uint8_eval_transform(info["data_config"])
            info["decode_side"] = decode_side(info["data_config"])
            self._infos[role] = info
        return self._infos[role]

    async def model_stats(self) -> dict[str, Any]:
        """The production model's counters (``BirdClassifier.stats``), wherever it runs."""
        return await answer(self._models[PRODUCTION].stats.remote(), "model")

    async def model_info(self) -> dict[str, Any]:
        info = await self._current(refresh=True)
        hidden = ("data_config", "config_key", "transform", "decode_side")
        return {k: v for k, v in info.items() if k not in hidden}

    async def rollout(self) -> dict[str, Any]:
        """``GET /v1/rollout``: mode, share, the two versions, and what this replica counted."""
        versions = {PRODUCTION: (await self._current(refresh=True))["version"]}
        if self._models[CANDIDATE] is not None:
            versions[CANDIDATE] = (await self._current(True, CANDIDATE))["version"]
        return {
            "mode": self._rollout.mode,
            "share": self._rollout.share,
            "versions": versions,
            "client_key_header": CLIENT_KEY_HEADER,
            **self._tally.snapshot(),
        }

    async def readiness(self) -> dict[str, Any]:
        try:
            info = await asyncio.wait_for(self._current(refresh=True), timeout=10)
        except Exception as exc:
            raise ApiError(503, "not_ready", f"model not answering: {type(exc).__name__}") from exc
        return {"status": "ready", "model_version": info["version"]}

    def _prepare(
        self, upload: Upload, info: dict[str, Any], decoded: DecodedImage | None = None
    ) -> dict[str, Any]:
        start = time.perf_counter()
        side = info["decode_side"]
        # a shadow call reuses production's decode, unless its model needs more pixels than that
        if decoded is None or min(decoded.image.size) < min(side, decoded.width, decoded.height):
            decoded = decode_upload(upload, self._limits, side)
        pixels = info["transform"](decoded.image)
        return {
            "decoded": decoded,
            "pixels": pixels,
            "key": info["config_key"],
            "decode_ms": _ms(start),
        }

    async def _classify(
        self, upload: Upload, top_k: int, role: str
    ) -> tuple[dict[str, Any] | ApiError, DecodedImage | None]:
        result, decoded = await self._classify_one(upload, top_k, role)
        if isinstance(result, ApiError):
            self._metrics.image_error(result.code)
        else:
            timing = result["timing_ms"]
            self._metrics.image(
                result["model_version"],
                *(timing[k] / 1000 for k in ("decode", "queue_and_model", "total")),
            )
        return result, decoded

    async def _classify_one(
        self,
        upload: Upload,
        top_k: int,
        role: str = PRODUCTION,
        decoded: DecodedImage | None = None,
    ) -> tuple[dict[str, Any] | ApiError, DecodedImage | None]:
        """One image through ``role``'s model; also the decoded image (a shadow call reuses it).

        Each request to the model says how many other images are on their way to it from here
        (this request's others, and other requests' still decoding): the model replica spends
        its batch wait only when company can come. Counting only the request's own images, 16
        concurrent clients on a busy machine reached the model one by one, each "alone", and
        were answered in 9 model calls instead of a few batches.
        """
        start = time.perf_counter()
        self._on_the_way += 1
        sent = False
        try:
            info = await self._current(role=role)
            try:
                item = await asyncio.to_thread(self._prepare, upload, info, decoded)
            except ApiError as exc:
                return exc, None
            for _attempt in range(2):  # a swap may change the preprocessing: redo it once
                queued = time.perf_counter()
                request = {
                    "pixels": item["pixels"],
                    "key": item["key"],
                    "top_k": top_k,
                    "company": self._on_the_way - (0 if sent else 1),
                }
                call = self._models[role].predict.remote(request)
                if not sent:  # at the model now: no longer company for the others
                    self._on_the_way -= 1
                    sent = True
                try:
                    result = await answer(call, "model")
                except ApiError as exc:
                    exc.file = upload.name
                    return exc, item["decoded"]
                if not result.get("stale"):
                    break
                info = await self._current(refresh=True, role=role)
                item = await asyncio.to_thread(self._prepare, upload, info, item["decoded"])
            else:
                error = ApiError(
                    503, "model_updating", "the model changed twice; retry", upload.name
                )
                return error, item["decoded"]
        finally:
            if not sent:
                self._on_the_way -= 1
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
        }, decoded

    async def predict(
        self, uploads: list[Upload], top_k: int, client_key: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any] | ApiError]]:
        """Every image of a request goes to one model: production, or the canary's candidate."""
        role, mode = self._rollout.answering(client_key), self._rollout.mode
        pairs = await asyncio.gather(*(self._classify(u, top_k, role) for u in uploads))
        results = [r for r, _ in pairs]
        answered = [r for r in results if isinstance(r, dict)]
        info = await self._current(role=role)
        if answered and answered[0]["model_version"] != info["version"]:  # swapped: describe it
            info = await self._current(refresh=True, role=role)
        model = {"name": info["name"], "version": info["version"], "arch": info["arch"]}
        if answered:
            self._metrics.routed(mode, role, model["version"])
            confidences = [r["prediction"]["confidence"] for r in answered]
            self._tally.answer(model["version"], role, confidences)
        if role == PRODUCTION and answered and self._rollout.shadowed():
            for upload, (result, decoded) in zip(uploads, pairs, strict=True):
                if isinstance(result, dict):
                    self._spawn(self._shadow(upload, top_k, result, decoded))
        return model, results

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(
        self, upload: Upload, top_k: int, answer: dict[str, Any], decoded: DecodedImage | None
    ) -> None:
        """The candidate's answer to an image production already answered, compared and
        counted; never seen by the client, and a failure here only counts as ``failed``."""
        production = answer["model_version"]
        try:
            shadow, _ = await self._classify_one(upload, top_k, CANDIDATE, decoded)
            if isinstance(shadow, ApiError):
                raise shadow
            candidate = shadow["model_version"]
        except Exception:
            candidate = self._infos.get(CANDIDATE, {}).get("version", "unknown")
            self._metrics.shadow(production, candidate, "failed", None)
            self._tally.shadow(production, candidate, None, 0.0, 0.0)
            return
        same, delta = agreement(answer, shadow)
        self._metrics.shadow(production, candidate, "agree" if same else "disagree", delta)
        conf = float(shadow["prediction"]["confidence"])
        self._tally.shadow(production, candidate, same, delta, conf)

    def _target(self, target: str | None, classes: list[str]) -> int | None:
        return target_label(target, classes)

    async def explain(
        self,
        upload: Upload,
        method: str | None,
        target: str | None,
        client_key: str | None = None,
    ) -> dict[str, Any]:
        """The explanation of the answer ``/v1/predict`` gives this client: the model the
        rollout picks for ``client_key`` (``Rollout.answering``, the one routing decision), or,
        when that is a candidate with no explainer deployed, production's, and ``rollout`` in
        the answer says which version is explained and why."""
        if self._explainers[PRODUCTION] is None:
            raise ApiError(404, "explain_disabled", "this app was built with explain=false")
        role, mode = self._rollout.answering(client_key), self._rollout.mode
        explained = role if self._explainers[role] is not None else PRODUCTION
        info = await self._current(role=explained)
        label = self._target(target, info["classes"])
        # the same decode as /v1/predict (a large JPEG at the scale the model needs), then no
        # more pixels than the model's resize keeps: the model sees /v1/predict's pixels (same
        # confidence) and the explainer's cost is bounded by the model's input, not the photo;
        # regions and parts come back in the photo's pixels
        decoded = await asyncio.to_thread(self._decode_for_explainer, upload, info)
        result = await answer(
            self._explainers[explained].explain.remote(decoded.image, method, label), "explain"
        )
        result["image"] = {"width": decoded.width, "height": decoded.height}
        result["rollout"] = await self._explained_for(role, explained, mode, client_key, result)
        return in_photo_pixels(result, decoded)

    def _decode_for_explainer(self, upload: Upload, info: dict[str, Any]) -> DecodedImage:
        decoded = decode_upload(upload, self._limits, info["decode_side"])
        return at_model_scale(decoded, info["data_config"], info["decode_side"])

    async def _explained_for(
        self, role: str, explained: str, mode: str, client_key: str | None, result: dict
    ) -> dict[str, Any]:
        """Which model ``/v1/predict`` answers this request with, which one was explained, and
        why they differ when they do."""
        version = result["model_version"]
        answering = version
        if role != explained:
            answering = (await self._current(role=role))["version"]
        block: dict[str, Any] = {
            "mode": mode,
            "predict": {"role": role, "model_version": answering},
            "explained": {"role": explained, "model_version": version},
            "same_model": role == explained,
        }
        if role != explained:
            who = (
                f"this client's ({CLIENT_KEY_HEADER}) /v1/predict answers come"
                if client_key
                else f"this request (no {CLIENT_KEY_HEADER}: drawn at random) would be answered"
            )
            block["note"] = (
                f"{who} from the {mode}'s candidate {answering}, which has no explainer "
                f"deployed: this explains production {version}, whose answer may differ"
            )
        return block
