"""``explain.answer``: the reliability verdict and the profile comparison, from stored numbers;
Serve's ``/v1/explain`` in front of the explainer: which model, which target, which pixels."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from birdray.explain.answer import _profile_difference, reliability

PASSED = {"morf_vs_lerf": "pass: ...", "morf_vs_random_region": "pass: ..."}


def test_reliability_follows_explain_evals_verdicts():
    table = [
        {"method": "gradcam", "sanity_passed": True, "faithfulness": PASSED},
        {"method": "saliency", "sanity_passed": True,
         "faithfulness": {**PASSED, "morf_vs_lerf": "fail: LeRF not above MoRF"}},
        {"method": "integrated_gradients", "sanity_passed": False, "faithfulness": PASSED},
    ]  # fmt: skip
    comparison = {"default": "gradcam", "table": table}
    assert reliability(comparison, "gradcam")["status"] == "reliable"
    saliency = reliability(comparison, "saliency")
    assert saliency["status"] == "unreliable" and saliency["failed"] == ["morf_vs_lerf"]
    assert "may not show what the model used" in saliency["message"]
    ig = reliability(comparison, "integrated_gradients")
    assert ig["status"] == "unreliable" and ig["failed"] == ["model_randomisation"]
    # a method (or a model) never evaluated is a hint, not evidence
    assert reliability(comparison, "gradcam_early")["status"] == "unverified"
    assert reliability(None, "gradcam")["status"] == "unverified"


def test_profile_difference_puts_the_answers_own_parts_first():
    profiles = {"classes": {0: {"crown": 0.4, "tail": 0.1}, 1: {"crown": 0.1, "tail": 0.5}}}
    rows = _profile_difference(profiles, 0, 1)
    assert [r["part"] for r in rows] == ["crown", "tail"]
    assert rows[0] == {"part": "crown", "species_share": 0.4, "runner_up_share": 0.1}
    assert _profile_difference(profiles, 0, 7) == [] and _profile_difference(None, 0, 1) == []


# --- Serve's /v1/explain in front of the explainer (``BirdIngress.explain``), without Ray -------

CUB = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
DATA_CONFIG = {
    "input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 0.875,
    "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
}  # fmt: skip


def _target(text, classes=CUB):
    from birdray.serve.ingress import BirdIngress

    return BirdIngress.func_or_class._target(None, text, classes)


def test_a_target_of_cubs_species_number_is_that_species_never_a_shifted_index():
    """``target=001`` named 002.Laysan_Albatross (read as the 0-based index 1)."""
    from birdray.serve.errors import ApiError

    assert _target("001") == 0  # not 1
    assert _target(" 001 ") == 0
    assert _target("003") == 2 and _target("Sooty_Albatross") == 2
    assert _target("002.Laysan_Albatross") == _target("laysan_albatross") == 1
    assert _target("0") == 0  # label 0: no species is numbered 0
    assert _target(None) is None and _target("") is None and _target(" ") is None
    # unpadded: a label, as /v1/predict returns it (CUB spells no species "2")
    assert _target("1") == 1 and _target("2") == 2
    # CUB's 100-199 are both a label and another species' number: refused, never guessed
    cub = [f"{i:03d}.Species_{i}" for i in range(1, 201)]
    assert _target("099", cub) == 98 and _target("99", cub) == 99 and _target("200", cub) == 199
    for text, label, number in [
        ("150", "151.Species_151", "150.Species_150"),
        ("100", "101", "100"),
    ]:
        with pytest.raises(ApiError) as info:
            _target(text, cub)
        assert (info.value.status, info.value.code) == (422, "invalid_parameter")
        message = info.value.message
        assert "ambiguous" in message and label in message and number in message
    # a model whose names carry no numbers: a number is its 0-based label, as before
    plain = ["robin", "wren", "tit"]
    assert _target("2", plain) == 2 and _target("0", plain) == 0
    # names numbered from 0 and counted as labels: the two readings agree
    assert _target("1", ["0.a", "1.b"]) == 1
    for text in ("02", "3", "-1", "²", "9" * 5000):
        with pytest.raises(ApiError):
            _target(text, plain)


class _Explainer:
    """A ``BirdExplainer`` handle: records the picture it was sent, answers as ``version``."""

    def __init__(self, version: str):
        self.version, self.images = version, []
        self.explain = self  # handle.explain.remote(...)

    async def remote(self, image, method, target):
        self.images.append(image)
        return {"model_version": self.version, "method": method or "gradcam",
                "target": {"label": target}, "regions": [], "parts": {}}  # fmt: skip


def _ingress(mode="off", share=0.0, candidate_explainer=False):
    """``BirdIngress`` with two fixed model infos and recording explainers (no Ray)."""
    from birdray.model.crop import decode_side, uint8_eval_transform
    from birdray.serve.ingress import BirdIngress
    from birdray.serve.rollout import CANDIDATE, PRODUCTION, Rollout
    from birdray.serve.uploads import Limits

    class Plain(BirdIngress.func_or_class):
        def __del__(self):  # Serve's ASGI wrapper tears down an app this one never built
            pass

    ingress = object.__new__(Plain)
    ingress._limits = Limits(2**25, 2**26, 4, 40_000_000, 20.0)
    ingress._models = {PRODUCTION: object(), CANDIDATE: object()}
    ingress._explainers = {
        PRODUCTION: _Explainer("v0001"),
        CANDIDATE: _Explainer("v0002") if candidate_explainer else None,
    }
    ingress._explainer = ingress._explainers[PRODUCTION]  # (the attribute before canaries)
    info = {"classes": CUB, "data_config": DATA_CONFIG, "config_key": "k",
            "decode_side": decode_side(DATA_CONFIG),
            "transform": uint8_eval_transform(DATA_CONFIG)}  # fmt: skip
    ingress._infos = {PRODUCTION: {**info, "version": "v0001"},
                      CANDIDATE: {**info, "version": "v0002"}}  # fmt: skip
    ingress._rollout = Rollout(mode, share, has_candidate=True)
    return ingress


def _png(size=(96, 72)) -> bytes:
    from birdray.serve.uploads import Upload

    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Upload("bird.png", "image/png", buf.getvalue())


def _client(on: str, share: float = 0.5) -> str:
    from birdray.serve.rollout import client_point

    keys = (f"client-{i}" for i in range(1000))
    return next(k for k in keys if (client_point(k) < share) == (on == "candidate"))


def test_explain_follows_the_canary_that_answers_the_clients_predict():
    """With a canary at 50 %, a client sticky to v0002 on /v1/predict was explained by v0001
    without a word: the explain route used production whatever the client key."""
    from birdray.serve.rollout import CANDIDATE, PRODUCTION

    ingress = _ingress("canary", 0.5, candidate_explainer=True)
    upload = _png()
    alice, bob = _client("candidate"), _client("production")
    assert ingress._rollout.answering(alice) == CANDIDATE  # what /v1/predict decides
    body = asyncio.run(ingress.explain(upload, None, None, alice))
    assert body["model_version"] == "v0002"
    assert body["rollout"]["predict"] == body["rollout"]["explained"] == {
        "role": CANDIDATE, "model_version": "v0002"}  # fmt: skip
    assert body["rollout"]["same_model"] and "note" not in body["rollout"]
    assert len(ingress._explainers[CANDIDATE].images) == 1
    assert not ingress._explainers[PRODUCTION].images
    body = asyncio.run(ingress.explain(upload, None, None, bob))
    assert body["model_version"] == "v0001" and body["rollout"]["same_model"]
    # no canary: production, whoever asks
    off = _ingress("off", 0.0, candidate_explainer=True)
    assert asyncio.run(off.explain(upload, None, None, alice))["model_version"] == "v0001"


def test_explain_for_a_canary_client_without_a_candidate_explainer_says_what_it_explains():
    from birdray.serve.rollout import CANDIDATE, PRODUCTION

    ingress = _ingress("canary", 0.5, candidate_explainer=False)
    body = asyncio.run(ingress.explain(_png(), "gradcam", "001", _client("candidate")))
    assert body["model_version"] == "v0001" and body["target"] == {"label": 0}
    rollout = body["rollout"]
    assert rollout["mode"] == "canary" and not rollout["same_model"]
    assert rollout["predict"] == {"role": CANDIDATE, "model_version": "v0002"}
    assert rollout["explained"] == {"role": PRODUCTION, "model_version": "v0001"}
    assert "v0002" in rollout["note"] and "no explainer" in rollout["note"]
    assert "production v0001" in rollout["note"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_huge_picture_reaches_the_explainer_at_the_models_scale_with_predicts_pixels(fmt):
    """A 121 KB PNG of 6000x6000 was explained at 6000x6000 (35 s, overlays of 36 Mpx) where
    the same picture as JPEG decoded at 1/8: now every format stops at the model's scale, and
    the model still sees exactly the pixels /v1/predict gives it."""
    from birdray.model.crop import decode_for_model, uint8_eval_transform
    from birdray.model.preprocess import build_transform
    from birdray.serve.uploads import Upload

    ramp = np.linspace(0, 255, 3000, dtype=np.uint8)
    picture = np.stack([np.tile(ramp, (2400, 1)), np.tile(ramp[:2400, None], (1, 3000)),
                        np.full((2400, 3000), 128, np.uint8)], -1)  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format=fmt)
    upload = Upload(f"huge.{fmt.lower()}", None, buf.getvalue())
    ingress = _ingress()
    body = asyncio.run(ingress.explain(upload, "gradcam", None))
    (sent,) = ingress._explainers["production"].images
    side = ingress._infos["production"]["decode_side"]
    assert min(sent.size) < 2 * side and sent.size == (91, 73)  # the eval resize's own size
    assert body["image"] == {"width": 3000, "height": 2400}
    assert body["overlay_size"] == {"width": 91, "height": 73}
    predict = decode_for_model(upload.data, DATA_CONFIG).image  # what /v1/predict decodes
    uint8 = uint8_eval_transform(DATA_CONFIG)
    assert np.array_equal(uint8(sent), uint8(predict))
    float_path = build_transform(DATA_CONFIG, training=False)  # the explainer's own transform
    assert float_path(sent).equal(float_path(predict))
    # a small photo is explained at its own size, as before
    small = _ingress()
    asyncio.run(small.explain(_png((130, 90)), None, None))
    assert small._explainers["production"].images[0].size == (130, 90)


def test_a_squash_models_huge_picture_is_resized_as_its_eval_transform_resizes_it():
    """A ``crop_mode: squash`` config took the aspect-keeping branch: the model saw pixels
    resampled twice (up to 6 levels off /v1/predict's). Squash is resized as its transform does."""
    from birdray.images import decode_image
    from birdray.model.crop import covered, uint8_eval_transform
    from birdray.serve.explain_request import at_model_scale

    squash = {**DATA_CONFIG, "crop_mode": "squash", "crop_pct": 1.0}
    assert covered(squash)
    noise = np.random.default_rng(3).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    decoded = decode_image(buf.getvalue())
    small = at_model_scale(decoded, squash, side=64)
    assert max(small.image.size) < 1200  # shrunk
    uint8 = uint8_eval_transform(squash)
    assert np.array_equal(uint8(small.image), uint8(decoded.image))
