"""The Models page's "Live rollout" under ``AppTest``, against a live Serve app running a shadow
rollout (its ``GET /v1/rollout``) and the real registry behind it."""

from __future__ import annotations

import time

import pytest
import requests
import streamlit as st

from birdray.registry import promote, register, set_alias
from tests.dashboard_fixtures import dump, no_exceptions, texts
from tests.model_fixture import make_package
from tests.serve_fixtures import (
    deployed,
    encode,
    post_images,
    random_rgb,
    small_app_args,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
PAGE = "views/models.py"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """production -> v0001; candidate -> v0002 (v0001's weights, a higher temperature)."""
    root = tmp_path_factory.mktemp("dash_rollout")
    reg = str(root / "registry")
    register(reg, make_package(root / "p", num_classes=4, seed=0))
    register(reg, make_package(root / "q", num_classes=4, seed=0, temperature=3.0))
    promote(reg, "v0001")
    set_alias(reg, "candidate", "v0002")
    return reg


def test_live_rollout_shows_versions_agreement_and_histograms(serve_http, registry, app_test):
    args = small_app_args("production", registry=registry, feedback_dir="")
    args.update(candidate="candidate", rollout="shadow", rollout_share=1.0)
    with deployed(serve_http, "dashrollout", **args) as url:
        for i in range(6):
            image = [("b.png", encode(random_rgb(70 + i), "PNG"), "image/png")]
            assert post_images(url, image).status_code == 200
        deadline = time.monotonic() + 60  # shadow calls finish after their responses
        while time.monotonic() < deadline:
            shadow = requests.get(f"{url}/v1/rollout", timeout=10).json()["shadow"]
            if shadow and shadow[0]["compared"] == 6:
                break
            time.sleep(0.5)
        at = app_test(PAGE, BIRDRAY_SERVE_URL=url, BIRDRAY_REGISTRY=registry)
        no_exceptions(at)
        shown = {m.label: m.value for m in at.metric}
        assert shown["Mode"] == "shadow", dump(at)
        assert shown["Candidate share"] == "100%"
        assert (shown["Production (served)"], shown["Candidate (served)"]) == ("v0001", "v0002")
        assert shown["Shadow agreement (same top-1)"] == "100.0%"  # the same weights
        assert shown["Images compared"] == "6"
        assert shown["Mean confidence difference (candidate - production)"].startswith("-")
        assert any("candidate → v0002" in c and "production → v0001" in c
                   for c in texts(at, "caption"))  # fmt: skip
        marks = texts(at, "markdown")
        assert "**Confidence, production v0001** (6 images)" in marks
        assert "**Confidence, candidate v0002** (6 images)" in marks
        table = next(t.value for t in at.dataframe if "role" in t.value.columns)
        assert table.set_index("role")["requests answered"].to_dict() == {
            "production": 6,
            "candidate": 0,  # shadow: the candidate answered no one
        }
        # the registry moves on (promote candidate) before Serve is told: the page says so
        promote(registry, "v0002")
        st.cache_data.clear()  # the page re-reads the registry every 15 s; the test won't wait
        at = app_test(PAGE, BIRDRAY_SERVE_URL=url, BIRDRAY_REGISTRY=registry)
        no_exceptions(at)
        assert any("registry's production is v0002" in w for w in texts(at, "warning"))
