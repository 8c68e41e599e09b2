"""The HTTP API (FastAPI): routes, API key, and one JSON error shape for every failure.

``create_api`` builds the app around a ``Service`` (the Serve ingress implements it), so the HTTP
contract lives in one place and knows nothing of Ray. Routes are versioned under ``/v1`` and
documented by FastAPI's OpenAPI (``/docs``); ``/healthz`` and ``/readyz`` stay unauthenticated for
probes. Anything that goes wrong answers ``{"error": {"code", "message", "file"}}``, overload and
slow requests included: beyond ``max_concurrent_requests`` a ``/v1`` request is answered 503
``busy`` at once (before its body is read), and one that takes longer than ``request_timeout_s``
(a slow upload, a long queue) 504 ``timeout``; Serve's own proxy limits sit behind these as a
backstop and answer in plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Query, Request, Response

from birdray.serve.errors import CODE_KEY, HTTP_CODES, ApiError, install_error_handlers
from birdray.serve.uploads import Limits, Upload, read_form, shown

API_KEY_HEADER = "X-API-Key"
CLIENT_KEY_HEADER = "X-Client-Key"  # optional client id: a canary keeps each client on one model
VERSION_HEADER = "X-Model-Version"  # the version that answered
METHODS = ("gradcam", "saliency", "integrated_gradients", "gradcam_early")


OWS = " \t"  # the whitespace HTTP allows around a field value (RFC 9110 5.6.3)
DEFAULT_TOP_K = 5
MAX_TOP_K = 1000


def form_or_query(request: Request, texts: dict[str, str], name: str) -> str | None:
    """A parameter from the query or a form text field (HTML forms and many clients send the
    latter); sent twice with different values (in the URL, the form, or one of each) is an
    error, never a silent pick. An empty (or blank) value is not sent, wherever it is: an HTML
    form's untouched field sends ``top_k=``, which means the default, alone or beside a value."""
    given = request.query_params.getlist(name) + ([texts[name]] if name in texts else [])
    values = [value for value in given if value.strip()]
    if len({value.strip() for value in values}) > 1:
        raise ApiError(
            422,
            "invalid_parameter",
            f"{name} sent {'twice' if len(values) == 2 else f'{len(values)} times'} with "
            "different values: " + ", ".join(shown(value) for value in values[:3]),
        )
    return values[0] if values else None


def parse_top_k(value: str | None) -> int:
    if value is None:
        return DEFAULT_TOP_K
    digits = value.strip()  # ASCII digits only: int() also reads '1_000', '+3' and '٣'
    whole = digits.isascii() and digits.isdigit() and len(digits) <= 8
    if not (whole and 1 <= int(digits) <= MAX_TOP_K):
        raise ApiError(
            422,
            "invalid_parameter",
            f"top_k must be a whole number 1-{MAX_TOP_K} (got {shown(value)}); leave it out, or "
            f"empty, for {DEFAULT_TOP_K}",
        )
    return int(digits)


class Service(Protocol):
    """What the routes need from the deployment behind them."""

    async def model_info(self) -> dict[str, Any]: ...

    async def readiness(self) -> dict[str, Any]: ...

    async def predict(
        self, uploads: list[Upload], top_k: int, client_key: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any] | ApiError]]: ...

    async def rollout(self) -> dict[str, Any]: ...

    async def explain(
        self, upload: Upload, method: str | None, target: str | None, client_key: str | None = None
    ) -> dict[str, Any]: ...

    async def feedback(self, upload: Upload, fields: dict[str, str]) -> dict[str, Any]: ...


class Recorder(Protocol):
    """Where the HTTP layer reports what it served (``birdray.serve.metrics.ServeMetrics``)."""

    def request(self, route: str, status: int, code: str, seconds: float) -> None: ...

    def upload(self, route: str, seconds: float) -> None: ...


