"""CUB reader on hand-built layouts: every file parsed, structural errors name file and line."""

from __future__ import annotations

import pytest

from birdray.data.cub import CubFormatError, find_root, read_cub, read_part_clicks
from tests.cub_fixture import PART_NAMES, jpeg_bytes, write_layout


def _basic(tmp_path):
    images = [(1, jpeg_bytes(), True), (2, jpeg_bytes(), False), (3, jpeg_bytes(), True)]
    return write_layout(tmp_path, images)


def test_reads_every_file(tmp_path):
    root = _basic(tmp_path)
    cub = read_cub(tmp_path)  # the parent works as well as the folder itself
    assert cub.root == root == find_root(root)
    assert cub.class_names == ["001.Species_1", "002.Species_2", "003.Species_3"]
    assert cub.part_names == PART_NAMES
    assert len(cub.attribute_names) == 312
    assert cub.certainty_names == ["not visible", "guessing", "probably", "definitely"]
    assert len(cub.class_attributes) == 3 and len(cub.class_attributes[0]) == 312
    rec = cub.records[1]
    assert (rec.image_id, rec.label, rec.is_train) == (2, 1, False)
    assert rec.bbox == [2.0, 3.0, 20.0, 15.0]
    assert len(rec.parts) == 15
    assert rec.parts[0] == [6.0, 7.0, 1.0] and rec.parts[1] == [0.0, 0.0, 0.0]
    assert rec.attributes == [2, 52, 102, 152, 202, 252, 302]
    assert read_part_clicks(root)[1] == [[1.0, 5.0, 6.0, 1.0, 1.5]]


def test_extra_fields_in_attribute_lines_are_tolerated(tmp_path):
    root = _basic(tmp_path)
    path = root / "attributes" / "image_attribute_labels.txt"
    path.write_text(path.read_text().replace("1 1 1 3 10.0\n", "1 1 1 3 0 10.0\n", 1))
    assert read_cub(root).records[0].attributes[0] == 1


def test_missing_images_txt_is_one_clear_error(tmp_path):
    root = _basic(tmp_path)
    (root / "images.txt").unlink()
    with pytest.raises(CubFormatError, match="no images.txt"):
        read_cub(root)


def test_ids_that_do_not_match_name_file_and_line(tmp_path):
    root = _basic(tmp_path)
    labels = root / "image_class_labels.txt"
    labels.write_text(labels.read_text() + "99 1\n")
    with pytest.raises(CubFormatError, match=r"image_class_labels.txt:4: image id 99"):
        read_cub(root)


def test_unknown_class_id_names_line(tmp_path):
    root = _basic(tmp_path)
    (root / "image_class_labels.txt").write_text("1 1\n2 7\n3 3\n")
    with pytest.raises(CubFormatError, match=r"image_class_labels.txt:2: class id 7"):
        read_cub(root)


def test_unreadable_id_names_line(tmp_path):
    root = _basic(tmp_path)
    (root / "train_test_split.txt").write_text("1 1\nxx 0\n3 1\n")
    with pytest.raises(CubFormatError, match=r"train_test_split.txt:2: id 'xx'"):
        read_cub(root)


def test_malformed_per_image_lines_become_problems_not_crashes(tmp_path):
    root = _basic(tmp_path)
    (root / "bounding_boxes.txt").write_text("1 2.0 3.0 20.0 15.0\n2 oops\n3 1 1 5 5\n")
    locs = root / "parts" / "part_locs.txt"
    locs.write_text(locs.read_text().replace("3 1 6.0 7.0 1", "3 1 6.0", 1))
    cub = read_cub(root)
    assert cub.records[0].problems == []
    assert "malformed bounding box" in cub.records[1].problems[0]
    assert "malformed part line" in cub.records[2].problems[0]


@pytest.mark.parametrize("part_id", ["nan", "inf", "-inf"])
def test_a_part_id_that_is_not_a_number_is_a_problem_not_a_crash(tmp_path, part_id):
    root = _basic(tmp_path)
    locs = root / "parts" / "part_locs.txt"
    locs.write_text(locs.read_text().replace("2 3 8.0 9.0 1", f"2 {part_id} 8.0 9.0 1", 1))
    assert "malformed part line" in read_cub(root).records[1].problems[0]


def test_a_superscript_digit_as_attribute_id_is_named_not_a_crash(tmp_path):
    root = _basic(tmp_path)
    path = root / "attributes" / "image_attribute_labels.txt"
    path.write_text(path.read_text().replace("2 7 0 3", "2 \u00b2 0 3", 1))
    with pytest.raises(CubFormatError, match="image_attribute_labels.txt:319: cannot read"):
        read_cub(root)


