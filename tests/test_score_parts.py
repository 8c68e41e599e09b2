"""Batch-scoring parts that need no Ray: listing, config checks, the atomic output folder."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from birdray.cli import main
from birdray.config import ConfigError
from birdray.scoring.job import ScoreConfig
from birdray.scoring.output import (
    SUCCESS,
    OutputError,
    PartWriter,
    commit,
    locked,
    read_rows,
    reusable_rows,
)
from birdray.scoring.sources import (
    SourceError,
    list_inputs,
    normalize_extensions,
    open_source,
    read_file,
)
from birdray.scoring.stages import SCHEMA


def _row(path: str, ok: bool = True, version: str = "v1", size: int = 10, mtime: int = 5) -> dict:
    return {
        "path": path, "ok": ok, "error": None if ok else "corrupt: x", "label": 1 if ok else None,
        "species": "002.B" if ok else None, "confidence": 0.9 if ok else None,
        "top_k": [{"label": 1, "species": "002.B", "probability": 0.9}] if ok else None,
        "model_version": version, "width": 8, "height": 8, "image_id": None,
        "file_size": size, "mtime_ns": mtime, "node_id": "n", "device": "cpu",
    }  # fmt: skip


def test_extension_filter_normalises():
    assert normalize_extensions(["jpg", ".PNG", "tif,webp"]) == (".jpg", ".png", ".tif", ".webp")
    assert normalize_extensions([]) is None
    assert normalize_extensions(["*"]) is None


def test_listing_is_recursive_filtered_and_skips_own_output(tmp_path):
    src = tmp_path / "in"
    (src / "a b" / "ünï 鸟").mkdir(parents=True)
    (src / "a b" / "ünï 鸟" / "x #1.JPG").write_bytes(b"1")
    (src / "y.png").write_bytes(b"22")
    (src / "notes.txt").write_text("no")
    (src / "out" / "predictions").mkdir(parents=True)
    (src / "out" / "overlay.png").write_bytes(b"3")  # results written inside the input folder
    source = open_source(str(src))
    listing = list_inputs(source, normalize_extensions(["jpg", "png"]), exclude=src / "out")
    names = [p.removeprefix(str(src) + "/") for p in listing["path"].to_pylist()]
    assert names == ["a b/ünï 鸟/x #1.JPG", "y.png"]
    assert listing["file_size"].to_pylist() == [1, 2]
    assert read_file(source, listing["path"][0].as_py()) == b"1"
    every = list_inputs(source, None, exclude=None)
    assert len(every) == 4
    via_uri = list_inputs(open_source(f"file://{src}"), (".png",), exclude=src / "out")
    assert via_uri["path"].to_pylist() == [str(src / "y.png")]


def test_listing_gives_every_entry_a_row_and_each_folder_once(tmp_path):
    """A link back up listed one photo 41 times (two such links: forever); a name that is not
    UTF-8 ended the job; a FIFO, a dangling link were dropped without a row. Now each file is
    listed once and what cannot be read says why, without being opened."""
    import os

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "bird.jpg").write_bytes(b"1")
    (src / "sub" / "loop").symlink_to(src)
    (src / "up").symlink_to(src)
    os.mkfifo(src / "pipe.jpg")
    (src / "dangling.jpg").symlink_to(src / "gone.jpg")
    (src / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"2")
    listing = list_inputs(open_source(str(src)), (".jpg",), exclude=None)
    rows = dict(zip(listing["path"].to_pylist(), listing["error"].to_pylist(), strict=True))
    assert rows.pop(str(src / "sub" / "bird.jpg")) is None  # once, though reachable thrice
    assert rows == {
        str(src / "caf\\xe9.jpg"): "bad_filename: the name is not valid UTF-8; rename the file",
        str(src / "dangling.jpg"): "missing: the file (or a link's target) does not exist",
        str(src / "pipe.jpg"): "unreadable: not a regular file (a FIFO, socket or device)",
    }


def test_a_real_file_named_like_an_escaped_name_keeps_both_rows(tmp_path):
    """``bird\\xe9.jpg`` (not UTF-8) is shown escaped, which is a real file's literal name too:
    the two shared one path and the finished job failed its count check."""
    import os

    src = tmp_path / "in"
    src.mkdir()
    (src / os.fsdecode(b"bird\xe9.jpg")).write_bytes(b"1")
    (src / "bird\\xe9.jpg").write_bytes(b"2")
    listing = list_inputs(open_source(str(src)), (".jpg",), exclude=None)
    rows = dict(zip(listing["path"].to_pylist(), listing["error"].to_pylist(), strict=True))
    assert len(rows) == 2
    assert rows[str(src / "bird\\xe9.jpg")] is None  # the real name is kept as it is
    assert rows[str(src / "bird\\xe9.jpg (not UTF-8, 2)")].startswith("bad_filename")


def test_a_folder_that_cannot_be_listed_gets_a_row_saying_so(tmp_path, monkeypatch):
    """Its photos are unknown, so it cannot vanish without a trace: one row, whatever the
    extension filter (as root ``chmod 000`` does not stop a read, so the refusal is simulated)."""
    import os

    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "a.jpg").write_bytes(b"1")
    (src / "b.jpg").write_bytes(b"2")
    (src / os.fsdecode(b"d\xe9")).mkdir()  # not UTF-8, shown escaped ...
    (src / "d\\xe9").mkdir()  # ... as this one is literally named; neither can be listed
    scandir = os.scandir

    def refusing(path):
        if str(path).endswith(("locked", "xe9", os.fsdecode(b"\xe9"))):
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    listing = list_inputs(open_source(str(src)), (".jpg",), exclude=None)
    rows = dict(zip(listing["path"].to_pylist(), listing["error"].to_pylist(), strict=True))
    refused = "unreadable: cannot list this folder: Permission denied"
    assert rows == {
        str(src / "b.jpg"): None,
        str(src / "locked") + "/": refused,
        str(src / "d\\xe9") + "/": refused,
        str(src / "d\\xe9") + "/ (not UTF-8, 2)": refused + ": the name is not valid UTF-8",
    }


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "nope"))


def test_files_the_extension_filter_leaves_out_are_counted(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "b.HEIC").write_bytes(b"2")
    (tmp_path / "notes.txt").write_text("no")
    (tmp_path / "README").write_text("no")
    skipped = Counter()
    listing = list_inputs(open_source(str(tmp_path)), (".jpg",), exclude=None, skipped=skipped)
    assert listing["path"].to_pylist() == [str(tmp_path / "a.jpg")]
    assert skipped == {".heic": 1, ".txt": 1, "(no extension)": 1}


def test_a_folder_with_nothing_to_score_is_an_error_not_zero_of_zero(tmp_path, capsys):
    """A folder of only .heic/.txt files printed 'scored 0 of 0 files', exit 0, and wrote a
    finished (empty) result: the photos were neither scored nor reported."""
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.heic").write_bytes(b"1")
    (photos / "y.txt").write_text("no")
    out = tmp_path / "out"
    argv = ["score", "--input", str(photos), "--model", str(package), "--output", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "nothing to score" in err and "2 files skipped by --extensions (.heic 1, .txt 1)" in err
    assert not (out / SUCCESS).exists()
    (photos / "x.heic").unlink()
    (photos / "y.txt").unlink()
    assert main(argv) == 1
    assert "no files found" in capsys.readouterr().err


def test_config_is_checked_before_anything_runs(capsys):
    with pytest.raises(ConfigError, match="--output is required"):
        ScoreConfig(input="x")
    with pytest.raises(ConfigError, match="exclude each other"):
        ScoreConfig(input="x", output="y", resume=True, overwrite=True)
    assert main(["score", "--input", "x", "--output", "y", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_extensions_flag_accepts_a_plain_list():
    from birdray import config as cfglib

    cfg = cfglib.resolve(ScoreConfig, {"input": "x", "output": "y", "extensions": "jpg,PNG"})
    assert normalize_extensions(cfg.extensions) == (".jpg", ".png")


def test_part_files_are_invisible_until_closed(tmp_path):
    writer = PartWriter(tmp_path, "part", rows_per_file=3)
    writer.write(pa.Table.from_pylist([_row(f"/p{i}") for i in range(4)], SCHEMA))
    assert [p.name for p in tmp_path.glob("*.parquet")] == ["part-00000.parquet"]
    assert len(read_rows([tmp_path])) == 3  # the open file is not read
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet",
    ]  # fmt: skip
    assert len(read_rows([tmp_path])) == 4 and writer.total == 4


def test_resume_reuses_only_ok_unchanged_rows_of_this_model(tmp_path):
    old = [
        _row("/keep"), _row("/failed", ok=False), _row("/other-model", version="v0"),
        _row("/changed"), _row("/gone"),
    ]  # fmt: skip
    (tmp_path / "predictions").mkdir()
    pq.write_table(pa.Table.from_pylist(old, SCHEMA), tmp_path / "predictions" / "part-0.parquet")
    (tmp_path / ".partial-x" / "predictions").mkdir(parents=True)
    crashed = pa.Table.from_pylist([_row("/from-crash")], SCHEMA)
    pq.write_table(crashed, tmp_path / ".partial-x" / "predictions" / "part-0.parquet")
    (tmp_path / ".partial-x" / "predictions" / "part-1.parquet").write_bytes(b"PAR1 torn")
    listing = pa.table(
        {
            "path": ["/keep", "/failed", "/other-model", "/changed", "/from-crash", "/new"],
            "image_id": pa.nulls(6, pa.int64()),
            "file_size": [10, 10, 10, 11, 10, 10],
            "mtime_ns": [5] * 6,
        }
    )
    kept = reusable_rows(tmp_path, listing, "v1")
    assert sorted(kept["path"].to_pylist()) == ["/from-crash", "/keep"]


def test_commit_swaps_results_and_writes_success_last(tmp_path):
    root = tmp_path / "out"
    (root / "predictions").mkdir(parents=True)
    (root / "predictions" / "old.parquet").write_bytes(b"old")
    (root / "summary.json").write_text("{}")
    (root / SUCCESS).write_text("{}")
    staging = root / ".partial-run2"
    (staging / "predictions").mkdir(parents=True)
    (staging / "predictions" / "new.parquet").write_bytes(b"new")
    (staging / "summary.json").write_text('{"run": 2}')
    (root / ".partial-crashed").mkdir()
    commit(root, staging, {"run_id": "run2"})
    assert [p.name for p in (root / "predictions").iterdir()] == ["new.parquet"]
    assert json.loads((root / "summary.json").read_text()) == {"run": 2}
    assert json.loads((root / SUCCESS).read_text())["run_id"] == "run2"
    assert sorted(p.name for p in root.iterdir()) == ["_SUCCESS", "predictions", "summary.json"]


def test_one_job_per_output_folder(tmp_path):
    with (
        locked(tmp_path),
        pytest.raises(OutputError, match="another scoring job"),
        locked(tmp_path),
    ):
        pass


def test_package_travels_as_bytes_and_is_still_verified(tmp_path):
    """Scoring actors on other nodes load the package from bytes, with the same checks."""
    import torch

    from birdray.model.errors import ModelError
    from birdray.model.package import load_package, load_package_files, package_files
    from tests.model_fixture import make_package

    path = make_package(tmp_path / "pkg")
    files = package_files(path)
    loaded = load_package_files(files, "shipped")
    reference = load_package(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference.model(x))
    assert loaded.metadata.content_hash == reference.metadata.content_hash
    tampered = dict(files, **{"model.safetensors": files["model.safetensors"][:-1] + b"\x00"})
    with pytest.raises(ModelError, match="weights hash"):
        load_package_files(tampered)
    # the driver checks once, on the bytes it ships: a folder damaged on disk never leaves it
    (path / "model.safetensors").write_bytes(tampered["model.safetensors"])
    with pytest.raises(ModelError, match="weights hash"):
        package_files(path)


def test_decode_stage_turns_every_failure_into_an_error_string(tmp_path):
    """The CPU stage on its own: one output row per input row, whatever the bytes are."""
    import io

    from PIL import Image

    from birdray.scoring.decode import prepare_batch
    from birdray.scoring.sources import Source

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    (tmp_path / "ok.jpg").write_bytes(buf.getvalue())
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    names = ["ok.jpg", "empty.jpg", "text.jpg", "gone.jpg", "huge.jpg"]
    batch = pa.table(
        {
            "path": [str(tmp_path / n) for n in names],
            "image_id": pa.nulls(5, pa.int64()),
            "file_size": [len(buf.getvalue()), 0, 5, 10, 10**9],
            "mtime_ns": [1, 2, 3, 4, 5],
        }
    )
    config = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3,
              "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    out = prepare_batch(
        batch, Source("folder", str(tmp_path), ""), json.dumps(config), 2**20, 10**6
    )
    codes = [e.split(":", 1)[0] for e in out["error"]]
    assert codes == ["", "empty", "not_an_image", "unreadable", "file_too_big"]
    assert out["pixels"].shape == (5, 3, 16, 16) and out["pixels"].dtype == np.uint8
    assert out["pixels"][0].mean() > 0 and out["pixels"][1:].max() == 0
    assert (out["width"][0], out["height"][0]) == (40, 30) and out["width"][1] == -1
    rows = pa.table({"path": ["a"], "image_id": [7], "image": pa.array([None], pa.binary())})
    out = prepare_batch(rows, Source("dataset", "/d", "", "/d/s"), json.dumps(config), 0, 10**6)
    assert out["error"][0].startswith("missing:") and out["image_id"][0] == 7
    import os

    os.mkfifo(tmp_path / "pipe.jpg")  # became a FIFO after the listing: fails, never blocks
    listed = batch.append_column("error", pa.array([None, None, None, "bad_filename: x", None]))
    listed = pa.concat_tables([listed, listed.slice(0, 1).set_column(
        0, "path", pa.array([str(tmp_path / "pipe.jpg")]))])  # fmt: skip
    out = prepare_batch(
        listed, Source("folder", str(tmp_path), ""), json.dumps(config), 2**20, 10**6
    )
    codes = [e.split(":", 1)[0] for e in out["error"]]
    assert codes == ["", "empty", "not_an_image", "bad_filename", "file_too_big", "unreadable"]
    assert "not a regular file" in out["error"][5]


@pytest.mark.parametrize(("rows", "batch"), [(0, 16), (1, 16), (10, 16), (3200, 16), (250_000, 32)])
def test_blocks_start_with_one_batch_and_grow_to_task_size(rows, batch):
    from birdray.scoring.stages import StagePlan, block_slices, task_rows

    plan = StagePlan(batch_size=batch, pool_size=1, actor_cpus=1.0)
    slices = block_slices(rows, plan)
    assert sum(n for _, n in slices) == rows  # every row once, in order, no gaps
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(slices))
    if rows:
        assert slices[0] == (0, min(batch, rows))  # the first results wait for one batch only
        sizes = [n for _, n in slices[:-1]]
        assert sizes == sorted(sizes) and max(sizes or [0]) <= max(task_rows(plan), rows / 1000)
    assert len(slices) <= 1000 + 8  # bounded block count, whatever the input size


def test_a_write_that_fails_is_one_error_naming_the_folder_and_no_torn_part(tmp_path, monkeypatch):
    """Disk full while a part file is closed: an OutputError naming the folder (one line from the
    CLI, not pyarrow's traceback), and the torn file keeps its temporary name even after the
    caller's ``finally: writer.close()``, so nothing with a real name is unreadable."""

    def disk_full(self):
        raise OSError(28, "No space left on device")

    writer = PartWriter(tmp_path, "part", rows_per_file=2)
    monkeypatch.setattr(pq.ParquetWriter, "close", disk_full)
    with pytest.raises(OutputError, match=f"cannot write to {tmp_path}.*No space left"):
        writer.write(pa.Table.from_pylist([_row("/a"), _row("/b")], SCHEMA))
    writer.close()  # what _stream_rows' finally does: nothing left to rename
    assert list(tmp_path.glob("*.parquet")) == []
    assert [p.name for p in tmp_path.glob(".*.inprogress")] == [".part-00000.inprogress"]


def test_a_bucket_that_is_gone_ends_the_job_naming_it(tmp_path, monkeypatch):
    """One object that fails is its row; a bucket that stops answering is the job's error, found
    at the first failed read (not after every file has waited out the S3 client's retries)."""
    from birdray.scoring import decode
    from birdray.scoring.job import _stream_rows
    from birdray.scoring.sources import Source

    tried = []

    def read(source, path, max_bytes):
        tried.append(path)
        raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation")

    monkeypatch.setattr(decode, "read_file", read)
    monkeypatch.setattr(decode, "bucket_reachable", lambda source: False)
    config = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3,
              "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    paths = [f"s3://birds/photos/{i}.jpg" for i in range(3)]
    batch = pa.table({"path": paths, "file_size": [5] * 3, "mtime_ns": [1, 2, 3]})
    source = Source("folder", "s3://birds/photos", "s3://")
    out = decode.prepare_batch(batch, source, json.dumps(config), 2**20, 10**6)
    assert [e.split(":", 1)[0] for e in out["error"]] == ["unreachable"] * 3
    assert "s3://birds/photos" in out["error"][0] and tried == paths[:1]

    class Rows:  # the driver's side: the first such row ends the job before _SUCCESS
        def iter_batches(self, **kwargs):
            row = {**_row(paths[0], ok=False), "error": out["error"][0]}
            yield pa.Table.from_pylist([row], SCHEMA)

    with pytest.raises(SourceError, match="cannot reach s3://birds/photos"):
        _stream_rows(Rows(), PartWriter(tmp_path, "part", 10))
