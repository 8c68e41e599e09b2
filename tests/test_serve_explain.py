"""``POST /v1/explain`` over Serve: the same model version as ``/v1/predict``, bounded load."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from birdray.explain.locate import LOCATOR_FILE
from birdray.model.crop import decode_for_model
from birdray.model.package import read_metadata
from tests.model_fixture import fit_test_locator, make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    post_images,
    random_rgb,
    small_app_args,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

PROFILE = {"crown": 0.5, "breast": 0.3, "tail": 0.2}
STORED = "saliency"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pkg = make_package(tmp_path_factory.mktemp("serve_explain") / "pkg", num_classes=4, seed=3)
    (pkg / "explain").mkdir()
    profiles = {"method": "gradcam", "classes": {str(i): PROFILE for i in range(4)}}
    (pkg / "explain" / "part_profiles.json").write_text(json.dumps(profiles))
    # what explain-eval stores: the measured default method (here not Grad-CAM, the fallback),
    # whose faithfulness tests failed for this (untrained) model
    row = {
        "method": STORED,
        "sanity_passed": True,
        "faithfulness": {"morf_vs_lerf": "fail: ...", "morf_vs_random_region": "pass: ..."},
    }
    methods = {"default": STORED, "table": [row]}  # fmt: skip
    (pkg / "explain" / "methods.json").write_text(json.dumps(methods))
    (pkg / "explain" / LOCATOR_FILE).write_text(json.dumps(fit_test_locator(pkg)))
    return pkg


@pytest.fixture(scope="module")
def app(serve_http, package):
    args = small_app_args(
        str(package), explain=True, explain_num_cpus=0.25,
        explain_max_ongoing_requests=1, explain_max_queued_requests=1,
    )  # fmt: skip
    with deployed(serve_http, "explain", **args) as url:
        yield url


def post_explain(url: str, data: bytes, **params) -> requests.Response:
    files = {"file": ("bird.png", data, "image/png")}
    return requests.post(f"{url}/v1/explain", params=params, files=files, timeout=120)


def test_explain_uses_the_served_model_version(app):
    image = random_rgb(21, (130, 90))  # non-square: the overlay must keep the original size
    data = encode(image, "PNG")
    predicted = post_images(app, [("bird.png", data, "image/png")]).json()
    resp = post_explain(app, data, method="gradcam")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    served = predicted["results"][0]
    assert body["model_version"] == served["model_version"] == predicted["model"]["version"]
    assert body["method"] == "gradcam"
    assert body["prediction"]["label"] == served["prediction"]["label"]
    assert body["prediction"]["confidence"] == pytest.approx(
        served["prediction"]["confidence"], abs=1e-4
    )
    assert body["target"]["label"] == served["prediction"]["label"]  # default: predicted class
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == image.size
    assert 1 <= len(body["regions"]) <= 3
    assert {"x", "y", "w", "h", "share"} <= set(body["regions"][0])
    assert body["part_profile"] == dict(sorted(PROFILE.items(), key=lambda kv: -kv[1]))
    # the answer in parts: located on the photo, ranked by their share of the map
    parts = body["parts"]
    assert parts["available"] and len(parts["located"]) == 15
    assert all(0 <= p["x"] <= 130 and 0 <= p["y"] <= 90 for p in parts["located"])
    assert len(parts["top"]) <= 3 and all(0 <= p["share"] <= 1 for p in parts["ranking"])
    assert [p["share"] for p in parts["ranking"]] == sorted(
        (p["share"] for p in parts["ranking"]), reverse=True
    )
    shown = {p["part"] for p in parts["located"] if p["visible"]}
    assert {p["part"] for p in parts["ranking"]} == shown
    # why this and not the runner-up: the next most probable class, its own map and parts
    contrast = body["contrast"]
    assert contrast["available"] and contrast["runner_up"]["label"] != body["target"]["label"]
    runner = Image.open(io.BytesIO(base64.b64decode(contrast["overlay_png_base64"])))
    assert runner.size == image.size
    assert {r["part"] for r in contrast["profile_difference"]} == set(PROFILE)
    # Grad-CAM was never evaluated for this model: a hint, not evidence
    assert body["reliability"]["status"] == "unverified"


def test_a_large_jpeg_is_explained_at_the_models_scale_in_the_photos_pixels(app, package):
    """As /v1/predict: the JPEG decodes at the DCT scale the model needs (same confidence as
    /v1/predict), is explained at the size the model's resize gives it, and boxes and parts come
    back in the photo's pixels: exactly the answer for that smaller picture sent as a PNG (never
    draft-scaled, shrunk the same way), its coordinates scaled up."""
    jpeg = encode(random_rgb(25, (2000, 1500)), "JPEG", quality=90)
    small = decode_for_model(jpeg, read_metadata(package).data_config).image
    assert small.size == (250, 188)  # 1/8 scale: still covers this model's 64-px input
    big = post_explain(app, jpeg, method="gradcam").json()
    ref = post_explain(app, encode(small, "PNG"), method="gradcam").json()
    predicted = post_images(app, [("bird.jpg", jpeg, "image/jpeg")]).json()["results"][0]
    assert big["prediction"] == ref["prediction"]
    assert big["prediction"]["confidence"] == pytest.approx(
        predicted["prediction"]["confidence"], abs=1e-5
    )
    assert big["image"] == {"width": 2000, "height": 1500}
    # the eval resize's size (short side floor(64 / 0.95) = 67), not the 250x188 decode
    assert big["overlay_size"] == ref["overlay_size"] == {"width": 89, "height": 67}
    overlay = Image.open(io.BytesIO(base64.b64decode(big["overlay_png_base64"])))
    assert overlay.size == (89, 67) and big["overlay_png_base64"] == ref["overlay_png_base64"]
    # both in their photo's pixels, each rounded there: within one of ref's pixels
    sx, sy = 2000 / 250, 1500 / 188
    assert big["regions"] and len(big["regions"]) == len(ref["regions"])
    for mine, theirs in zip(big["regions"], ref["regions"], strict=True):
        assert mine["share"] == pytest.approx(theirs["share"])
        assert abs(mine["x"] - theirs["x"] * sx) <= sx and abs(mine["y"] - theirs["y"] * sy) <= sy
        right, bottom = (theirs["x"] + theirs["w"]) * sx, (theirs["y"] + theirs["h"]) * sy
        assert abs(mine["x"] + mine["w"] - min(2000, right)) <= sx
        assert abs(mine["y"] + mine["h"] - min(1500, bottom)) <= sy
    located = big["parts"]["located"]
    for mine, theirs in zip(located, ref["parts"]["located"], strict=True):
        assert mine["part"] == theirs["part"] and mine["visible"] == theirs["visible"]
        assert mine["x"] == pytest.approx(theirs["x"] * sx)
        assert mine["y"] == pytest.approx(theirs["y"] * sy)
    assert max(p["x"] for p in located) > 250  # photo pixels, not the explained picture's
    assert big["parts"]["ranking"] == ref["parts"]["ranking"]


def test_a_small_png_of_a_huge_picture_costs_what_a_photo_costs(app):
    """A 121 KB PNG of 6000x6000 took ~35 s of the explainer (overlays at full size), where the
    same picture as JPEG decoded at 1/8: now every format is explained at the model's scale,
    with the confidence /v1/predict gives, in the photo's pixels."""
    ramp = np.linspace(0, 255, 4000).astype(np.uint8)
    picture = np.stack([np.tile(ramp, (3000, 1)), np.tile(ramp[:3000, None], (1, 4000)),
                        np.full((3000, 4000), 90, np.uint8)], -1)  # fmt: skip
    data = encode(Image.fromarray(picture), "PNG")
    assert len(data) < 300_000  # small to send, 12 Mpx to draw
    predicted = post_images(app, [("huge.png", data, "image/png")]).json()["results"][0]
    start = time.perf_counter()
    resp = post_explain(app, data, method="gradcam")
    seconds = time.perf_counter() - start
    assert resp.status_code == 200, resp.text
    body = resp.json()
    print(f"\nexplained 4000x3000 PNG in {seconds:.2f} s ({body['timing_ms']})")
    assert body["image"] == {"width": 4000, "height": 3000}
    assert body["overlay_size"] == {"width": 89, "height": 67}
    assert body["prediction"]["label"] == predicted["prediction"]["label"]
    assert body["prediction"]["confidence"] == pytest.approx(
        predicted["prediction"]["confidence"], abs=1e-5
    )
    assert all(p["x"] <= 4000 and p["y"] <= 3000 for p in body["parts"]["located"])
    assert max(r["x"] + r["w"] for r in body["regions"]) > 89  # photo pixels
    assert body["timing_ms"]["explain"] < 5000  # was ~8 s for 12 Mpx on 2 cores


