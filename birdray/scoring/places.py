"""Where scoring may write: an ``--output`` compared with its ``--input``, and bucket URIs
spelt as the store resolves them (``s3://b//x``, ``s3://b/./x`` and ``s3://b/x`` name one prefix).
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

from birdray import storage

CREDENTIALS_IN_NETLOC = ("s3", "gs", "gcs")


def bucket_key(uri: str) -> tuple[str, str, tuple[str, ...]]:
    """``uri`` as (scheme, bucket, key segments): ``s3://b//x``, ``s3://b/./x/`` and ``s3://B/x``
    are ``s3://b/x``. ``..`` drops the segment before it, as the HTTP layer did (``s3://b/y/../x``
    wrote ``x``); one climbing out of the bucket is a ``ValueError``."""
    parts = urlsplit(uri)
    segments: list[str] = []
    for segment in unquote(parts.path).split("/"):  # pyarrow decodes the path before the key
        if segment in ("", "."):
            continue
        if segment != "..":
            segments.append(segment)
        elif segments:
            segments.pop()
        else:
            raise ValueError(f"{uri} climbs out of its bucket with '..'")
    scheme, bucket = parts.scheme.lower(), parts.netloc
    if scheme in CREDENTIALS_IN_NETLOC:  # s3://key:secret@b: the credentials are no part of it
        bucket = bucket.rpartition("@")[2].lower()  # (abfs://container@account: they are)
    return scheme, bucket, tuple(segments)


def odd_bucket_path(uri: str) -> str:
    """Why a bucket URI must be written otherwise ('' when it is fine): an empty, ``.`` or ``..``
    segment names the same objects as the plain spelling, but the job compares its output with
    the listing's (normalised) paths, so ``s3://b/./photos/scored`` under ``s3://b/photos`` was
    not left out of the listing and a rerun scored its own results."""
    if not storage.is_remote(uri):
        return ""
    parts = urlsplit(uri)
    path = unquote(parts.path).rstrip("/")  # %2E and %2F%2F are what the store sees: . and //
    if not any(seg in ("", ".", "..") for seg in path.split("/")[1:]):
        return ""
    try:
        segments = bucket_key(uri)[2]
    except ValueError as exc:
        return str(exc)
    query = f"?{parts.query}" if parts.query else ""  # an endpoint_override stays
    plain = f"{parts.scheme}://{parts.netloc}/{quote('/'.join(segments))}{query}"
    return f"{uri}: write it as {plain}"


def clash(output: str, input_: str) -> str:
    """Why ``output`` cannot hold results for ``input_`` ('' when it can): the input folder itself,
    or a folder that holds it (compared resolved, links too; bucket URIs as ``bucket_key`` spells
    them). A subfolder of the input is fine: the listing leaves it out."""
    try:
        out_key = bucket_key(output) if storage.is_remote(output) else None
        if storage.is_remote(output) != storage.is_remote(input_):
            return ""
        in_key = bucket_key(input_) if out_key else None
    except ValueError as exc:
        return str(exc)
    if out_key and in_key:
        same = out_key == in_key
        holds = out_key[:2] == in_key[:2] and in_key[2][: len(out_key[2])] == out_key[2]
    else:
        out_path = storage.local_path(output).resolve()
        in_path = storage.local_path(input_).resolve()
        same, holds = out_path == in_path, out_path in in_path.parents
    if same:
        return "must not be the --input folder itself (use a subfolder)"
    if holds:
        return f"{output} holds --input {input_}; choose a folder outside it (or a subfolder of it)"
    return ""
