"""Ingest on a live local Ray: schema, counts, quarantine, stratified split, idempotence."""

from __future__ import annotations

import errno
import io
import json
import os
import threading

import pyarrow.parquet as pq
import pytest
from PIL import Image

from birdray.data.cub import read_cub
from birdray.data.ingest import IngestConfig, assign_splits, run_ingest
from birdray.data.manifest import (
    DatasetError,
    load_manifest,
    read_split,
    split_path,
    write_manifest,
)
from birdray.data.readback import reconcile
from tests.cub_fixture import jpeg_bytes, real_photos, write_layout

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _broken_layout(tmp_path):
    good = [(c, jpeg_bytes(color=(40 * c, 90, 200)), t) for c in (1, 2, 3) for t in (1, 1, 1, 1, 0)]
    photos = [(1, p.read_bytes(), True) for p in real_photos()]
    odd = [
        (2, jpeg_bytes(mode="CMYK"), True),
        (2, jpeg_bytes(mode="L"), True),
        (3, jpeg_bytes(mode="P", fmt="PNG"), True),
        (3, jpeg_bytes(mode="RGBA", fmt="PNG"), True),
        (3, jpeg_bytes(mode="I;16", fmt="PNG"), False),
    ]
    bad = [
        (1, b"", True),  # zero bytes
        (1, b"this is not an image at all", True),
        (2, jpeg_bytes()[:200], True),  # truncated
        (2, None, False),  # listed but missing
    ]
    return write_layout(tmp_path / "src", good + photos + odd + bad), len(photos)


def test_ingest_end_to_end(ray_cluster, tmp_path):
    root, n_photos = _broken_layout(tmp_path)
    bomb = Image.new("L", (5000, 5000))
    buf = io.BytesIO()
    bomb.save(buf, format="PNG")
    (root / "images" / "001.Species_1" / "img_1.jpg").write_bytes(buf.getvalue())
    out = tmp_path / "ds"
    cfg = IngestConfig(
        source=str(root.parent), out=str(out), val_fraction=0.25, max_pixels=10_000_000
    )
    manifest_path = run_ingest(cfg)
    manifest = load_manifest(out)
    listed = 15 + n_photos + 5 + 4
    counts = manifest["counts"]
    assert counts["listed"] == listed
    assert counts["ingested"] + counts["quarantined"] == listed
    reasons = {q["path"].split("/")[-1]: q["reason"] for q in manifest["quarantine"]}
    assert len(reasons) == 5
    assert reasons["img_1.jpg"].startswith("too_large")
    assert any(r.startswith("empty") for r in reasons.values())
    assert any(r.startswith("not_an_image") for r in reasons.values())
    assert any(r.startswith("corrupt") for r in reasons.values())
    assert any(r.startswith("missing") for r in reasons.values())
    assert sum(s["rows"] for s in manifest["splits"].values()) == counts["ingested"]
    assert set(manifest["splits"]) == {"train", "val", "test"}

    table = pq.read_table(split_path(out, "train"))  # pyarrow alone reads the shards
    assert {"image_id", "image", "label", "bbox", "parts", "attributes", "content_hash"} <= set(
        table.column_names
    )
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["parts"]) == 15 and set(row["parts"][0]) == {"x", "y", "visible"}
    assert len(row["bbox"]) == 4
    modes = {
        m
        for split in ("train", "val", "test")
        for m in pq.read_table(split_path(out, split), columns=["source_mode"])
        .column(0)
        .to_pylist()
    }
    assert {"CMYK", "P", "RGBA", "L", "I;16"} <= modes
    for data, fmt in zip(
        table.column("image").to_pylist(), table.column("format").to_pylist(), strict=True
    ):
        assert Image.open(io.BytesIO(data)).convert("RGB").size  # every stored image decodes
        assert fmt in ("JPEG", "PNG")

    ds = read_split(out, "test")  # and Ray Data reads them too
    assert ds.count() == manifest["splits"]["test"]["rows"]
    once = read_split(out, "test", list_once=True)  # training's reader: files planned once
    assert sorted(once.to_pandas()["image_id"]) == sorted(ds.to_pandas()["image_id"])

    # idempotent: same source + config -> the same manifest, untouched
    assert manifest_path == str(out / "manifest.json")
    before = (out / "manifest.json").read_text()
    assert run_ingest(cfg) == manifest_path and (out / "manifest.json").read_text() == before
    # forced re-run replaces shards atomically: only one shard folder remains
    run_ingest(IngestConfig(**{**cfg.__dict__, "force": True}))
    new = load_manifest(out)
    assert new["shards_dir"] != manifest["shards_dir"]
    assert [p.name for p in out.iterdir() if p.is_dir()] == [new["shards_dir"]]
    assert new["content_checksum"] == manifest["content_checksum"]


