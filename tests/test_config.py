"""Config files and flag values as users and hostile files write them: one line, never a
traceback, never a silent change of meaning (``birdray.config``)."""

from __future__ import annotations

import pytest

from birdray import config as cfglib
from birdray.train.config import TrainConfig

BILLION_LAUGHS = (
    "name: {a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
    + ", ".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh", strict=True)
    )
    + "}\n"
)


@pytest.mark.timeout(60)  # the bomb grew past 1.4 GB and ran until killed
@pytest.mark.parametrize(
    "text, said",
    [
        (b"epochs: 1\nname: caf\xe9\n", "not UTF-8 text"),
        (b"epochs: [1, 2\n", "not a valid config: line 2"),
        (b"name: !!python/object/apply:os.system [echo hi]\n", "could not determine a constructor"),
        (b"epochs: 1\nlr: 0.1\nepochs: 3\n", r"key 'epochs' is given twice \(line 3\)"),
        (BILLION_LAUGHS.encode(), "more than 20 aliases"),
    ],
    ids=["latin-1", "syntax", "python-tag", "duplicate-key", "alias-bomb"],
)
def test_a_config_file_that_cannot_be_read_is_one_error_naming_it(tmp_path, text, said):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(cfglib.ConfigError, match=said) as refused:
        cfglib.resolve(TrainConfig, {"config": str(path)})
    assert str(path) in str(refused.value) and len(str(refused.value)) < 300


def test_a_few_anchors_still_read():
    text = "base: &size 64\nimage_size: *size\n"
    assert cfglib.read_yaml(text) == {"base": 64, "image_size": 64}


@pytest.mark.parametrize(
    "values, flag",
    [
        ({"epochs": True}, "--epochs"),  # `epochs: yes` was 1 epoch
        ({"image_size": True}, "--image-size"),
        ({"lr": False}, "--lr"),
        ({"name": ["a", "b"]}, "--name"),  # was the run name "['a', 'b']"
        ({"name": {"a": 1}}, "--name"),
    ],
)
def test_a_value_of_another_kind_is_refused_not_converted(values, flag):
    with pytest.raises(cfglib.ConfigError, match=flag):
        cfglib.from_dict(TrainConfig, values)


def test_a_refused_nested_value_is_shown_short():
    nested = [["lol"] * 9] * 9
    with pytest.raises(cfglib.ConfigError) as refused:
        cfglib.from_dict(TrainConfig, {"name": nested})
    assert len(str(refused.value)) < 200
