"""The HTTP API over real Serve: predictions equal the direct model call, bad input never breaks it.

One app (small limits so oversize cases are cheap) serves the whole module; each bad-input test
asserts the status, the error shape and that the server still answers a good image afterwards.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import struct
import time
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from birdray.feedback.store import read_all, read_feedback
from birdray.images import decode_image
from birdray.model.crop import decode_for_model
from birdray.model.inference import Predictor
from tests.hostile_files import hostile_gif, hostile_tiff
from tests.model_fixture import make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    post_images,
    random_rgb,
    small_app_args,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

LIMITS = {"max_upload_mb": 0.5, "max_request_mb": 2.0, "max_files": 4, "max_pixels": 4_000_000}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("serve_api") / "pkg", num_classes=4, image_size=64)


@pytest.fixture(scope="module")
def predictor(package):
    return Predictor(str(package), num_threads=1)


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve_api") / "feedback"


@pytest.fixture(scope="module")
def app(serve_http, package, feedback_dir):
    args = small_app_args(str(package), feedback_dir=str(feedback_dir), **LIMITS)
    with deployed(serve_http, "api", **args) as url:
        yield url


def expected_probs(predictor: Predictor, image: Image.Image) -> list[float]:
    """Direct model call: class probabilities ordered by label."""
    probs = predictor.probabilities(predictor.logits(predictor.preprocess([image.convert("RGB")])))
    return probs[0].tolist()


def served_probs(result: dict) -> list[float]:
    by_label = {item["label"]: item["probability"] for item in result["top_k"]}
    return [by_label[i] for i in range(len(by_label))]


def assert_error(resp: requests.Response, status: int, code: str, file: str | None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["file"] == file
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def assert_healthy(url: str) -> None:
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    ok = post_images(url, [("ok.png", encode(random_rgb(99), "PNG"), "image/png")])
    assert ok.status_code == 200 and ok.json()["results"][0]["ok"] is True


def predict_one(url: str, name: str, data: bytes, ctype: str | None = "image/png") -> dict:
    resp = post_images(url, [(name, data, ctype)], top_k=4)
    assert resp.status_code == 200, resp.text
    (result,) = resp.json()["results"]
    assert result["ok"] is True and result["file"] == name
    return result


# --- correct answers ------------------------------------------------------------------------


def test_prediction_over_http_equals_direct_model_call(app, predictor):
    images = {
        "a.jpg": encode(random_rgb(1, (120, 90)), "JPEG", quality=90),
        "b.png": encode(random_rgb(2, (64, 200)), "PNG"),
        "c.webp": encode(random_rgb(3, (300, 300)), "WEBP", quality=95),
        # a phone-sized JPEG: decoded at 1/8 scale for the model (decode_side), same answer
        "d.jpg": encode(random_rgb(4, (2000, 1500)), "JPEG", quality=90),
    }
    for name, data in images.items():
        result = predict_one(app, name, data, "image/jpeg")
        decoded = decode_for_model(data, predictor.metadata.data_config)
        image = decoded.image
        want = expected_probs(predictor, image)
        np.testing.assert_allclose(served_probs(result), want, atol=1e-5)
        direct = predictor.predict_images([image], top_k=4)[0]
        assert result["prediction"]["label"] == direct.label
        assert result["prediction"]["species"] == direct.species
        assert result["prediction"]["confidence"] == pytest.approx(direct.confidence, abs=1e-5)
        assert result["image"] == {"width": decoded.width, "height": decoded.height}
        assert result["model_version"] == predictor.version
        assert set(result["timing_ms"]) == {"decode", "queue_and_model", "total"}
    assert min(image.size) < min(decoded.width, decoded.height) / 4  # it did decode smaller
    # and the full decode of the phone-sized photo gives the model nearly the same picture
    full = expected_probs(predictor, decode_image(images["d.jpg"]).image)
    np.testing.assert_allclose(served_probs(result), full, atol=0.02)


def test_response_shape_model_and_probes(app, predictor):
    resp = post_images(app, [("a.png", encode(random_rgb(4), "PNG"), "image/png")], top_k=2)
    body = resp.json()
    assert body["model"] == {
        "name": predictor.package.name,
        "version": predictor.version,
        "arch": "test_resnet",
    }
    assert len(body["results"][0]["top_k"]) == 2
    png = [("files", ("a.png", encode(random_rgb(4), "PNG"), "image/png"))]
    as_form = requests.post(f"{app}/v1/predict", data={"top_k": "3"}, files=png, timeout=60)
    assert len(as_form.json()["results"][0]["top_k"]) == 3, as_form.text  # a form field counts too
    twice = requests.post(f"{app}/v1/predict?top_k=2", data={"top_k": "3"}, files=png, timeout=60)
    assert_error(twice, 422, "invalid_parameter", None)
    assert "top_k sent twice" in twice.json()["error"]["message"]
    model = requests.get(f"{app}/v1/model", timeout=10).json()
    assert model["version"] == predictor.version
    assert model["classes"] == predictor.metadata.class_names
    assert model["num_classes"] == 4 and model["image_size"] == 64
    assert {"metrics", "temperature", "created_at", "arch", "name"} <= set(model)
    ready = requests.get(f"{app}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model_version": predictor.version}
    for probe in ("healthz", "readyz", "v1/model", "v1/rollout"):  # HEAD was 405 (probes)
        head = requests.head(f"{app}/{probe}", timeout=10)
        assert head.status_code == 200 and not head.content, (probe, head.status_code)
    # a trailing slash: no 307 to a host named by the request's Host header, a 404 naming it
    slash = requests.post(f"{app}/v1/predict/", files=png, headers={"Host": "evil.example"},
                          allow_redirects=False, timeout=60)  # fmt: skip
    assert_error(slash, 404, "not_found", None)
    assert "Location" not in slash.headers and "evil" not in slash.text
    assert slash.json()["error"]["message"].endswith("/v1/predict'"), slash.text
    spec = requests.get(f"{app}/openapi.json", timeout=10).json()
    paths = {"/v1/predict", "/v1/model", "/v1/explain", "/v1/feedback", "/healthz", "/readyz"}
    assert paths <= set(spec["paths"])
    form = spec["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"file", "species", "model_version"} <= set(form["schema"]["required"])


def test_several_files_with_one_bad_gives_per_file_errors(app, predictor):
    good = encode(random_rgb(5), "PNG")
    resp = post_images(
        app, [("good.png", good, "image/png"), ("bad.jpg", b"not an image", "image/jpeg")]
    )
    assert resp.status_code == 200
    good_result, bad_result = resp.json()["results"]
    assert good_result["ok"] is True
    assert (
        good_result["prediction"]["label"]
        == predictor.predict_images([decode_image(good).image])[0].label
    )
    assert bad_result == {
        "file": "bad.jpg",
        "ok": False,
        "error": {
            "code": "not_an_image",
            "message": bad_result["error"]["message"],
            "file": "bad.jpg",
        },
    }


# --- bad input: every case a 4xx with the error shape, server healthy after -----------------


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status", "code"),
    [
        ("empty.jpg", b"", "image/jpeg", 400, "empty_file"),
        ("text.jpg", b"hello, I am not a picture" * 10, "image/jpeg", 415, "not_an_image"),
        (
            "trunc.jpg",
            encode(random_rgb(6, (200, 150)), "JPEG")[:600],
            "image/jpeg",
            422,
            "corrupt_image",
        ),
        (
            "trunc.png",
            encode(random_rgb(7, (200, 150)), "PNG")[:300],
            "image/png",
            422,
            "corrupt_image",
        ),
        ("doc.txt", encode(random_rgb(8), "PNG"), "text/plain", 415, "unsupported_media_type"),
        ("pdf.pdf", b"%PDF-1.4 ...", "application/pdf", 415, "unsupported_media_type"),
        ("hostile.tif", hostile_tiff(), "image/tiff", 422, "corrupt_image"),  # TypeError inside
        ("hostile.gif", hostile_gif(), "image/gif", 422, "corrupt_image"),  # IndexError inside
        (
            "thin.png",
            encode(Image.new("RGB", (2000, 20), "red"), "PNG"),
            "image/png",
            422,
            "bad_dimensions",
        ),
    ],
    ids=lambda value: "bytes" if isinstance(value, bytes) else None,
)
def test_bad_single_file(app, name, data, ctype, status, code):
    assert_error(post_images(app, [(name, data, ctype)]), status, code, name)
    assert_healthy(app)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` (a decompression bomb's header) with no real data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs(app):
    # header claiming 10^10 pixels: refused before any pixel is decoded
    claim = _png_header_only(100_000, 100_000)
    assert_error(
        post_images(app, [("claim.png", claim, "image/png")]), 413, "image_too_large", "claim.png"
    )
    # a real 3000x3000 image that compresses to a few KB but exceeds the app's 4 MP limit
    real = encode(Image.new("1", (3000, 3000), 0), "PNG")
    assert len(real) < 50_000
    assert_error(
        post_images(app, [("real.png", real, "image/png")]), 413, "image_too_large", "real.png"
    )
    assert_healthy(app)


def test_oversize_file_and_request(app):
    noise = np.random.default_rng(0).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")  # ~600 KB > 0.5 MB per-file limit
    assert len(big) > 0.5 * 2**20
    assert_error(
        post_images(app, [("big.png", big, "image/png")]), 413, "file_too_large", "big.png"
    )
    huge = [(f"f{i}.png", big, "image/png") for i in range(4)]  # > 2 MB request limit
    assert_error(post_images(app, huge), 413, "request_too_large", None)
    assert_healthy(app)


def test_too_many_files(app):
    files = [(f"{i}.png", encode(random_rgb(i), "PNG"), "image/png") for i in range(5)]
    assert_error(post_images(app, files), 400, "too_many_files", None)
    assert_healthy(app)


def test_request_content_types(app):
    data = encode(random_rgb(9), "JPEG")
    raw = requests.post(
        f"{app}/v1/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert_error(raw, 415, "unsupported_media_type", None)
    missing = requests.post(f"{app}/v1/predict", data=data, timeout=30)
    assert "content-type" not in {k.lower() for k in missing.request.headers}
    assert_error(missing, 415, "unsupported_media_type", None)
    other_field = requests.post(f"{app}/v1/predict", files={"image": ("a.jpg", data)}, timeout=30)
    assert_error(other_field, 422, "no_files", None)
    nameless = b"--xyz\r\nContent-Type: image/png\r\n\r\ndata\r\n--xyz--\r\n"
    for body, ctype in [
        (nameless, "multipart/form-data; boundary=xyz"),  # part without a field name
        (b"--xyz\r\n", "multipart/form-data"),  # no boundary
    ]:
        broken = requests.post(
            f"{app}/v1/predict", data=body, headers={"Content-Type": ctype}, timeout=30
        )
        assert_error(broken, 400, "bad_multipart", None)
    wrong_method = requests.get(f"{app}/v1/predict", timeout=10)
    assert_error(wrong_method, 405, "method_not_allowed", None)
    assert wrong_method.headers.get("Allow") == "POST"  # RFC 9110: a 405 names what is allowed
    for top_k in (0, 1001, "two"):
        refused = post_images(app, [("a.jpg", data, "image/jpeg")], top_k=top_k)
        assert_error(refused, 422, "invalid_parameter", None)
        assert "top_k must be a whole number 1-1000" in refused.json()["error"]["message"]
    assert_healthy(app)


def test_declared_type_is_not_trusted_the_bytes_are(app, predictor):
    img = random_rgb(10)
    data = encode(img, "PNG")
    want = expected_probs(predictor, img)
    for ctype in ("image/jpeg", "application/octet-stream", None):  # wrong, generic, missing
        result = predict_one(app, "x.png", data, ctype)
        np.testing.assert_allclose(served_probs(result), want, atol=1e-5)


# --- unusual but valid images: converted correctly ------------------------------------------


def test_animated_gif_uses_first_frame(app, predictor):
    first = Image.new("RGB", (80, 60), (200, 30, 30))
    first.paste((30, 30, 200), (10, 10, 40, 50))
    second = Image.new("RGB", (80, 60), (20, 220, 20))
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(__import__("io").BytesIO(data)).n_frames == 2
    result = predict_one(app, "anim.gif", data, "image/gif")
    np.testing.assert_allclose(served_probs(result), expected_probs(predictor, first), atol=1e-5)
    other = expected_probs(predictor, second)
    assert not np.allclose(served_probs(result), other, atol=1e-6)


def test_cmyk_palette_sixteen_bit_and_alpha(app, predictor):
    rgb = random_rgb(11, (90, 70))
    # CMYK TIFF: Pillow's RGB<->CMYK is exact, so the prediction must equal the RGB one
    cmyk = predict_one(app, "cmyk.tif", encode(rgb.convert("CMYK"), "TIFF"), "image/tiff")
    np.testing.assert_allclose(served_probs(cmyk), expected_probs(predictor, rgb), atol=1e-5)
    # a CMYK JPEG decodes to a sensible RGB picture
    cmyk_jpeg = predict_one(app, "cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=95))
    np.testing.assert_allclose(served_probs(cmyk_jpeg), expected_probs(predictor, rgb), atol=0.02)
    # palette PNG with few colours is lossless
    few = rgb.quantize(colors=32).convert("RGB")
    pal = predict_one(app, "pal.png", encode(few.quantize(colors=32), "PNG"))
    np.testing.assert_allclose(served_probs(pal), expected_probs(predictor, few), atol=1e-5)
    # 16-bit grey spanning the full range scales back to the 8-bit picture exactly
    grey8 = np.asarray(rgb.convert("L"), dtype=np.uint16)
    span = max(1, int(grey8.max() - grey8.min()))
    grey8 = ((grey8 - grey8.min()) * 255 // span).astype(np.uint16)
    sixteen = Image.fromarray((grey8 * 257).astype(np.uint16))
    assert sixteen.mode == "I;16"
    deep = predict_one(app, "deep.png", encode(sixteen, "PNG"))
    want = Image.fromarray(grey8.astype(np.uint8), "L").convert("RGB")
    np.testing.assert_allclose(served_probs(deep), expected_probs(predictor, want), atol=1e-5)
    # alpha: transparent pixels become white, opaque ones keep their colour
    arr = np.asarray(rgb).copy()
    alpha = np.zeros(arr.shape[:2], np.uint8)
    alpha[:, : arr.shape[1] // 2] = 255
    rgba = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    composite = Image.fromarray(np.where(alpha[..., None] == 255, arr, 255).astype(np.uint8))
    alpha_result = predict_one(app, "alpha.png", encode(rgba, "PNG"))
    np.testing.assert_allclose(
        served_probs(alpha_result), expected_probs(predictor, composite), atol=1e-5
    )


def test_exif_orientation_is_applied(app, predictor):
    upright = random_rgb(12, (120, 60))  # what the photographer saw
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes with tag 6
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = encode(stored, "PNG", exif=exif.tobytes())
    result = predict_one(app, "rotated.png", data)
    assert result["image"] == {"width": 120, "height": 60}
    np.testing.assert_allclose(served_probs(result), expected_probs(predictor, upright), atol=1e-5)
    assert not np.allclose(served_probs(result), expected_probs(predictor, stored), atol=1e-6)


# --- security and overload: API key, admission limit, deadline -----------------------------

# --- feedback -------------------------------------------------------------------------------


def send_feedback(url: str, data: bytes, headers: dict | None = None, **fields: str):
    files = {"file": ("bird.png", data, "image/png")}
    return requests.post(
        f"{url}/v1/feedback", files=files, data=fields, headers=headers, timeout=60
    )


def test_feedback_is_stored_and_the_same_image_twice_is_one_row(app, predictor, feedback_dir):
    data, other = encode(random_rgb(40), "PNG"), encode(random_rgb(41), "PNG")
    first = predict_one(app, "bird.png", data)
    said, version = first["prediction"]["species"], first["model_version"]
    wrong = next(c for c in predictor.metadata.class_names if not c.endswith(said))
    ok = send_feedback(app, data, predicted=said, model_version=version, species=said)
    assert ok.status_code == 200, ok.text
    assert ok.json()["verdict"] == "confirmed" and ok.json()["stored"] is True
    fixed = send_feedback(
        app, data, predicted=said, model_version=version, species=wrong, note="red wings"
    )
    assert fixed.status_code == 200 and fixed.json()["verdict"] == "corrected", fixed.text
    # the answer words in any case, the version with spaces around it, as the other fields
    unsure = send_feedback(
        app, other, predicted=said, model_version=f" {version} ", species="UNSURE"
    )
    assert unsure.status_code == 200 and unsure.json()["verdict"] == "unsure", unsure.text
    assert read_all(str(feedback_dir)).num_rows == 3  # append-only
    rows = {r["sha256"]: r for r in read_feedback(str(feedback_dir)).to_pylist()}
    assert len(rows) == 2  # the same image twice is one row, the latest answer
    row = rows[ok.json()["sha256"]]
    assert row["image"] == data and row["answer"] == wrong and row["note"] == "red wings"
    assert row["model_version"] == version and row["verdict"] == "corrected"
    assert row["received_at"] is not None


def test_bad_feedback_is_refused_and_stores_nothing(app, feedback_dir):
    data = encode(random_rgb(42), "PNG")
    result = predict_one(app, "bird.png", data)
    said, version = result["prediction"]["species"], result["model_version"]
    before = read_all(str(feedback_dir)).num_rows
    good = {"predicted": said, "model_version": version, "species": said}
    cases = [
        ({**good, "species": "Dodo"}, data, "unknown_species"),
        ({**good, "predicted": "Dodo"}, data, "unknown_species"),
        ({**good, "model_version": "v9999"}, data, "wrong_model_version"),
        ({**good, "note": "x" * 1001}, data, "note_too_long"),
        ({**good, "note": "x" * 70_000}, data, "note_too_long"),  # was the parser's bad_multipart
        ({k: v for k, v in good.items() if k != "species"}, data, "missing_field"),
        (good, b"this is not an image", "not_an_image"),
    ]
    for fields, body, code in cases:
        resp = send_feedback(app, body, **fields)
        assert 400 <= resp.status_code < 500, (code, resp.text)
        assert resp.json()["error"]["code"] == code, resp.text
    dodo = send_feedback(app, data, **{**good, "species": "Dodo"}).json()["error"]["message"]
    assert "nor not_a_bird or unsure" in dodo
    # "unsure" is a value of species, not a field of its own: the error says so
    unsure = send_feedback(app, data, predicted=said, model_version=version, unsure="true")
    assert "species (a class name, or not_a_bird or unsure)" in unsure.json()["error"]["message"]
    no_file = requests.post(f"{app}/v1/feedback", data=good, files={"x": ("a", b"")}, timeout=60)
    assert no_file.status_code == 422 and no_file.json()["error"]["code"] == "no_files"
    assert read_all(str(feedback_dir)).num_rows == before  # nothing stored
    assert_healthy(app)


KEY = "s3cret-key"
GUARD = {"max_concurrent_requests": 1, "request_timeout_s": 6.0}


@pytest.fixture(scope="module")
def guarded(serve_http, package):
    """An app with an API key, one /v1 request at a time and a 6 s deadline."""
    os.environ["BIRDRAY_TEST_KEY"] = KEY  # read by build_app and handed to the replicas
    try:
        args = small_app_args(str(package), api_key_env="BIRDRAY_TEST_KEY", **GUARD)
        with deployed(serve_http, "guarded", **args) as url:
            yield url
    finally:
        os.environ.pop("BIRDRAY_TEST_KEY", None)


def test_api_key_required_when_configured(guarded):
    url, data = guarded, encode(random_rgb(13), "PNG")
    assert_error(post_images(url, [("a.png", data, "image/png")]), 401, "unauthorized", None)
    for wrong in ("nope", ""):
        sent = post_images(url, [("a.png", data, "image/png")], headers={"X-API-Key": wrong})
        assert_error(sent, 401, "unauthorized", None)
    assert requests.get(f"{url}/v1/model", timeout=10).status_code == 401
    good = post_images(url, [("a.png", data, "image/png")], headers={"X-API-Key": KEY})
    assert good.status_code == 200 and good.json()["results"][0]["ok"]
    for padded in (f"{KEY} ", f"{KEY}\t"):  # RFC 9110: not part of the value (HAProxy's view)
        sent = requests.get(f"{url}/v1/model", headers={"X-API-Key": padded}, timeout=10)
        assert sent.status_code == 200, (repr(padded), sent.text)
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes stay open
    fields = {"predicted": "x", "model_version": "y", "species": "z"}
    assert_error(send_feedback(url, data, **fields), 401, "unauthorized", None)
    disabled = send_feedback(url, data, headers={"X-API-Key": KEY}, **fields)
    assert_error(disabled, 404, "feedback_disabled", None)  # no registry, no feedback_dir


def _slow_upload(url: str) -> socket.socket:
    """A client that sends the headers and the first bytes of a 100 kB body, then stalls."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    head = (
        f"POST {parts.path}/v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"X-API-Key: {KEY}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
        "Content-Length: 100000\r\n\r\n--xyz\r\n"
    )
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_overload_and_slow_clients_get_503_and_504_in_the_error_shape(guarded):
    from ray.serve.context import _get_global_client

    assert _get_global_client().http_config.request_timeout_s  # the proxy's backstop is set
    data, headers = encode(random_rgb(14), "PNG"), {"X-API-Key": KEY}
    stalled = _slow_upload(guarded)
    try:
        # while the stalled upload holds the only slot, others are turned away at once
        deadline = time.monotonic() + GUARD["request_timeout_s"]
        busy = post_images(guarded, [("a.png", data, "image/png")], headers=headers)
        while busy.status_code == 200 and time.monotonic() < deadline:
            if select.select([stalled], [], [], 0)[0]:
                # a loaded machine let a quick request reach the app first: the stalled upload
                # was the one turned away (right: one slot), so stall again
                status, body = _read_response(stalled)
                assert status == 503 and body["error"]["code"] == "busy", body
                stalled.close()
                stalled = _slow_upload(guarded)
                deadline = time.monotonic() + GUARD["request_timeout_s"]
            time.sleep(0.1)  # the stalled request may not have reached the app yet
            busy = post_images(guarded, [("a.png", data, "image/png")], headers=headers)
        assert_error(busy, 503, "busy", None)
        assert busy.headers["Retry-After"] == "1"
        # the stalled upload ends at the app's deadline, in the same JSON shape
        status, body = _read_response(stalled)
    finally:
        stalled.close()
    assert status == 504 and body["error"]["code"] == "timeout", body
    ok = post_images(guarded, [("a.png", data, "image/png")], headers=headers)  # slot freed
    assert ok.status_code == 200 and ok.json()["results"][0]["ok"]


def test_people_answering_new_photos_leave_one_row_each(app, predictor, feedback_dir, tmp_path):
    """The demo's loop, first half: predict over HTTP, answer each photo with its true species."""
    from birdray.feedback.loop import send_answers

    names = predictor.metadata.class_names
    photos = []
    for i in range(4):
        path = tmp_path / f"new_{i}.jpg"
        random_rgb(60 + i).save(path, format="JPEG")
        photos.append((path, names[i % len(names)]))
    before = {r["sha256"] for r in read_feedback(str(feedback_dir)).to_pylist()}
    sent = send_answers(app, photos)
    assert sent["sent"] == 4 and len(sent["right"]) + len(sent["wrong"]) == 4
    rows = [r for r in read_feedback(str(feedback_dir)).to_pylist() if r["sha256"] not in before]
    assert len(rows) == 4
    by_truth = {truth: path for path, truth in photos}
    corrected = {r["answer"] for r in rows if r["verdict"] == "corrected"}
    assert corrected == {truth for _, truth in sent["wrong"]}
    assert all(r["answer"] in by_truth for r in rows)