def test_images_txt_paths_are_confined_to_the_images_folder(tmp_path):
    """Absolute paths, `..` and symlinks pointing out are quarantined rows, never opened."""
    root = write_layout(tmp_path / "src", [(1, jpeg_bytes(), True)] * 7)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "img_7.jpg").write_bytes(jpeg_bytes())
    (root / "images" / "linked").symlink_to(tmp_path / "elsewhere")  # a folder pointing out
    link = root / "images" / "001.Species_1" / "img_5.jpg"
    link.unlink()
    link.symlink_to(secret)  # a file inside whose target is outside
    inside = root / "images" / "001.Species_1" / "img_6.jpg"
    inside.unlink()
    inside.symlink_to(root / "images" / "001.Species_1" / "img_1.jpg")  # stays inside: fine
    lines = (root / "images.txt").read_text().splitlines()
    lines[1] = "2 ../../secret.jpg"
    lines[2] = f"3 {secret}"
    lines[3] = "4 001.Species_1/../../../secret.jpg"
    lines[6] = "7 linked/img_7.jpg"
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    problems = {rec.image_id: rec.problems for rec in read_cub(root).records}
    assert problems[1] == [] and problems[6] == []
    for image_id in (2, 3, 4, 5, 7):
        assert problems[image_id][0].startswith("unsafe_path: images.txt:"), problems[image_id]
        assert "leaves the images folder" in problems[image_id][0]


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_every_cub_text_file_may_start_with_a_bom(tmp_path):
    """Notepad and Excel write one: it was read as part of the first id."""
    root = _basic(tmp_path)
    for name in ("images.txt", "classes.txt", "image_class_labels.txt", "bounding_boxes.txt"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    for name in ("parts/part_locs.txt", "attributes/image_attribute_labels.txt"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    cub = read_cub(root)
    assert [r.image_id for r in cub.records] == [1, 2, 3]
    assert cub.class_names[0] == "001.Species_1"
    assert cub.records[0].bbox == [2.0, 3.0, 20.0, 15.0] and cub.records[0].problems == []
    assert cub.records[0].parts[0] == [6.0, 7.0, 1.0]
    assert cub.records[0].attributes[0] == 1


@pytest.mark.parametrize(
    ("name", "old", "new", "error"),
    [
        ("images.txt", "3 003", "3000000000 003", r"images.txt:3: id 3000000000 is outside"),
        (
            "attributes/image_attribute_labels.txt",
            "1 1 1 3",
            "1 70000 1 3",
            r"image_attribute_labels.txt:1: attribute id 70000 is outside",
        ),
    ],
)
def test_an_id_the_dataset_cannot_store_names_file_and_line(tmp_path, name, old, new, error):
    """Image ids are int32, attribute ids int16: a larger one crashed the whole ingest later
    with Arrow's 'too large to fit in C integer type'."""
    root = _basic(tmp_path)
    _edit(root / name, old, new)
    with pytest.raises(CubFormatError, match=error):
        read_cub(root)


def test_an_id_out_of_range_is_one_line_from_birdray_ingest(tmp_path, capsys):
    from birdray.cli import main

    root = _basic(tmp_path)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        _edit(root / name, "3 ", "3000000000 ")
    assert main(["ingest", "--source", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "images.txt:3: id 3000000000 is outside" in err


@pytest.mark.parametrize("box", ["nan nan nan nan", "0 0 inf inf", "-inf 3 20 15", "2 3 1e300 5"])
def test_a_box_that_is_not_finite_is_malformed_like_a_negative_one(tmp_path, box):
    """float() reads 'nan' and 'inf', and `nan <= 0` is False: they were stored as boxes."""
    root = _basic(tmp_path)
    _edit(root / "bounding_boxes.txt", "2 2.0 3.0 20.0 15.0", f"2 {box}")
    negative = _basic(tmp_path / "negative")
    _edit(negative / "bounding_boxes.txt", "2 2.0 3.0 20.0 15.0", "2 2 3 -20 15")
    rec, like = read_cub(root).records[1], read_cub(negative).records[1]
    assert rec.problems == like.problems == ["malformed bounding box (bounding_boxes.txt:2)"]
    assert rec.bbox is like.bbox is None


@pytest.mark.parametrize("coords", ["nan 7.0", "6.0 inf", "-inf nan", "1e39 7.0"])
def test_a_part_location_that_is_not_finite_is_a_malformed_part_line(tmp_path, coords):
    root = _basic(tmp_path)
    _edit(root / "parts" / "part_locs.txt", "1 1 6.0 7.0 1", f"1 1 {coords} 1")
    rec = read_cub(root).records[0]
    assert rec.problems == ["malformed part line (part_locs.txt:1)"]
    assert all(v == v and abs(v) != float("inf") for part in rec.parts for v in part)


@pytest.mark.parametrize("part", ["1.7", "0", "16"])
def test_a_part_id_that_is_not_one_of_the_parts_is_a_malformed_part_line(tmp_path, part):
    """'1.7' was read as part 1: a click landed on another part, silently."""
    root = _basic(tmp_path)
    _edit(root / "parts" / "part_locs.txt", "1 1 6.0 7.0 1", f"1 {part} 6.0 7.0 1")
    assert read_cub(root).records[0].problems == ["malformed part line (part_locs.txt:1)"]


def test_a_class_without_a_name_names_its_line(tmp_path):
    root = _basic(tmp_path)
    path = root / "classes.txt"
    lines = path.read_text().splitlines()
    lines[1] = "2 "
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CubFormatError, match="classes.txt:2: id 2 has no name"):
        read_cub(root)


def test_part_clicks_that_are_not_finite_name_the_line(tmp_path):
    root = _basic(tmp_path)
    (root / "parts" / "part_click_locs.txt").write_text("1 1 5.0 6.0 1 1.5\nnan 1 5 6 1 2\n")
    with pytest.raises(CubFormatError, match=r"part_click_locs.txt:2: expected"):
        read_part_clicks(root)


def test_a_file_listed_under_two_ids_is_kept_once_or_refused_with_two_classes(tmp_path):
    """Stored twice, it broke scoring the dataset later ('counts do not reconcile')."""
    root = write_layout(tmp_path, [(1, jpeg_bytes(), True)] * 2 + [(2, jpeg_bytes(), True)])
    _edit(root / "images.txt", "2 001.Species_1/img_2.jpg", "2 001.Species_1/./img_1.jpg")
    problems = [r.problems for r in read_cub(root).records]
    assert problems[0] == [] and problems[2] == []
    assert problems[1] == [
        "duplicate: images.txt:2 lists '001.Species_1/./img_1.jpg' again (line 1); kept once"
    ]
    _edit(root / "images.txt", "3 002.Species_2/img_3.jpg", "3 001.Species_1/img_1.jpg")
    with pytest.raises(
        CubFormatError,
        match=r"images.txt:3: '001.Species_1/img_1.jpg' is labelled "
        r"'002.Species_2' here and '001.Species_1' at line 1",
    ):
        read_cub(root)


def test_a_file_name_that_is_not_utf8_is_bad_filename_not_missing(tmp_path):
    """images.txt was decoded with U+FFFD, so the existing file was reported missing."""
    import os

    root = _basic(tmp_path)
    folder = root / "images" / "002.Species_2"
    os.rename(folder / "img_2.jpg", os.fsencode(folder) + b"/img_\xe9.jpg")
    data = (root / "images.txt").read_bytes()
    (root / "images.txt").write_bytes(data.replace(b"img_2.jpg", b"img_\xe9.jpg"))
    rec = read_cub(root).records[1]
    assert rec.rel_path == "002.Species_2/img_\\xe9.jpg"  # escaped: Parquet holds UTF-8 only
    assert rec.problems == [
        "bad_filename: '002.Species_2/img_\\xe9.jpg' is not valid UTF-8; rename it"
    ]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("classes.txt", 2),
        ("parts/parts.txt", 7),
        ("attributes/certainties.txt", 3),
        ("../attributes.txt", 1),  # beside CUB_200_2011/, as in the archive
    ],
)
def test_a_name_that_is_not_utf8_names_file_and_line(tmp_path, name, line):
    """classes.txt was decoded with U+FFFD: a Latin-1 'Espèce' became a class named
    '002.Esp\ufffdce' in every model and report, silently."""
    root = _basic(tmp_path)
    path = root / name
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] += b" Esp\xe8ce"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(CubFormatError) as caught:
        read_cub(root)
    message = str(caught.value)
    assert f"{path.name}:{line}: name '" in message
    assert "Esp\\xe8ce' is not UTF-8" in message and f"save {path.name} as UTF-8" in message
    message.encode("utf-8")  # the bytes are shown escaped: the message itself is UTF-8 text


