"""Serve pieces that need no cluster: model pinning, args checking, upload checks, serve build."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from starlette.requests import Request

from birdray.config import ConfigError
from birdray.serve.api import create_api
from birdray.serve.app import REPLICA_LOOP_ENV, build_app
from birdray.serve.errors import ApiError
from birdray.serve.ingress import BirdIngress
from birdray.serve.replica import api_key_from_env
from birdray.serve.uploads import Limits, Upload, decode_upload, read_uploads
from tests.model_fixture import make_package
from tests.serve_fixtures import encode, random_rgb

LIMITS = Limits(
    max_upload_bytes=100_000, max_request_bytes=400_000, max_files=4, max_pixels=1_000_000,
    max_aspect_ratio=10.0,
)  # fmt: skip


@pytest.fixture
def registry(two_version_registry):
    return two_version_registry


def test_build_app_refuses_unknown_or_mistyped_args(registry):
    with pytest.raises(ConfigError, match="max_batch"):
        build_app({"registry": registry, "max_batch": 4})
    with pytest.raises(ConfigError, match="max_files"):
        build_app({"registry": registry, "max_files": "many"})
    assert build_app({"registry": registry, "explain": False}) is not None


def test_upload_checks_name_the_file_and_reason():
    def code(data: bytes, ctype: str | None = "image/png") -> tuple[int, str, str | None]:
        with pytest.raises(ApiError) as info:
            decode_upload(Upload("f.png", ctype, data), LIMITS)
        return info.value.status, info.value.code, info.value.file

    assert code(b"") == (400, "empty_file", "f.png")
    truncated = encode(random_rgb(5, (120, 90)), "JPEG")[:500]
    assert code(truncated, "image/jpeg") == (422, "corrupt_image", "f.png")
    assert code(b"plain text, no magic number") == (415, "not_an_image", "f.png")
    assert code(encode(random_rgb(1), "PNG"), "text/html")[1] == "unsupported_media_type"
    assert code(b"\0" * 100_001)[:2] == (413, "file_too_large")
    assert code(encode(Image.new("RGB", (1100, 1000)), "PNG"))[:2] == (413, "image_too_large")
    assert code(encode(random_rgb(3, (500, 20)), "PNG"))[:2] == (422, "bad_dimensions")
    decoded = decode_upload(Upload("ok.bin", None, encode(random_rgb(4), "JPEG")), LIMITS)
    assert decoded.image.mode == "RGB" and decoded.format == "JPEG"


def test_serve_build_writes_a_config_from_code(tmp_path):
    out = tmp_path / "built.yaml"
    subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "build", "birdray.serve.template:app",
         "-o", str(out)],
        check=True, capture_output=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    (app,) = yaml.safe_load(out.read_text())["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"BirdIngress", "BirdClassifier", "BirdExplainer"}
    classifier = deployments["BirdClassifier"]
    assert classifier["max_ongoing_requests"] >= classifier["user_config"]["max_batch_size"]
    # the model reference is the deployment's argument; user_config only tunes (or swaps) it
    assert set(classifier["user_config"]) == {"max_batch_size", "batch_wait_timeout_s"}
    assert classifier["ray_actor_options"]["num_gpus"] == 0
    for deployment in deployments.values():  # every queue is bounded: overload answers 503
        assert deployment["max_queued_requests"] > 0, deployment["name"]
    # the proxy's own 503 (the ingress queue full) tells clients when to retry, as ours does
    assert deployments["BirdIngress"]["backpressure_config"]["retry_after_s"] == 1
    # the request path runs on Serve's own loop (BENCHMARKS.md); explanations keep their thread
    for name in ("BirdIngress", "BirdClassifier"):
        env = deployments[name]["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env == REPLICA_LOOP_ENV, name
    assert "runtime_env" not in deployments["BirdExplainer"]["ray_actor_options"]


# --- issue 14: fail-closed API key, parser limits, explain target -----------------------------


def test_named_api_key_that_is_unset_or_blank_refuses_to_build(registry, monkeypatch):
    monkeypatch.delenv("BIRDRAY_UNSET_KEY", raising=False)
    args = {"registry": registry, "explain": False}
    with pytest.raises(ValueError, match="BIRDRAY_UNSET_KEY.*unset or empty"):
        build_app({**args, "api_key_env": "BIRDRAY_UNSET_KEY"})
    for blank in ("", "   "):
        monkeypatch.setenv("BIRDRAY_BLANK_KEY", blank)
        with pytest.raises(ValueError, match="unset or empty"):
            build_app({**args, "api_key_env": "BIRDRAY_BLANK_KEY"})
    monkeypatch.setenv("BIRDRAY_BLANK_KEY", "k3y")
    assert build_app({**args, "api_key_env": "BIRDRAY_BLANK_KEY"}) is not None
    # the deployment checks again where it runs (a secret may be missing on that node only)
    monkeypatch.delenv("BIRDRAY_UNSET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="refusing to serve /v1 without an API key"):
        api_key_from_env("BIRDRAY_UNSET_KEY")
    assert api_key_from_env(None) is None
    with pytest.raises(ValueError, match="API key is empty"):
        create_api(None, LIMITS, api_key="")


BIG_BODIES = dataclasses.replace(LIMITS, max_request_bytes=4 * 2**20)


def _multipart(body: bytes) -> tuple[int, str] | list:
    """``read_uploads`` on a real Starlette request carrying ``body`` (4 MB allowed)."""

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)
    try:
        return asyncio.run(read_uploads(request, "files", BIG_BODIES))
    except ApiError as exc:
        return exc.status, exc.code


def _file_part(i: int) -> bytes:
    return (
        b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="f%d.png"\r\n'
        b"Content-Type: image/png\r\n\r\nx\r\n" % i
    )


def test_multipart_parser_stops_at_the_first_file_past_the_limit():
    broken_tail = b"--xyz\r\nno colon in this header line\r\n\r\n"
    within = b"".join(_file_part(i) for i in range(LIMITS.max_files - 1)) + broken_tail
    assert _multipart(within) == (400, "bad_multipart")  # the parser reads up to the tail
    # one file more than allowed, then the same broken tail: parsing stopped before reaching it
    beyond = b"".join(_file_part(i) for i in range(LIMITS.max_files + 1)) + broken_tail
    assert _multipart(beyond) == (400, "too_many_files")
    flood = b"".join(_file_part(i) for i in range(20_000)) + b"--xyz--\r\n"  # ~2 MB of parts
    assert _multipart(flood) == (400, "too_many_files")
    fields = b"".join(
        b'--xyz\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
        for i in range(20_000)
    )
    assert _multipart(fields + b"--xyz--\r\n") == (400, "bad_multipart")  # too many fields
    ok = _multipart(b"".join(_file_part(i) for i in range(LIMITS.max_files)) + b"--xyz--\r\n")
    assert [u.name for u in ok] == [f"f{i}.png" for i in range(LIMITS.max_files)]
    # a body cut off in transit: the parser keeps the parts before the cut without a word
    whole = _file_part(0) + _file_part(1) + b"--xyz--\r\n"
    for cut in (len(_file_part(0)) + 20, len(whole) - 9):
        assert _multipart(whole[:cut]) == (400, "bad_multipart")


@pytest.mark.parametrize("target", ["²", "٣", "3.0", "-1", "99", "no_such_bird"])
def test_explain_target_that_is_not_a_class_is_422(target):
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    with pytest.raises(ApiError) as info:
        BirdIngress.func_or_class._target(None, target, classes)
    assert (info.value.status, info.value.code) == (422, "invalid_parameter")
    assert BirdIngress.func_or_class._target(None, "2", classes) == 2
    assert BirdIngress.func_or_class._target(None, "laysan_albatross", classes) == 1


def test_birdray_serve_with_a_missing_key_stops_before_ray_starts(tmp_path, monkeypatch, capsys):
    """The user's door: ``birdray serve --api-key-env NAME`` with NAME unset never serves."""
    import ray

    from birdray.cli import main

    package = make_package(tmp_path / "pkg")
    monkeypatch.delenv("BIRDRAY_NOPE_KEY", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["serve", "--model", str(package), "--registry", "none", "--explain", "false",
            "--blocking", "false", "--api-key-env", "BIRDRAY_NOPE_KEY"]  # fmt: skip
    ray_before = ray.is_initialized()  # a whole-suite run may have a session cluster already
    try:
        status, message = main(argv), ""
    except SystemExit as exc:  # a CLI that reports user errors itself exits non-zero
        status, message = exc.code, ""
    except ValueError as exc:
        status, message = "raised", str(exc)
    output = message + "".join(capsys.readouterr())
    assert status not in (0, None), output
    assert "BIRDRAY_NOPE_KEY" in output and "unset or empty" in output
    assert ray.is_initialized() == ray_before  # refused before any Ray or Serve started


def test_every_list_of_explanation_methods_is_the_explain_packages():
    """The HTTP contract and the dashboard keep torch-free copies; they must not drift."""
    from birdray.dashboard.client import EXPLAIN_METHODS as dashboard_methods
    from birdray.explain import METHODS
    from birdray.serve.api import METHODS as api_methods

    assert tuple(api_methods) == tuple(METHODS) == tuple(dashboard_methods)


@pytest.mark.parametrize(
    "died",
    [lambda e: e.ActorDiedError(), lambda e: e.ActorUnavailableError("gone", b"\0" * 16)],
    ids=["died", "unavailable"],
)
def test_a_model_replica_dying_mid_request_is_503_unavailable(died):
    """SIGKILL of the model replica while a request waits on it: a 503 the client may retry
    (Retry-After), not a 500 ``internal_error``; Serve restarts the replica."""
    import ray.exceptions

    from birdray.serve.replica import answer

    async def dies():
        raise died(ray.exceptions)

    with pytest.raises(ApiError) as info:
        asyncio.run(answer(dies(), "model"))
    assert (info.value.status, info.value.code) == (503, "unavailable")
