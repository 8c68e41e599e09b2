"""Awkward own-photo sources a new user really has (a new-user pass found each one passing
silently): CSVs from spreadsheets (BOM, Latin-1, Windows paths, other headers, rows twice),
species folders with sub-folders, ``.jfif``, loose files and empty folders, case-only class
names, and the same photo twice. Real files in ``tmp_path``; no mocks."""

from __future__ import annotations

import json
import os

import pytest

from birdray.checks import check
from birdray.cli import main
from birdray.config import UsageError
from birdray.data.cub import CubFormatError
from birdray.data.duplicates import mark_duplicates
from birdray.data.folders import read_csv, read_species_folders
from birdray.data.ingest import IngestConfig
from birdray.data.manifest import load_manifest, read_split
from birdray.images import ALLOWED_FORMATS, IMAGE_SUFFIXES
from tests.cub_fixture import jpeg_bytes


def _photo(path, i=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(size=(40 + i, 32), color=(10 * i % 250, 90, 30)))
    return path


def _rows(dataset):
    return {r.rel_path: (r.class_name, r.problems) for r in dataset.records}


def test_a_csv_saved_by_excel_windows_paths_and_its_bom_read_as_meant(tmp_path):
    _photo(tmp_path / "Cardinal" / "img1.jpg", 1)
    _photo(tmp_path / "Blue Jay" / "a" / "img2.jpg", 2)
    (tmp_path / "labels.csv").write_bytes(
        "\ufeffpath,label\r\n"  # Excel's "CSV UTF-8": a BOM hid the header, a class 'label'
        "Cardinal\\img1.jpg,Cardinal\r\n"  # Windows separators: was unsafe_path
        "Blue Jay\\a\\img2.jpg,Blue Jay\r\n"
        "..\\secret.jpg,Cardinal\r\n"  # still refused: leaves the CSV's folder
        "C:\\Users\\me\\x.jpg,Cardinal\r\n".encode()  # still refused: absolute
    )
    dataset = read_csv(tmp_path / "labels.csv")
    assert dataset.class_names == ["Blue Jay", "Cardinal"]
    rows = _rows(dataset)
    assert rows["Cardinal/img1.jpg"] == ("Cardinal", [])
    assert rows["Blue Jay/a/img2.jpg"] == ("Blue Jay", [])
    assert rows["../secret.jpg"][1][0].startswith("unsafe_path")
    assert rows["C:/Users/me/x.jpg"][1][0].startswith("unsafe_path")


def test_a_latin1_csv_or_another_header_is_one_error_naming_file_line_and_columns(tmp_path):
    _photo(tmp_path / "a.jpg")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("path,label\na.jpg,Mésange\n".encode("latin-1"))  # was U+FFFD names
    with pytest.raises(CubFormatError, match=r"latin1.csv:2: not UTF-8 .*save the CSV as UTF-8"):
        read_csv(latin1)
    out = str(tmp_path / "out")
    with pytest.raises(UsageError, match=r"^--source: .*latin1.csv:2: not UTF-8"):
        check("ingest", IngestConfig(source=str(latin1), out=out))  # before Ray starts
    other = tmp_path / "other.csv"
    other.write_text("filename,species\na.jpg,wren\n")  # was a class 'species' of one image
    with pytest.raises(CubFormatError, match=r"other.csv:1: .*expected columns path,label"):
        read_csv(other)
    headerless = tmp_path / "plain.csv"
    headerless.write_text("a.jpg,wren\n")  # no header at all is still fine
    assert read_csv(headerless).class_names == ["wren"]