def test_explain_without_a_method_uses_the_packages_measured_default(app):
    data = encode(random_rgb(24, (90, 70)), "PNG")
    body = post_explain(app, data).json()
    assert body["method"] == body["default_method"] == STORED
    # the measured default failed a faithfulness test on this model: the answer says so
    assert body["reliability"]["status"] == "unreliable"
    assert body["reliability"]["failed"] == ["morf_vs_lerf"]
    asked = post_explain(app, data, method="gradcam_early").json()
    assert asked["method"] == "gradcam_early" and asked["default_method"] == STORED
    model = requests.get(f"{app}/v1/model", timeout=30).json()  # what a client preselects
    assert model["explain_method"] == STORED


def test_explain_target_method_and_errors(app):
    data = encode(random_rgb(22), "PNG")
    by_number = post_explain(app, data, method="saliency", target="003").json()
    assert by_number["target"] == {"label": 2, "species": "003.Species_3"}
    by_label = post_explain(app, data, method="gradcam", target="0").json()  # no species 000
    assert by_label["target"] == {"label": 0, "species": "001.Species_1"}
    by_name = post_explain(app, data, method="integrated_gradients", target="Species_3").json()
    assert by_name["target"]["label"] == 2 and by_name["method"] == "integrated_gradients"
    for params, code in [
        ({"method": "lime"}, "invalid_parameter"),
        ({"target": "Dodo"}, "invalid_parameter"),
        ({"target": "7"}, "invalid_parameter"),  # no label 7, no species spelled "7"
    ]:
        resp = post_explain(app, data, **params)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == code
    bad = post_explain(app, b"not an image at all")
    assert bad.status_code == 415
    assert bad.json()["error"] == {
        "code": "not_an_image",
        "message": bad.json()["error"]["message"],
        "file": "bird.png",
    }


def test_explain_overload_is_refused_while_predict_answers(app):
    data = encode(random_rgb(23, (200, 200)), "PNG")
    with ThreadPoolExecutor(10) as pool:
        explains = [
            pool.submit(post_explain, app, data, method="integrated_gradients") for _ in range(8)
        ]
        predict = pool.submit(post_images, app, [("p.png", data, "image/png")])
        statuses = [f.result().status_code for f in explains]
        busy = [
            f.result().json()["error"]["code"] for f in explains if f.result().status_code != 200
        ]
        assert predict.result().status_code == 200
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1
    assert busy and set(busy) == {"busy"}  # bounded: excess explanations refused, not queued
