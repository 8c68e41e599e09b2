"""The manifest decides what a dataset is: birdray's own, damaged or not, and nothing else."""

from __future__ import annotations

import json

import pytest

from birdray.data.manifest import DatasetError, is_dataset, load_manifest


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Summer 2024", "photos": ["a.jpg"]}',  # an album export's
        '{"name": "App", "icons": [], "start_url": "/", "display": "standalone"}',  # a web app's
        '[{"file": "a.jpg"}]',  # JSON, but no object at all
    ],
    ids=["album", "web_app", "array"],
)
def test_another_tools_manifest_is_not_a_dataset(tmp_path, text):
    """A photo folder holding another tool's manifest.json was refused as a damaged dataset
    ("manifest.json lacks schema_version, shards_dir, ...") and could not be scored."""
    (tmp_path / "manifest.json").write_text(text)
    assert not is_dataset(tmp_path)


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b'{"schema_version": 1, "shards_dir": "s", "splits": {"val": {}}', "not valid JSON"),
        (b"\x89PNG\r\n\x1a\n\0\0", "not valid JSON"),  # not even text: was a UnicodeDecodeError
        (json.dumps({"schema_version": 1, "splits": {}}).encode(), "lacks shards_dir"),
        (json.dumps({"class_names": [], "quarantine": {}}).encode(), "lacks schema_version"),
    ],
    ids=["truncated", "binary", "incomplete", "markers_only"],
)
def test_a_damaged_birdray_manifest_is_still_a_dataset_whose_error_says_why(tmp_path, data, said):
    (tmp_path / "manifest.json").write_bytes(data)
    assert is_dataset(tmp_path)
    with pytest.raises(DatasetError, match=said):
        load_manifest(tmp_path)


def test_no_manifest_or_a_folder_named_like_it_is_not_a_dataset(tmp_path):
    assert not is_dataset(tmp_path)
    (tmp_path / "manifest.json").mkdir()
    assert not is_dataset(tmp_path)
