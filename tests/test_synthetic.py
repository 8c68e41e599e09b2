"""The generated CUB-layout dataset: layout, consistency, true parts, determinism, learnability."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birdray.synth.job import SynthConfig, generate
from birdray.synth.species import (
    ATTRIBUTE_NAMES,
    COLORS,
    PAIR_TRAITS,
    PART_ID,
    PART_NAMES,
    differing_traits,
    parts_of,
)

CLASSES, PER_CLASS = 4, 6


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_small")
    return generate(
        SynthConfig(out=str(out), classes=CLASSES, per_class=PER_CLASS, seed=3, workers=1)
    )


@pytest.fixture(scope="module")
def cub(small) -> Path:
    return small / "CUB_200_2011"


@pytest.fixture(scope="module")
def meta(cub) -> dict:
    return json.loads((cub / "synthetic_species.json").read_text())


@pytest.fixture(scope="module")
def images(cub) -> dict[int, dict]:
    """Everything known about each image, joined by id from the metadata files."""
    out = {int(i): {"path": cub / "images" / p} for i, p in _rows(cub / "images.txt")}
    for i, c in _rows(cub / "image_class_labels.txt"):
        out[int(i)]["class"] = int(c)
    for i, t in _rows(cub / "train_test_split.txt"):
        out[int(i)]["train"] = int(t)
    for i, *box in _rows(cub / "bounding_boxes.txt"):
        out[int(i)]["bbox"] = [float(v) for v in box]
    for i, p, x, y, v in _rows(cub / "parts" / "part_locs.txt"):
        out[int(i)].setdefault("parts", {})[int(p)] = (float(x), float(y), int(v))
    return out


def test_layout_exists_and_parses_with_cub_field_counts(small, cub):
    fields = {
        "images.txt": 2, "image_class_labels.txt": 2, "train_test_split.txt": 2,
        "bounding_boxes.txt": 5, "classes.txt": 2, "parts/part_locs.txt": 5,
        "parts/part_click_locs.txt": 6, "attributes/image_attribute_labels.txt": 5,
        "attributes/class_attribute_labels_continuous.txt": 312,
    }  # fmt: skip
    n_images = CLASSES * PER_CLASS
    expected_rows = {"classes.txt": CLASSES, "parts/part_locs.txt": n_images * 15,
                     "attributes/image_attribute_labels.txt": n_images * 312,
                     "attributes/class_attribute_labels_continuous.txt": CLASSES}  # fmt: skip
    for name, count in fields.items():
        rows = _rows(cub / name)
        assert rows and all(len(r) == count for r in rows), name
        assert len(rows) == expected_rows.get(name, len(rows)), name
    for name in ("images.txt", "bounding_boxes.txt", "train_test_split.txt"):
        assert len(_rows(cub / name)) == n_images
    assert [line for line in (cub / "parts" / "parts.txt").read_text().splitlines()] == [
        f"{i} {p}" for i, p in enumerate(PART_NAMES, 1)
    ]
    assert PART_NAMES[6] == "left eye" and PART_NAMES[14] == "throat"
    certainties = (cub / "attributes" / "certainties.txt").read_text().splitlines()
    assert certainties == ["1 not visible", "2 guessing", "3 probably", "4 definitely"]
    assert re.fullmatch(
        r"\d+\.\d+ \d+\.\d+ \d+\.\d+ \d+\.\d+", " ".join(_rows(cub / "bounding_boxes.txt")[0][1:])
    )
    values = np.array(_rows(cub / "attributes" / "class_attribute_labels_continuous.txt"), float)
    assert values.min() >= 0 and values.max() <= 100 and values.max() > 50


def test_312_cub_attributes_beside_the_folder(small):
    lines = (small / "attributes.txt").read_text().splitlines()
    assert len(lines) == len(ATTRIBUTE_NAMES) == 312
    assert lines[0] == "1 has_bill_shape::curved_(up_or_down)"
    assert lines[311] == "312 has_wing_pattern::multi-colored"
    assert "149 has_eye_color::buff" in lines and "236 has_shape::perching-like" in lines
    for k, line in enumerate(lines, 1):
        assert re.fullmatch(rf"{k} has_[a-z_]+::\S+", line), line


def test_ids_and_paths_are_consistent(cub, images):
    classes = dict(_rows(cub / "classes.txt"))
    assert list(classes) == [str(c) for c in range(1, CLASSES + 1)]
    assert sorted(images) == list(range(1, CLASSES * PER_CLASS + 1))
    for image_id, info in images.items():
        folder = classes[str(info["class"])]
        assert re.fullmatch(r"\d{3}\.[A-Za-z_-]+", folder)
        species = folder.split(".", 1)[1]
        assert info["path"].parent.name == folder
        assert re.fullmatch(rf"{species}_\d{{4}}_{image_id}\.jpg", info["path"].name)
        assert info["path"].is_file() and sorted(info["parts"]) == list(range(1, 16))
    for line in _rows(cub / "attributes" / "image_attribute_labels.txt"):
        image_id, attr, present, certainty, _ = line
        assert 1 <= int(image_id) <= len(images) and 1 <= int(attr) <= 312
        assert present in "01" and certainty in "1234"


def test_split_is_per_class(images):
    for c in range(1, CLASSES + 1):
        flags = [info["train"] for info in images.values() if info["class"] == c]
        assert len(flags) == PER_CLASS and flags.count(0) == PER_CLASS // 2


def test_geometry_boxes_and_parts_inside_the_picture(images):
    gray = 0
    for info in images.values():
        with Image.open(info["path"]) as im:
            width, height, mode = im.width, im.height, im.mode
        gray += mode == "L"
        assert mode in ("RGB", "L") and 300 <= min(width, height) <= max(width, height) <= 500
        x, y, w, h = info["bbox"]
        assert x >= 0 and y >= 0 and w > 20 and h > 20 and x + w <= width and y + h <= height
        for pid, (px, py, vis) in info["parts"].items():
            if vis:
                assert x <= px < x + w and y <= py < y + h, (info["path"], PART_NAMES[pid - 1])
            else:
                assert (px, py) == (0.0, 0.0)
        parts = {PART_NAMES[p - 1]: v for p, v in info["parts"].items()}
        # Side view: exactly one eye is seen; it is the near side, and its wing and leg show too.
        near = "right" if parts["right eye"][2] else "left"
        assert parts["left eye"][2] + parts["right eye"][2] == 1
        assert parts[f"{near} wing"][2] and parts[f"{near} leg"][2]
        # Facing right shows the bird's right side: left/right must swap with the mirror.
        beak_x, eye_x = parts["beak"][0], parts[f"{near} eye"][0]
        assert (beak_x > eye_x) == (near == "right"), info["path"]
        assert all(parts[p][2] for p in ("back", "beak", "breast", "crown", "tail", "throat"))
    assert gray >= 2 and gray < len(images)


def test_tiny_photos_still_hold_the_whole_bird(tmp_path):
    root = generate(
        SynthConfig(out=str(tmp_path), classes=2, per_class=6, min_side=64, max_side=96)
    )
    cub = root / "CUB_200_2011"
    paths = dict(_rows(cub / "images.txt"))
    parts = _rows(cub / "parts" / "part_locs.txt")
    for image_id, *box in _rows(cub / "bounding_boxes.txt"):
        x, y, w, h = (float(v) for v in box)
        with Image.open(cub / "images" / paths[image_id]) as im:
            assert 64 <= min(im.size) <= max(im.size) <= 96
            assert x >= 0 and y >= 0 and x + w <= im.width and y + h <= im.height
        for _, _, px, py, vis in (p for p in parts if p[0] == image_id):
            assert vis == "0" or (x <= float(px) < x + w and y <= float(py) < y + h)


def test_drawn_pixels_have_the_species_colour_at_crown_and_breast(images, meta):
    """Part locations are true: the crown/breast pixels show that species' crown/breast colour."""
    traits = {c["class_id"]: c["traits"] for c in meta["classes"]}
    palette_names = list(COLORS)
    palette = np.array(list(COLORS.values()), float)
    checked = 0
    for info in images.values():
        with Image.open(info["path"]) as im:
            if im.mode != "RGB":
                continue
            pixels = np.asarray(im, dtype=float)
        for part, radius in (
            ("crown", 1),
            ("breast", max(1, round(0.025 * max(info["bbox"][2:])))),
        ):
            x, y, visible = (int(v) for v in info["parts"][PART_ID[part]])
            assert visible
            patch = pixels[y - radius : y + radius + 1, x - radius : x + radius + 1].reshape(-1, 3)
            median = np.median(patch, axis=0)
            want = traits[info["class"]][f"{part}_color"]
            assert np.linalg.norm(median - COLORS[want]) < 60, (info["path"], part, median, want)
            assert palette_names[int(np.argmin(np.linalg.norm(palette - median, axis=1)))] == want
            checked += 1
    assert checked >= 2 * (len(images) - 2)


