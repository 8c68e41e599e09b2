"""Serve pieces that need no cluster: model pinning, args checking, upload checks, serve build."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from PIL import Image

from birdray.config import ConfigError
from birdray.registry import promote, register
from birdray.serve.app import build_app, pin_model
from birdray.serve.errors import ApiError
from birdray.serve.uploads import Limits, Upload, decode_upload
from tests.model_fixture import make_package
from tests.serve_fixtures import encode, random_rgb

LIMITS = Limits(
    max_upload_bytes=100_000, max_request_bytes=400_000, max_files=4, max_pixels=1_000_000,
    max_aspect_ratio=10.0,
)  # fmt: skip


@pytest.fixture
def registry(tmp_path):
    reg = str(tmp_path / "reg")
    for seed in (0, 1):
        register(reg, make_package(tmp_path / f"p{seed}", seed=seed))
    promote(reg, "v0001")
    return reg


def test_pin_model_turns_pointers_into_versions(registry, tmp_path):
    assert pin_model("production", registry)[0] == "v0001"
    assert pin_model("latest", registry)[0] == "v0002"
    assert pin_model("v0002", registry)[0] == "v0002"
    from birdray.registry import set_alias

    set_alias(registry, "candidate", "v0002")
    assert pin_model("candidate", registry)[0] == "v0002"  # a canary serves a pinned alias
    package = make_package(tmp_path / "loose")
    assert pin_model(str(package), None) == (str(package.resolve()), None)
    with pytest.raises(ValueError, match="no registry"):
        pin_model("production", None)
    with pytest.raises(ValueError, match="no production model"):
        pin_model("production", str(tmp_path / "empty"))


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
    assert set(classifier["user_config"]) == {
        "model",
        "registry",
        "max_batch_size",
        "batch_wait_timeout_s",
    }
    assert classifier["ray_actor_options"]["num_gpus"] == 0
