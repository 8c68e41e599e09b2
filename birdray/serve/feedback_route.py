"""``POST /v1/feedback`` inside the ingress: check a person's answer, then store one row.

A mixin of ``BirdIngress`` (kept apart so the ingress stays readable): the answer must name the
version that was served (production, or a canary's candidate), a species of that model (or
``not_a_bird``/``unsure``, where the model has no class of that name), and an image the one decoder
accepts; a refused answer stores nothing. A store that cannot be written is 503
``feedback_unavailable`` (``Retry-After``) with a one-line reason, never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from birdray.class_names import ClassIndex
from birdray.feedback import store as feedback_store
from birdray.serve.errors import ApiError
from birdray.serve.rollout import CANDIDATE, PRODUCTION
from birdray.serve.uploads import Upload, decode_upload, shown

MAX_NOTE_CHARS = 1000
FEEDBACK_ANSWERS = (feedback_store.NOT_A_BIRD, feedback_store.UNSURE)
logger = logging.getLogger(__name__)


class FeedbackRoute:
    """Needs the ingress's ``_feedback_dir``, ``_metrics``, ``_limits``, ``_models``,
    ``_infos`` and ``_current``."""

    _feedback_dir: str | None
    _metrics: Any
    _limits: Any
    _models: dict[str, Any]
    _infos: dict[str, dict[str, Any]]

    async def _current(self, refresh: bool = False, role: str = PRODUCTION) -> dict[str, Any]:
        raise NotImplementedError

    async def feedback(self, upload: Upload, fields: dict[str, str]) -> dict[str, Any]:
        try:
            result = await self._feedback(upload, fields)
        except ApiError as exc:
            self._metrics.feedback(exc.code)
            raise
        except Exception:  # a bug: still counted (the error handler answers 500)
            self._metrics.feedback("internal_error")
            raise
        self._metrics.feedback(result["verdict"])
        return result

    async def _feedback(self, upload: Upload, fields: dict[str, str]) -> dict[str, Any]:
        """Check everything (labels against the served model, the image with the one decoder),
        then append one row; a refused answer stores nothing."""
        if self._feedback_dir is None:
            raise ApiError(404, "feedback_disabled", "this app was built without feedback_dir")
        missing = [k for k in ("predicted", "model_version", "species") if not fields.get(k)]
        if "species" in missing:  # ``not_a_bird=true`` or ``unsure=1`` are not the form
            missing[-1] = f"species (a class name, or {' or '.join(FEEDBACK_ANSWERS)})"
        if missing:
            raise ApiError(422, "missing_field", f"missing form field(s): {', '.join(missing)}")
        note = fields.get("note", "")
        if len(note) > MAX_NOTE_CHARS:
            raise ApiError(422, "note_too_long", f"note is longer than {MAX_NOTE_CHARS} characters")
        info = await self._served(fields["model_version"].strip())  # stripped as the others are
        predicted = self._class_name(fields["predicted"], info["classes"], "predicted")
        answer, is_class = self._answer(fields["species"], info["classes"])
        await asyncio.to_thread(decode_upload, upload, self._limits)
        item = feedback_store.Feedback(
            upload.data, upload.name, info["version"], predicted, answer, note, is_class
        )
        try:
            await asyncio.to_thread(feedback_store.append, self._feedback_dir, [item])
        except feedback_store.FeedbackUnavailable as exc:
            # the path and the store's own words, for the operator
            logger.warning("feedback not stored: %s: %s", exc, exc.__cause__)
            raise ApiError(
                503,
                "feedback_unavailable",
                f"the feedback store cannot take answers now ({exc.reason}); nothing was "
                "stored: retry later",
            ) from None
        return {"stored": True, "sha256": item.sha256, "verdict": item.verdict, "species": answer}

    def _answer(self, given: str, classes: list[str]) -> tuple[str, bool]:
        """The species answer and whether it is a class: a class of the model first (an
        own-photos model may have classes named not_a_bird or unsure), then the reserved
        answers in any case, then 422 (``_class_name``)."""
        index = ClassIndex.of(classes)
        text = given.strip()
        named = index.get(text) is not None or index.could_mean(text)
        if not named and text.lower() in FEEDBACK_ANSWERS:  # no class so named: the answer
            return text.lower(), False
        return self._class_name(text, classes, "species"), True

    async def _served(self, version: str) -> dict[str, Any]:
        """The info of the served model (production, or a canary's candidate) named ``version``;
        422 ``wrong_model_version`` for any other (the infos are refreshed once: a swap)."""
        roles = [r for r in (PRODUCTION, CANDIDATE) if self._models[r] is not None]
        for refresh in (False, True):
            for role in roles:
                info = await self._current(refresh, role)
                if info["version"] == version:
                    return info
        served = " or ".join(repr(self._infos[r]["version"]) for r in roles)
        raise ApiError(
            422, "wrong_model_version", f"model_version {shown(version)} is not the served {served}"
        )

    def _class_name(self, given: str, classes: list[str], what: str) -> str:
        """The served model's own spelling of ``given`` (full class name or the part after the
        number; any case when that names one class); 422 ``unknown_species`` otherwise."""
        index = ClassIndex.of(classes)
        label = index.get(given)
        if label is not None:
            return classes[label]
        could = index.could_mean(given)
        if could:
            raise ApiError(
                422,
                "unknown_species",
                f"{what} {shown(given)} could be any of {', '.join(could)} (they differ only by "
                "case or Unicode form): give the exact spelling",
            )
        answers = f" (nor {' or '.join(FEEDBACK_ANSWERS)})" if what == "species" else ""
        raise ApiError(
            422, "unknown_species", f"{what} {shown(given)} is not a class of this model{answers}"
        )