def test_siblings_differ_in_exactly_the_recorded_parts(meta):
    classes = {c["class_id"]: c for c in meta["classes"]}
    assert sum(c["paired"] for c in classes.values()) == 2 * (CLASSES // 4)
    for c in classes.values():
        sib = classes[c["sibling"]]
        diff = differing_traits(c["traits"], sib["traits"])
        assert diff == c["differing_traits"] and parts_of(diff) == c["discriminative_parts"]
        assert set(c["discriminative_parts"]) <= set(PART_NAMES) and c["discriminative_parts"]
        if c["paired"]:
            assert sib["sibling"] == c["class_id"] and sib["paired"]
            assert len(diff) == 1 and diff[0] in PAIR_TRAITS
            assert (
                len({p.split()[-1] for p in c["discriminative_parts"]}) == 1
            )  # one part (L/R pair)


def test_attribute_tables_agree_with_the_species(cub, meta):
    """Image labels are noisy copies of the class's attributes; the class table is their mean."""
    labels = np.array(_rows(cub / "attributes" / "image_attribute_labels.txt"), float)
    present = labels[:, 2].reshape(CLASSES * PER_CLASS, 312)
    class_of = np.array(_rows(cub / "image_class_labels.txt"), int)[:, 1]
    table = np.array(_rows(cub / "attributes" / "class_attribute_labels_continuous.txt"), float)
    for c in meta["classes"]:
        mean = 100 * present[class_of == c["class_id"]].mean(axis=0)
        np.testing.assert_allclose(table[c["class_id"] - 1], mean, atol=1e-6)
        truth = np.zeros(312, bool)
        truth[np.array(c["attribute_ids"]) - 1] = True
        assert mean[truth].mean() > 70 and mean[~truth].mean() < 5
    assert (labels[labels[:, 3] == 1, 2] == 0).all()  # "not visible" is never "present"


def test_same_seed_gives_identical_bytes_regardless_of_workers(tmp_path):
    def tree(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    a = generate(SynthConfig(out=str(tmp_path / "a"), classes=2, per_class=20, seed=5, workers=1))
    b = generate(SynthConfig(out=str(tmp_path / "b"), classes=2, per_class=20, seed=5, workers=2))
    c = generate(SynthConfig(out=str(tmp_path / "c"), classes=2, per_class=20, seed=6, workers=1))
    ta, tb, tc = tree(a), tree(b), tree(c)
    assert len(ta) > 40 and ta == tb
    assert ta.keys() != tc.keys() or any(ta[k] != tc[k] for k in ta)


def test_an_interrupt_while_the_pool_is_still_being_fed_ends_the_job_without_drawing_the_rest(
    tmp_path, monkeypatch
):
    """Ctrl-C can land while ``Executor.map`` is still submitting chunks; ``map`` then never
    hands back the iterator that would cancel them, and a plain ``with`` shutdown drew every
    submitted chunk before the job could end (a CI run's ``birdray synth`` outlived its SIGINT
    by minutes). Now only the chunks already running are finished."""
    from concurrent.futures import ProcessPoolExecutor

    from birdray.synth import workers

    interrupt_at = 40  # chunks of 32 images submitted before the "Ctrl-C"

    class InterruptedWhileFeeding(ProcessPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            InterruptedWhileFeeding.submitted += 1
            if InterruptedWhileFeeding.submitted == interrupt_at:
                signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, handled as the user's is
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(workers, "ProcessPoolExecutor", InterruptedWhileFeeding)
    out = tmp_path / "birds"
    with pytest.raises(KeyboardInterrupt):
        generate(SynthConfig(out=str(out), classes=50, per_class=40, seed=1, workers=2))
    drawn = len(list(out.rglob("*.jpg")))
    assert interrupt_at <= InterruptedWhileFeeding.submitted
    # Two workers: at most the two chunks they hold and the three queued for them.
    assert drawn <= 5 * 32, f"{drawn} images drawn after the interrupt"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nth_worker", [1, 2])
def test_ctrl_c_just_after_a_pool_worker_starts_ends_the_job_and_its_workers_cleanly(
    tmp_path, monkeypatch, nth_worker
):
    """A terminal's Ctrl-C reaches the job and its workers. Landing between a worker's start and
    the executor recording it, it left a worker the executor did not know: that worker took
    another's stop sentinel, and ``shutdown`` waited forever for the one left without (a CI
    run's ``birdray synth`` never answered its SIGINT). And a worker still starting Python died
    of it with a "Fatal Python error" traceback. Now the job ends at once and every worker
    stops normally, having ignored the Ctrl-C."""
    import multiprocessing
    import multiprocessing.process

    real_start = multiprocessing.process.BaseProcess.start
    started = []

    def start_then_ctrl_c(process):
        real_start(process)
        started.append(process)
        os.kill(process.pid, signal.SIGINT)  # the worker is still starting Python
        if len(started) == nth_worker:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_then_ctrl_c)
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        generate(SynthConfig(out=str(tmp_path / "b"), classes=20, per_class=32, workers=2))
    assert len(started) >= nth_worker
    assert time.monotonic() - began < 60
    assert not multiprocessing.active_children()
    assert [p.exitcode for p in started] == [0] * len(started)


def test_rerun_returns_existing_and_refuses_foreign_folders(tmp_path):
    cfg = SynthConfig(out=str(tmp_path / "d"), classes=1, per_class=2, seed=0, workers=1)
    root = generate(cfg)
    marker = root / "CUB_200_2011" / "synthetic_species.json"
    stamp = marker.stat().st_mtime_ns
    assert generate(SynthConfig(**{**cfg.__dict__, "workers": 2})) == root
    assert marker.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="another config"):
        generate(SynthConfig(**{**cfg.__dict__, "seed": 1}))
    foreign = tmp_path / "real" / "CUB_200_2011"
    foreign.mkdir(parents=True)
    (foreign / "images.txt").write_text("1 001.Black_footed_Albatross/x.jpg\n")
    with pytest.raises(FileExistsError, match="not a birdray synthetic"):
        generate(SynthConfig(out=str(tmp_path / "real"), classes=1, per_class=2))
    assert (foreign / "images.txt").read_text().startswith("1 001.Black")
    with pytest.raises(ValueError):
        generate(SynthConfig(out=str(tmp_path / "bad"), classes=0))


def test_cli_synth(tmp_path):
    from birdray.cli import main

    out = tmp_path / "cli"
    assert (
        main(["synth", "--out", str(out), "--classes", "2", "--per-class", "3", "--workers", "1"])
        == 0
    )
    assert (
        len(_rows(out / "CUB_200_2011" / "images.txt")) == 6 and (out / "attributes.txt").is_file()
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_small_cnn_learns_the_species(tmp_path):
    """Discriminative features are visible at low resolution: far above chance in a minute."""
    import torch

    start = time.monotonic()
    cub = (
        generate(SynthConfig(out=str(tmp_path), classes=10, per_class=30, seed=0, workers=2))
        / "CUB_200_2011"
    )
    boxes = {i: [float(v) for v in box] for i, *box in _rows(cub / "bounding_boxes.txt")}
    label = dict(_rows(cub / "image_class_labels.txt"))
    train = dict(_rows(cub / "train_test_split.txt"))
    xs, ys, is_train = [], [], []
    for i, rel in _rows(cub / "images.txt"):
        x, y, w, h = boxes[i]
        m = 0.1 * max(w, h)
        with Image.open(cub / "images" / rel) as im:
            crop = im.convert("RGB").crop((x - m, y - m, x + w + m, y + h + m)).resize((64, 64))
        xs.append(np.asarray(crop))
        ys.append(int(label[i]) - 1)
        is_train.append(train[i] == "1")
    x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    y, tr = torch.tensor(ys), torch.tensor(is_train)
    x = (x - x[tr].mean((0, 2, 3), keepdim=True)) / x[tr].std((0, 2, 3), keepdim=True)

    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic, and fastest on a busy 2-core machine

    def block(i: int, o: int) -> list[torch.nn.Module]:
        return [
            torch.nn.Conv2d(i, o, 3, padding=1),
            torch.nn.BatchNorm2d(o),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        ]

    net = torch.nn.Sequential(
        *block(3, 16), *block(16, 32), *block(32, 64), *block(64, 64),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-3)
    xtr, ytr = x[tr], y[tr]
    for _ in range(15):
        net.train()
        for idx in torch.randperm(len(xtr)).split(32):
            xb = xtr[idx]
            xb = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[~tr]).argmax(1) == y[~tr]).float().mean().item()
    print(f"held-out accuracy {accuracy:.2f} (chance 0.10) in {time.monotonic() - start:.0f} s")
    assert accuracy >= 0.5


def test_field_photos_are_new_photos_of_the_same_species(tmp_path):
    import hashlib

    from birdray.synth.field import field_photos

    cfg = SynthConfig(out=str(tmp_path / "synth"), classes=3, per_class=4, seed=5, workers=1,
                      min_side=96, max_side=128)  # fmt: skip
    root = generate(cfg) / "CUB_200_2011"
    photos = field_photos(cfg, tmp_path / "field", per_class=2)
    classes = [line.split(" ", 1)[1] for line in (root / "classes.txt").read_text().splitlines()]
    assert sorted({truth for _, truth in photos}) == sorted(classes)
    assert len(photos) == 6
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    dataset = {digest(p) for p in (root / "images").rglob("*.jpg")}
    assert not dataset & {digest(p) for p, _ in photos}
    again = field_photos(cfg, tmp_path / "again", per_class=2)  # deterministic
    assert [digest(p) for p, _ in again] == [digest(p) for p, _ in photos]
