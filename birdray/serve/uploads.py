"""Bounded, in-memory multipart uploads and the per-file checks every image goes through.

The request body is read with a byte limit before parsing (a client cannot make the replica hold
more than ``max_request_bytes``), parsed by Starlette's multipart parser with spooling kept in
memory (no temp files) and its own part limits (it stops at the ``max_files + 1``-th file part,
so 20,000 tiny parts cost no more than 17), and each file is checked for declared type and size,
then decoded by ``birdray.images.decode_image`` (the one definition of a valid image), at the
scale the model needs; ``in_photo_pixels`` maps what was found on that decode back to the photo.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from birdray.images import DecodedImage, ImageError, decode_image
from birdray.serve.errors import ApiError, from_image_error

# Declared part types we accept; the real format is sniffed from the bytes by decode_image.
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
MAX_FIELDS = 8  # non-file form fields (top_k, feedback's few; more is not a client of ours)
BODY_IDLE_TIMEOUT_S = 15.0  # no byte of the body for this long: the upload has stalled (408)
_EPILOGUE = 1024  # bytes a client may send after the closing boundary (RFC 2046's epilogue)


@dataclass(frozen=True)
class Limits:
    """What one request may cost the ingress replica."""

    max_upload_bytes: int  # one file
    max_request_bytes: int  # the whole body
    max_files: int
    max_pixels: int
    max_aspect_ratio: float  # longest / shortest side; beyond it resizing explodes
    request_timeout_s: float = 50.0  # upload + decode + queue + model, then 504
    max_concurrent_requests: int = 0  # /v1 requests in progress, then 503 busy (0: no limit)


@dataclass(frozen=True)
class Upload:
    name: str
    content_type: str | None
    data: bytes


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


async def read_body(request: Request, limit: int) -> list[bytes]:
    """The raw body as received, refusing (413) as soon as it exceeds ``limit`` bytes, and (408)
    when the client sends nothing for ``BODY_IDLE_TIMEOUT_S``: an upload that stalls would hold
    its admission slot until the request's deadline. A client that goes away mid-upload is a
    499, as at any other point of the request, not an error of the server's."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "request_too_large", f"request body exceeds {_mb(limit)}")
    chunks, size, stream = [], 0, request.stream()
    try:
        while True:
            async with asyncio.timeout(BODY_IDLE_TIMEOUT_S):
                chunk = await anext(stream, None)
            if chunk is None:
                return chunks
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "request_too_large", f"request body exceeds {_mb(limit)}")
            chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the upload stalled: no bytes for {BODY_IDLE_TIMEOUT_S:g} s after {size:,}",
        ) from None
    except ClientDisconnect:
        raise ApiError(
            499, "cancelled", f"the client went away after sending {size:,} bytes"
        ) from None


async def read_uploads(request: Request, field: str, limits: Limits) -> list[Upload]:
    """Files sent under multipart ``field``; request-level problems raise ``ApiError``."""
    return (await read_form(request, field, limits))[0]


@functools.cache
def _quiet_parser() -> None:
    """python-multipart logs each malformed body's reason as a warning naming no request (one
    line per bad client in the replica's log); the 400 ``bad_multipart`` answer carries the same
    words to the client who sent it."""
    logging.getLogger("python_multipart.multipart").addFilter(
        lambda record: record.levelno > logging.WARNING
    )


def _ends_whole(chunks: deque[bytes], boundary: bytes) -> bool:
    """Whether the body holds its closing boundary within its last ``_EPILOGUE`` bytes (the
    parser keeps the parts before a cut silently), however the client chunked it. Looked for
    in the body's end, not in a copy of all of it."""
    closing, tail = b"--" + boundary + b"--", b""
    window = len(closing) + _EPILOGUE
    for chunk in reversed(chunks):
        tail = chunk[-window:] + tail
        if len(tail) >= window:
            break
    return closing in tail[-window:]