def test_a_csv_listing_a_photo_twice_keeps_it_once_or_refuses_two_labels(tmp_path):
    _photo(tmp_path / "wren" / "1.jpg", 1)
    _photo(tmp_path / "wren" / "2.jpg", 2)
    same = tmp_path / "same.csv"
    same.write_text("wren/1.jpg,wren\nwren/2.jpg,wren\n./wren/1.jpg,wren\n")
    rows = [(r.rel_path, r.problems) for r in read_csv(same).records]
    assert rows[:2] == [("wren/1.jpg", []), ("wren/2.jpg", [])]
    assert rows[2][1] == ["duplicate: same.csv:3 lists './wren/1.jpg' again (line 1); kept once"]
    two = tmp_path / "two.csv"
    two.write_text("path,label\nwren/1.jpg,wren\nwren/2.jpg,wren\nwren/1.jpg,robin\n")
    with pytest.raises(
        CubFormatError, match=r"two.csv:4: 'wren/1.jpg' .*'robin' .*'wren' at line 2"
    ):
        read_csv(two)


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ('a.jpg,robin\nb.jpg,"wren\nc.jpg,wren\nd.jpg,robin\n', "2: not a CSV row"),  # open quote
        ('a.jpg,robin\nb.jpg,wren\n"c.jpg\nd.jpg",robin\n', "3: a quoted field runs on to line 4"),
        ('a.jpg,robin\nb.jpg,"wren"s\n', "2: not a CSV row .*',' expected after"),
        ("a.jpg,robin\nb.jpg," + "x" * 131_073 + "\n", "2: not a CSV row .*field larger than"),
    ],
)
def test_a_stray_quote_or_a_huge_field_in_a_csv_is_one_error_naming_the_line(
    tmp_path, capsys, rows, error
):
    """One open quote swallowed every later row into one class name (exit 0); a field over
    csv's limit was a traceback."""
    for name in "abcd":
        _photo(tmp_path / f"{name}.jpg", ord(name))
    labels = tmp_path / "labels.csv"
    labels.write_text(rows)
    with pytest.raises(CubFormatError, match=f"labels.csv:{error}"):
        read_csv(labels)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=f"^--source: .*labels.csv:{error}"):
        check("ingest", IngestConfig(source=str(labels), out=str(out)))  # before Ray starts
    assert main(["ingest", "--source", str(labels), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "labels.csv:" in line and len(line) < 300


def _unreadable(monkeypatch, folder):
    """``folder`` can't be listed, as with mode 000 for a user (root reads it anyway)."""
    folder.chmod(0)
    if os.geteuid() == 0:
        scandir = os.scandir

        def refuse(path="."):
            if os.fspath(path) == str(folder):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refuse)


def test_an_unreadable_folder_is_a_warning_naming_it_not_photos_gone_silently(
    tmp_path, monkeypatch
):
    root = tmp_path / "birds"
    _photo(root / "robin" / "0.jpg")
    for i in range(5):
        _photo(root / "robin" / "locked" / f"{i}.jpg", i)
    _photo(root / "wren" / "0.jpg", 9)
    _photo(root / "owl" / "0.jpg", 8)
    try:
        _unreadable(monkeypatch, root / "robin" / "locked")
        _unreadable(monkeypatch, root / "owl")
        dataset = read_species_folders(root)
    finally:
        (root / "robin" / "locked").chmod(0o755)
        (root / "owl").chmod(0o755)
    assert sorted(_rows(dataset)) == ["robin/0.jpg", "wren/0.jpg"]
    assert dataset.warnings == [
        "2 folder(s) could not be read (Permission denied): 'owl', 'robin/locked'; their photos "
        "are not in the dataset"
    ]


def test_a_species_folder_linking_to_a_folder_holding_the_source_is_not_walked(tmp_path):
    """A species folder that is a link to ``/`` walked the whole file system (70 s, 46,865
    files) and quarantined the real photos as conflicts; a link to a species folder kept
    elsewhere (a subset picked without copying) is read as before."""
    root = tmp_path / "birds"
    _photo(root / "robin" / "0.jpg")
    _photo(tmp_path / "store" / "wren" / "x.jpg", 3)
    (root / "everything").symlink_to("/")
    (root / "parent").symlink_to(tmp_path)
    (root / "wren").symlink_to(tmp_path / "store" / "wren")
    dataset = read_species_folders(root)
    assert sorted(_rows(dataset)) == ["robin/0.jpg", "wren/x.jpg"]
    assert dataset.warnings == [
        f"2 species folder(s) are links to {root} or a folder holding it and were not followed "
        "(it would be read again inside itself): 'everything', 'parent'"
    ]


def test_classes_differing_only_in_case_are_refused_before_ray(tmp_path):
    _photo(tmp_path / "csv" / "1.jpg", 1)
    _photo(tmp_path / "csv" / "2.jpg", 2)
    (tmp_path / "csv" / "l.csv").write_text("1.jpg,Cardinal\n2.jpg,cardinal\n")
    for folder in ("Cardinal", "cardinal"):
        _photo(tmp_path / "tree" / folder / "1.jpg", len(folder))
    for source in (tmp_path / "csv" / "l.csv", tmp_path / "tree"):
        cfg = IngestConfig(source=str(source), out=str(tmp_path / "out"))
        with pytest.raises(UsageError, match="'Cardinal' and 'cardinal' differ only in case"):
            check("ingest", cfg)


def test_species_folders_recurse_take_jfif_and_say_what_they_skip(tmp_path):
    root = tmp_path / "birds"
    _photo(root / "wren" / "1.jpg", 1)
    _photo(root / "wren" / "2023" / "trip" / "2.jpg", 2)  # was dropped silently
    _photo(root / "robin" / "3.jfif", 3)  # was ignored: JPEG by another name
    _photo(root / "robin" / ".hidden" / "4.jpg", 4)  # hidden folders stay skipped
    _photo(root / "stray.jpg", 5)  # loose: belongs to no class
    (root / "owl").mkdir()  # empty class folder
    (root / "robin" / "notes.txt").write_text("seen at dawn")
    dataset = read_species_folders(root)
    assert _rows(dataset) == {
        "robin/3.jfif": ("robin", []),
        "wren/1.jpg": ("wren", []),
        "wren/2023/trip/2.jpg": ("wren", []),
    }
    assert dataset.class_names == ["robin", "wren"]
    warnings = "\n".join(dataset.warnings)
    assert "1 file(s) directly in" in warnings and "'stray.jpg'" in warnings
    assert "hold no image and are not classes: 'owl'" in warnings
    assert "'robin/notes.txt'" in warnings


def test_a_folder_of_loose_photos_is_told_to_make_species_folders(tmp_path):
    _photo(tmp_path / "IMG_0001.JPG")
    with pytest.raises(UsageError, match="photos lie directly in it: put each species' photos"):
        check("ingest", IngestConfig(source=str(tmp_path), out=str(tmp_path / "out")))


def test_the_image_suffixes_are_the_decoders_formats():
    from PIL import Image

    assert {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".tif"} <= set(IMAGE_SUFFIXES)
    registered = Image.registered_extensions()
    assert set(IMAGE_SUFFIXES) == {ext for ext, fmt in registered.items() if fmt in ALLOWED_FORMATS}
    assert ".heic" not in IMAGE_SUFFIXES and ".svg" not in IMAGE_SUFFIXES


def test_the_same_bytes_are_kept_once_and_under_two_labels_none(tmp_path):
    root = tmp_path / "birds"
    data, other = jpeg_bytes(color=(1, 2, 3)), jpeg_bytes(color=(200, 2, 3))
    for rel in ("wren/a.jpg", "wren/copy/a.jpg"):  # one photo twice in one class
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel in ("robin/x.jpg", "sparrow/x.jpg"):  # one photo filed under two species
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(other)
    _photo(root / "robin" / "ok.jpg", 7)
    (root / "wren" / "twin.jpg").write_bytes(data[:-1] + b"\x00")  # same size, other bytes
    dataset = read_species_folders(root)
    assert mark_duplicates(dataset) == 3
    rows = _rows(dataset)
    assert rows["wren/a.jpg"][1] == [] and rows["robin/ok.jpg"][1] == []
    assert rows["wren/twin.jpg"][1] == []  # only equal bytes are copies, not equal sizes
    assert rows["wren/copy/a.jpg"][1] == ["duplicate: the same bytes as 'wren/a.jpg' (kept)"]
    for rel in ("robin/x.jpg", "sparrow/x.jpg"):
        [reason] = rows[rel][1]
        assert reason.startswith("duplicate_conflict: the same bytes are labelled 'robin' and")
        assert "'sparrow/x.jpg' (sparrow)" in reason


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_birdray_ingest_says_what_it_quarantined_and_no_split_repeats_a_photo(
    ray_cluster, tmp_path, capsys
):
    root = tmp_path / "birds"
    for c, name in enumerate(("robin", "wren")):
        for i in range(6):
            _photo(root / name / f"{i}.jpg", 20 * c + i)
    (root / "wren" / "again").mkdir()
    for i in range(6):  # the whole class copied again below itself: used to leak into test
        (root / "wren" / "again" / f"{i}.jpg").write_bytes(
            (root / "wren" / f"{i}.jpg").read_bytes()
        )
    (root / "robin" / "w0.jpg").write_bytes((root / "wren" / "0.jpg").read_bytes())  # 2 labels
    (root / "owl" / "1.jpg").parent.mkdir()
    (root / "owl" / "1.jpg").write_bytes(b"not a photo")  # a class with no usable image
    _photo(root / "loose.jpg")
    out = tmp_path / "ds"
    assert main(["ingest", "--source", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = load_manifest(out)
    assert manifest["counts"] == {"listed": 20, "ingested": 11, "quarantined": 9}
    assert "11 images ingested" in printed
    assert "quarantined by reason: duplicate 5, duplicate_conflict 3, not_an_image 1" in printed
    assert printed.count("\n  ") == 6  # five examples and where the rest are
    assert "warning: 1 file(s) directly in" in printed and "'loose.jpg'" in printed
    assert "warning: 1 class(es) have no usable image" in printed and "'owl'" in printed
    assert json.dumps(manifest["warnings"]) and len(manifest["warnings"]) == 2
    hashes = [
        row["content_hash"]
        for split in manifest["splits"]
        for row in read_split(out, split, columns=["content_hash"]).take_all()
    ]
    assert len(hashes) == len(set(hashes)) == 11  # no photo in two splits, or twice in one

    junk = tmp_path / "junk"
    for i in range(2):
        (junk / "wren" / f"{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (junk / "wren" / f"{i}.jpg").write_bytes(b"GIF89a broken %d" % i)
    assert main(["ingest", "--source", str(junk), "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err  # Ray's own log lines come before it
    [line] = [x for x in err.splitlines() if x.startswith("birdray ingest: error:")]
    assert err.strip().endswith(line), err
    assert "none of the 2 listed images is usable (corrupt 2; e.g. wren/0.jpg" in line, line
    assert not os.path.exists(tmp_path / "none" / "manifest.json")
