"""The newcomer's journey, run from the README itself (issue 17 item 2).

The shell commands of README's "CUB on one GPU box" and "Your own data" code blocks are read from
README.md (so an edit there changes what runs here) and run as a user runs them: ``birdray <job>``
as a subprocess (``python -m birdray.cli``, this checkout first on the path) in one fresh working
folder, each command starting its own local Ray with the machine's real CPU count, so the defaults
chain through relative paths (``data/raw`` → ``data/cub_parquet`` → ``runs/registry`` → ...).
Every command must succeed within ``COMMAND_TIMEOUT_S``; ``serve`` and ``dashboard`` run in the
foreground in the README ("in a second terminal"), so they are started in the background, polled
until healthy, used while the later commands run, and stopped with Ctrl-C (SIGINT) at the end.

What the test substitutes, and nothing else (see ``Journey.adapt``):

- the archive: a small generated CUB-layout ``CUB_200_2011.tgz`` (``birdray synth`` birds) used
  through the section's own local-archive form ``birdray download --url file:///path/to/...``;
  ``--md5`` is added because the generated archive is not Caltech's (the default MD5 refuses it,
  as it should);
- training on this CPU box: the README's ``single_gpu_box`` commands (ResNet50 @448, 40 epochs,
  hub weights, one GPU) get ``CPU_TRAIN`` appended: no CUDA here, no hub weights offline, and a
  small ResNet at 64 px for one epoch keeps CPU training to seconds. The dry run is run verbatim
  first (on a machine without a GPU it must refuse and say why), then with the same overrides
  (it must then say the run fits);
- ports: ``serve`` and ``dashboard`` get free loopback ports instead of 8000/8501 (busy on a shared
  machine), and the dashboard the served URL accordingly;
- the user's own material: ``photos/`` (generated photos, a subfolder and a real JPEG) and
  ``my_birds/<species>/*.jpg`` (the generated birds as species folders);
- a bucket: "Your own data" runs with ``runs/registry`` replaced by a registry on the session's
  local S3 server (``s3_bucket``, moto), the README's cluster form ``--registry s3://...``, so
  registering and evaluation's calibration record are proven in a bucket as well as locally.

Not run here: the section's inline "Without a GPU" alternative (``efficientnet_lite0_offline``
trains in ``tests/test_recipes.py``) and ``birdray tune --config sweep_cub``
(``tests/test_tune.py``); the flags of every README command are checked against the parser in
``tests/test_readme_commands.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from birdray.data.download import md5sum
from birdray.registry import latest_calibration, list_versions, read_pointer, version_metadata
from birdray.runtime import free_port
from tests.cub_fixture import real_photos

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CUB_SECTION, OWN_DATA_SECTION = "CUB on one GPU box", "Your own data"
COMMAND_TIMEOUT_S = 420  # one command (a training run is ~1 min here); a hang fails the test
SERVER_READY_S = 300
# Appended to the README's single_gpu_box training commands (why: module docstring).
CPU_TRAIN = [
    "--no-use-gpu", "--no-pretrained", "--arch", "resnet18", "--image-size", "64",
    "--epochs", "1", "--batch-size", "8",
]  # fmt: skip
SERVERS = {"serve": "/readyz", "dashboard": "/_stcore/health"}  # foreground jobs: health paths


def section(title: str, text: str | None = None) -> str:
    """README's text under the heading ``title``, up to the next heading of its level or above."""
    lines = (README.read_text() if text is None else text).splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"(#+)\s+(.*)$", line)
        if heading and heading[2].strip() == title:
            level = len(heading[1])
            end = next(
                (
                    i
                    for i in range(start + 1, len(lines))
                    if (m := re.match(r"(#+)\s", lines[i])) and len(m[1]) <= level
                ),
                len(lines),
            )
            return "\n".join(lines[start + 1 : end])
    raise AssertionError(f"README.md has no section {title!r}")


