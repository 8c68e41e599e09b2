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
