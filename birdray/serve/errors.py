"""The one error shape of the HTTP API: ``{"error": {"code", "message", "file"}}``.

Clients (the dashboard, scripts) branch on ``code``, a short stable word, and show ``message`` to a
person; ``file`` names the upload that caused it. Per-file errors inside a 200 response use the
same ``error`` object, so a client has one way to read a failure.
"""

from __future__ import annotations

from typing import Any

from birdray.images import ImageError

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
