"""The one error shape of the HTTP API: ``{"error": {"code", "message", "file"}}``.

Clients (the dashboard, scripts) branch on ``code``, a short stable word, and show ``message`` to a
person; ``file`` names the upload that caused it. Per-file errors inside a 200 response use the
same ``error`` object, so a client has one way to read a failure.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from birdray.images import ImageError

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
    504: "timeout",
}
RETRY_AFTER_S = "1"
CODE_KEY = "birdray.error_code"  # where an error handler leaves its code for the metrics

# decode_image's reasons -> (HTTP status, stable API code)
IMAGE_ERRORS: dict[str, tuple[int, str]] = {
    "empty": (400, "empty_file"),
    "not_an_image": (415, "not_an_image"),
    "unsupported_format": (415, "unsupported_format"),
    "corrupt": (422, "corrupt_image"),
    "bad_dimensions": (422, "bad_dimensions"),
    "too_large": (413, "image_too_large"),
}


class ApiError(Exception):
    """A request (or one file of it) the service refuses, with the status to answer."""

    def __init__(self, status: int, code: str, message: str, file: str | None = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.file = file

    def error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "file": self.file}

    def body(self) -> dict[str, Any]:
        return {"error": self.error()}


def from_image_error(exc: ImageError, file: str | None) -> ApiError:
    status, code = IMAGE_ERRORS.get(exc.reason, (422, "invalid_image"))
    return ApiError(status, code, exc.detail, file)


def error_response(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message, file).body(), status_code=status)


def install_error_handlers(app: FastAPI, auth_header: str) -> None:
    """Whatever FastAPI or a route raises answers in the one shape; its code is kept for metrics.

    A 401 names ``auth_header`` (the header that carries the key) in ``WWW-Authenticate``.
    """

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        request.scope[CODE_KEY] = exc.code
        headers = {"WWW-Authenticate": auth_header} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": RETRY_AFTER_S}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        request.scope[CODE_KEY] = code
        detail = str(exc.detail)
        path, root = request.scope["path"], request.scope.get("root_path", "")
        if exc.status_code == 404 and path.endswith("/"):  # no redirect: say where it is
            routes = {getattr(route, "path", "") for route in request.app.routes}
            if path.removeprefix(root).rstrip("/") in routes:
                detail = f"no route {path!r}; the route is {path.rstrip('/')!r}"
        body = ApiError(exc.status_code, code, detail).body()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)  # 405: Allow

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.scope[CODE_KEY] = "invalid_parameter"
        parts = [
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'query')}: {err.get('msg')}"
            for err in exc.errors()
        ]
        return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server failed")
