"""birdray installed from its wheel, run from an empty folder: no checkout to lean on.

The wheel is built from a copy of the package alone (``birdray/``, ``pyproject.toml``,
``README.md``) and installed with ``pip --target`` into a folder that is the subprocesses' only
``PYTHONPATH`` entry, so they import the installed copy, never this checkout (asserted through
``birdray.__file__``). From an empty working folder: the CLI's help, the shipped recipes by name
(through the loader ``--config`` uses, and the demo's own checks), the dashboard's entry file
under Streamlit's ``AppTest``, and ``birdray dashboard`` answering on its health endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from birdray.runtime import free_port

pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")

ROOT = Path(__file__).resolve().parents[1]

INSPECT = """
import json, birdray
from birdray.checks import check
from birdray.config import ConfigError, RECIPES, resolve
from birdray.demo import DemoConfig
from birdray.train.config import TrainConfig
from birdray.tune.config import SweepConfig
check("demo", DemoConfig())  # the demo's recipes, found inside the package
try:
    resolve(TrainConfig, {"config": "no_such_recipe"})
    unknown = ""
except ConfigError as exc:
    unknown = str(exc)
print(json.dumps({
    "birdray": birdray.__file__,
    "recipes": str(RECIPES),
    "train": resolve(TrainConfig, {"config": "resnet50_imagenet", "epochs": "2"}).__dict__,
    "sweep": resolve(SweepConfig, {"config": "sweep_demo.yaml"}).archs,
    "unknown": unknown,
}, default=str))
"""

APP_TEST = """
import sys
from streamlit.testing.v1 import AppTest
from birdray.dashboard_launcher import APP
at = AppTest.from_file(str(APP), default_timeout=120).run()
assert not at.exception, [e.value for e in at.exception]
at.switch_page("views/batch.py").run()
assert not at.exception, [e.value for e in at.exception]
print("APP", APP, len(at.text_input))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(site folder, environment importing only it, an empty working folder)."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    shutil.copytree(ROOT / "birdray", src / "birdray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("birdray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("recipes/demo.yaml", "recipes/sweep_cub.yaml", "dashboard/app.py"):
        assert f"birdray/{part}" in names, sorted(names)
    assert "birdray/dashboard/views/batch.py" in names
    site = tmp / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDRAY_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(site)  # only the installed copy: not this checkout
    empty = tmp / "empty"
    empty.mkdir()
    return site, env, empty


def _python(env, cwd, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(600)
def test_installed_cli_finds_its_recipes_by_name_from_an_empty_folder(installed):
    site, env, empty = installed
    assert "--train-config" in _python(env, empty, "-m", "birdray.cli", "demo", "--help")
    seen = json.loads(_python(env, empty, "-c", INSPECT).splitlines()[-1])
    assert Path(seen["birdray"]).is_relative_to(site), seen["birdray"]  # not the checkout
    assert Path(seen["recipes"]).is_relative_to(site)
    assert seen["train"]["arch"] == "resnet50" and seen["train"]["epochs"] == 2  # flag on top
    assert seen["sweep"]  # the packaged sweep, named with its .yaml suffix
    assert "no_such_recipe" in seen["unknown"] and "resnet50_imagenet" in seen["unknown"]
    assert list(empty.iterdir()) == []  # nothing written where it ran


@pytest.mark.timeout(600)
def test_installed_dashboard_runs_its_packaged_app(installed):
    site, env, empty = installed
    env = {**env, "BIRDRAY_SERVE_URL": f"http://127.0.0.1:{free_port()}"}
    env["BIRDRAY_JOBS_ADDRESS"] = f"http://127.0.0.1:{free_port()}"
    out = _python(env, empty, "-c", APP_TEST)
    assert f"APP {site}" in out, out  # the installed entry file and its pages ran cleanly

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "birdray.cli", "dashboard", "--port", str(port)],
        cwd=empty, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline, answer = time.monotonic() + 240, ""
        while time.monotonic() < deadline and process.poll() is None and answer != "ok":
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    answer = resp.read().decode()
            except OSError:
                time.sleep(0.5)
        assert answer == "ok", process.stdout.read() if process.poll() is not None else answer
    finally:
        process.send_signal(signal.SIGINT)  # the launcher stops Streamlit on Ctrl-C
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with pytest.raises(OSError):  # Streamlit went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