def block_commands(text: str) -> list[list[str]]:
    """The commands of the section's first ``bash`` code block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block, "the section has no bash code block"
    commands = []
    for line in block[1].splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


@dataclass
class Journey:
    """One user's working folder and the servers they left running."""

    work: Path
    archive: Path
    registry_swap: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    running: dict[str, subprocess.Popen] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)  # the JSON each job printed, by job

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a laptop's own Ray
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(PYTHONUNBUFFERED="1", BIRDRAY_CACHE=str(self.work.parent / "cache"))
        return env

    def adapt(self, words: list[str], text: str) -> list[str]:
        """The README's command with the test's substitutions (module docstring), as argv."""
        assert words[0] == "birdray", words
        argv = [self.registry_swap.get(w, w) for w in words[1:]]
        job = argv[0]
        if job == "download" and "--url" not in argv:
            shown = re.search(r"`birdray download (--url file://(/\S+?\.tgz))`", text)
            assert shown, "the section no longer shows how to use an archive already on disk"
            argv += shlex.split(shown[1].replace(shown[2], str(self.archive)))
            argv += ["--md5", md5sum(self.archive)]
        if job == "train" and "single_gpu_box" in argv and "--dry-run" not in argv:
            argv += CPU_TRAIN
        if job in SERVERS:
            self.ports[job] = free_port()
            argv += ["--port", str(self.ports[job])]
        if job == "dashboard" and "serve" in self.ports:
            argv += ["--serve-url", self.url("serve")]
        return argv

    def url(self, job: str) -> str:
        return f"http://127.0.0.1:{self.ports[job]}"

    def run(self, argv: list[str], expect_rc: tuple[int, ...] = (0,)) -> str:
        """``birdray <argv>`` to completion; returns its output (stdout + stderr)."""
        cmd = [sys.executable, "-m", "birdray.cli", *argv]
        started = time.monotonic()
        try:
            done = subprocess.run(
                cmd, cwd=self.work, env=self.env(), stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            pytest.fail(
                f"`birdray {shlex.join(argv)}` still running after {COMMAND_TIMEOUT_S} s:\n"
                + out[-3000:]
            )
        print(
            f"birdray {shlex.join(argv)}: rc {done.returncode}, {time.monotonic() - started:.0f} s"
        )
        said = done.stdout + done.stderr
        assert done.returncode in expect_rc, f"`birdray {shlex.join(argv)}`:\n{said[-4000:]}"
        printed = (
            done.stdout[done.stdout.find("\n{") + 1 :] if "\n{" in done.stdout else done.stdout
        )
        if printed.startswith("{"):
            self.outputs[argv[0]] = json.loads(printed)
        return said

    def start(self, argv: list[str]) -> None:
        """A foreground job (``serve``, ``dashboard``) in the background until it is healthy."""
        job = argv[0]
        logs = self.work.parent / "logs"
        logs.mkdir(exist_ok=True)
        out = open(logs / f"{job}.log", "w")  # a file, not a pipe: Ray's logs never block it
        self.running[job] = proc = subprocess.Popen(
            [sys.executable, "-m", "birdray.cli", *argv], cwd=self.work, env=self.env(),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        deadline, health = time.monotonic() + SERVER_READY_S, f"{self.url(job)}{SERVERS[job]}"
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                f"`birdray {job}` exited {proc.returncode}:\n{self.said(job)}"
            )
            try:
                if requests.get(health, timeout=10).status_code == 200:
                    print(f"birdray {shlex.join(argv)}: healthy")
                    return
            except requests.RequestException:  # not listening yet, or still starting
                pass
            time.sleep(1)
        pytest.fail(f"`birdray {job}` not healthy after {SERVER_READY_S} s:\n{self.said(job)}")

    def said(self, job: str) -> str:
        return (self.work.parent / "logs" / f"{job}.log").read_text()[-4000:]

    def stop(self, job: str) -> int | None:
        """Ctrl-C, as in the README's terminal; the exit status (None: it had to be killed)."""
        proc = self.running.pop(job)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return None
        return proc.returncode

    def follow(self, title: str) -> list[list[str]]:
        """Every command of README section ``title`` in order; the argv each ran with."""
        text = section(title)
        ran = []
        for words in block_commands(text):
            argv = self.adapt(words, text)
            if argv[0] in SERVERS:
                self.start(argv)
            elif "--dry-run" in argv:
                self.dry_run(argv)
            else:
                self.run(argv)
            ran.append(argv)
        return ran

    def dry_run(self, argv: list[str]) -> None:
        """Verbatim: refused, with the reason, without CUDA; with ``CPU_TRAIN`` it fits."""
        from birdray.devices import local_gpus

        # with a GPU the verbatim plan may still be refused: hub weights out of reach
        said = self.run(argv, expect_rc=(1,) if local_gpus() == 0 else (0, 1))
        assert "resource plan" in said and "training workers" in said, said[-3000:]
        if local_gpus() == 0:
            assert "needs 1 GPU" in said, said[-3000:]
            said = self.run([*argv, *CPU_TRAIN])
            assert "would start on this machine" in said, said[-3000:]


def _cub_archive(tmp: Path) -> Path:
    """A small ``CUB_200_2011.tgz`` in the official layout (generated birds, 4 species)."""
    from birdray.synth.job import SynthConfig, generate

    src = tmp / "synth"
    generate(SynthConfig(out=str(src), classes=4, per_class=12, seed=5, workers=1,
                         min_side=96, max_side=128))  # fmt: skip
    archive = tmp / "downloads" / "CUB_200_2011.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "CUB_200_2011", arcname="CUB_200_2011")
        tar.add(src / "attributes.txt", arcname="attributes.txt")
    return archive


def _own_material(work: Path, synth: Path) -> int:
    """``photos/`` (with a subfolder and a real photo) and ``my_birds/<species>/*.jpg``."""
    images = synth / "CUB_200_2011" / "images"
    shutil.copytree(images, work / "my_birds")
    jpegs = sorted(images.rglob("*.jpg"))
    (work / "photos" / "trip").mkdir(parents=True)
    for i, jpeg in enumerate(jpegs[::10]):
        shutil.copy(jpeg, work / "photos" / ("trip" if i % 2 else "") / jpeg.name)
    shutil.copy(real_photos()[0], work / "photos" / "trip")
    return sum(1 for p in (work / "photos").rglob("*") if p.is_file())


# Every command starts its own local Ray, as a user's does: 5.4 min measured on 2 shared cores
# (16 min while four other test runs used the same 2 cores).
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_readme_journey_from_archive_and_own_photos_to_served_model(s3_bucket, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "logs").mkdir()
    journey = Journey(work, _cub_archive(tmp_path))
    photos = _own_material(work, tmp_path / "synth")
    try:
        ran = journey.follow(CUB_SECTION)
        assert [a[0] for a in ran] == [
            "download", "ingest", "train", "train", "evaluate", "registry", "score", "serve",
            "dashboard",
        ], ran  # fmt: skip
        _check_cub_journey(journey, photos)
        for job in ("dashboard", "serve"):  # Ctrl-C in each terminal: a clean exit
            assert journey.stop(job) == 0, journey.said(job)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{journey.url('serve')}/healthz", timeout=5)

        bucket_registry = f"{s3_bucket}/journey/registry"
        journey.registry_swap = {"runs/registry": bucket_registry}
        journey.outputs.clear()
        ran = journey.follow(OWN_DATA_SECTION)
        assert [a[0] for a in ran] == ["ingest", "train", "evaluate"], ran
        _check_own_data_journey(journey, bucket_registry)
    finally:
        for job in list(journey.running):
            journey.stop(job)


def _check_cub_journey(journey: Journey, photos: int) -> None:
    work = journey.work
    assert (work / "data" / "raw" / "extracted" / "CUB_200_2011" / "images.txt").is_file()
    manifest = json.loads((work / "data" / "cub_parquet" / "manifest.json").read_text())
    assert manifest["counts"]["ingested"] == 48 and manifest["layout"] == "cub", manifest["counts"]
    # train registered its package in runs/registry; promote made it production
    registry = str(work / "runs" / "registry")
    assert journey.outputs["train"]["registered_version"] == "v0001"
    assert list_versions(registry) == ["v0001"]
    assert read_pointer(registry)["version"] == "v0001"
    # evaluate kept its calibration beside the version in the registry, not in the package
    evaluation = journey.outputs["evaluate"]
    assert evaluation["version"] == "v0001"
    assert Path(evaluation["report"]).is_relative_to(Path(registry) / "models" / "v0001")
    assert (Path(evaluation["report"]) / "metrics.json").is_file()
    calibration = latest_calibration(registry, "v0001")
    assert calibration and calibration["temperature"] == pytest.approx(evaluation["temperature"])
    # score: a row per photo, finished last with _SUCCESS, by the production model
    summary = json.loads((work / "scored" / "summary.json").read_text())
    assert (work / "scored" / "_SUCCESS").is_file()
    assert summary["files_seen"] == summary["scored"] == photos and summary["failed"] == 0, summary
    assert summary["model"]["version"] == "v0001"
    # serve: production from runs/registry with its calibration, and a real photo classified
    url = journey.url("serve")
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    model = requests.get(f"{url}/v1/model", timeout=10).json()
    assert model["version"] == "v0001"
    assert model["temperature"] == pytest.approx(evaluation["temperature"])
    photo = next((work / "photos").glob("*.jpg"))
    answer = requests.post(
        f"{url}/v1/predict", files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))],
        timeout=60,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["ok"] and result["prediction"]["species"] in manifest["class_names"], result
    # the dashboard, started with the README's bare command, answers
    health = requests.get(f"{journey.url('dashboard')}/_stcore/health", timeout=10)
    assert health.status_code == 200 and health.text.strip() == "ok"


def _check_own_data_journey(journey: Journey, registry: str) -> None:
    manifest = json.loads((journey.work / "data" / "my_birds" / "manifest.json").read_text())
    assert manifest["layout"] == "folders" and manifest["counts"]["ingested"] == 48, manifest
    assert journey.outputs["train"]["registered_version"] == "v0001"
    assert list_versions(registry) == ["v0001"]  # registered in the bucket, committed
    evaluation = journey.outputs["evaluate"]
    assert evaluation["version"] == "v0001" and evaluation["report"].startswith(registry)
    calibration = latest_calibration(registry, "v0001")  # the bucket's evaluation record
    assert calibration and calibration["temperature"] == pytest.approx(evaluation["temperature"])
    # what serve and scoring load from the bucket carries it
    assert version_metadata(registry, "v0001").temperature == pytest.approx(
        evaluation["temperature"]
    )
