"""The Batch page under ``AppTest``: a real scoring job via a real Ray Jobs API and its results."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from birdray.runtime import free_port
from tests.dashboard_fixtures import (
    dump,
    image_captions,
    no_exceptions,
    ray_head,
    texts,
)
from tests.model_fixture import make_package
from tests.serve_fixtures import encode, random_rgb

PAGE = "views/batch.py"


@pytest.fixture(scope="module")
def jobs_api():
    with ray_head(num_cpus=4) as (address, token):
        yield address, token


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_photos")
    for i in range(4):
        (folder / f"bird{i}.jpg").write_bytes(encode(random_rgb(40 + i, (96, 80)), "JPEG"))
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def submit_button(at):
    return next(b for b in at.button if b.label == "Submit scoring job")


def fill_form(at, **values) -> None:
    for key, value in values.items():
        widget = at.number_input(key=key) if key == "batch_explain" else at.text_input(key=key)
        widget.set_value(value)


@pytest.mark.timeout(300)
def test_form_refuses_flag_injection_before_submitting(app_test, tmp_path):
    at = app_test(PAGE, BIRDRAY_JOBS_ADDRESS=f"http://127.0.0.1:{free_port()}")
    assert any("Cannot use the Ray Jobs API" in e for e in texts(at, "error"))  # said plainly
    fill_form(at, batch_input="--overwrite", batch_output=str(tmp_path / "out"))
    submit_button(at).click()
    at.run()
    no_exceptions(at)
    assert any(
        "Please check the form: input must not start with '-'" in e for e in texts(at, "error")
    )
    assert not texts(at, "success")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_submit_follow_and_browse_a_scoring_job(jobs_api, photos, tmp_path, app_test):
    address, token = jobs_api
    package = make_package(tmp_path / "pkg", num_classes=4, seed=2)
    out = tmp_path / "scored"
    at = app_test(
        PAGE, BIRDRAY_JOBS_ADDRESS=address, RAY_AUTH_TOKEN_PATH=token, BIRDRAY_SCORE_DIR=out
    )
    no_exceptions(at)
    assert any(f"No scoring jobs on {address}" in i for i in texts(at, "info"))
    fill_form(
        at,
        batch_input=str(photos),
        batch_output=str(out),
        batch_model=str(package),
        batch_registry="",
        batch_explain=2,
    )
    submit_button(at).click()
    at.run()
    no_exceptions(at)
    assert any("Submitted job" in s for s in texts(at, "success")), texts(at, "error")

    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:  # what a person sees: the page refreshing until done
        at.run()
        no_exceptions(at)
        if any("FAILED" in e for e in texts(at, "error")):
            pytest.fail("job failed:\n" + "\n".join(str(c.value) for c in at.code))
        succeeded = any("SUCCEEDED" in s for s in texts(at, "success"))
        if succeeded and any(m.label == "Files seen" for m in at.metric):
            break
        time.sleep(2)
    else:
        pytest.fail(
            "the job's results never appeared:\n" + "\n".join(str(c.value) for c in at.code)
        )
    assert any("scored 4 of 5 files" in str(c.value) for c in at.code)  # the job's own log line

    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Files seen"], metrics["Scored"], metrics["Errors"]) == ("5", "4", "1")
    expected = pd.read_parquet(out / "predictions")
    table = at.dataframe[-1].value
    assert sorted(table["path"]) == sorted(expected["path"])
    merged = table.merge(expected, on="path", suffixes=("", "_parquet"))
    assert (merged["species"].fillna("") == merged["species_parquet"].fillna("")).all()
    assert at.get("download_button"), "CSV download missing"
    assert image_captions(at).count("what drove it") == 2, dump(at)  # the job's overlays

    at.radio(key="filter_show").set_value("errors")
    at.run()
    errors = at.dataframe[-1].value
    assert errors["path"].str.endswith("broken.jpg").tolist() == [True]


def test_thumbnails_show_what_the_decoder_sees_and_never_block(tmp_path):
    """The Batch page's thumbnail opened files with Pillow directly: EXIF-turned photos came out
    unturned, files the decoder refuses were drawn, a FIFO would have blocked the page."""
    import io
    import os

    from PIL import Image

    from birdray.dashboard.stage_reports import thumbnail

    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view"
    (tmp_path / "turned.jpg").write_bytes(encode(random_rgb(1, (256, 192)), "JPEG", exif=exif))
    shown = Image.open(io.BytesIO(thumbnail(str(tmp_path / "turned.jpg"))))
    assert shown.size == (192, 256)  # upright, as scored
    (tmp_path / "strip.png").write_bytes(encode(random_rgb(2, (2000, 10)), "PNG"))
    os.mkfifo(tmp_path / "pipe.jpg")
    assert thumbnail(str(tmp_path / "strip.png")) is None
    assert thumbnail(str(tmp_path / "pipe.jpg")) is None
