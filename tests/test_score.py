"""Batch scoring end to end on the session's real Ray cluster, with real files and a real model.

One scoring run over a folder of good, broken and oddly named files feeds several checks; resume,
atomic output, the GPU node and Parquet input each get their own small runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from birdray.cli import main
from birdray.model.crop import decode_for_model
from birdray.model.inference import Predictor
from birdray.scoring.job import ScoreConfig, run_scoring
from birdray.scoring.stages import Scorer
from tests.cli_process import birdray_process
from tests.model_fixture import make_package

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
ODD_NAMES = ["with space.jpg", "ünïcödé 鸟.jpeg", "odd #%&'()[]!.jpg", "UPPER.JPG"]
BROKEN = {
    "zero.jpg": "empty",
    "truncated.jpg": "corrupt",
    "text.jpg": "not_an_image",
    "bomb.png": "too_large",
    "huge.png": "too_large",  # over --max-pixels, under Pillow's own limit: its header is read
    "strip.png": "bad_dimensions",
    "big.jpg": "file_too_big",
}
HEADER_SIZES = {"huge.png": (8_000, 6_000), "strip.png": (3_000, 10)}  # refused by their headers
MAX_FILE_MB = 0.03  # ~31 KB: the small test photos pass, big.jpg does not


def _photo(path: Path, seed: int, size=(64, 48), mode: str = "RGB", quality: int = 85) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=quality) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid 1x1 PNG whose header claims a huge size: a decompression bomb's signature."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _folder(root: Path) -> Path:
    for i in range(8):
        _photo(root / f"bird_{i}.jpg", seed=i, size=(64 + 8 * i, 48))
    _photo(root / "nested" / "deeper" / "rgba.png", seed=20, mode="RGBA")
    _photo(root / "nested" / "gray.png", seed=21, mode="L")
    for i, name in enumerate(ODD_NAMES):
        _photo(root / "odd dir" / name, seed=30 + i)
    (root / "zero.jpg").write_bytes(b"")
    whole = (root / "bird_0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "text.jpg").write_text("this is a text file, not a photo")
    (root / "bomb.png").write_bytes(_png_bomb())
    (root / "huge.png").write_bytes(_png_bomb(*HEADER_SIZES["huge.png"]))
    (root / "strip.png").write_bytes(_png_bomb(*HEADER_SIZES["strip.png"]))
    big = np.random.default_rng(9).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "big.jpg", quality=95)
    (root / "notes.txt").write_text("not an image extension: not a row")
    return root


def _expected(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def _rows(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "predictions").to_pandas()


def _cfg(input_dir, out, package, **kw) -> ScoreConfig:
    base = dict(batch_size=4, preprocess_cpus=0.5, actor_cpus=1.0, max_file_mb=MAX_FILE_MB)
    return ScoreConfig(input=str(input_dir), output=str(out), model=str(package), **{**base, **kw})


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "pkg", seed=3, temperature=2.0)


@pytest.fixture(scope="module")
def scored(ray_cluster, package, tmp_path_factory):
    """One run through the CLI door: (input folder, output folder, printed text)."""
    root = _folder(tmp_path_factory.mktemp("photos") / "in")
    out = tmp_path_factory.mktemp("scored") / "out"
    argv = ["score", "--input", str(root), "--model", str(package), "--output", str(out),
            "--batch-size", "4", "--preprocess-cpus", "0.5", "--max-file-mb", str(MAX_FILE_MB),
            "--csv", "true", "--explain-lowest", "2"]  # fmt: skip
    before = sorted(root.rglob("*"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    assert sorted(root.rglob("*")) == before  # nothing written next to the photos
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # nor beside the output folder
    return root, out, printed.getvalue()


def test_every_file_gets_exactly_one_row(scored):
    root, out, printed = scored
    rows = _rows(out)
    expected = _expected(root)
    assert Counter(rows["path"]).most_common(1)[0][1] == 1
    assert set(rows["path"]) == expected
    assert str(root / "notes.txt") not in set(rows["path"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files_seen"] == len(expected) == len(rows)
    assert summary["scored"] + summary["failed"] == len(rows)
    assert summary["failed"] == len(BROKEN)
    assert sum(summary["per_species"].values()) == summary["scored"]
    assert summary["low_confidence"]["count"] == int((rows["confidence"] < 0.5).sum())
    assert (out / "_SUCCESS").is_file() and not list(out.glob(".partial-*"))
    assert len(pd.read_csv(out / "predictions.csv")) == len(rows)
    assert f"scored {summary['scored']} of {len(rows)} files" in printed
    # what --extensions left out is said, not silently dropped
    assert summary["skipped_by_extension"] == {".txt": 1}
    assert "not scored: 1 file skipped by --extensions (.txt 1)" in printed


def test_scored_rows_equal_the_direct_model(scored, package):
    _, out, _ = scored
    predictor = Predictor(str(package), device="cpu")
    rows = _rows(out)
    good = rows[rows["ok"]]
    assert len(good) == len(rows) - len(BROKEN)
    for row in good.itertuples():
        decoded = decode_for_model(Path(row.path).read_bytes(), predictor.metadata.data_config)
        direct = predictor.predict_images([decoded.image], top_k=5)[0]
        assert (row.label, row.species) == (direct.label, direct.species)
        assert row.confidence == pytest.approx(direct.confidence, abs=1e-5)
        assert [t["label"] for t in row.top_k] == [t["label"] for t in direct.top_k]
        assert [t["probability"] for t in row.top_k] == pytest.approx(
            [t["probability"] for t in direct.top_k], abs=1e-5
        )
        assert (row.width, row.height) == (decoded.width, decoded.height)
        assert row.model_version == predictor.version and pd.isna(row.error)


def test_broken_files_become_error_rows(scored):
    root, out, _ = scored
    rows = _rows(out).set_index("path")
    for name, code in BROKEN.items():
        row = rows.loc[str(root / name)]
        assert not row["ok"] and row["error"].startswith(code + ":"), (name, row["error"])
        assert row["label"] is None or pd.isna(row["label"])
        assert row["top_k"] is None
        # a photo refused after its header was read still says how big it is
        size = HEADER_SIZES.get(name)
        assert (row["width"], row["height"]) == size if size else pd.isna(row["width"]), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == dict(Counter(BROKEN.values()))


def test_odd_file_names_round_trip(scored):
    root, out, _ = scored
    rows = _rows(out).set_index("path")
    for name in ODD_NAMES:
        assert rows.loc[str(root / "odd dir" / name), "ok"], name


def test_explanations_of_the_lowest_confidence_images(scored):
    _, out, _ = scored
    rows = _rows(out)
    lowest = rows[rows["ok"]].sort_values(["confidence", "path"]).head(2)
    index = json.loads((out / "explanations" / "index.json").read_text())
    assert [item["path"] for item in index["items"]] == list(lowest["path"])
    for item in index["items"]:
        overlay = Image.open(out / "explanations" / item["overlay"])
        assert overlay.format == "PNG"
        assert overlay.size == Image.open(item["path"]).size
        assert item["regions"] and all(r["share"] >= 0 for r in item["regions"])


def test_resume_scores_only_new_changed_and_failed_files(ray_cluster, package, tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        _photo(src / f"p{i}.jpg", seed=100 + i)
    (src / "broken.jpg").write_text("still broken")
    out = tmp_path / "out"
    first = run_scoring(_cfg(src, out, package))
    assert (first["scored"], first["failed"]) == (6, 1)
    before = _rows(out).set_index("path")

    (src / "p0.jpg").unlink()
    _photo(src / "p1.jpg", seed=999, size=(80, 60))  # changed content: scored again
    _photo(src / "new a.jpg", seed=200)
    _photo(src / "sub" / "new b.jpg", seed=201)
    second = run_scoring(_cfg(src, out, package, resume=True))

    rescored = {str(src / n) for n in ("p1.jpg", "new a.jpg", "sub/new b.jpg", "broken.jpg")}
    assert second["resume"] == {"reused": 4, "scored_now": 4}
    assert second["files_seen"] == 8 and set(_rows(out)["path"]) == _expected(src)
    scored_now = pq.read_table(out / "predictions" / "part-00000.parquet")["path"].to_pylist()
    assert set(scored_now) == rescored  # the model saw exactly these files
    after = _rows(out).set_index("path")
    for path in (str(src / f"p{i}.jpg") for i in (2, 3, 4, 5)):
        assert after.loc[path, "confidence"] == before.loc[path, "confidence"]
        assert after.loc[path, "node_id"] == before.loc[path, "node_id"]


class ExplodingScorer(Scorer):
    """A scorer whose model call fails for one file: a crash in the middle of a job."""

    def __call__(self, batch):
        if any("boom" in str(p) for p in batch["path"]):
            raise RuntimeError("injected failure: boom")
        return super().__call__(batch)


@pytest.mark.slow
def test_failed_job_never_looks_finished_and_keeps_the_previous_result(
    ray_cluster, package, tmp_path
):
    src = tmp_path / "in"
    for i in range(9):
        _photo(src / f"a{i}.jpg", seed=300 + i)
    _photo(src / "z boom.jpg", seed=399)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="boom"):
        run_scoring(_cfg(src, out, package, batch_size=2), scorer_cls=ExplodingScorer)
    assert not (out / "_SUCCESS").exists()
    assert not (out / "predictions").exists() and not (out / "summary.json").exists()
    partial = list(out.glob(".partial-*/predictions/*.parquet"))
    finished_before_crash = sum(pq.read_metadata(p).num_rows for p in partial)

    done = run_scoring(_cfg(src, out, package, batch_size=2, resume=True))
    assert done["resume"]["reused"] == finished_before_crash
    assert done["resume"]["scored_now"] == 10 - finished_before_crash
    assert done["files_seen"] == 10 and done["scored"] == 10
    marker = (out / "_SUCCESS").read_text()
    summary = (out / "summary.json").read_text()
    rows = _rows(out).sort_values("path").reset_index(drop=True)

    with pytest.raises(Exception, match="boom"):
        run_scoring(
            _cfg(src, out, package, batch_size=2, overwrite=True), scorer_cls=ExplodingScorer
        )
    assert (out / "_SUCCESS").read_text() == marker
    assert (out / "summary.json").read_text() == summary
    pd.testing.assert_frame_equal(_rows(out).sort_values("path").reset_index(drop=True), rows)


class ThreadsScorer(Scorer):
    """A scorer that writes the torch threads its model runs on into the ``device`` column."""

    def __init__(self, *args, **kwargs):
        import torch

        super().__init__(*args, **kwargs)
        self.device = f"{self.device} threads={torch.get_num_threads()}"


def test_unset_torch_threads_give_the_model_the_nodes_cores(ray_cluster, package, tmp_path):
    """``birdray score``'s default on CPU: the model runs on the node's cores, not one thread
    per reserved CPU (which left a 2-core laptop's model on one core); a set count is kept."""
    from birdray.model.factory import node_cores

    src = tmp_path / "in"
    for i in range(3):
        _photo(src / f"p{i}.jpg", seed=500 + i)
    for threads, expected in ((0, max(1, node_cores())), (1, 1)):
        out = tmp_path / f"out{threads}"
        run_scoring(_cfg(src, out, package, torch_threads=threads), scorer_cls=ThreadsScorer)
        assert set(_rows(out)["device"]) == {f"cpu threads={expected}"}


@pytest.mark.slow
def test_actor_pool_runs_on_the_gpu_node(ray_cluster, package, tmp_path):
    import ray

    src = tmp_path / "in"
    for i in range(6):
        _photo(src / f"g{i}.jpg", seed=500 + i)
    gpu_node = ray_cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1")
    try:
        ray_cluster.wait_for_nodes()
        assert ray.cluster_resources().get("GPU") == 2
        cfg = _cfg(f"file://{src}", tmp_path / "out", package, num_gpus=1, actor_cpus=0.5)
        summary = run_scoring(cfg)
    finally:
        ray_cluster.remove_node(gpu_node)
    rows = _rows(tmp_path / "out")
    assert set(rows["node_id"]) == {gpu_node.node_id}  # placed by its GPU request
    assert set(rows["device"]) == {"cpu"}  # logical GPUs: torch falls back to the CPU
    assert summary["nodes"] == {gpu_node.node_id: 6} and summary["scored"] == 6
    assert set(rows["path"]) == _expected(src)


@pytest.mark.slow
def test_scores_an_ingested_parquet_split(ray_cluster, package, tmp_path):
    from birdray.data.ingest import IngestConfig, run_ingest
    from tests.cub_fixture import jpeg_bytes, write_layout

    images = [
        (c, jpeg_bytes(color=(60 * c, 90, 200 - 40 * c)), t) for c in (1, 2, 3) for t in (1, 0, 0)
    ]
    images.append((2, b"not an image", False))  # quarantined by ingest: never a test row
    root = write_layout(tmp_path / "src", images)
    dataset = tmp_path / "ds"
    run_ingest(IngestConfig(source=str(root.parent), out=str(dataset), val_fraction=0.0))
    summary = run_scoring(_cfg(dataset, tmp_path / "out", package, split="test"))

    test_split = pq.read_table(next(dataset.glob("shards-*")) / "split=test").to_pandas()
    rows = _rows(tmp_path / "out").set_index("image_id")
    assert summary["input_kind"] == "dataset" and summary["files_seen"] == len(test_split) == 6
    assert set(rows.index) == set(test_split["image_id"])
    predictor = Predictor(str(package), device="cpu")
    for item in test_split.itertuples():
        image = decode_for_model(item.image, predictor.metadata.data_config).image
        direct = predictor.predict_images([image])[0]
        row = rows.loc[item.image_id]
        assert row["path"] == item.path and row["ok"]
        assert row["label"] == direct.label
        assert row["confidence"] == pytest.approx(direct.confidence, abs=1e-5)

    # an output that lost two rows (as after a crash): resume decodes only those two
    part = tmp_path / "out" / "predictions" / "part-00000.parquet"
    table = pq.read_table(part)
    dropped = set(table["image_id"].to_pylist()[:2])
    pq.write_table(table.slice(2), part)
    again = run_scoring(_cfg(dataset, tmp_path / "out", package, split="test", resume=True))
    assert again["resume"] == {"reused": 4, "scored_now": 2} and again["files_seen"] == 6
    rescored = pq.read_table(tmp_path / "out" / "predictions" / "part-00000.parquet")
    assert set(rescored["image_id"].to_pylist()) == dropped

    # dataset rows have no size or mtime: --resume reused every row after the split's photos
    # were replaced in place (the ingest's hashes left as they were); now none is reused
    import pyarrow as pa

    for shard in (next(dataset.glob("shards-*")) / "split=test").glob("*.parquet"):
        table = pq.read_table(shard)
        at = table.schema.get_field_index("image")
        swapped = pa.array([b"not an image any more"] * len(table), table.schema.field(at).type)
        pq.write_table(table.set_column(at, table.schema.field(at), swapped), shard)
    replaced = run_scoring(_cfg(dataset, tmp_path / "out", package, split="test", resume=True))
    assert replaced["resume"] == {"reused": 0, "scored_now": 6} and replaced["failed"] == 6


def test_a_finished_output_is_not_overwritten_by_accident(scored, package):
    root, out, _ = scored
    before = (out / "_SUCCESS").read_text()
    with pytest.raises(RuntimeError, match="--resume or --overwrite"):
        run_scoring(_cfg(root, out, package))
    assert (out / "_SUCCESS").read_text() == before


def test_an_album_with_a_manifest_and_a_link_to_the_output_scores_only_its_photos(
    ray_cluster, package, tmp_path
):
    """Real folders' shapes, through the CLI door: another tool's manifest.json in the album
    (refused as a damaged dataset) and a link in it to the output (the last run's explanation
    PNGs became photo rows, more each --resume). A folder whose own name is not UTF-8, given
    through a UTF-8 link: ``test_score_parts`` (listed as given)."""
    album, out = tmp_path / "album", tmp_path / "out"
    for i in range(3):
        _photo(album / f"p{i}.jpg", seed=300 + i)
    (album / "manifest.json").write_text('{"name": "Summer 2024", "photos": ["p0.jpg"]}')
    out.mkdir()
    (album / "results").symlink_to(out)
    flags = ["--model", str(package), "--batch-size", "4", "--preprocess-cpus", "0.5"]
    argv = ["score", "--input", str(album), "--output", str(out), *flags, "--explain-lowest", "2"]
    for extra in ([], ["--resume", "true"]):
        assert main([*argv, *extra]) == 0
        rows = _rows(out)
        assert sorted(rows["path"]) == [str(album / f"p{i}.jpg") for i in range(3)]
    assert len(list((out / "explanations").glob("*.png"))) == 2


def test_a_folder_lists_every_ending_the_decoder_reads_and_nothing_else(tmp_path):
    """The default extensions are the decoder's (``birdray.images``): a camera's ``.JFIF`` or
    ``.jpe`` is scored as ingest takes it (before, scoring's own list skipped them silently:
    not scored, not reported); a text file is not listed."""
    from birdray.images import IMAGE_SUFFIXES
    from birdray.scoring.sources import (
        DEFAULT_EXTENSIONS,
        list_inputs,
        normalize_extensions,
        open_source,
    )
    from tests.cub_fixture import jpeg_bytes

    names = ["a.jpg", "b.JFIF", "c.jpe", "d.PNG", "e.webp", "notes.txt", "sub/f.tiff"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(jpeg_bytes())
    listed = list_inputs(open_source(str(tmp_path)), normalize_extensions(DEFAULT_EXTENSIONS), None)
    assert sorted(listed["path"].to_pylist()) == sorted(
        str(tmp_path / n) for n in names if n != "notes.txt"
    )
    assert set(normalize_extensions(DEFAULT_EXTENSIONS)) == set(IMAGE_SUFFIXES)


@pytest.mark.slow
def test_ctrl_c_while_scoring_is_one_line_130_and_whole_parts(package, tmp_path):
    """Ctrl-C mid-stream: Ray shut down at exit under a Ray Data pipeline still running in its
    threads, and ~150 lines of "Ray is not initialized" tracebacks followed "interrupted"."""
    root = tmp_path / "in"
    for i in range(3000):
        _photo(root / f"bird_{i:04d}.jpg", seed=i)
    out = tmp_path / "out"
    argv = ["score", "--input", str(root), "--model", str(package), "--output", str(out),
            "--batch-size", "4", "--preprocess-cpus", "0.5"]  # fmt: skip
    proc = birdray_process(argv, RAY_ADDRESS="")  # its own local Ray, as a user's shell starts it
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob(".partial-*/predictions/.*.inprogress")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)  # until a first block is being written: the pipeline is streaming
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    after = err[err.index("birdray score: interrupted") :]
    assert after.strip() == "birdray score: interrupted", after[:3000]
    assert not (out / "_SUCCESS").exists()
    parts = list(out.glob(".partial-*/predictions/*.parquet"))  # whole files, for --resume
    assert parts and all(pq.read_metadata(part).num_rows > 0 for part in parts)