class _Recording:
    """ASGI middleware: one ``Recorder.request`` per HTTP request, with its route template (not
    the raw path, which a scanner could make unbounded), status and error code."""

    def __init__(self, app: Any, recorder: Recorder):
        self.app, self.recorder = app, recorder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            scope[CODE_KEY], status = "cancelled", 499  # the client went away (nginx's 499)
            raise
        except BaseException:
            status = 500  # re-raised to Starlette's last-resort handler, which answers 500
            raise
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            if status >= 500 and CODE_KEY not in scope:
                code = "internal_error" if status == 500 else HTTP_CODES.get(status, "http_error")
            else:
                code = scope.get(CODE_KEY, "ok" if status < 400 else "http_error")
            self.recorder.request(route, status, code, time.perf_counter() - start)


FEEDBACK_FIELDS = {
    "predicted": "the species the prediction named",
    "model_version": "the model_version of that prediction",
    "species": "the right species, or not_a_bird, or unsure",
    "note": "optional free text",
}


def _multipart_body(field: str, many: bool, texts: dict[str, str] | None = None) -> dict[str, Any]:
    """OpenAPI description of a multipart upload (the body is parsed by hand, with limits)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    properties: dict[str, Any] = {field: schema}
    properties.update({k: {"type": "string", "description": v} for k, v in (texts or {}).items()})
    required = [field, *(k for k in texts or {} if k != "note")]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        }
    }


def _admission(limits: Limits):
    """An async context for one ``/v1`` request: a slot among ``max_concurrent_requests`` (503
    ``busy`` when none is free) and the ``request_timeout_s`` deadline (504 ``timeout``)."""
    active = 0

    @contextlib.asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        nonlocal active
        if 0 < limits.max_concurrent_requests <= active:
            raise ApiError(503, "busy", "too many requests in progress; retry shortly")
        active += 1
        try:
            async with asyncio.timeout(limits.request_timeout_s):
                yield
        except TimeoutError as exc:
            raise ApiError(
                504, "timeout", f"the request took longer than {limits.request_timeout_s:g} s"
            ) from exc
        finally:
            active -= 1

    return admitted


def create_api(
    service: Service,
    limits: Limits,
    api_key: str | None = None,
    recorder: Recorder | None = None,
) -> FastAPI:
    """The FastAPI app for ``service``; requests to ``/v1`` need ``X-API-Key`` when a key is set.

    ``recorder`` (optional) is told about every request: route, status, error code, latency.

    A key that is set must be non-blank: an empty key would let every request in (fail closed).
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty: refusing to build an app that lets anyone in")
    admitted = _admission(limits)
    app = FastAPI(
        title="birdray",
        version="1",
        description="Bird species from photos: calibrated top-k predictions and explanations.",
        redirect_slashes=False,  # its 307 named a host taken from the request's Host header
    )
    install_error_handlers(app, auth_header=API_KEY_HEADER)
    if recorder is not None:
        app.add_middleware(_Recording, recorder=recorder)

    async def read_all(request: Request, field: str) -> tuple[list[Upload], dict[str, str]]:
        start = time.perf_counter()
        uploads, texts = await read_form(request, field, limits)
        if recorder is not None:
            recorder.upload(request.scope["route"].path, time.perf_counter() - start)
        return uploads, texts

    expected = None if api_key is None else api_key.strip(OWS).encode()

    async def authorized(request: Request) -> None:
        if expected is None:
            return
        # decoded as Latin-1: its bytes again. Spaces and tabs around a field value are not
        # part of it (RFC 9110 5.5): HAProxy drops them, Serve's proxy did not (401 there only)
        sent = request.headers.get(API_KEY_HEADER, "").strip(OWS)
        if not hmac.compare_digest(sent.encode("latin-1"), expected):
            raise ApiError(401, "unauthorized", f"missing or wrong {API_KEY_HEADER} header")

    probe = ["GET", "HEAD"]  # uptime checkers and load balancers often probe with HEAD

    @app.api_route("/healthz", methods=probe, summary="The HTTP server is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route(
        "/readyz", methods=probe, summary="A model is loaded and answering (503 otherwise)"
    )
    async def readyz() -> dict[str, Any]:
        return await service.readiness()

    @app.api_route(  # HEAD too: a GET resource (RFC 9110 9.3.2), 405 before
        "/v1/model", methods=probe, summary="The served model", dependencies=[Depends(authorized)]
    )
    async def model() -> dict[str, Any]:
        return await service.model_info()

    @app.api_route(
        "/v1/rollout",
        methods=probe,
        summary="Rollout mode, share, production and candidate versions, what was compared",
        dependencies=[Depends(authorized)],
    )
    async def rollout() -> dict[str, Any]:
        return await service.rollout()

    @app.post(
        "/v1/predict",
        summary="Top-k species with calibrated probabilities for one or more images",
        description=f"Send `{CLIENT_KEY_HEADER}` (any stable client id) to stay on one model "
        f"during a canary rollout; `{VERSION_HEADER}` says which version answered.",
        dependencies=[Depends(authorized)],
        openapi_extra=_multipart_body("files", many=True),
    )
    async def predict(
        request: Request,
        response: Response,
        top_k: str | None = Query(
            None,
            description=f"species per image, 1-{MAX_TOP_K} (default {DEFAULT_TOP_K}); "
            "also read from a form field",
        ),
    ) -> dict[str, Any]:
        async with admitted():
            uploads, texts = await read_all(request, "files")
            top_k_n = parse_top_k(form_or_query(request, texts, "top_k"))
            client = request.headers.get(CLIENT_KEY_HEADER) or None
            model_block, results = await service.predict(uploads, top_k_n, client)
        response.headers[VERSION_HEADER] = model_block["version"]
        if len(uploads) == 1 and isinstance(results[0], ApiError):
            raise results[0]
        return {
            "model": model_block,
            "results": [
                {"file": r.file, "ok": False, "error": r.error()} if isinstance(r, ApiError) else r
                for r in results
            ],
        }

    @app.post(
        "/v1/explain",
        summary="Attribution map with part labels, the parts behind the answer, why not the "
        "runner-up, the species' part profile, and whether the method is reliable for this model",
        dependencies=[Depends(authorized)],
        openapi_extra=_multipart_body("file", many=False),
    )
    async def explain(
        request: Request,
        method: str | None = Query(
            None,
            description=" | ".join(METHODS) + "; default: the model's measured best "
            "(also read from a form field)",
        ),
        target: str | None = Query(
            None,
            description="species name, its number (001) or a label as /v1/predict returns it; "
            "default: predicted (or a form field)",
        ),
    ) -> dict[str, Any]:
        if method and method.strip() and method not in METHODS:  # before reading the body
            raise ApiError(422, "invalid_parameter", f"method must be one of {', '.join(METHODS)}")
        async with admitted():
            uploads, texts = await read_all(request, "file")
            method = form_or_query(request, texts, "method")
            target = form_or_query(request, texts, "target")
            if method is not None and method not in METHODS:
                raise ApiError(
                    422, "invalid_parameter", f"method must be one of {', '.join(METHODS)}"
                )
            if len(uploads) != 1:
                raise ApiError(400, "too_many_files", "send exactly one image as field 'file'")
            client = request.headers.get(CLIENT_KEY_HEADER) or None  # predict's model for it
            return await service.explain(uploads[0], method, target, client)

    @app.post(
        "/v1/feedback",
        summary="Say whether a prediction was right (stored for retraining; 404 when disabled)",
        dependencies=[Depends(authorized)],
        openapi_extra=_multipart_body("file", many=False, texts=FEEDBACK_FIELDS),
    )
    async def feedback(request: Request) -> dict[str, Any]:
        async with admitted():
            uploads, texts = await read_all(request, "file")
            if len(uploads) != 1:
                raise ApiError(400, "too_many_files", "send exactly one image as field 'file'")
            return await service.feedback(uploads[0], texts)

    return app
