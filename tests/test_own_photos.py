"""One's own photos: species folders and a CSV of path,label, ingested like CUB (issue 17)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from birdray.checks import check
from birdray.config import UsageError
from birdray.data.cub import CubRecord
from birdray.data.folders import (
    LayoutError,
    assign_splits,
    find_layout,
    fingerprint,
    read_csv,
    read_species_folders,
)
from birdray.data.ingest import IngestConfig, run_ingest
from birdray.data.manifest import load_manifest, read_split
from birdray.explain.evaluation import ExplainEvalConfig, run_explain_eval
from birdray.explain.job import ExplainConfig, run_explain
from tests.cub_fixture import jpeg_bytes, write_layout
from tests.model_fixture import make_package

SPECIES = ("sparrow", "albatross", "wren")  # sorted: albatross=0, sparrow=1, wren=2


def _species_tree(root, per_class=5):
    for c, name in enumerate(SPECIES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            data = jpeg_bytes(size=(40 + i, 32), color=(60 * c, 100, 20 * i))
            (root / name / f"{i}.jpg").write_bytes(data)
    return root


def test_splits_are_seeded_stratified_and_keep_a_train_image():
    records = [CubRecord(i, f"{i}.jpg", i % 3, str(i % 3), True) for i in range(1, 31)]
    split = assign_splits(records, 0.1, 0.2, seed=0)
    assert split == assign_splits(list(reversed(records)), 0.1, 0.2, seed=0)  # order-free
    assert split != assign_splits(records, 0.1, 0.2, seed=1)
    per_class = Counter((rec.label, split[rec.image_id]) for rec in records)
    for label in range(3):  # 10 per class: 2 test, 1 val, 7 train in every class
        assert [per_class[(label, s)] for s in ("test", "val", "train")] == [2, 1, 7]
    tiny = [CubRecord(i, f"{i}.jpg", 0, "a", True) for i in (1, 2)]
    assert sorted(assign_splits(tiny, 0.1, 0.2, seed=0).values()) == ["test", "train"]


def test_layout_detection_and_one_error_for_none(tmp_path):
    cub = write_layout(tmp_path / "cub", [(1, jpeg_bytes(), True)])
    assert find_layout(cub.parent) == "cub"
    assert find_layout(_species_tree(tmp_path / "birds", 1)) == "folders"
    (tmp_path / "labels.csv").write_text("birds/wren/0.jpg,wren\n")
    assert find_layout(tmp_path / "labels.csv") == "csv"
    junk = tmp_path / "junk"
    (junk / "empty_species").mkdir(parents=True)
    (junk / "notes.txt").write_text("hi")
    with pytest.raises(LayoutError, match="images.txt.*CSV of path,label.*<species>"):
        find_layout(junk)
    with pytest.raises(UsageError, match="^--source: .*CSV of path,label"):
        check("ingest", IngestConfig(source=str(junk), out=str(tmp_path / "o")))
    with pytest.raises(UsageError, match="birdray download"):  # the default says who makes it
        check("ingest", IngestConfig(out=str(tmp_path / "o")))
    (tmp_path / "bad.csv").write_text("only-a-path.jpg\n")
    with pytest.raises(UsageError, match="bad.csv:1: expected path,label"):
        check("ingest", IngestConfig(source=str(tmp_path / "bad.csv"), out=str(tmp_path / "o")))


def test_a_species_folder_link_leaving_the_tree_is_unsafe(tmp_path):
    root = _species_tree(tmp_path / "photos", 1)
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes())
    (root / "wren" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    problems = {r.rel_path: r.problems for r in read_species_folders(root).records}
    assert problems["wren/link.jpg"][0].startswith("unsafe_path")
    assert problems["wren/0.jpg"] == []


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ingest_species_folders_and_csv(ray_cluster, tmp_path, capsys):
    root = _species_tree(tmp_path / "photos")
    (root / "wren" / "5.jpg").write_bytes(b"not a jpeg at all")  # corrupt: quarantined
    out = tmp_path / "ds"
    run_ingest(IngestConfig(source=str(root), out=str(out), val_fraction=0.2, test_fraction=0.2))
    manifest = load_manifest(out)
    assert manifest["layout"] == "folders"
    assert manifest["class_names"] == ["albatross", "sparrow", "wren"]
    assert manifest["part_names"] == []
    assert manifest["counts"] == {"listed": 16, "ingested": 15, "quarantined": 1}
    [bad] = manifest["quarantine"]
    assert bad["path"] == "wren/5.jpg" and "not_an_image" in bad["reason"]
    per_class = {s: v["per_class"] for s, v in manifest["splits"].items()}
    # stratified: of each class's listed images (5, 5, 6), 1 is test, 1 val, the rest train
    assert [per_class["train"][str(c)] for c in range(3)] == [3, 3, 4]
    assert sum(per_class["val"].values()) + sum(per_class["test"].values()) == 5  # 6 - corrupt
    rows = read_split(out, "test", columns=["path", "label", "class_name", "bbox", "parts"])
    rows = rows.take_all()
    assert len(rows) == manifest["splits"]["test"]["rows"]
    for row in rows:
        assert row["path"].split("/")[0] == row["class_name"]
        assert manifest["class_names"][row["label"]] == row["class_name"]
        assert row["bbox"] is None and list(row["parts"]) == []
    _explain_eval_without_parts(out, tmp_path, capsys)

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes())
    listing = tmp_path / "photos" / "labels.csv"
    listing.write_text(
        "path,label\n"
        + "".join(f"{s}/{i}.jpg,{s}\n" for s in SPECIES for i in range(5))
        + "wren/5.jpg,wren\n../secret.jpg,wren\n"
    )
    assert [r.problems for r in read_csv(listing).records][-1][0].startswith("unsafe_path")
    csv_out = tmp_path / "ds_csv"
    run_ingest(IngestConfig(source=str(listing), out=str(csv_out), test_fraction=0.2))
    manifest = load_manifest(csv_out)
    assert manifest["layout"] == "csv"
    assert manifest["counts"] == {"listed": 17, "ingested": 15, "quarantined": 2}
    reasons = {q["path"]: q["reason"] for q in manifest["quarantine"]}
    assert reasons["../secret.jpg"].startswith("unsafe_path")
    assert "not_an_image" in reasons["wren/5.jpg"]
    again = run_ingest(IngestConfig(source=str(listing), out=str(csv_out), test_fraction=0.2))
    assert load_manifest(csv_out)["shards_dir"] == manifest["shards_dir"], again  # up to date


def _explain_eval_without_parts(dataset, tmp_path, capsys) -> None:
    """explain-eval on a dataset without parts: says so, measures the deletion curves only."""
    package = make_package(tmp_path / "pkg", arch="test_resnet", num_classes=3, image_size=32)
    cfg = ExplainEvalConfig(
        dataset=str(dataset), model=str(package), methods="gradcam", limit=2,
        fractions="0,1", actors=1, actor_cpus=1.0, threads=1, batch_size=2,
    )  # fmt: skip
    result = run_explain_eval(cfg)
    assert "this dataset has no part annotations" in capsys.readouterr().out
    assert result["gradcam"]["part_scores"].startswith("skipped")
    summary = (package / "explain" / "summary.json").read_text()
    method = json.loads(summary)["methods"]["gradcam"]
    assert method["images"] == 2 and method["pointing_bbox"] is None
    assert len(method["deletion"]["deletion_correct"]) == 2
    assert not (package / "explain" / "part_profiles.json").exists()
    # one image of it explained by id: no part scores, and before, a TypeError on the None bbox
    image_id = read_split(dataset, "test", columns=["image_id"]).take(1)[0]["image_id"]
    cfg = ExplainConfig(
        model=str(package), dataset=str(dataset), image_id=image_id, method="gradcam",
        out=str(tmp_path / "explained"), device="cpu",
    )  # fmt: skip
    result = json.loads(Path(run_explain(cfg)).read_text())
    assert result["explanations"] and all("parts" not in e for e in result["explanations"])


def test_a_file_name_that_is_not_utf8_is_quarantined_by_an_escaped_name(tmp_path):
    """Linux names are bytes: one that is not UTF-8 ended the whole ingest (Parquet and JSON
    hold text). Now that photo is its own quarantine row, shown escaped, and the rest go on."""
    import os

    for name in ("wren", os.fsdecode(b"caf\xe9")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "wren" / os.fsdecode(b"2\xff.jpg")).write_bytes(jpeg_bytes())
    dataset = read_species_folders(tmp_path)
    problems = {r.rel_path: r.problems for r in dataset.records}
    assert problems == {
        "caf\\xe9/1.jpg": ["bad_filename: 'caf\\xe9/1.jpg' is not valid UTF-8; rename it"],
        "wren/1.jpg": [],
        "wren/2\\xff.jpg": ["bad_filename: 'wren/2\\xff.jpg' is not valid UTF-8; rename it"],
    }
    assert all(name.encode("utf-8") for name in dataset.class_names)
    assert fingerprint(dataset, None)  # hashes the shown names: no UnicodeEncodeError


def test_a_photo_edited_in_place_changes_the_fingerprint_even_at_the_same_size(tmp_path):
    import os

    (tmp_path / "wren").mkdir()
    photo = tmp_path / "wren" / "1.jpg"
    photo.write_bytes(jpeg_bytes(color=(10, 20, 30)))
    before = fingerprint(read_species_folders(tmp_path), None)
    assert fingerprint(read_species_folders(tmp_path), None) == before  # nothing changed
    info = photo.stat()
    os.utime(photo, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # rewritten
    # before, only path and size were hashed: "already ingested" kept the stale photo
    assert fingerprint(read_species_folders(tmp_path), None) != before


def test_a_link_loop_is_unreadable_and_a_link_out_is_unsafe(tmp_path):
    """Both are refused; the reason must say which (a loop used to read as "leaves" the folder)."""
    (tmp_path / "src" / "wren").mkdir(parents=True)
    (tmp_path / "src" / "wren" / "1.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "src" / "wren" / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "src" / "wren" / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    problems = {r.rel_path: r.problems for r in read_species_folders(tmp_path / "src").records}
    assert problems["wren/1.jpg"] == []
    assert problems["wren/loop.jpg"] == ["unreadable: 'wren/loop.jpg' is a symbolic-link loop"]
    assert problems["wren/out.jpg"][0].startswith("unsafe_path: 'wren/out.jpg' leaves")
