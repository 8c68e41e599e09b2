"""Feedback back into training: ``ingest --feedback``, the model's record of it, and the report.

The feedback is written with the store's own API (as Serve writes it), the dataset is the
session's generated CUB layout, ingest and training run on the real local Ray, and the report
runs through the CLI door.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from birdray.cli import main
from birdray.data.confined import image_path
from birdray.data.cub import read_cub
from birdray.data.feedback import class_index
from birdray.data.ingest import IngestConfig, run_ingest
from birdray.data.manifest import load_manifest, split_path
from birdray.feedback.store import Feedback, append, read_feedback
from tests.cub_fixture import jpeg_bytes
from tests.hostile_files import hostile_tiff

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _photo(i: int) -> bytes:
    return jpeg_bytes(size=(96, 72), color=(25 * i, 200 - 20 * i, 90))


@pytest.fixture(scope="module")
def feedback(synth_root, tmp_path_factory):
    """A known feedback set: (location, class names, the eval photo people sent, its class)."""
    cub = read_cub(synth_root)
    n = cub.class_names
    test_photo = next(r for r in cub.records if not r.is_train and r.label == 3)
    test_bytes = image_path(cub.root, test_photo.rel_path).read_bytes()
    location = str(tmp_path_factory.mktemp("fb") / "feedback")
    answers = [
        (_photo(1), n[1], n[0]),  # corrected
        (_photo(2), n[0], n[0]),  # confirmed
        (_photo(3), n[3], n[2]),  # corrected
        (_photo(4), n[2], "unsure"),  # answered again below: the newest answer wins
        (_photo(5), n[0], "not_a_bird"),
        (_photo(6), n[1], "unsure"),
        (_photo(7), n[1], "999.Dodo"),  # not a class of this dataset
        (hostile_tiff(), n[4], n[1]),  # labelled, but the decoder refuses it
        (test_bytes, n[5], n[3]),  # a test photo: must never become a train row
        (_photo(4), n[2], n[2]),  # the same image as the 4th: now confirmed
    ]
    for i, (image, predicted, answer) in enumerate(answers):
        append(location, [Feedback(image, f"photo_{i}.jpg", "v0001", predicted, answer)])
    return location, n, test_bytes


def test_class_names_map_full_or_short_any_case():
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Tern", "004.Tern"]
    index = class_index(names)
    assert index["001.black_footed_albatross"] == 0 and index["laysan_albatross"] == 1
    assert "tern" not in index and index["004.tern"] == 3  # ambiguous short name: full only


def test_class_names_differing_only_by_case_are_matched_exactly(tmp_path):
    """An own-photos dataset with classes ``Robin`` and ``robin``: before, every answer for
    either went to the last of them (the index folded case); now the exact spelling wins and a
    spelling that fits both by case alone is skipped and counted, never guessed. Serve's
    ``/v1/feedback`` and explain target read names the same way."""
    from birdray.data.feedback import feedback_items
    from birdray.serve.errors import ApiError
    from birdray.serve.feedback_route import FeedbackRoute
    from birdray.serve.ingress import BirdIngress

    names = ["Robin", "robin", "001.Wren"]
    location = str(tmp_path / "feedback")
    for i, answer in enumerate(["Robin", "robin", "ROBIN", "wren", "001.WREN"]):
        append(location, [Feedback(_photo(i), f"p{i}.jpg", "v0001", "001.Wren", answer)])
    items, entry = feedback_items(location, names, 100, {})
    assert [item["class_name"] for item in items] == ["Robin", "robin", "001.Wren", "001.Wren"]
    assert entry["skipped"] == {"ambiguous_species": 1}
    index = class_index(names)
    assert (index["Robin"], index["robin"], index["wren"]) == (0, 1, 2) and "ROBIN" not in index

    route = FeedbackRoute()
    assert route._class_name("Robin", names, "species") == "Robin"
    assert route._class_name("robin", names, "species") == "robin"
    with pytest.raises(ApiError, match="could be any of Robin, robin"):
        route._class_name("ROBIN", names, "species")
    target = BirdIngress.func_or_class._target
    assert (target(None, "Robin", names), target(None, "robin", names)) == (0, 1)
    with pytest.raises(ApiError):
        target(None, "rObIn", names)


def _train_hashes(dataset) -> dict[str, tuple[str, str]]:
    table = pq.read_table(
        split_path(dataset, "train"), columns=["path", "content_hash", "class_name"]
    )
    return {
        h: (p, c)
        for p, h, c in zip(
            table["path"].to_pylist(),
            table["content_hash"].to_pylist(),
            table["class_name"].to_pylist(),
            strict=True,
        )
    }


@pytest.fixture(scope="module")
def ingested(ray_cluster, synth_root, feedback, tmp_path_factory):
    location, _, _ = feedback
    root = tmp_path_factory.mktemp("fbds")
    plain, merged = root / "plain", root / "merged"
    run_ingest(IngestConfig(source=str(synth_root), out=str(plain)))
    run_ingest(IngestConfig(source=str(synth_root), out=str(merged), feedback=location))
    return plain, merged


def test_labelled_feedback_becomes_train_rows_only(feedback, ingested):
    location, n, test_bytes = feedback
    plain, merged = ingested
    before, after = load_manifest(plain), load_manifest(merged)
    fb = after["feedback"]
    assert fb["rows"] == 9  # ten answers, one image answered twice
    assert fb["labelled"] == 5 and fb["used"] == 4 and fb["quarantined"] == 1
    assert fb["skipped"] == {
        "already_in_test": 1, "not_a_bird": 1, "unknown_species": 1, "unsure": 1,
    }  # fmt: skip
    assert after["splits"]["train"]["rows"] == before["splits"]["train"]["rows"] + fb["used"]
    for split in ("val", "test"):  # the official splits are untouched
        assert after["splits"][split] == before["splits"][split]
    assert after["counts"]["listed"] == before["counts"]["listed"] + fb["labelled"]

    # the rows really are in the train shards, labelled with the class people gave
    rows = read_feedback(location).to_pylist()
    expected = {
        r["sha256"]: r["answer"] for r in rows if r["answer"] in n and r["image"] != test_bytes
    }
    hostile = hashlib.sha256(hostile_tiff()).hexdigest()
    del expected[hostile]
    added = {h: v for h, v in _train_hashes(merged).items() if h not in _train_hashes(plain)}
    assert {h: c for h, (_, c) in added.items()} == expected
    assert all(p.startswith("feedback/") for p, _ in added.values())
    assert sorted(r["sha256"] for r in fb["rows_used"]) == sorted(expected)
    assert fb["digest"] == hashlib.sha256("\n".join(sorted(expected)).encode()).hexdigest()
    # the hostile image went through the same quarantine as a source image, with its reason
    quarantined = [q for q in after["quarantine"] if q["path"].startswith("feedback/")]
    assert len(quarantined) == 1 and hostile in quarantined[0]["path"]
    assert quarantined[0]["reason"].split(":")[0] in ("corrupt", "not_an_image")
    test_table = pq.read_table(split_path(merged, "test"), columns=["content_hash"])
    assert (
        pc.sum(pc.equal(test_table["content_hash"], hashlib.sha256(test_bytes).hexdigest())).as_py()
        == 1
    )


def test_ingest_is_current_until_the_feedback_changes(
    synth_root, feedback, ingested, capsys, tmp_path
):
    from birdray.data import feedback as fblib

    location, n, _ = feedback
    copy = tmp_path / "feedback"
    shutil.copytree(location, copy)  # the same answers elsewhere: still the same dataset
    _, merged = ingested
    run_ingest(IngestConfig(source=str(synth_root), out=str(merged), feedback=str(copy)))
    assert "already ingested" in capsys.readouterr().out
    digest = load_manifest(merged)["feedback"]["source_digest"]
    assert digest == fblib.source_digest(str(copy))
    append(str(copy), [Feedback(_photo(9), "late.jpg", "v0001", n[0], n[5])])
    assert fblib.source_digest(str(copy)) != digest  # a new answer: ingest would run again


def _report(argv: list[str]) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return printed.getvalue()


def test_report_counts_corrections_per_species(feedback, ingested, tmp_path):
    location, n, _ = feedback
    out = tmp_path / "report.json"
    printed = _report(["feedback", "report", "--feedback", location, "--out", str(out)])
    report = json.loads(out.read_text())
    species = report["species"]
    assert species[n[0]]["answers"] == 2 and species[n[0]]["corrected"] == 1
    assert species[n[0]]["predicted_instead"] == {n[1]: 1}
    assert species[n[2]] == {
        "answers": 2, "corrected": 1, "correction_rate": 0.5, "predicted_instead": {n[3]: 1},
    }  # fmt: skip
    assert species[n[1]]["corrected"] == 1 and species[n[1]]["predicted_instead"] == {n[4]: 1}
    assert species[n[3]]["predicted_instead"] == {n[5]: 1}
    assert species["999.Dodo"]["corrected"] == 1
    assert (report["not_a_bird"], report["unsure"]) == (1, 1)
    assert (report["labelled"], report["corrected"]) == (7, 5)
    assert n[2] in printed and "not a bird" in printed


def test_a_real_ingested_dataset_is_refused_as_a_feedback_store(ingested, capsys):
    """``--feedback data/cub_v2`` (the dataset instead of the answers): one line saying what it
    is, before; its shard folder (no manifest there) is named as Parquet of another schema."""
    from birdray.feedback.store import FeedbackError

    plain, _ = ingested
    assert main(["feedback", "report", "--feedback", str(plain)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"--feedback: {plain} is an ingested dataset (it has manifest.json)" in err
    shards = plain / load_manifest(plain)["shards_dir"]
    with pytest.raises(FeedbackError, match=r"\.parquet is a Parquet file of another schema"):
        read_feedback(str(shards))
    assert main(["feedback", "report", "--feedback", str(shards)]) == 1
    line = capsys.readouterr().err.strip()
    assert str(shards) in line and "another schema" in line and len(line.splitlines()) == 1


def test_report_with_model_says_which_photos_it_counts(tmp_path):
    """``--model``'s line counted every feedback photo the model learnt from as 'corrected
    photos it was trained on' (confirmations included): it now gives both, each named."""
    from birdray.model.package import update_metadata
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg", num_classes=4)
    n = [f"{i + 1:03d}.Species_{i + 1}" for i in range(4)]
    location = str(tmp_path / "feedback")
    answers = [(n[0], n[0]), (n[0], n[1]), (n[2], n[2]), (n[1], n[3]), (n[3], n[2])]
    for i, (predicted, answer) in enumerate(answers):
        append(location, [Feedback(_photo(i), f"p{i}.jpg", "v0001", predicted, answer)])
    rows = read_feedback(location).to_pylist()
    learnt = sorted(r["sha256"] for r in rows[:3])  # 2 confirmations and 1 correction
    update_metadata(package, dataset={"feedback": {"sha256": learnt}})
    out = tmp_path / "report.json"
    printed = _report(["feedback", "report", "--feedback", location, "--model", str(package),
                       "--out", str(out)])  # fmt: skip
    unseen = json.loads(out.read_text())["unseen"]
    assert (unseen["trained_with_feedback"], unseen["corrected_trained"]) == (3, 1)
    assert (unseen["corrected_unseen"], unseen["unreadable"]) == (2, 0)
    assert (
        "right on 2 corrected photos it was not trained on (1 corrected photos it was trained "
        "on left out; it learnt from 3 feedback photos in all)"
    ) in printed


