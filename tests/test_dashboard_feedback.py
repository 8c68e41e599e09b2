"""Feedback from the dashboard under ``AppTest``: Classify's Correct/Wrong buttons and the Review
page, against a live Serve app (a registry version, so feedback goes to ``<registry>/feedback``).

Every answer is checked where it lands: the feedback store, read with its own API. The review
sets are made by real batch scoring (``run_scoring`` with ``review_below``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from birdray.feedback.store import read_all, read_feedback
from birdray.registry import register
from birdray.scoring.job import ScoreConfig, run_scoring
from birdray.scoring.review import read_review
from tests.dashboard_fixtures import (
    dump,
    image_captions,
    no_exceptions,
    texts,
)
from tests.model_fixture import make_package
from tests.serve_fixtures import deployed, encode, random_rgb

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

PROFILE = {"crown": 0.5, "breast": 0.3, "tail": 0.2}
REVIEW = "views/review.py"


@pytest.fixture(scope="module")
def served(serve_http, tmp_path_factory):
    """(url, registry, version): v0001 of a registry (with part profiles), served."""
    root = tmp_path_factory.mktemp("dash_feedback")
    package = make_package(root / "pkg", num_classes=4, seed=5)
    (package / "explain").mkdir()
    profiles = {"method": "gradcam", "classes": {str(i): PROFILE for i in range(4)}}
    (package / "explain" / "part_profiles.json").write_text(json.dumps(profiles))
    registry = str(root / "registry")
    version = register(registry, package)
    args = {
        "model": version,
        "registry": registry,
        "explain": False,
        "torch_threads": 1,
        "model_num_cpus": 0.25,
        "ingress_num_cpus": 0.25,
    }
    with deployed(serve_http, "dashfeedback", **args) as url:
        yield url, registry, version


def stored(registry: str) -> dict[str, dict]:
    return {r["sha256"]: r for r in read_feedback(f"{registry}/feedback").to_pylist()}


def scored(tmp_path, model: str, registry: str, n: int = 3, seed: int = 60) -> str:
    """A real scoring output with every photo in its review set."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(n):
        (photos / f"bird{i}.jpg").write_bytes(encode(random_rgb(seed + i, (120, 90)), "JPEG"))
    out = tmp_path / "scored"
    cfg = ScoreConfig(
        input=str(photos),
        output=str(out),
        model=model,
        registry=registry,
        batch_size=4,
        preprocess_cpus=0.5,
        actor_cpus=1.0,
        review_below=1.0,
    )
    assert run_scoring(cfg)["review"]["rows"] == n
    return str(out)


def test_correct_and_wrong_on_classify_are_stored(served, app_test):
    url, registry, version = served
    data = encode(random_rgb(77, (120, 90)), "JPEG")
    digest = hashlib.sha256(data).hexdigest()
    at = app_test(BIRDRAY_SERVE_URL=url, BIRDRAY_REGISTRY=registry)
    at.file_uploader(key="uploads").set_value(("mine.jpg", data, "image/jpeg"))
    at.run()
    no_exceptions(at)
    state = f"feedback-0-{digest[:16]}"
    at.button(key=f"{state}-correct").click()
    at.run()
    no_exceptions(at)
    row = stored(registry)[digest]
    assert row["verdict"] == "confirmed" and row["model_version"] == version, row["verdict"]
    assert row["image"] == data and row["answer"] == row["predicted"]
    assert any(s.startswith("Saved:") and "confirmed" in s for s in texts(at, "success"))

    at.button(key=f"{state}-wrong").click()
    at.run()
    picker = at.selectbox(key=f"{state}-species")
    other = next(c for c in picker.options if c != row["predicted"].split(".", 1)[-1])
    assert {"not a bird", "unsure"} <= set(picker.options)
    picker.select_index(picker.options.index(other))
    at.run()
    at.button(key=f"{state}-send").click()
    at.run()
    no_exceptions(at)
    corrected = stored(registry)[digest]
    assert corrected["verdict"] == "corrected", dump(at)
    assert corrected["answer"].split(".", 1)[-1].replace("_", " ") == other
    assert any("corrected" in s for s in texts(at, "success"))