def test_bytes_that_are_not_utf8_in_a_number_are_worded_in_utf8(tmp_path):
    root = _basic(tmp_path)
    (root / "train_test_split.txt").write_bytes(b"1 1\n2 \xff\n3 1\n")
    with pytest.raises(CubFormatError, match=r"train_test_split.txt:2: .* got '\\xff'") as caught:
        read_cub(root)
    str(caught.value).encode("utf-8")
    (root / "train_test_split.txt").write_bytes(b"1 1\n\xff2 0\n3 1\n")
    with pytest.raises(CubFormatError, match=r"train_test_split.txt:2: id '\\xff2' is not an"):
        read_cub(root)
    (root / "train_test_split.txt").write_bytes(b"1 1\n2 0\n3 1\n")
    boxes = root / "bounding_boxes.txt"
    boxes.write_bytes(boxes.read_bytes().replace(b"2 2.0 3.0", b"2 \xff2.0 3.0", 1))
    assert read_cub(root).records[1].problems == ["malformed bounding box (bounding_boxes.txt:2)"]


@pytest.mark.parametrize("image_id", ["0", "-1"])
def test_an_image_id_below_1_is_refused_even_when_every_file_agrees(tmp_path, image_id):
    """CUB ids start at 1: an image renumbered 0 or -1 in every file was stored as such."""
    root = _basic(tmp_path)
    for name in (
        "images.txt",
        "image_class_labels.txt",
        "train_test_split.txt",
        "bounding_boxes.txt",
        "parts/part_locs.txt",
        "attributes/image_attribute_labels.txt",
    ):
        path = root / name
        path.write_text(
            "".join(
                (image_id + line[1:] if line.startswith("1 ") else line)
                for line in path.read_text().splitlines(keepends=True)
            )
        )
    with pytest.raises(CubFormatError, match=rf"images.txt:1: id {image_id} is outside 1\.\."):
        read_cub(root)


