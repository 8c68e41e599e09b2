"""How the dashboard talks to Serve's HTTP API.

The dashboard loads no model. Photos go to ``POST /v1/predict`` and ``/v1/explain`` (batch
scoring is a Ray job: ``ray_jobs.py``). Answers that depend only on what was sent (a prediction, a
bad-file error) are cached with ``st.cache_data``; failures that may pass (service down, timeout,
busy, refused key) raise ``ServiceError`` instead, which Streamlit never caches, so the next
rerun tries again.

Only configured Serve URLs are spoken to, and the API key is attached only to them
(``birdray.dashboard.settings``).
"""

from __future__ import annotations

import re
from typing import Any

import requests
import streamlit as st

from birdray.dashboard.settings import Settings, api_key_for, configured_serve_urls, is_configured

API_KEY_HEADER = "X-API-Key"
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
EXPLAIN_METHODS = ("gradcam", "saliency", "integrated_gradients", "gradcam_early")  # Serve's

# Titles for the API's stable error codes; the API's own message follows in plain words.
ERROR_TITLES = {
    "empty_file": "The file is empty",
    "not_an_image": "This is not an image file",
    "unsupported_format": "This image format is not supported",
    "corrupt_image": "The image is damaged and cannot be read",
    "invalid_image": "The image cannot be read",
    "bad_dimensions": "The image has unusable dimensions",
    "image_too_large": "The image has too many pixels",
    "file_too_large": "The file is too large",
    "request_too_large": "The upload is too large",
    "unsupported_media_type": "This file type is not accepted",
}


class ServiceError(Exception):
    """No usable answer from a service; ``str()`` says what happened and what to do, in words."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def species_name(species: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross`` (CUB folder names)."""
    return re.sub(r"^\d+\.", "", species).replace("_", " ").strip() or species


def error_text(error: dict[str, Any]) -> str:
    title = ERROR_TITLES.get(error.get("code", ""), "The service could not classify this file")
    return f"{title}: {error.get('message') or error.get('code')}"


# --- Serve HTTP API ------------------------------------------------------------------------------


def _request(method: str, url: str, timeout: float, **kwargs: Any):
    """One request to a configured Serve URL (anything else is refused before connecting),
    with the API key attached and redirects not followed (they would carry the key along)."""
    base = url.split("/v1/")[0].split("/readyz")[0]
    if not is_configured(url, configured_serve_urls()):
        raise ServiceError(
            "not_configured",
            f"{base} is not a configured Serve URL; the dashboard talks only to the addresses it "
            "was started with (birdray dashboard --serve-url / --serve-urls).",
        )
    api_key = api_key_for(url)
    headers = {API_KEY_HEADER: api_key} if api_key else {}
    try:
        return requests.request(
            method, url, headers=headers, timeout=timeout, allow_redirects=False, **kwargs
        )
    except requests.Timeout as exc:
        raise ServiceError(
            "timeout",
            f"The classification service at {base} did not answer within {timeout:g} s. "
            "It may be busy: try again, or send fewer photos at once.",
        ) from exc
    except requests.RequestException as exc:
        raise ServiceError(
            "unreachable",
            f"Cannot reach the classification service at {base}. Is it running? Start it with "
            "`birdray serve`, or choose another configured Serve URL in the sidebar.",
        ) from exc


def _error_of(resp: requests.Response) -> dict[str, Any]:
    try:
        error = resp.json()["error"]
        return error if isinstance(error, dict) else {"message": str(error)}
    except (ValueError, KeyError, TypeError):
        return {"code": f"http_{resp.status_code}", "message": resp.text[:200], "file": None}


def _raise_if_service_fault(resp: requests.Response) -> None:
    """Faults of the service or of the credentials (not of a file) become ``ServiceError``."""
    if resp.status_code in (401, 403):
        raise ServiceError(
            "unauthorized",
            "The service refused the API key: start the dashboard with the service's key "
            "(birdray dashboard --api-key-env NAME).",
        )
    if resp.status_code == 429 or resp.status_code >= 500:
        error = _error_of(resp)
        raise ServiceError(
            error.get("code", "unavailable"),
            f"The classification service had a problem ({resp.status_code}): "
            f"{error.get('message', '')} Try again shortly.",
        )


class RequestRejected(Exception):
    """A several-file request refused as a whole (too big, too many): send the files one by one."""