@pytest.mark.slow
def test_a_model_trained_with_feedback_records_it(ray_cluster, feedback, ingested, tmp_path):
    from birdray.model.crop import decode_for_model
    from birdray.model.inference import Predictor
    from birdray.registry import resolve, version_metadata
    from birdray.train.job import TrainConfig, run_training

    location, n, test_bytes = feedback
    _, merged = ingested
    registry = tmp_path / "registry"
    run_training(
        TrainConfig(
            dataset=str(merged), storage_path=str(tmp_path / "runs"), name="fb", epochs=1,
            registry=str(registry), arch="test_resnet", image_size=64, batch_size=4,
            warmup_epochs=0, num_workers=1, cpus_per_worker=1.0,
        )
    )  # fmt: skip
    record = version_metadata(str(registry), "v0001").dataset["feedback"]
    used = load_manifest(merged)["feedback"]
    assert record["count"] == used["used"] == 4 and record["digest"] == used["digest"]
    assert record["sha256"] == sorted(r["sha256"] for r in used["rows_used"])

    out = tmp_path / "report.json"
    _report(["feedback", "report", "--feedback", location, "--model", "v0001",
             "--registry", str(registry), "--out", str(out)])  # fmt: skip
    unseen = json.loads(out.read_text())["unseen"]
    # corrected and not trained on: the test photo (readable) and the hostile one (not)
    assert unseen["trained_with_feedback"] == 4
    assert (unseen["corrected_unseen"], unseen["unreadable"]) == (1, 1)
    predictor = Predictor(str(resolve("v0001", str(registry))), device="cpu")
    config = predictor.metadata.data_config
    got = predictor.predict_images([decode_for_model(test_bytes, config).image])[0].species
    assert unseen["right"] == int(got == n[3])


@pytest.mark.parametrize("sent", ["..", "a/..", "C:\\photos\\..", ".", "", None])
def test_a_sent_file_name_that_names_a_folder_becomes_image(sent):
    """The sender's name becomes the row's path label: '..' named the folder above it."""
    from birdray.data.feedback import _name

    assert _name(sent) == "image"
    assert _name("C:\\photos\\robin.jpg") == "robin.jpg" and _name("../../x.png") == "x.png"
