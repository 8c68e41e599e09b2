"""Batch-scoring parts that need no Ray: listing, config checks, the atomic output folder."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from birdray.cli import main
from birdray.config import ConfigError, UsageError
from birdray.scoring.job import ScoreConfig, run_scoring
from birdray.scoring.output import (
    SUCCESS,
    OutputError,
    PartWriter,
    commit,
    finished,
    foreign,
    is_result,
    locked,
    new_run_id,
    read_rows,
)
from birdray.scoring.places import clash, odd_bucket_path
from birdray.scoring.resume import input_identity, reusable_rows, write_inputs
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
    crash = tmp_path / ".partial-20260101-120000-0a1b2c"  # a run of birdray's (output.RUN_ID)
    (crash / "predictions").mkdir(parents=True)
    crashed = pa.Table.from_pylist([_row("/from-crash")], SCHEMA)
    pq.write_table(crashed, crash / "predictions" / "part-0.parquet")
    (crash / "predictions" / "part-1.parquet").write_bytes(b"PAR1 torn")
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
    (root / ".partial-20260101-120000-0a1b2c").mkdir()  # a crashed run of birdray's
    commit(root, staging, {"run_id": "run2"})
    assert [p.name for p in (root / "predictions").iterdir()] == ["new.parquet"]
    assert json.loads((root / "summary.json").read_text()) == {"run": 2}
    assert json.loads((root / SUCCESS).read_text())["run_id"] == "run2"
    assert sorted(p.name for p in root.iterdir()) == ["_SUCCESS", "predictions", "summary.json"]


def _tree(root) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path, capsys):
    """An --output holding no birdray result (here, a user's folders named like ours): the job
    exited 0 after its commit had deleted review/labels.txt, explanations/notes.md, their
    summary.json and .old-backup/. Now the pre-flight and the job refuse it, untouched, with or
    without --overwrite (which replaces only a result of birdray's own)."""
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"1")
    mine = tmp_path / "mine"
    files = {"review/labels.txt": "my labels", "explanations/notes.md": "notes",
             "summary.json": '{"mine": true}', ".old-backup/keep.txt": "old",
             ".partial-notes/x.txt": "draft", "notes.txt": "unrelated"}  # fmt: skip
    for name, text in files.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text(text)
    before = _tree(mine)
    argv = ["score", "--input", str(photos), "--model", str(package), "--output", str(mine)]
    for extra in ([], ["--overwrite", "true"]):
        assert main([*argv, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("birdray score: error: --output: ")
        assert "explanations/, notes.txt, review/" in lines[0] and "new or empty folder" in lines[0]
        with pytest.raises(OutputError, match="not a birdray result"):
            run_scoring(ScoreConfig(input=str(photos), output=str(mine), model=str(package)))
        assert _tree(mine) == before  # not even a .lock
    (mine / "review" / "labels.txt").unlink()  # the pre-flight still says why, in one line
    assert main(argv) == 2 and "not a birdray result" in capsys.readouterr().err
    hidden = tmp_path / "finder"  # only hidden files (.DS_Store): birdray never touches them
    (hidden / ".old-backup").mkdir(parents=True)
    (hidden / ".DS_Store").write_bytes(b"\0")
    assert foreign(hidden) == ""


def test_commit_deletes_only_birdrays_own_leftovers(tmp_path):
    """The clean-up after a commit matched ``.old-*`` and ``.partial-*``: a user's backup went."""
    root = tmp_path / "out"
    (root / "predictions").mkdir(parents=True)
    (root / SUCCESS).write_text("{}")
    users = [".old-backup/keep.txt", ".partial-notes/x.txt", ".old-2026/y.txt"]
    for name in users:
        (root / name).parent.mkdir(parents=True)
        (root / name).write_text("theirs")
    ours = [root / ".old-20260101-120000-0a1b2c", root / ".partial-20260101-120000-0a1b2c"]
    for folder in ours:
        folder.mkdir()
    staging = root / f".partial-{new_run_id()}"
    (staging / "predictions").mkdir(parents=True)
    commit(root, staging, {"run_id": staging.name})
    assert all((root / name).read_text() == "theirs" for name in users)
    assert not any(p.exists() for p in [*ours, staging])


@pytest.mark.parametrize("through", ["a link", "a plain path"])
def test_an_output_that_holds_the_input_is_refused_before_anything(tmp_path, capsys, through):
    """``--output`` a parent of ``--input``: the job listed nothing ('nothing to score', exit 1)
    and left a .lock there; now one line, exit 2, links resolved."""
    photos = tmp_path / "parent" / "photos"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"1")
    output = tmp_path / "parent"
    if through == "a link":
        output = tmp_path / "link"
        output.symlink_to(tmp_path / "parent")
    assert main(["score", "--input", str(photos), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birdray score: error: --output: ") and "holds --input" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "parent" / ".lock").exists()


@pytest.mark.parametrize(
    "flag, value",
    [("--max-file-mb", "-1"), ("--max-pixels", "0"), ("--max-file-mb", "nan"),
     ("--stall-timeout-s", "nan"), ("--preprocess-cpus", "-0.5"), ("--rows-per-file", "0"),
     ("--torch-threads", "-1"), ("--preprocess-memory-mb", "-1"), ("--num-gpus", "inf"),
     ("--max-file-mb", "1e-9")],
)  # fmt: skip
def test_nonsense_limits_are_refused_naming_the_flag(capsys, flag, value):
    """``--max-file-mb -1`` and ``--max-pixels 0`` made every row an error row, exit 0."""
    assert main(["score", "--input", "x", "--output", "y", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {flag} " in err


def _split(folder, images: dict[str, bytes], hashes: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    columns = {"image_id": list(range(len(images))), "path": list(images),
               "image": list(images.values()), "content_hash": list(hashes.values())}  # fmt: skip
    table = pa.table(columns)
    pq.write_table(table, folder / "part-0.parquet")


def test_resume_on_a_dataset_reuses_only_rows_of_unchanged_photos(tmp_path):
    """Dataset rows have no size or mtime, so (None, None) matched: rows of replaced photos,
    or of another dataset, were reused. Identity is now the photo's hash plus its shard's."""
    import shutil

    from birdray.scoring.sources import Source, list_inputs

    images = {f"c/{i}.jpg": b"photo %d" % i for i in range(3)}
    hashes = {p: f"h{i}" for i, p in enumerate(images)}
    _split(tmp_path / "ds" / "split=test", images, hashes)
    source = Source("dataset", str(tmp_path / "ds"), "", str(tmp_path / "ds" / "split=test"))
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    rows = [{**_row(p, size=None, mtime=None), "image_id": i} for i, p in enumerate(images)]
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), out / "predictions" / "part-0.parquet")

    def reused(src: Source) -> list[str]:
        listing = list_inputs(src, None, None)
        return sorted(reusable_rows(out, listing, "v1", input_identity(src))["path"].to_pylist())

    assert reused(source) == []  # an output that never recorded what it was made from
    write_inputs(out, input_identity(source))
    assert reused(source) == sorted(images)
    other = tmp_path / "other"  # a copy elsewhere: another shard, whatever the paths say
    shutil.copytree(tmp_path / "ds", other)
    assert reused(Source("dataset", str(other), "", str(other / "split=test"))) == []
    # the photos replaced in place under the same hashes (the reviewer's rewrite of the shard)
    _split(tmp_path / "ds" / "split=test", {p: b"not an image" for p in images}, hashes)
    assert reused(source) == []


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
    assert codes == ["", "empty", "not_an_image", "missing", "file_too_big"]  # gone: as at listing
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


def _shards(dataset, rows: int = 3) -> Path:
    """A small dataset as ingest lays it out (a manifest, a split folder of Parquet shards)."""
    split = dataset / "shards-1" / "split=val"
    split.mkdir(parents=True)
    manifest = {"schema_version": 1, "shards_dir": "shards-1", "splits": {"val": {}},
                "counts": {}, "class_names": ["001.A"], "quarantine": {}}  # fmt: skip
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    for n in range(2):
        ids = list(range(n * rows, (n + 1) * rows))
        table = pa.table(
            {
                "image_id": pa.array(ids, pa.int32()),
                "path": [f"cub/{i}.jpg" for i in ids],
                "image": pa.array([b"x"] * rows, pa.binary()),
                "label": [0] * rows,
            }
        )
        pq.write_table(table, split / f"part-{n}.parquet")
    return split


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda f: f.write_bytes(bytes(range(256)) * 3), "is not a Parquet file: Parquet magic"),
        (lambda f: f.write_bytes(b""), "is empty (0 bytes)"),
        (
            lambda f: pq.write_table(pa.table({"foo": [1, 2]}), f),
            "lacks column(s) image_id, path, image (has foo)",
        ),
        (
            lambda f: pq.write_table(pa.table({"image_id": ["a"], "path": ["p"], "image": [1]}), f),
            "has columns of the wrong type: image_id is string, image is int64",
        ),
    ],
    ids=["garbage", "zero_bytes", "foreign_schema", "wrong_types"],
)
def test_a_damaged_shard_is_one_line_naming_it_before_any_ray_work(tmp_path, capsys, damage, said):
    """A garbage, empty or foreign shard in an ingested split was pyarrow's traceback (or a
    RayTaskError from inside read_parquet): now the CLI says which shard and what is wrong."""
    from tests.model_fixture import make_package

    split = _shards(tmp_path / "ds")
    damage(split / "part-1.parquet")
    out = tmp_path / "out"
    argv = ["score", "--input", str(tmp_path / "ds"), "--split", "val", "--output", str(out),
            "--model", str(make_package(tmp_path / "pkg"))]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"shard {split / 'part-1.parquet'} {said}" in err
    assert not (out / SUCCESS).exists()


def test_files_beside_the_shards_are_not_data_as_for_ray_datas_reader(tmp_path):
    """A README, ``_SUCCESS`` or ``.DS_Store`` in a split folder ended the job ("Could not open
    Parquet input source"); Ray's read_parquet (training's and scoring's reader) skips them."""
    split = _shards(tmp_path / "ds")
    (split / "README.txt").write_text("hi")
    (split / "_SUCCESS").write_bytes(b"")
    (split / ".DS_Store").write_bytes(b"\0")
    (split / ".hidden").mkdir()
    (split / ".hidden" / "x.parquet").write_bytes(b"junk")
    source = open_source(str(tmp_path / "ds"), "val")
    listing = list_inputs(source, None, exclude=None)
    assert listing["image_id"].to_pylist() == list(range(6))
    from birdray.scoring.sources import read_many

    assert read_many(source, ["cub/4.jpg"]) == {"cub/4.jpg": b"x"}


def test_a_folder_of_photos_with_another_tools_manifest_is_scored_as_photos(tmp_path):
    """An album export's (or a web app's) manifest.json made the folder a "dataset" and the job
    refused it: "manifest.json lacks schema_version, shards_dir, ..."."""
    from birdray.checks.serving_jobs import score as check_score

    (tmp_path / "album").mkdir()
    (tmp_path / "album" / "a.jpg").write_bytes(b"1")
    (tmp_path / "album" / "manifest.json").write_text('{"name": "Summer", "photos": ["a.jpg"]}')
    source = open_source(str(tmp_path / "album"))
    assert source.kind == "folder"
    listing = list_inputs(source, (".jpg",), exclude=None)
    assert listing["path"].to_pylist() == [str(tmp_path / "album" / "a.jpg")]
    cfg = ScoreConfig(input=str(tmp_path / "album"), output=str(tmp_path / "out"),
                      model=str(tmp_path / "album"))  # fmt: skip
    with pytest.raises(UsageError, match="^--model") as refused:  # past --input's check
        check_score(cfg)
    assert "--input" not in str(refused.value)


def test_no_link_leads_the_listing_into_the_output_folder(tmp_path):
    """The output was excluded by its path string: a link to it inside the input (or a link back
    up, ``up -> ..``) listed the last run's explanation PNGs as photos, more at each rerun."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"1")
    (out / "explanations").mkdir(parents=True)
    (out / "explanations" / "0.png").write_bytes(b"2")
    (src / "results").symlink_to(out)
    (src / "sub" / "up").symlink_to(tmp_path)  # reaches in/ again and out/
    (tmp_path / "outlink").symlink_to(out)
    for exclude in (out, tmp_path / "outlink"):  # the output named through a link too
        listing = list_inputs(open_source(str(src)), (".jpg", ".png"), exclude=exclude)
        assert listing["path"].to_pylist() == [str(src / "a.jpg")]
    every = list_inputs(open_source(str(src)), (".png",), exclude=None)
    assert len(every) == 1  # without an output to skip, the PNG is listed (once, by one path)
    (tmp_path / "inlink").symlink_to(src)
    with pytest.raises(SourceError, match="must not be the --input folder itself"):
        list_inputs(open_source(str(tmp_path / "inlink")), None, exclude=src)


def test_a_file_deleted_after_listing_is_missing_as_at_listing(tmp_path):
    """Listed, then deleted before its decode: "unreadable: [Errno 2] ..." while a file already
    gone at listing was "missing" -- one condition, two codes."""
    from birdray.scoring.decode import prepare_batch

    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    source = open_source(str(tmp_path))
    listing = list_inputs(source, (".jpg",), exclude=None)
    (tmp_path / "a.jpg").unlink()
    config = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3,
              "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    out = prepare_batch(listing, source, json.dumps(config), 2**20, 10**6)
    at_listing = listing["error"][1].as_py()
    assert at_listing.startswith("missing:")
    assert list(out["error"]) == [at_listing, at_listing]


def test_a_folder_name_that_is_not_utf8_is_named_and_a_utf8_link_to_it_scores(tmp_path):
    """Under a folder whose name is not UTF-8, every photo was told to rename itself; and a link
    with a UTF-8 name to that folder did not help, as the input was listed by its target."""
    import os

    bad = tmp_path / os.fsdecode(b"fold\xe9r")
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"1")
    listing = list_inputs(open_source(str(tmp_path)), (".jpg",), exclude=None)
    assert listing["path"].to_pylist() == [str(tmp_path / "fold\\xe9r" / "a.jpg")]
    assert listing["error"].to_pylist() == [
        "bad_filename: the folder name 'fold\\xe9r' is not valid UTF-8; rename it"
    ]
    (tmp_path / "link").symlink_to(bad)
    source = open_source(str(tmp_path / "link"))
    listing = list_inputs(source, (".jpg",), exclude=None)
    assert listing["path"].to_pylist() == [str(tmp_path / "link" / "a.jpg")]
    assert listing["error"].to_pylist() == [None]
    assert read_file(source, listing["path"][0].as_py()) == b"1"


@pytest.mark.parametrize(
    "marker",
    [b"", b"{}", b'{"status": "ok"}', b'{"run_id": 7}', b'{"run_id": ""}', b"[1, 2]",
     b"SUCCESS\n", b"\xff\xfe\x00"],
    ids=["spark_empty", "empty_object", "other_json", "run_id_not_text", "run_id_empty", "list",
         "text", "not_utf8"],
)  # fmt: skip
def test_another_tools_success_file_does_not_make_a_folder_birdrays(tmp_path, capsys, marker):
    """Spark and Hadoop write an empty ``_SUCCESS`` beside their part files: any ``_SUCCESS`` made
    the folder birdray's, so ``--overwrite`` replaced or deleted the user's files. Only birdray's
    own marker (a JSON object naming its run) does now; the folder is refused, untouched."""
    from tests.model_fixture import make_package

    assert not is_result(marker)
    spark = tmp_path / "spark-out"
    spark.mkdir()
    (spark / SUCCESS).write_bytes(marker)
    (spark / "part-0000.parquet").write_bytes(b"PAR1 their rows")
    (spark / ".partial-20260101-120000-0a1b2c").mkdir()  # even beside a crashed run of ours
    before = _tree(spark)
    assert "not a birdray result (_SUCCESS, part-0000.parquet)" in foreign(spark)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"1")
    package = make_package(tmp_path / "pkg")
    argv = ["score", "--input", str(photos), "--model", str(package), "--output", str(spark)]
    for flag in ("", "overwrite", "resume"):
        assert main([*argv, *([f"--{flag}", "true"] if flag else [])]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not a birdray result" in err
        cfg = ScoreConfig(input=str(photos), output=str(spark), model=str(package))
        if flag:
            setattr(cfg, flag, True)
        with pytest.raises(OutputError, match="not a birdray result"):
            run_scoring(cfg)
        assert _tree(spark) == before  # not even a .lock
    from birdray.dashboard.stage_reports import scoring_results

    assert scoring_results(str(spark))["state"] == "foreign"  # not shown as birdray's result


def test_only_birdrays_own_success_marks_a_finished_folder(tmp_path):
    """What ``commit`` writes is birdray's marker; a folder it finished stays birdray's (for
    ``--resume`` and ``--overwrite``), and an unreadable ``_SUCCESS`` (a folder, a FIFO, a
    dangling link) is not."""
    import os

    root = tmp_path / "out"
    staging = root / f".partial-{new_run_id()}"
    (staging / "predictions").mkdir(parents=True)
    commit(root, staging, {"run_id": staging.name.removeprefix(".partial-"), "rows": 0})
    assert is_result((root / SUCCESS).read_bytes()) and finished(root) and foreign(root) == ""
    (root / "notes.txt").write_text("mine, beside a finished result of birdray's")
    assert foreign(root) == ""  # as before: a finished folder of birdray's stays birdray's
    assert is_result(b'{"run_id": "20260101-120000-0a1b2c", "committed_at": 1.5}')
    assert not is_result(None) and not is_result(b" " * (2 << 20))  # none, or far too big
    for odd in ("folder", "fifo"):
        other = tmp_path / odd
        other.mkdir()
        (other / "part-0000.parquet").write_bytes(b"x")
        if odd == "folder":
            (other / SUCCESS).mkdir()
        else:
            os.mkfifo(other / SUCCESS)  # read without blocking: not a regular file
        assert not finished(other) and "not a birdray result" in foreign(other)
    dangling = tmp_path / "dangling"  # beside a crashed run of ours: still not ours to replace
    (dangling / ".partial-20260101-120000-0a1b2c").mkdir(parents=True)
    (dangling / SUCCESS).symlink_to(tmp_path / "nowhere")
    assert not finished(dangling) and "not a birdray result" in foreign(dangling)


def test_a_success_file_nobody_may_read_is_named_not_called_another_tools(
    tmp_path, monkeypatch, capsys
):
    """A ``_SUCCESS`` this user may not read (EACCES; simulated, as root reads everything) was
    called "not a birdray result", as if another tool had written it. Whose files these are is
    unknown: scoring and the dashboard say that the marker cannot be read, and write nothing."""
    import birdray.scoring.output as output
    from birdray.dashboard.stage_reports import scoring_results
    from tests.model_fixture import make_package

    root = tmp_path / "out"
    staging = root / f".partial-{new_run_id()}"
    (staging / "predictions").mkdir(parents=True)
    commit(root, staging, {"run_id": staging.name.removeprefix(".partial-"), "rows": 0})
    real = output.storage.read_local_file

    def denied(path, max_bytes=0):
        if Path(path).name == SUCCESS:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, max_bytes)

    monkeypatch.setattr(output.storage, "read_local_file", denied)
    said = foreign(root)
    assert "_SUCCESS cannot be read (Permission denied)" in said and "birdray result" in said
    assert not finished(root)
    results = scoring_results.__wrapped__(str(root))
    assert results["state"] == "unreadable" and "Permission denied" in results["why"]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"1")
    package = make_package(tmp_path / "pkg")
    before = _tree(root)
    argv = ["score", "--input", str(photos), "--model", str(package), "--output", str(root)]
    capsys.readouterr()  # Streamlit's import-time warnings: not the job's
    assert main([*argv, "--overwrite", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be read (Permission denied)" in err
    assert _tree(root) == before


SAME = "must not be the --input folder itself"
HOLDS = "holds --input"
CLIMBS = "climbs out of its bucket"


@pytest.mark.parametrize(
    "output, input_, said",
    [
        ("s3://b/x", "s3://b/x", SAME),
        ("s3://b//x", "s3://b/x", SAME),
        ("s3://b/x/", "s3://b/x", SAME),
        ("s3://b/./x", "s3://b/x", SAME),
        ("s3://b/x/.", "s3://b//x//", SAME),
        ("s3://b/y/../x", "s3://b/x", SAME),
        ("s3://B/x", "s3://b/x", SAME),
        ("s3://b/x?region=us-east-1", "s3://b/x", SAME),
        ("s3://key:secret@b/x", "s3://b/x", SAME),
        ("s3://b/a%20b", "s3://b/a b", SAME),
        ("gs://b/./x/", "gs://b/x", SAME),
        ("s3://b", "s3://b/x", HOLDS),
        ("s3://b/", "s3://b//x/y", HOLDS),
        ("s3://b/./", "s3://b/x", HOLDS),
        ("s3://b/x", "s3://b/x/y", HOLDS),
        ("s3://b//x", "s3://b/x/./y/", HOLDS),
        ("s3://b/x/y/..", "s3://b/x/y", HOLDS),
        ("s3://b/x/y", "s3://b/x", ""),  # a subfolder of the input: the listing leaves it out
        ("s3://b/x/./y", "s3://b//x", ""),
        ("s3://b/xy", "s3://b/x", ""),
        ("s3://b/x", "s3://b/xy", ""),
        ("s3://c/x", "s3://b/x", ""),
        ("gs://b/x", "s3://b/x", ""),
        ("s3://b/x", "/data/x", ""),
        ("abfs://c2@acct/photos", "abfs://c1@acct/photos", ""),  # two Azure containers
        ("abfs://c1@acct/x", "abfs://c1@acct/x/y", HOLDS),
        ("s3://b/../x", "s3://b/x", CLIMBS),
        ("s3://b/x", "s3://b/x/../../y", CLIMBS),
        ("s3://b/x/../..", "/data/x", CLIMBS),
    ],
)
def test_bucket_uris_are_compared_as_the_store_sees_them(output, input_, said):
    """``s3://b//x``, ``s3://b/x/`` and ``s3://b/./x`` were not the same prefix as ``s3://b/x``
    (raw strings), so an --output that was, or held, the --input passed the check."""
    wrong = clash(output, input_)
    assert (said in wrong) if said else wrong == ""


def test_an_odd_bucket_spelling_is_refused_with_the_plain_one(tmp_path, capsys, monkeypatch):
    """The job left ``s3://b/./photos/scored`` (a subfolder of ``s3://b/photos``: no clash) in
    the listing, whose paths are normalised, so a rerun scored its own results: the flags are
    now refused before Ray, with the spelling to use; the plain ones still reach the next check."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    assert odd_bucket_path("s3://b/photos/scored/") == "" and odd_bucket_path("/a//b") == ""
    assert odd_bucket_path("s3://b/x/../..").endswith("climbs out of its bucket with '..'")
    # what the store sees (%2E is a dot), and a plain spelling pyarrow can parse, query kept
    assert odd_bucket_path("s3://b/my%20run/%2E/x?endpoint_override=h").endswith(
        "write it as s3://b/my%20run/x?endpoint_override=h"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for flag, value in (("--output", "s3://b/./photos/scored"), ("--input", "s3://b//photos")):
        argv = {"--input": str(photos), "--output": str(tmp_path / "out"), "--model": "m"}
        argv[flag] = value
        assert main(["score", *[x for kv in argv.items() for x in kv]]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err, err
        assert "write it as s3://b/photos" in err, err


@pytest.mark.parametrize("where", ["opening the bucket", "reading the shards"])
def test_a_dataset_that_cannot_be_read_for_resume_is_one_line_naming_it(
    tmp_path, monkeypatch, where
):
    """A bucket refusing the connection (or the permission) while ``--resume`` read what each row
    was made from was a raw OSError traceback; now it is the job's one-line error naming it."""
    import errno

    from birdray import storage
    from birdray.cli import _job_error
    from birdray.scoring import resume
    from birdray.scoring.sources import Source

    _split(tmp_path / "ds" / "split=test", {"a.jpg": b"1"}, {"a.jpg": "h0"})
    source = Source("dataset", str(tmp_path / "ds"), "", str(tmp_path / "ds" / "split=test"))

    def refused(*args, **kwargs):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(storage if where == "opening the bucket" else resume,
                        "filesystem" if where == "opening the bucket" else "split_columns",
                        refused)  # fmt: skip
    with pytest.raises(SourceError) as caught:
        input_identity(source)
    said = str(caught.value)
    assert source.split_dir in said and "Connection refused" in said and "\n" not in said
    assert _job_error(caught.value) is caught.value  # the CLI says it in one line, exit 1


def test_a_dataset_in_a_bucket_that_refuses_the_connection_is_one_line(monkeypatch):
    """The same through a real S3 client: nothing listens on the endpoint (one try, no waiting)."""
    from birdray import storage
    from birdray.runtime import free_port
    from birdray.scoring.sources import Source

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(storage, "S3_ATTEMPTS", 1)
    split = "s3://birds/gone/split=test"
    with pytest.raises(SourceError, match=f"{split}: .*(?i:connect)"):
        input_identity(Source("dataset", "s3://birds/gone", "s3://", split))


def test_resume_keeps_rows_recorded_by_an_earlier_run_and_each_path_once(tmp_path):
    """The identity is built and compared as columns now (a Python loop over a million rows
    took seconds): a record written by an earlier run (``None@`` for a photo without a hash)
    still matches, a dict still works as the identity, and a path scored twice is kept once,
    from the finished result before a partial run."""
    from birdray.scoring.sources import Source

    images = {f"c/{i}.jpg": b"photo %d" % i for i in range(3)}
    split = tmp_path / "ds" / "split=test"
    _split(split, images, {"c/0.jpg": "h0", "c/1.jpg": None, "c/2.jpg": "h2"})
    source = Source("dataset", str(tmp_path / "ds"), "", str(split))
    shard = (split / "part-0.parquet").stat()
    stamp = f"{split / 'part-0.parquet'}:{shard.st_size}:{shard.st_mtime_ns}"
    earlier = {"c/0.jpg": f"h0@{stamp}", "c/1.jpg": f"None@{stamp}", "c/2.jpg": f"h2@{stamp}"}
    identity = input_identity(source)
    assert dict(zip(*identity.to_pydict().values(), strict=True)) == earlier
    out = tmp_path / "out"
    partial = out / ".partial-20260101-120000-0a1b2c"
    for folder, version in ((out, "v1"), (partial, "v1")):
        (folder / "predictions").mkdir(parents=True)
        rows = [{**_row(p, version=version, size=None, mtime=None), "node_id": folder.name}
                for p in [*images, "c/0.jpg"]]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows, SCHEMA), folder / "predictions" / "p.parquet")
        pq.write_table(pa.table({"path": list(earlier), "content": list(earlier.values())}),
                       folder / "inputs.parquet")  # fmt: skip
    listing = list_inputs(source, None, None)
    for given in (identity, earlier):
        kept = reusable_rows(out, listing, "v1", given)
        assert kept["path"].to_pylist() == list(images)
        assert set(kept["node_id"].to_pylist()) == {"out"}
    write_inputs(out / "again", earlier)  # a dict is written as the table would be
    assert pq.read_table(out / "again" / "inputs.parquet").to_pydict() == identity.to_pydict()
    (out / "predictions" / "p.parquet").unlink()  # now only the partial run has them
    assert reusable_rows(out, listing, "v1", identity)["node_id"].to_pylist() == [partial.name] * 3
    assert len(reusable_rows(out, listing, "v1", None)) == 0  # no identity: dataset rows rescored
