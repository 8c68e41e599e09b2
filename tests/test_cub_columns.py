"""The fast column readers against the line-by-line ones: same result for every file.

``birdray.data.cub_columns`` may only speed reading up: on clean files it must answer (or the
speed-up is gone) and on every mutated file the dataset read, or the error raised, must be
exactly what the careful reader gives.
"""

from __future__ import annotations

import random

import pytest

from birdray.data import cub
from birdray.data.cub import CubFormatError, read_cub
from tests.cub_fixture import jpeg_bytes, write_layout

FILES = ("attributes/image_attribute_labels.txt", "parts/part_locs.txt")
ODD = ["x", "01", "0.5", "-1", "1e3", "nan", "²", "99999999999999999999", "", "\t", "3.7", "1.0"]


def _read(root, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(cub, "present_attributes", lambda *a: None)
            m.setattr(cub, "part_locations", lambda *a: None)
        try:
            data = read_cub(root)
        except CubFormatError as exc:
            return ("error", str(exc))
    return repr([(r.image_id, r.attributes, r.parts, r.problems) for r in data.records])  # NaN-safe


def _mutate_line(line: str, rng: random.Random) -> str:
    fields = line.split(" ")
    kind = rng.randrange(7)
    if kind == 0:
        fields[rng.randrange(len(fields))] = rng.choice(ODD)
    elif kind == 1:
        fields.append(rng.choice(["0", "7.5", "extra"]))
    elif kind == 2:
        fields = fields[: rng.randrange(len(fields))]
    elif kind == 3:
        return line.replace(" ", rng.choice(["  ", "\t"]), 1)
    elif kind == 4:
        return " " + line
    elif kind == 5:
        return ""
    else:
        fields[0] = str(rng.choice([1, 2, 3, 9]))  # a repeated or unknown image id
    return " ".join(fields)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    parent = tmp_path_factory.mktemp("cub")
    root = write_layout(parent, [(c, jpeg_bytes(), True) for c in (1, 2, 3)])
    return root, {name: (root / name).read_text() for name in FILES}


def test_clean_files_take_the_fast_path(layout):
    root, _ = layout
    ids = {1, 2, 3}
    attrs = cub.present_attributes(root / FILES[0], ids)
    parts = cub.part_locations(root / FILES[1], ids, 15)
    assert attrs is not None and attrs[2] == [2, 52, 102, 152, 202, 252, 302]
    assert parts is not None and parts[1][1] == [6.0, 7.0, 1.0] and len(parts[1]) == 15


def test_every_mutated_file_reads_exactly_as_line_by_line(layout, monkeypatch):
    root, originals = layout
    rng = random.Random(1201)
    outcomes = {"error": 0, "read": 0}
    try:
        for case in range(160):
            name = FILES[case % 2]
            lines = originals[name].splitlines()
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(lines))
                lines[i] = _mutate_line(lines[i], rng)
            ending = "\r\n" if case % 5 == 0 else "\n"
            (root / name).write_bytes((ending.join(lines) + ending).encode())
            fast, slow = _read(root, True, monkeypatch), _read(root, False, monkeypatch)
            assert fast == slow, f"case {case} ({name})"
            outcomes["error" if fast[0] == "error" else "read"] += 1
            (root / name).write_text(originals[name])
    finally:
        for name, text in originals.items():
            (root / name).write_text(text)
    assert outcomes["error"] > 10 and outcomes["read"] > 10, outcomes


def test_invalid_utf8_falls_back_to_the_careful_reader(layout, monkeypatch):
    root, originals = layout
    path = root / FILES[0]
    try:
        path.write_bytes(originals[FILES[0]].encode().replace(b"1 2 0 3", b"1 2 \xff 3", 1))
        assert cub.present_attributes(path, {1, 2, 3}) is None
        assert _read(root, True, monkeypatch) == _read(root, False, monkeypatch)
    finally:
        path.write_text(originals[FILES[0]])