def test_shuffled_reads_keep_every_row_in_a_new_order_each_epoch(ray_cluster, tmp_path):
    """Training's file shuffle (no barrier, unlike randomize_block_order): each execution of the
    same dataset reads every row once, in another file order, reproducibly from the seed.

    The seed fixes the order the files are read in; the rows arrive as the read tasks finish
    (Ray Data holds no block back for order unless asked, and training does not ask), so on a
    loaded machine two files can swap. This test asks (``preserve_order``) to see the planned
    order itself: it once failed under load comparing arrival orders."""
    import pyarrow as pa
    from ray.data import DataContext

    from birdray.data.manifest import read_parquet

    for part in range(8):
        ids = list(range(part * 10, part * 10 + 10))
        pq.write_table(pa.table({"image_id": ids}), tmp_path / f"part-{part}.parquet")

    def epochs(seed: int, n: int = 3) -> list[list[int]]:
        options = DataContext.get_current().execution_options
        before, options.preserve_order = options.preserve_order, True
        try:
            ds = read_parquet(str(tmp_path), list_once=True, shuffle_seed=seed)
            return [[row["image_id"] for row in ds.iter_rows()] for _ in range(n)]
        finally:
            options.preserve_order = before

    first = epochs(seed=0)
    assert all(sorted(order) == list(range(80)) for order in first)  # nothing lost or repeated
    assert first[0] != first[1] != first[2]  # a new order every epoch
    assert epochs(seed=0) == first  # the same seed, the same orders
    assert epochs(seed=1, n=1)[0] != first[0]
    unshuffled = read_parquet(str(tmp_path), list_once=True)
    assert sorted(row["image_id"] for row in unshuffled.iter_rows()) == list(range(80))


def test_max_side_reencodes_and_scales_annotations(ray_cluster, tmp_path):
    images = [(1, jpeg_bytes(size=(400, 200)), True), (2, jpeg_bytes(size=(40, 20)), False)]
    root = write_layout(tmp_path / "src", images, ["001.A", "002.B"])
    out = tmp_path / "ds"
    run_ingest(IngestConfig(source=str(root), out=str(out), max_side=100, val_fraction=0))
    big = pq.read_table(split_path(out, "train")).to_pylist()[0]
    assert (big["width"], big["height"]) == (100, 50)
    assert Image.open(io.BytesIO(big["image"])).size == (100, 50)
    assert big["bbox"] == pytest.approx([0.5, 0.75, 5.0, 3.75])
    small = pq.read_table(split_path(out, "test")).to_pylist()[0]
    assert (small["width"], small["height"]) == (40, 20)


def test_val_split_is_stratified_and_deterministic(tmp_path):
    images = [(c, b"x", True) for c in (1, 2, 3) for _ in range(20)]
    cub = read_cub(write_layout(tmp_path, images))
    split = assign_splits(cub.records, 0.1, seed=3)
    assert split == assign_splits(cub.records, 0.1, seed=3)
    assert split != assign_splits(cub.records, 0.1, seed=4)
    for label in range(3):
        ids = [r.image_id for r in cub.records if r.label == label]
        assert sum(split[i] == "val" for i in ids) == 2


