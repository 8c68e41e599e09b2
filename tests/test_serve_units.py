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
from birdray.serve import uploads
from birdray.serve.api import create_api, form_or_query, parse_top_k
from birdray.serve.app import REPLICA_LOOP_ENV, build_app
from birdray.serve.errors import ApiError
from birdray.serve.ingress import BirdIngress
from birdray.serve.replica import api_key_from_env
from birdray.serve.uploads import Limits, Upload, decode_upload, read_form, read_uploads
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
    assert BirdIngress.func_or_class._target(None, "002", classes) == 1  # species 002
    assert BirdIngress.func_or_class._target(None, "0", classes) == 0  # label 0: one reading
    assert BirdIngress.func_or_class._target(None, "laysan_albatross", classes) == 1
    assert BirdIngress.func_or_class._target(None, "2", classes) == 2  # label 2, as before
    cub = [f"{i:03d}.Species_{i}" for i in range(1, 201)]
    with pytest.raises(ApiError, match="ambiguous"):  # label 150 or species 150: never guessed
        BirdIngress.func_or_class._target(None, "150", cub)


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


def test_birdray_serve_warns_when_rays_token_authentication_is_off(tmp_path, monkeypatch, caplog):
    """With RAY_AUTH_MODE=disabled a replica's all-interfaces gRPC port runs what it is sent
    (tests/test_serve_cli.py shows it answering without a token): the user is told at once."""
    from birdray.config import resolve
    from birdray.serve.job import ServeConfig, run_serve

    package = make_package(tmp_path / "pkg")
    monkeypatch.delenv("BIRDRAY_NOPE_KEY", raising=False)  # the app refuses it before Ray
    values = {"model": str(package), "registry": "none", "api_key_env": "BIRDRAY_NOPE_KEY"}
    for mode, warned in (("disabled", True), ("token", False)):
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
        caplog.clear()
        waiting = pytest.raises(ValueError, match="BIRDRAY_NOPE_KEY")
        with caplog.at_level("WARNING", logger="birdray.serve.job"), waiting:
            run_serve(resolve(ServeConfig, values))
        said = [r.getMessage() for r in caplog.records if "RAY_AUTH_MODE" in r.getMessage()]
        assert bool(said) == warned, caplog.text


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


# --- hostile requests a review found (2026-12-06): each a 4xx saying what to fix ---------------


def _request(chunks: list[bytes | None], content_type: bytes, query: bytes = b"") -> Request:
    """A Starlette request whose body arrives as ``chunks``; ``None`` is the client going away,
    a float a pause of that many seconds before the next chunk."""
    pending = list(chunks)

    async def receive() -> dict:
        while pending and isinstance(pending[0], float):
            await asyncio.sleep(pending.pop(0))
        if not pending or pending[0] is None:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    headers = [(b"content-type", content_type)]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request({**scope, "query_string": query}, receive)


def _form(chunks: list, content_type: bytes = b"multipart/form-data; boundary=xyz", **kw):
    try:
        return asyncio.run(read_form(_request(chunks, content_type, **kw), "files", BIG_BODIES))
    except ApiError as exc:
        return exc.status, exc.code, exc.message


def _text_part(name: str, value: str) -> bytes:
    return b'--xyz\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
        name.encode(),
        value.encode(),
    )


def test_a_client_that_goes_away_or_stalls_mid_upload_is_not_a_server_error(monkeypatch):
    """A dropped mobile upload was an "unhandled error" traceback and a 500 in the metrics; a
    stalled one held its admission slot until the request's deadline (50 s)."""
    start = _file_part(0)
    assert _form([start, None])[:2] == (499, "cancelled")
    monkeypatch.setattr(uploads, "BODY_IDLE_TIMEOUT_S", 0.2)
    status, code, message = _form([start, 1.0, b"--xyz--\r\n"])
    assert (status, code) == (408, "request_timeout") and "stalled" in message
    assert [u.name for u in _form([start, 0.05, b"--xyz--\r\n"])[0]] == ["f0.png"]


