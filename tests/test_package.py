"""The model package: round trip, hash verification, safe loading, calibrated predictions."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from birdray.images import ImageError, decode_image
from birdray.model.crop import decode_for_model, decode_side, eval_geometry
from birdray.model.errors import ModelError
from birdray.model.inference import Predictor
from birdray.model.package import load_package, read_metadata, update_metadata, verify_package
from birdray.model.preprocess import build_transform
from tests.model_fixture import make_package


def test_round_trip_same_logits(tmp_path):
    path = make_package(tmp_path / "pkg", num_classes=5)
    pkg = load_package(path)
    again = load_package(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(pkg.model(x), again.model(x))
    meta = read_metadata(path)
    assert meta.num_classes == 5 and len(meta.class_names) == 5
    assert meta.data_config["input_size"] == [3, 64, 64]
    assert len(meta.content_hash) == 64


def test_tampered_weights_are_refused(tmp_path):
    path = make_package(tmp_path / "pkg")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match"):
        load_package(path)


def test_a_digest_given_is_checked_instead_of_hashing_again(tmp_path, monkeypatch):
    """``register_once`` hashes the weights once and passes the digest to ``register``: the
    package is still checked against it (metadata, header, hash), the file is not read again."""
    import birdray.model.package as package

    path = make_package(tmp_path / "pkg")
    digest = read_metadata(path).content_hash
    monkeypatch.setattr(package, "file_sha256", lambda *a: pytest.fail("hashed again"))
    assert verify_package(path, digest).content_hash == digest
    with pytest.raises(ModelError, match="does not match"):
        verify_package(path, "0" * 64)  # weights that changed since they were hashed


def test_pickle_file_is_never_loaded(tmp_path):
    path = make_package(tmp_path / "pkg")
    (path / "model.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    update_metadata(path, content_hash="")
    with pytest.raises(Exception) as info:
        load_package(path)
    assert "pickle" not in type(info.value).__name__.lower()


@pytest.mark.parametrize("name", ["class_names", "image_size"])  # image_size: a TypeError
def test_missing_metadata_field_is_clear(tmp_path, name):
    path = make_package(tmp_path / "pkg")
    meta = json.loads((path / "metadata.json").read_text())
    del meta[name]
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=name):
        load_package(path)


def test_temperature_softens_confidence(tmp_path):
    path = make_package(tmp_path / "pkg", num_classes=4)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    sharp = Predictor(str(path), device="cpu").predict_images([img], top_k=3)[0]
    update_metadata(path, temperature=50.0)
    soft = Predictor(str(path), device="cpu").predict_images([img], top_k=3)[0]
    assert sharp.label == soft.label
    assert soft.confidence < sharp.confidence
    assert abs(sum(t["probability"] for t in soft.top_k) - 1) > 0  # top-3 of 4 classes
    assert soft.confidence == pytest.approx(0.25, abs=0.02)


def test_uint8_crops_become_the_model_input_on_its_device_unchanged_in_value(tmp_path):
    # scoring and Serve hand the predictor uint8 crops; it moves the bytes, then normalises
    predictor = Predictor(str(make_package(tmp_path / "pkg", num_classes=4)), device="cpu")
    config = predictor.metadata.data_config
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    before = pixels.clone()
    batch = predictor.from_uint8(pixels)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    assert batch.device == predictor.device and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, (pixels.float() / 255 - mean) / std, atol=1e-5, rtol=0)
    assert torch.equal(pixels, before)  # the caller's bytes are not touched


def _data_config(size: int, interpolation: str = "bilinear", crop_mode: str = "center") -> dict:
    """A timm data config as a package stores it."""
    return {
        "input_size": [3, size, size],
        "interpolation": interpolation,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "crop_pct": 0.875,
        "crop_mode": crop_mode,
    }


def _encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_eval_geometry_inverts_the_eval_transform():
    cfg = _data_config(64)
    w, h = 300, 180
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[90:100, 160:170] = 255  # a bright patch at original (165, 95)
    tensor = build_transform(cfg, training=False)(Image.fromarray(img))
    ys, xs = np.nonzero(tensor[0].numpy() > 0.5)
    geom = eval_geometry(cfg, w, h)
    ox, oy = geom.to_original(np.array([xs.mean()]), np.array([ys.mean()]))
    assert ox[0] == pytest.approx(165, abs=2.5) and oy[0] == pytest.approx(95, abs=2.5)


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_model_input_decode_is_smaller_as_strict_and_nearly_the_same(crop_mode):
    """A large JPEG decodes at a reduced scale that still covers the eval transform's resize,
    fails on truncation like a full decode, and gives the model nearly the same pixels."""
    cfg = _data_config(128, "bicubic", crop_mode)
    side = decode_side(cfg)
    assert side == 147  # ceil(128 / 0.875): the short side timm's eval resize produces
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((1600, 1200), Image.Resampling.BICUBIC)
    data = _encoded(photo)

    quick, full = decode_for_model(data, cfg), decode_image(data)
    assert (quick.width, quick.height) == (full.width, full.height) == (1600, 1200)
    assert quick.image.size == (200, 150)  # 1/8 scale: both sides still >= 147
    transform = build_transform(cfg, training=False, uint8=True)
    a = transform(quick.image).numpy().astype(int)
    b = transform(full.image).numpy().astype(int)
    assert a.shape == b.shape == (3, 128, 128)
    assert np.abs(a - b).mean() < 2.0  # a few levels apart at most, on average

    assert decode_for_model(_encoded(photo, "PNG"), cfg).image.size == (1600, 1200)  # JPEG only
    tiny = decode_for_model(_encoded(photo.resize((200, 150))), cfg)
    assert tiny.image.size == (200, 150)  # below 2x the side: decoded in full
    with pytest.raises(ImageError):
        decode_for_model(data[: len(data) * 2 // 3], cfg)  # truncated: refused as in full


def _rehash(path, weights: bytes) -> None:
    """Weights replaced by ``weights`` with a matching ``content_hash``: only the format can
    tell them apart from a real package."""
    import hashlib

    (path / "model.safetensors").write_bytes(weights)
    update_metadata(path, content_hash=hashlib.sha256(weights).hexdigest())


@pytest.mark.parametrize("kind", ["random", "truncated", "pickle"])
def test_weights_that_are_not_whole_safetensors_are_refused_from_the_header(tmp_path, kind):
    path = make_package(tmp_path / "pkg")
    real = (path / "model.safetensors").read_bytes()
    weights = {
        "random": np.random.default_rng(0).bytes(5000),
        "truncated": real[: len(real) // 2],
        "pickle": b"\x80\x04K\x01.",
    }[kind]
    _rehash(path, weights)
    with pytest.raises(ModelError, match="not a whole safetensors file"):
        verify_package(path)


@pytest.mark.parametrize("hash_", ["", None], ids=["empty", "missing"])
def test_a_package_without_content_hash_is_refused(tmp_path, hash_):
    path = make_package(tmp_path / "pkg")
    meta = json.loads((path / "metadata.json").read_text())
    if hash_ is None:
        del meta["content_hash"]
    else:
        meta["content_hash"] = hash_
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="no content_hash"):
        verify_package(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_classes": "many"}, "num_classes is 'many'"),
        ({"class_names": 7}, "class_names is 7"),
        ({"arch": 3}, "arch is 3"),
        ({"schema_version": "2"}, "schema_version is '2'"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"data_config": []}, "data_config"),
        ({"num_classes": 3}, "4 class_names for num_classes 3"),
    ],
)
def test_metadata_fields_of_the_wrong_type_are_named(tmp_path, change, message):
    path = make_package(tmp_path / "pkg")
    meta = {**json.loads((path / "metadata.json").read_text()), **change}
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=message) as info:
        read_metadata(path)
    assert str(path / "metadata.json") in str(info.value)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"42", "holds a JSON int"),
        (b'"arch num_classes"', "holds a JSON str"),
        (b"[]", "holds a JSON list"),
        (b'{"arch": ', "not valid JSON"),
    ],
)
def test_malformed_metadata_is_one_model_error_naming_the_file(tmp_path, raw, message):
    path = make_package(tmp_path / "pkg")
    (path / "metadata.json").write_bytes(raw)
    with pytest.raises(ModelError, match=message) as info:
        verify_package(path)
    assert str(path / "metadata.json") in str(info.value)
