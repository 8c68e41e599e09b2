"""What a person sees: headless Chromium drives the running dashboard against a live Serve app.

Uploads a generated bird photo, waits for the predicted species, checks it is the API's answer for
that file, then asks for the explanation; sends one correction ("Wrong" → species) and finds it in
the feedback store. Screenshots are kept in ``artifacts/dashboard/`` (git-ignored) and their paths
printed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from birdray.dashboard_launcher import start_dashboard, stop
from birdray.feedback.store import read_feedback
from tests.serve_fixtures import deployed, post_images, small_app_args

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1500",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("browser_feedback") / "feedback")


@pytest.fixture(scope="module")
def serve_url(serve_http, trained_package, feedback_dir):
    args = small_app_args(
        str(trained_package.package),
        explain=True,
        explain_num_cpus=0.25,
        feedback_dir=feedback_dir,
    )
    with deployed(serve_http, "dashbrowser", **args) as url:
        yield url


@pytest.fixture(scope="module")
def dashboard(serve_url, trained_package, tmp_path_factory):
    from birdray.registry import promote, register

    root = tmp_path_factory.mktemp("dashboard_browser")
    promote(str(root / "registry"), register(str(root / "registry"), trained_package.package))
    url, process = start_dashboard(
        serve_url, root / "registry", root / "tune", root / "scored", ready_timeout_s=300
    )
    yield url
    stop(process)


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "install the Debian packages chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(180)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"\nscreenshot: {path}")
    return path


def test_upload_shows_the_apis_species(dashboard, serve_url, trained_package, browser):
    photo = sorted((trained_package.source / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    answer = post_images(serve_url, [(photo.name, photo.read_bytes(), "image/jpeg")]).json()
    species = answer["results"][0]["prediction"]["species"]
    expected = species.split(".", 1)[-1].replace("_", " ")

    browser.get(dashboard)
    wait = WebDriverWait(browser, 240, poll_frequency=1)
    upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))[0]
    upload.send_keys(str(photo))
    headings = wait.until(
        lambda d: [
            h
            for h in d.find_elements(By.CSS_SELECTOR, "h3")
            if h.text.strip() and h.text.strip() != "Connections"
        ]
    )
    assert headings[0].text.strip() == expected
    wait.until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR,
            "[data-testid='stVegaLiteChart'] canvas,[data-testid='stVegaLiteChart'] svg",
        )
    )
    page = browser.find_element(By.TAG_NAME, "body").text
    assert photo.name in page and "calibrated confidence" in page
    assert screenshot(browser, "classify.png").stat().st_size > 10_000

    browser.find_element(By.XPATH, "//label[contains(., 'Why? Show what drove')]").click()
    wait.until(lambda d: "What drove" in d.find_element(By.TAG_NAME, "body").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")) >= 2)
    browser.execute_script(
        "document.querySelector(\"[data-testid='stImage']:last-of-type\")?.scrollIntoView()"
    )
    assert screenshot(browser, "classify_explained.png").stat().st_size > 10_000


def test_one_correction_is_stored(dashboard, serve_url, trained_package, browser, feedback_dir):
    photo = sorted((trained_package.source / "CUB_200_2011" / "images").rglob("*.jpg"))[1]
    data = photo.read_bytes()
    answer = post_images(serve_url, [(photo.name, data, "image/jpeg")]).json()
    said = answer["results"][0]["prediction"]["species"]
    right = next(c["species"] for c in answer["results"][0]["top_k"] if c["species"] != said)
    shown = right.split(".", 1)[-1].replace("_", " ")

    browser.get(dashboard)
    wait = WebDriverWait(browser, 240, poll_frequency=1)
    upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))[0]
    upload.send_keys(str(photo))
    wrong = wait.until(lambda d: d.find_elements(By.XPATH, "//button[.//p[text()='Wrong']]"))
    wrong[0].click()
    # the species picker appears after the explanation method's box, which is there already
    boxes = "[data-testid='stSelectbox'] input"
    search = wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, boxes)) >= 2
            and d.find_elements(By.CSS_SELECTOR, boxes)
        )
    )
    search[-1].click()
    search[-1].send_keys(shown)
    search[-1].send_keys(Keys.ENTER)
    send = wait.until(
        lambda d: [
            b
            for b in d.find_elements(By.XPATH, "//button[.//p[text()='Send correction']]")
            if b.is_enabled()
        ]
    )
    send[0].click()
    wait.until(lambda d: "Saved:" in d.find_element(By.TAG_NAME, "body").text)
    assert "corrected" in browser.find_element(By.TAG_NAME, "body").text
    assert screenshot(browser, "classify_corrected.png").stat().st_size > 10_000
    rows = {r["sha256"]: r for r in read_feedback(feedback_dir).to_pylist()}
    row = rows[hashlib.sha256(data).hexdigest()]
    assert (row["predicted"], row["answer"], row["verdict"]) == (said, right, "corrected")


def test_models_page_shows_the_production_model(dashboard, trained_package, browser):
    metrics = json.loads((trained_package.package / "eval" / "metrics.json").read_text())
    browser.get(f"{dashboard}/models")
    wait = WebDriverWait(browser, 240, poll_frequency=1)
    wait.until(lambda d: "top-1 accuracy" in d.find_element(By.TAG_NAME, "body").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")) >= 2)
    page = browser.find_element(By.TAG_NAME, "body").text
    assert f"{metrics['top1']:.1%}" in page and "Per-species accuracy" in page
    browser.set_window_size(1400, 2800)  # the whole page in one picture
    assert screenshot(browser, "models.png").stat().st_size > 10_000