def test_a_field_sent_twice_with_different_values_is_refused_not_picked():
    """A correction sent as species=A then species=not_a_bird was stored as the last one."""
    body = _file_part(0) + _text_part("species", "002.B") + _text_part("species", "not_a_bird")
    status, code, message = _form([body + b"--xyz--\r\n"])
    assert (status, code) == (422, "invalid_parameter") and "'species' sent twice" in message
    same = _file_part(0) + _text_part("top_k", "2") + _text_part("top_k", " 2")
    assert _form([same + b"--xyz--\r\n"])[1] == {"top_k": " 2"}
    request = _request([b""], b"multipart/form-data", query=b"top_k=2&top_k=3")
    with pytest.raises(ApiError, match="top_k sent twice with different values"):
        form_or_query(request, {}, "top_k")
    with pytest.raises(ApiError, match="top_k sent twice"):
        form_or_query(_request([b""], b"", query=b"top_k=2"), {"top_k": "4"}, "top_k")
    assert form_or_query(_request([b""], b"", query=b"top_k=2"), {"top_k": "2"}, "top_k") == "2"


@pytest.mark.parametrize("value", ["1_000", "+3", "٣", "0", "1001", "9" * 5000, " "])
def test_top_k_is_ascii_digits_in_range_and_a_long_value_is_not_echoed_whole(value):
    with pytest.raises(ApiError) as info:
        parse_top_k(value)
    assert (info.value.status, info.value.code) == (422, "invalid_parameter")
    assert len(info.value.message) < 200
    assert parse_top_k(" 7 ") == 7 and parse_top_k("0012") == 12


def test_an_explain_target_of_thousands_of_digits_is_422_not_500():
    """int() refuses strings over 4,300 digits with a ValueError no one caught: a 500."""
    with pytest.raises(ApiError) as info:
        BirdIngress.func_or_class._target(None, "9" * 5000, ["a", "b"])
    assert (info.value.status, info.value.code) == (422, "invalid_parameter")
    assert len(info.value.message) < 200


def test_multipart_errors_say_why_and_the_content_type_is_read_exactly(caplog):
    long_name = _file_part(0).replace(b"f0.png", b"a" * 5000 + b".png")
    status, code, message = _form([long_name + b"--xyz--\r\n"])
    assert (status, code) == (400, "bad_multipart") and "header size" in message
    with caplog.at_level("DEBUG"):  # the answer says it; the replica's log gets no line of it
        wrong = _form([_file_part(0).replace(b"xyz", b"abc") + b"--abc--\r\n"])
    assert wrong[:2] == (400, "bad_multipart") and "Expected boundary character" in wrong[2]
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]
    status, code, _ = _form([_file_part(0) + b"--xyz--\r\n"], b"multipart/form-dataX; boundary=xyz")
    assert (status, code) == (415, "unsupported_media_type")
    epilogue = _file_part(0) + b"--xyz--\r\n" + b"trailing words " * 20
    assert [u.name for u in _form([epilogue])[0]] == ["f0.png"]


def test_an_api_key_is_what_a_header_can_carry(monkeypatch, registry):
    """A key file written with echo ends in a newline: the app started and refused everyone."""
    monkeypatch.setenv("BIRDRAY_NL_KEY", "s3cret-key\n")
    assert api_key_from_env("BIRDRAY_NL_KEY") == "s3cret-key"
    args = {"registry": registry, "explain": False}
    assert build_app({**args, "api_key_env": "BIRDRAY_NL_KEY"}) is not None
    for unsendable in ("clé-secrète", "two\x07parts"):
        monkeypatch.setenv("BIRDRAY_ODD_KEY", unsendable)
        with pytest.raises(ValueError, match="printable ASCII"):
            build_app({**args, "api_key_env": "BIRDRAY_ODD_KEY"})
        with pytest.raises(RuntimeError, match="printable ASCII"):
            api_key_from_env("BIRDRAY_ODD_KEY")