@pytest.mark.parametrize("image_id", ["0", "-1"])
@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("image_class_labels.txt", "id"),
        ("train_test_split.txt", "id"),
        ("bounding_boxes.txt", "id"),
        ("parts/part_locs.txt", "image id"),
    ],
)
def test_an_image_id_below_1_names_file_and_line(tmp_path, name, what, image_id):
    root = _basic(tmp_path)
    path = root / name
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = image_id + lines[1][1:]  # the second line, its one-digit image id replaced
    path.write_text("".join(lines))
    short = name.split("/")[-1]
    with pytest.raises(CubFormatError, match=rf"{short}:2: {what} {image_id} is outside 1\.\."):
        read_cub(root)


@pytest.mark.parametrize("class_id", ["0", "-1"])
def test_a_class_id_below_1_names_line(tmp_path, class_id):
    root = _basic(tmp_path)
    (root / "image_class_labels.txt").write_text(f"1 1\n2 {class_id}\n3 3\n")
    with pytest.raises(
        CubFormatError, match=rf"image_class_labels.txt:2: class id {class_id} not in classes.txt"
    ):
        read_cub(root)


def test_an_attribute_id_below_1_names_line(tmp_path):
    """Attribute ids are 1-based: a present attribute 0 was stored (int16 holds it)."""
    root = _basic(tmp_path)
    _edit(root / "attributes" / "image_attribute_labels.txt", "1 1 1 3", "1 0 1 3")
    with pytest.raises(
        CubFormatError, match=r"image_attribute_labels.txt:1: attribute id 0 is outside 1\.\."
    ):
        read_cub(root)


def test_an_attribute_id_beyond_the_named_attributes_names_line(tmp_path):
    """An id attributes.txt does not name was stored as if it were an attribute."""
    root = _basic(tmp_path)
    named = len(read_cub(root).attribute_names)
    _edit(root / "attributes" / "image_attribute_labels.txt", "1 1 1 3", f"1 {named + 1} 1 3")
    with pytest.raises(
        CubFormatError, match=rf"attribute id {named + 1} is outside 1\.\.{named} \(attributes"
    ):
        read_cub(root)


@pytest.mark.parametrize(
    ("line", "error"),
    [("0 1 5.0 6.0 1 1.5", "0 is outside 1"), ("1.5 1 5 6 1 2", "'1.5' is not an")],
)
def test_part_clicks_of_an_image_id_that_cannot_be_name_the_line(tmp_path, line, error):
    """int(float(id)) kept clicks under image 0, -1, or 1 for '1.5'."""
    root = _basic(tmp_path)
    (root / "parts" / "part_click_locs.txt").write_text(f"1 1 5.0 6.0 1 1.5\n{line}\n")
    with pytest.raises(CubFormatError, match=rf"part_click_locs.txt:2: image id {error}"):
        read_part_clicks(root)
