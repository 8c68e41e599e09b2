"""The Classify page under ``AppTest``, against a live Serve app on the session's Ray cluster."""

from __future__ import annotations

import json

import pytest

from birdray.runtime import free_port
from tests.dashboard_fixtures import image_captions, no_exceptions, texts
from tests.model_fixture import fit_test_locator, make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    post_images,
    random_rgb,
    small_app_args,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

PROFILE = {"crown": 0.5, "breast": 0.3, "tail": 0.2}


@pytest.fixture(scope="module")
def serve_url(serve_http, tmp_path_factory):
    package = make_package(tmp_path_factory.mktemp("dash_classify") / "pkg", num_classes=4, seed=5)
    (package / "explain").mkdir()
    profiles = {"method": "gradcam", "classes": {str(i): PROFILE for i in range(4)}}
    (package / "explain" / "part_profiles.json").write_text(json.dumps(profiles))
    (package / "explain" / "part_locator.json").write_text(json.dumps(fit_test_locator(package)))
    row = {"method": "gradcam", "sanity_passed": False, "faithfulness": {}}  # failed sanity
    methods = {"default": "gradcam", "table": [row]}
    (package / "explain" / "methods.json").write_text(json.dumps(methods))
    args = small_app_args(str(package), explain=True, explain_num_cpus=0.25)
    with deployed(serve_http, "dashclassify", **args) as url:
        yield url


def api_species(url: str, name: str, data: bytes) -> str:
    """What the API itself answers for this file (the page must show exactly this)."""
    result = post_images(url, [(name, data, "image/jpeg")]).json()["results"][0]
    return result["prediction"]["species"].split(".", 1)[-1].replace("_", " ")


def test_each_photo_gets_its_answer_and_a_bad_file_its_reason(serve_url, app_test):
    good = {f"bird{i}.jpg": encode(random_rgb(i, (120, 90)), "JPEG") for i in range(2)}
    bad = ("notes.jpg", b"this is a text file, not a photo")
    at = app_test(BIRDRAY_SERVE_URL=serve_url)
    files = [(name, data, "image/jpeg") for name, data in good.items()]
    at.file_uploader(key="uploads").set_value([files[0], (*bad, "image/jpeg"), files[1]])
    at.run()
    no_exceptions(at)
    markdown = texts(at, "markdown")
    for name, data in good.items():
        assert f"### {api_species(serve_url, name, data)}" in markdown
    assert "**3** photo(s): **2** classified, **1** could not be classified" in markdown
    (error,) = texts(at, "error")
    assert "notes.jpg" in error and "not an image" in error.lower()
    assert any("calibrated confidence" in m for m in markdown)


def test_a_single_bad_file_is_explained_too(serve_url, app_test):
    at = app_test(BIRDRAY_SERVE_URL=serve_url)
    at.file_uploader(key="uploads").set_value(("empty.png", b"", "image/png"))
    at.run()
    no_exceptions(at)
    (error,) = texts(at, "error")
    assert "empty.png" in error and "The file is empty" in error


def test_explanation_on_request(serve_url, app_test):
    data = encode(random_rgb(7, (140, 100)), "JPEG")
    at = app_test(BIRDRAY_SERVE_URL=serve_url)
    at.file_uploader(key="uploads").set_value(("why.jpg", data, "image/jpeg"))
    at.run()
    assert not any("What drove" in str(c.value) for c in at.caption)  # nothing until asked
    at.toggle(key="explain-0-why.jpg").set_value(True)
    at.run()
    no_exceptions(at)
    assert not texts(at, "error")
    species = api_species(serve_url, "why.jpg", data)
    assert any(f"Parts that usually decide '{species}'" in m for m in texts(at, "markdown"))
    assert any("The strongest region holds" in str(c.value) for c in at.caption)
    # in parts, "why not the runner-up", and the evaluation's verdict on this method
    (warning,) = texts(at, "warning")
    assert "Unreliable for this model" in warning and "model_randomisation" in warning
    markdown = texts(at, "markdown")
    assert any(f"Parts behind '{species}' on this photo" in m for m in markdown) or any(
        "No bird part was recognised" in str(c.value) for c in at.caption
    )
    assert any(m.startswith(f"#### Why '{species}' and not '") for m in markdown)
    assert any(c.startswith(f"Evidence for '{species}' over '") for c in image_captions(at))


def test_service_down_is_said_plainly(app_test):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    at = app_test(BIRDRAY_SERVE_URL=down)
    assert any("Cannot reach the classification service" in w for w in texts(at, "warning"))
    at.file_uploader(key="uploads").set_value(
        ("bird.jpg", encode(random_rgb(1), "JPEG"), "image/jpeg")
    )
    at.run()
    no_exceptions(at)
    (error,) = texts(at, "error")
    assert "bird.jpg" in error and "Cannot reach the classification service" in error
    assert down in error