def test_feedback_into_a_folder_the_reader_refuses_stops_the_app_before_it_starts(
    registry, tmp_path
):
    """Answers stored into an ingested dataset were each "stored": true, then unreadable."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="feedback_dir: .*ingested dataset"):
        build_app({"registry": registry, "explain": False, "feedback_dir": str(dataset)})
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="feedback_dir: .*is a file"):
        build_app({"registry": registry, "explain": False, "feedback_dir": str(a_file)})


# --- a hostile-client session (2026-12-07): store failures, reserved answers, Unicode, key ----


class _Metrics:
    def __init__(self):
        self.outcomes: list[str] = []

    def feedback(self, outcome: str) -> None:
        self.outcomes.append(outcome)


class _FeedbackService:
    """``BirdIngress``'s feedback route around a fixed model, with no Ray: ``create_api``'s
    ``Service`` for ``POST /v1/feedback``."""

    def __init__(self, feedback_dir, classes, version="v0001"):
        from birdray.serve.feedback_route import FeedbackRoute
        from birdray.serve.rollout import CANDIDATE, PRODUCTION

        class Route(FeedbackRoute):
            async def _current(self, refresh=False, role=PRODUCTION):
                return self._infos[role]

        self.route = route = Route()
        route._feedback_dir, route._metrics, route._limits = str(feedback_dir), _Metrics(), LIMITS
        route._models = {PRODUCTION: object(), CANDIDATE: None}
        route._infos = {PRODUCTION: {"version": version, "classes": list(classes)}}
        self.feedback = route.feedback

    def client(self):
        from fastapi.testclient import TestClient

        return TestClient(create_api(self, LIMITS, api_key="k"), raise_server_exceptions=False)

    def send(self, image: bytes, **fields: str):
        files = {"file": ("bird.png", image, "image/png")}
        return self.client().post(
            "/v1/feedback", files=files, data=fields, headers={"X-API-Key": "k"}
        )


def _stored(location) -> list[dict]:
    from birdray.feedback.store import read_all

    return read_all(str(location)).to_pylist()


def test_a_feedback_store_that_cannot_be_written_is_503_counted_and_stores_nothing(
    tmp_path, monkeypatch, caplog
):
    """The --feedback-dir folder replaced by a file was 500 ``internal_error`` ("FileExistsError:
    the server failed"), a traceback in the replica log, and not in the feedback metric."""
    import errno

    from birdray import storage

    store = tmp_path / "feedback"
    service = _FeedbackService(store, ["001.Robin", "002.Wren"])
    image, good = encode(random_rgb(3), "PNG"), {"predicted": "Robin", "model_version": "v0001"}
    assert service.send(image, **good, species="Wren").status_code == 200
    store_rows = _stored(store)
    moved = tmp_path / "moved"
    store.rename(moved)
    store.write_text("someone's notes")  # the folder replaced by a plain file
    with caplog.at_level("WARNING"):
        resp = service.send(image, **good, species="Robin")
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"] and resp.json()["error"]["code"] == "feedback_unavailable"
    message = resp.json()["error"]["message"]
    assert "a file stands where its folder should be" in message and "nothing was stored" in message
    assert str(tmp_path) not in message and "\n" not in message and "Traceback" not in message
    assert "Traceback" not in caplog.text and str(store) in caplog.text  # the path: operator's
    assert store.read_text() == "someone's notes"

    store.unlink()
    moved.rename(store)

    def disk_full(location, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(location))

    monkeypatch.setattr(storage, "put_bytes", disk_full)
    resp = service.send(image, **good, species="Robin")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "feedback_unavailable"
    assert "(No space left on device)" in resp.json()["error"]["message"]
    assert str(tmp_path) not in resp.json()["error"]["message"]
    assert _stored(store) == store_rows  # nothing half-stored
    assert service.route._metrics.outcomes == ["corrected", *["feedback_unavailable"] * 2]


def test_a_class_named_not_a_bird_or_unsure_is_that_class(tmp_path):
    """Own-photos classes are folder names: a class ``not_a_bird`` or ``unsure`` could never be
    confirmed or corrected (the reserved answer took the name first), nor reach ingest."""
    from birdray.data.feedback import feedback_items

    store = tmp_path / "feedback"
    classes = ["not_a_bird", "Robin", "unsure"]
    service = _FeedbackService(store, classes)
    answers = [("not_a_bird", "not_a_bird"), ("Robin", "unsure"), ("unsure", "NOT_A_BIRD")]
    for i, (said, right) in enumerate(answers):
        resp = service.send(
            encode(random_rgb(10 + i), "PNG"), predicted=said, model_version="v0001", species=right
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["species"] == right.lower()
    rows = [(r["answer"], r["verdict"]) for r in _stored(store)]
    assert rows == [
        ("not_a_bird", "confirmed"),
        ("unsure", "corrected"),
        ("not_a_bird", "corrected"),
    ]
    assert service.route._metrics.outcomes == ["confirmed", "corrected", "corrected"]
    items, entry = feedback_items(str(store), classes, 0, {})  # ingest reads them as classes
    assert [item["class_name"] for item in items] == ["not_a_bird", "unsure", "not_a_bird"]
    assert entry["skipped"] == {}

    # a model without such classes: the reserved answers, in any case, as before
    plain = _FeedbackService(tmp_path / "plain", ["001.Robin", "002.Wren"])
    resp = plain.send(encode(random_rgb(20), "PNG"), predicted="Robin", model_version="v0001",
                      species="Not_A_Bird")  # fmt: skip
    assert (resp.status_code, resp.json()["verdict"]) == (200, "not_a_bird"), resp.text
    items, entry = feedback_items(str(tmp_path / "plain"), ["001.Robin", "not_a_bird"], 0, {})
    assert items == [] and entry["skipped"] == {"not_a_bird": 1}  # the answer, not a class
    # two classes that differ by case only: never guessed, not taken for the answer either
    twins = _FeedbackService(tmp_path / "twins", ["Unsure", "UNSURE", "Robin"])
    resp = twins.send(encode(random_rgb(21), "PNG"), predicted="Robin", model_version="v0001",
                      species="unsure")  # fmt: skip
    assert resp.status_code == 422 and "could be any of Unsure, UNSURE" in resp.text


def test_class_names_match_in_any_unicode_normal_form(tmp_path):
    """macOS folder names are NFD: ``Mésange_bleue`` typed (NFC) was 422 ``unknown_species``
    where the two look identical; the answer is the model's own spelling."""
    import unicodedata

    nfd, nfc = (unicodedata.normalize(form, "Mésange_bleue") for form in ("NFD", "NFC"))
    assert nfd != nfc
    classes = ["001.Rotkehlchen", f"002.{nfd}"]
    service = _FeedbackService(tmp_path / "feedback", classes)
    image = encode(random_rgb(30), "PNG")
    resp = service.send(image, predicted=f"002.{nfc}", model_version="v0001", species=nfc)
    assert resp.status_code == 200, resp.text
    assert resp.json()["species"] == f"002.{nfd}" and resp.json()["verdict"] == "confirmed"
    row = _stored(tmp_path / "feedback")[0]
    assert (row["predicted"], row["answer"]) == (f"002.{nfd}", f"002.{nfd}")
    target = BirdIngress.func_or_class._target
    assert target(None, nfc, classes) == target(None, nfc.upper(), classes) == 1
    assert target(None, f"002.{nfc}", classes) == 1
    # two classes spelled alike in two forms: each exact spelling is its own, nothing guessed
    twins = [nfc, nfd]
    assert (target(None, nfc, twins), target(None, nfd, twins)) == (0, 1)
    with pytest.raises(ApiError):
        target(None, nfc.upper(), twins)


class _Echo:
    """A service that answers with what the routes passed it."""

    async def model_info(self):
        return {"ok": True}

    async def predict(self, uploads, top_k, client_key=None):
        return {"version": "v1"}, [{"top_k": top_k}]

    async def explain(self, upload, method, target, client_key=None):
        return {"method": method, "target": target, "client_key": client_key}


def test_explain_passes_the_client_key_as_predict_does():
    """Under a canary ``X-Client-Key`` keeps a client on one model for /v1/predict; /v1/explain
    never read it, and explained production's answer to a client the candidate answered."""
    from fastapi.testclient import TestClient

    client = TestClient(create_api(_Echo(), LIMITS))
    files = {"file": ("a.png", encode(random_rgb(1), "PNG"), "image/png")}
    sent = client.post("/v1/explain", files=files, headers={"X-Client-Key": "alice"})
    assert sent.status_code == 200 and sent.json()["client_key"] == "alice"
    assert client.post("/v1/explain", files=files).json()["client_key"] is None


def test_an_api_key_with_spaces_or_tabs_around_it_is_the_key_but_nothing_else_is():
    """``X-API-Key: s3cret-key `` was 401 through Serve's proxy, 200 through HAProxy (which drops
    the whitespace around a field value, RFC 9110): now 200 through both."""
    from fastapi.testclient import TestClient

    client = TestClient(create_api(_Echo(), LIMITS, api_key="s3cret-key"))
    for sent in ("s3cret-key", "s3cret-key ", "s3cret-key\t", " \ts3cret-key \t"):
        assert client.get("/v1/model", headers={"X-API-Key": sent}).status_code == 200, sent
    for sent in ("", " ", "\t", "s3cret-ke", "s3cret-key x", "s3cret- key", b"s3cret-key\xa0"):
        resp = client.get("/v1/model", headers={"X-API-Key": sent})
        assert resp.status_code == 401, repr(sent)
    assert client.get("/v1/model").status_code == 401


def test_an_empty_parameter_is_not_sent_wherever_it_is():
    """``?top_k=`` alone was the default, but beside a form field ``top_k=3`` it was 422 "sent
    twice with different values: '', '3'"; an empty ``?method=`` was 422 before the body."""
    from fastapi.testclient import TestClient

    client = TestClient(create_api(_Echo(), LIMITS))
    files = {"files": ("a.png", encode(random_rgb(1), "PNG"), "image/png")}

    def top_k(query: str, **form: str):
        resp = client.post(f"/v1/predict{query}", files=files, data=form)
        return resp.json()["results"][0]["top_k"] if resp.status_code == 200 else resp.json()

    assert top_k("?top_k=") == top_k("?top_k=%20") == top_k("", top_k="") == 5
    assert top_k("?top_k=", top_k="3") == top_k("?top_k=3", top_k="") == 3
    assert top_k("?top_k=&top_k=4") == top_k("?top_k=4&top_k=", top_k=" ") == 4
    assert top_k("?top_k=2", top_k="3")["error"]["code"] == "invalid_parameter"
    error = top_k("?top_k=x")["error"]["message"]
    assert "leave it out, or empty, for 5" in error
    explain = {"file": ("a.png", encode(random_rgb(1), "PNG"), "image/png")}
    resp = client.post("/v1/explain?method=&target=", files=explain, data={"target": "2"})
    assert resp.json() == {"method": None, "target": "2", "client_key": None}, resp.text
    request = _request([b""], b"", query=b"top_k=")
    assert form_or_query(request, {"top_k": "3"}, "top_k") == "3"
    assert form_or_query(_request([b""], b"", query=b"top_k="), {}, "top_k") is None


def test_birdray_serve_that_cannot_fit_this_machine_is_refused_before_ray_starts(tmp_path):
    """A rollout's candidate on 2 CPUs (3 CPU of replicas) was refused only after a local Ray
    had started (~5 s): the CPUs a local Ray gets are known before it starts. (A process of its
    own: in this one a session Ray may run, whose CPUs the job would use.)"""
    import os
    import subprocess
    import sys

    package = str(make_package(tmp_path / "pkg"))
    argv = ["serve", "--model", package, "--registry", "none", "--blocking", "false"]
    env = {**os.environ, "RAY_ADDRESS": "", "BIRDRAY_DEBUG": ""}

    def run(*more: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "birdray.cli", *argv, *more]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    one = run("--num-cpus", "1")
    assert one.returncode == 2 and len(one.stderr.strip().splitlines()) == 1, one.stderr
    assert "need 2 CPU; the cluster has 1 (--num-cpus" in one.stderr
    rollout = run("--num-cpus", "2", "--candidate", package)
    assert rollout.returncode == 2 and "need 3 CPU; the cluster has 2" in rollout.stderr
    assert "Ray instance" not in one.stderr + rollout.stderr  # no Ray was started