async def read_form(
    request: Request, field: str, limits: Limits
) -> tuple[list[Upload], dict[str, str]]:
    """Files under multipart ``field`` and the text fields of the form (a field sent twice with
    different values is an error, never a silent pick)."""
    _quiet_parser()
    content_type = request.headers.get("content-type", "")
    if parse_options_header(content_type)[0].lower() != b"multipart/form-data":
        got = content_type or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send images as multipart/form-data field {field!r} (got content type {got})",
        )
    pending = deque(await read_body(request, limits.max_request_bytes))
    boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
    ends_whole = _ends_whole(pending, boundary)  # judged after the parser's own errors

    async def replay():
        while pending:  # each chunk let go once parsed: the body is not held twice
            yield pending.popleft()

    parser = MultiPartParser(
        request.headers,
        replay(),
        max_files=limits.max_files,  # raises at the next file part, while parsing
        max_fields=MAX_FIELDS,
        # text fields are bounded by the body limit already read; routes check their own lengths
        # (a long feedback note is 422 note_too_long, not a parser error)
        max_part_size=limits.max_request_bytes,
    )
    parser.spool_max_size = limits.max_request_bytes + 1  # keep every part in memory
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ApiError(
                400, "too_many_files", f"more than {limits.max_files} files per request"
            ) from exc
        why = f"{exc.message} ({exc.__cause__})" if exc.__cause__ else exc.message
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {why}") from exc
    if not ends_whole:
        raise ApiError(
            400,
            "bad_multipart",
            "malformed multipart body: it ends before its closing boundary (cut off in transit?)",
        )
    files = [v for k, v in form.multi_items() if isinstance(v, UploadFile)]
    wanted = [v for k, v in form.multi_items() if k == field and isinstance(v, UploadFile)]
    if not wanted:
        other = " (got files under other fields)" if files else ""
        raise ApiError(422, "no_files", f"no files in multipart field {field!r}{other}")
    uploads = []
    for index, item in enumerate(wanted):
        data = await item.read()
        name = item.filename or f"file{index}"
        uploads.append(Upload(name, item.content_type, data))
        await item.close()
    return uploads, _texts(form.multi_items())


def _texts(items: list[tuple[str, Any]]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for key, value in items:
        if not isinstance(value, str):
            continue
        if key in texts and texts[key].strip() != value.strip():
            raise ApiError(
                422,
                "invalid_parameter",
                f"form field {key!r} sent twice: {shown(texts[key])} and {shown(value)}",
            )
        texts[key] = value
    return texts


def shown(value: str, limit: int = 60) -> str:
    """A client's value quoted in a message, cut to ``limit`` characters (a 50 KB parameter
    is not echoed back whole)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} chars)"


def check_upload(upload: Upload, limits: Limits) -> None:
    """Declared type and size of one file (before spending time decoding it)."""
    declared = (upload.content_type or "").lower()
    if declared and not declared.startswith(ACCEPTED_PART_TYPES):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"declared content type {upload.content_type!r} is not an image type",
            upload.name,
        )
    if len(upload.data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            "file_too_large",
            f"{_mb(len(upload.data))} exceeds the {_mb(limits.max_upload_bytes)} per-file limit",
            upload.name,
        )


def decode_upload(upload: Upload, limits: Limits, min_side: int = 0) -> DecodedImage:
    """Checked, decoded RGB image; every failure is an ``ApiError`` naming the file, never a 500.

    ``min_side``: a JPEG may decode at a smaller scale down to this side (``decode_side`` of the
    model that will see it; ``decode_image``)."""
    check_upload(upload, limits)
    try:
        return decode_image(
            upload.data,
            max_pixels=limits.max_pixels,
            min_side=min_side,
            max_aspect=limits.max_aspect_ratio,
        )
    except ImageError as exc:
        raise from_image_error(exc, upload.name) from exc
    except Exception as exc:  # a decoder bug on hostile bytes is still the file's fault
        raise ApiError(422, "corrupt_image", f"cannot decode: {exc}", upload.name) from exc


def in_photo_pixels(result: dict[str, Any], decoded: DecodedImage) -> dict[str, Any]:
    """An explanation of ``decoded.image`` with its regions (boxes, peaks) and located parts in
    the photo's own pixels; the overlays keep the size explained (``at_model_scale``), which
    ``overlay_size`` gives."""
    shown = decoded.image
    sx, sy = decoded.width / shown.width, decoded.height / shown.height
    result["overlay_size"] = {"width": shown.width, "height": shown.height}
    if (sx, sy) == (1.0, 1.0):
        return result

    def scaled(v: float, s: float, limit: int) -> float:
        return min(limit, round(v * s)) if isinstance(v, int) else min(limit, v * s)

    for region in result.get("regions") or []:
        x1, y1 = region["x"] + region["w"], region["y"] + region["h"]
        region["x"], region["y"] = (
            scaled(region["x"], sx, decoded.width),
            scaled(region["y"], sy, decoded.height),
        )
        region["w"] = scaled(x1, sx, decoded.width) - region["x"]
        region["h"] = scaled(y1, sy, decoded.height) - region["y"]
        if "peak" in region:
            peak = region["peak"]
            peak["x"], peak["y"] = (
                scaled(peak["x"], sx, decoded.width - 1),
                scaled(peak["y"], sy, decoded.height - 1),
            )
    for part in (result.get("parts") or {}).get("located") or []:
        part["x"], part["y"] = (
            scaled(part["x"], sx, decoded.width),
            scaled(part["y"], sy, decoded.height),
        )
    return result