def test_folder_without_manifest_is_not_a_dataset(tmp_path):
    (tmp_path / "shards-x").mkdir()
    with pytest.raises(DatasetError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(DatasetError, match="lacks"):
        load_manifest(tmp_path)


def test_ingest_never_reads_a_path_outside_the_source(ray_cluster, tmp_path):
    """images.txt rows pointing out of images/ are quarantined; the outside file's bytes are
    never read into the dataset."""
    root = write_layout(tmp_path / "src", [(c, jpeg_bytes(), True) for c in (1, 2, 3, 1)])
    secret = jpeg_bytes(color=(1, 2, 3), size=(33, 21))
    (tmp_path / "secret.jpg").write_bytes(secret)
    (tmp_path / "src" / "secret.jpg").write_bytes(secret)
    lines = (root / "images.txt").read_text().splitlines()
    lines[1], lines[2] = "2 ../../secret.jpg", f"3 {tmp_path / 'secret.jpg'}"
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    counts, reasons, table = _ingested(root, tmp_path / "ds")
    assert counts == {"listed": 4, "ingested": 2, "quarantined": 2}
    assert reasons == {2: "unsafe_path", 3: "unsafe_path"}
    assert sorted(table.column("image_id").to_pylist()) == [1, 4]
    assert secret not in table.column("image").to_pylist()


def _ingested(root, out):
    """Ingest ``root`` with no validation split: (counts, quarantined id -> reason's first
    part, the train split's table)."""
    run_ingest(IngestConfig(source=str(root), out=str(out), val_fraction=0))
    manifest = load_manifest(out)
    reasons = {q["image_id"]: q["reason"].split(":")[0] for q in manifest["quarantine"]}
    return manifest["counts"], reasons, pq.read_table(split_path(out, "train"))


def test_odd_images_txt_rows_and_boxes_are_quarantined_and_counts_reconcile(ray_cluster, tmp_path):
    """A file listed under two ids (stored twice, scoring failed later), a name that is not
    UTF-8 (reported missing), a NaN box (stored), under a BOM (refused as id '\\ufeff1')."""
    import os

    root = write_layout(
        tmp_path / "src", [(c, jpeg_bytes(color=(60 * c, 9, 9)), True) for c in (1, 1, 2, 3)]
    )
    folder = root / "images" / "001.Species_1"
    os.rename(folder / "img_2.jpg", os.fsencode(folder) + b"/img_\xe9.jpg")
    images = (root / "images.txt").read_bytes().replace(b"img_2.jpg", b"img_\xe9.jpg")
    images += b"5 001.Species_1/img_1.jpg\n"  # the file of id 1 again
    (root / "images.txt").write_bytes(b"\xef\xbb\xbf" + images)
    for name, line in (("image_class_labels.txt", "5 1"), ("train_test_split.txt", "5 1")):
        (root / name).write_text((root / name).read_text() + line + "\n")
    boxes = (root / "bounding_boxes.txt").read_text().replace("3 2.0 3.0 20.0", "3 nan 3.0 20.0")
    (root / "bounding_boxes.txt").write_text(boxes + "5 2.0 3.0 20.0 15.0\n")
    counts, reasons, table = _ingested(root, tmp_path / "ds")
    assert counts == {"listed": 5, "ingested": 2, "quarantined": 3}
    assert reasons == {
        2: "bad_filename",
        3: "malformed bounding box (bounding_boxes.txt",
        5: "duplicate",
    }
    assert sorted(table.column("image_id").to_pylist()) == [1, 4]


def test_reconcile_checks_the_set_of_ids_not_only_counts():
    reconcile([1, 2, 3, 4], [1, 2], [3, 4])
    reconcile([1, 2], [], [2, 1])
    with pytest.raises(RuntimeError, match=r"more than once \[2\], missing \[3\]"):
        reconcile([1, 2, 3], [1, 2], [2])  # 2 + 1 == 3 listed, yet id 3 is lost
    with pytest.raises(RuntimeError, match=r"not listed \[9\]"):
        reconcile([1, 2], [1, 9], [])


def test_two_ingests_into_one_folder_take_turns_and_lose_nothing(ray_cluster, tmp_path, capsys):
    """Before, a finishing ingest deleted every shard folder its manifest did not name, another
    run's still being written among them: that run failed, or its manifest named a folder gone."""
    source = write_layout(
        tmp_path / "src",
        [(c, jpeg_bytes(color=(60 * c, 90, 20 * i)), i % 2) for c in (1, 2) for i in range(6)],
    )
    out = tmp_path / "ds"
    results: list[object] = []
    together = threading.Barrier(2, timeout=30)

    def ingest() -> None:
        try:
            together.wait()
            results.append(
                run_ingest(IngestConfig(source=str(source.parent), out=str(out), force=True))
            )
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [str(out / "manifest.json")] * 2, results
    assert f"waiting for another ingest into {out}" in capsys.readouterr().err
    manifest = load_manifest(out)
    assert [p.name for p in out.iterdir() if p.name.startswith("shards-")] == [
        manifest["shards_dir"]
    ]
    rows = sum(pq.read_table(split_path(out, split)).num_rows for split in manifest["splits"])
    assert rows == manifest["counts"]["ingested"] == 12


def test_concurrent_manifest_writers_never_clobber_each_others_temp_file(tmp_path):
    """Two ingests finishing together: each write lands whole, none fails on a vanished temp."""
    errors: list[BaseException] = []
    docs = [{"writer": w, "pad": "x" * 50_000} for w in range(2)]
    together = threading.Barrier(2, timeout=30)

    def write(doc):
        try:
            for _ in range(20):
                together.wait()  # both writers in the same moment, every round
                write_manifest(tmp_path, doc)
        except BaseException as exc:  # reported below
            errors.append(exc)
            together.abort()  # the other writer stops waiting

    threads = [threading.Thread(target=write, args=(doc,)) for doc in docs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert json.loads((tmp_path / "manifest.json").read_text()) in docs
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp left behind


def _two_class_source(tmp_path):
    return write_layout(
        tmp_path / "src",
        [(c, jpeg_bytes(color=(60 * c, 90, 20 * i)), i % 2) for c in (1, 2) for i in range(6)],
    ).parent


@pytest.mark.parametrize("change", ["deleted", "deleted-and-made-again", "a-file-lost"])
def test_an_output_folder_deleted_during_the_ingest_is_one_line(
    ray_cluster, tmp_path, monkeypatch, capsys, change
):
    """``rm -rf`` of ``--out`` while ingest wrote to it: Ray Data made the folders again for the
    files still to come, the read-back found rows missing, and the CLI printed ``RuntimeError:
    image ids do not reconcile`` as a traceback. Now one line saying --out changed during the
    run. The deletion is timed here just after the write (in the read-back), the same check.
    "made again" is ext4's trap: a folder deleted and made again at once gets its old inode
    number, unless something holds the old one open. A file lost with the folders intact is
    not the user's doing that ingest can name: it stays the reconciliation's traceback."""
    import shutil
    from pathlib import Path

    from birdray import cli
    from birdray.data import ingest

    out = tmp_path / "ds"
    read_back = ingest.collect_quarantine

    def changed_first(shards: str):
        if change == "a-file-lost":
            next(Path(shards).rglob("*.parquet")).unlink()
        else:
            shutil.rmtree(out)
            if change == "deleted-and-made-again":
                Path(shards).mkdir(parents=True)
        return read_back(shards)

    monkeypatch.setattr(ingest, "collect_quarantine", changed_first)
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    argv = ["ingest", "--source", str(_two_class_source(tmp_path)), "--out", str(out)]
    if change == "a-file-lost":
        with pytest.raises(RuntimeError, match="do not reconcile"):
            cli.main(argv)
        return
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"birdray ingest: error: --out {out} was deleted or replaced while the ingest wrote to"
        " it (its shards no longer hold all 12 images written); run the ingest again"
    )
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "step, err",
    [("write_manifest", errno.ENOSPC), ("split_counts", errno.EIO)],
    ids=["manifest-disk-full", "read-back-io-error"],
)
def test_output_refused_in_the_driver_is_one_line(
    ray_cluster, tmp_path, monkeypatch, capsys, step, err
):
    """The driver's own writes and reads of --out (the read-back, the manifest) failed by the
    OS: one line naming --out and the OS's reason, exit 1, and no manifest. Any OS error there
    is --out's (before, only a refusal with an errno in ``storage.REFUSED_WRITE`` was one line,
    and it did not name the flag; an I/O error was a traceback)."""
    from birdray import cli
    from birdray.data import ingest

    out = tmp_path / "ds"

    def refused(location, *args, **kwargs):
        raise OSError(err, os.strerror(err), str(location))

    monkeypatch.setattr(ingest, step, refused)
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    argv = ["ingest", "--source", str(_two_class_source(tmp_path)), "--out", str(out)]
    assert cli.main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"birdray ingest: error: --out {out}: {os.strerror(err)}"), line
    assert not (out / "manifest.json").exists()