def test_review_page_walks_the_review_set_and_records_answers(served, app_test, tmp_path):
    url, registry, version = served
    out = scored(tmp_path, version, registry)
    review = read_review(out).to_pylist()
    hashes = {r["path"]: hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in review}
    env = dict(BIRDRAY_SERVE_URL=url, BIRDRAY_REGISTRY=registry, BIRDRAY_SCORE_DIR=out)
    at = app_test(REVIEW, **env)
    no_exceptions(at)
    assert "**3** photo(s) to review: **0** labelled, **3** pending" in texts(at, "markdown")
    first = review[0]
    assert any(first["path"] in c for c in image_captions(at)), dump(at)
    labels = [at.button(key=f"review-top-{i}").label for i in range(3)]
    assert labels == [c["species"].split(".", 1)[-1].replace("_", " ") for c in first["top_k"][:3]]
    assert any("Parts that usually decide" in m for m in texts(at, "markdown")), dump(at)

    at.button(key="review-top-1").click().run()  # the second candidate is the right one
    no_exceptions(at)
    row = stored(registry)[hashes[first["path"]]]
    assert row["answer"] == first["top_k"][1]["species"] and row["predicted"] == first["species"]
    assert "**3** photo(s) to review: **1** labelled, **2** pending" in texts(at, "markdown")
    assert any(review[1]["path"] in c for c in image_captions(at))  # moved on

    at.button(key="review-skip").click().run()
    assert any(review[2]["path"] in c for c in image_captions(at))
    at.button(key="review-not-a-bird").click().run()
    assert stored(registry)[hashes[review[2]["path"]]]["answer"] == "not_a_bird"
    assert any(review[1]["path"] in c for c in image_captions(at))  # the skipped one comes back
    at.button(key="review-unsure").click().run()
    assert stored(registry)[hashes[review[1]["path"]]]["verdict"] == "unsure"
    assert "Every photo in this review set is labelled." in texts(at, "success")

    again = app_test(REVIEW, **env)  # a new session: the store says what is answered already
    assert "**3** photo(s) to review: **3** labelled, **0** pending" in texts(again, "markdown")


def test_review_answers_for_another_model_are_refused_plainly(served, app_test, tmp_path):
    url, registry, version = served
    other = make_package(tmp_path / "other", num_classes=4, seed=9)
    out = scored(tmp_path, str(other), "", n=2, seed=90)  # photos not answered before
    before = read_all(f"{registry}/feedback").num_rows
    at = app_test(REVIEW, BIRDRAY_SERVE_URL=url, BIRDRAY_REGISTRY=registry, BIRDRAY_SCORE_DIR=out)
    assert any(f"serves {version}" in w for w in texts(at, "warning")), dump(at)
    at.button(key="review-unsure").click().run()
    no_exceptions(at)
    (error,) = texts(at, "error")
    assert error.startswith("Not saved: wrong_model_version") and "\n" not in error
    assert "**2** pending" in " ".join(texts(at, "markdown"))
    assert read_all(f"{registry}/feedback").num_rows == before


def test_no_review_set_is_said_plainly(app_test, tmp_path):
    at = app_test(REVIEW, BIRDRAY_SCORE_DIR=str(tmp_path / "nothing"))
    no_exceptions(at)
    (error,) = texts(at, "error")
    assert "No review set in" in error and "--review-below" in error


def test_a_bad_feedback_store_is_said_on_review_not_shown_as_unanswered(
    ray_cluster, app_test, tmp_path
):
    """A zero-byte part in the store: before, the Review page read nothing and showed every
    photo as pending without a word (the other answers silently dropped); now it says which
    file is bad. No Serve is needed to see it (the service URL is a closed port)."""
    from birdray.feedback.store import Feedback, append

    package = make_package(tmp_path / "pkg", num_classes=4, seed=3)
    out = scored(tmp_path, str(package), "", n=2, seed=120)
    first = read_review(out).to_pylist()[0]
    registry = tmp_path / "registry"
    image = Path(first["path"]).read_bytes()
    append(str(registry / "feedback"), [Feedback(image, "a.jpg", "v1", first["species"], "unsure")])
    bad = registry / "feedback" / "00000000000000000001-bad.parquet"
    bad.write_bytes(b"")
    env = dict(BIRDRAY_SERVE_URL="http://127.0.0.1:9", BIRDRAY_REGISTRY=str(registry))
    at = app_test(REVIEW, BIRDRAY_SCORE_DIR=out, **env)
    no_exceptions(at)
    warnings = [w for w in texts(at, "warning") if "feedback store could not be read" in w]
    assert len(warnings) == 1, dump(at)
    assert str(bad) in warnings[0] and "is empty (0 bytes)" in warnings[0]
    assert "the other 1 of 2 files are readable" in warnings[0]


def test_the_picker_offers_unsure_only_where_feedback_would_read_it_so():
    """With a class ``002.Unsure`` the picker offered it and "unsure"; choosing "unsure" ("I'm
    not sure") was stored as that class, corrected, a training label. Offered as Serve reads."""
    from birdray.dashboard.feedback_ui import answer_options

    assert answer_options(["001.Robin", "002.Wren"]) == [
        "001.Robin",
        "002.Wren",
        "not_a_bird",
        "unsure",
    ]
    assert answer_options(["001.Robin", "002.Unsure"]) == ["001.Robin", "002.Unsure", "not_a_bird"]
    assert answer_options(["not_a_bird", "robin"]) == ["not_a_bird", "robin", "unsure"]