@st.cache_data(show_spinner=False, max_entries=1024, ttl=3600)
def predict_files(
    serve_url: str, files: tuple[tuple[str, bytes], ...], top_k: int, timeout: float
) -> list[dict[str, Any]]:
    """One ``POST /v1/predict``: one result per file, in order (``ok`` or a per-file ``error``)."""
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    resp = _request(
        "POST", f"{serve_url}/v1/predict", timeout, params={"top_k": top_k}, files=parts
    )
    _raise_if_service_fault(resp)
    if resp.status_code >= 400:
        if len(files) > 1:
            raise RequestRejected(error_text(_error_of(resp)))
        return [{"file": files[0][0], "ok": False, "error": _error_of(resp)}]
    body = resp.json()
    results = body["results"]
    for result in results:
        result.setdefault("model", body.get("model", {}))
    return results


def classify(
    settings: Settings,
    files: list[tuple[str, bytes]],
    top_k: int = 5,
    per_request: int = 4,
    progress=None,
) -> list[dict[str, Any]]:
    """Results for every file, in order; a failure is reported for the files it concerns only."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), per_request):
        chunk = tuple(files[start : start + per_request])
        try:
            try:
                results += predict_files(settings.serve_url, chunk, top_k, settings.timeout_s)
            except RequestRejected:  # e.g. together too large: each file gets its own answer
                for item in chunk:
                    results += predict_files(settings.serve_url, (item,), top_k, settings.timeout_s)
        except ServiceError as exc:
            results += [{"file": name, "ok": False, "service_error": str(exc)} for name, _ in chunk]
        if progress is not None:
            progress(len(results), len(files))
    return results


@st.cache_data(show_spinner=False, max_entries=256, ttl=3600)
def explain_file(
    serve_url: str, name: str, data: bytes, method: str, timeout: float
) -> dict[str, Any]:
    """``POST /v1/explain``: overlay PNG (base64), regions and the species' part profile."""
    resp = _request(
        "POST",
        f"{serve_url}/v1/explain",
        timeout,
        params={"method": method},
        files={"file": (name, data, "application/octet-stream")},
    )
    _raise_if_service_fault(resp)
    if resp.status_code >= 400:
        raise ServiceError("explain_failed", error_text(_error_of(resp)))
    return resp.json()


class FeedbackRefused(Exception):
    """The API refused an answer (4xx: unknown species, other model version, not an image...);
    ``str()`` is its one-line reason."""


def send_feedback(
    settings: Settings,
    name: str,
    data: bytes,
    *,
    predicted: str,
    model_version: str,
    answer: str,
    note: str = "",
) -> dict[str, Any]:
    """``POST /v1/feedback``: a person's ``answer`` (a class name, ``not_a_bird`` or ``unsure``)
    about the photo ``data`` the model ``model_version`` called ``predicted``. Returns the API's
    answer (``stored``, ``sha256``, ``verdict``, ``species``). Never cached: every call stores."""
    fields = {"predicted": predicted, "model_version": model_version, "species": answer}
    if note:
        fields["note"] = note
    resp = _request(
        "POST",
        f"{settings.serve_url}/v1/feedback",
        settings.timeout_s,
        data=fields,
        files={"file": (name, data, "application/octet-stream")},
    )
    _raise_if_service_fault(resp)
    if resp.status_code >= 400:
        error = _error_of(resp)
        raise FeedbackRefused(f"{error.get('code', resp.status_code)}: {error.get('message', '')}")
    return resp.json()


@st.cache_data(show_spinner=False, ttl=10)
def service_status(serve_url: str, timeout: float = 10.0) -> dict[str, Any]:
    """``{"ready": bool, "message": str, "model": {...} | None}`` for the sidebar and pages."""
    try:
        ready = _request("GET", f"{serve_url}/readyz", timeout)
        if ready.status_code != 200:
            message = _error_of(ready).get("message", "")
            return {
                "ready": False,
                "model": None,
                "message": f"The service at {serve_url} is up but not ready: {message}",
            }
        model = _request("GET", f"{serve_url}/v1/model", timeout)
        _raise_if_service_fault(model)
    except ServiceError as exc:
        return {"ready": False, "model": None, "message": str(exc)}
    info = model.json() if model.status_code == 200 else None
    return {"ready": True, "model": info, "message": f"Connected to {serve_url}"}


@st.cache_data(show_spinner=False, ttl=5)
def rollout_status(serve_url: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """``GET /v1/rollout`` (mode, share, versions, what the ingress counted); None from a
    service without the route. ``ServiceError`` when it cannot answer (never cached)."""
    resp = _request("GET", f"{serve_url}/v1/rollout", timeout)
    _raise_if_service_fault(resp)
    if resp.status_code == 404:
        return None
    return resp.json()


def first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300].rstrip(".")
