"""The one storage helper: local paths and URIs, atomic writes, on folders and S3."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from birdray import storage


def test_kinds_of_location(tmp_path):
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    assert not storage.is_remote("file:///tmp/x") and not storage.is_remote("runs/x")
    assert storage.scheme("s3://b/k") == "s3://" and storage.scheme("runs/x") == ""
    assert storage.local_path("file:///tmp/x") == Path("/tmp/x")
    assert storage.absolute("s3://b/k") == "s3://b/k"
    assert storage.absolute("rel") == str(Path("rel").resolve())
    assert storage.join("s3://b", "a", "c") == "s3://b/a/c"


def test_atomic_writes_leave_no_temporaries(tmp_path):
    target = tmp_path / "deep" / "x.json"
    storage.make_dirs(target.parent)
    storage.write_bytes_atomic(target, b"one")
    storage.write_bytes_atomic(target, b"two")
    assert storage.read_bytes(target) == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


@pytest.mark.slow
def test_the_same_calls_work_on_a_bucket(s3_bucket):
    root = storage.join(s3_bucket, "storage-test")
    storage.write_bytes_atomic(storage.join(root, "a", "x.json"), b"{}")
    storage.put_bytes(storage.join(root, "b.bin"), b"1")
    assert storage.read_bytes(storage.join(root, "a", "x.json")) == b"{}"
    assert sorted(storage.list_files(root)) == ["a/x.json", "b.bin"]
    assert storage.count_files(root, ".json") == 1
    storage.delete_dir(root)
    assert storage.list_files(root) == []


def test_reading_an_input_file_refuses_what_would_block_or_is_too_big(tmp_path):
    import os

    (tmp_path / "a.jpg").write_bytes(b"12345")
    assert storage.read_local_file(tmp_path / "a.jpg", max_bytes=5) == b"12345"
    with pytest.raises(storage.FileTooBig, match="5 bytes"):
        storage.read_local_file(tmp_path / "a.jpg", max_bytes=4)
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "pipe.jpg")
    for name in ("pipe.jpg", "link.jpg"):
        with pytest.raises(storage.NotRegularFile, match="FIFO"):
            storage.read_local_file(tmp_path / name)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError):
        storage.read_local_file(tmp_path / "dangling.jpg")
    (tmp_path / "album.jpg").mkdir()  # a folder with an image's name: said so, not errno 21
    with pytest.raises(storage.NotRegularFile, match="a folder"):
        storage.read_local_file(tmp_path / "album.jpg")
    assert storage.utf8_name("ok é.jpg") == ("ok é.jpg", True)
    assert storage.utf8_name(os.fsdecode(b"bad \xe9.jpg")) == ("bad \\xe9.jpg", False)


def test_listing_a_folder_while_another_writer_creates_it_never_fails(tmp_path):
    """Arrow looks twice when a listing fails: a folder made between the looks is not an error."""
    folders = [tmp_path / f"alias{i}" for i in range(3000)]
    start = threading.Barrier(2, timeout=10)  # a failed listing must not leave the writer waiting

    def create() -> None:
        for folder in folders:
            try:
                start.wait()
            except threading.BrokenBarrierError:
                return
            folder.mkdir()

    writer = threading.Thread(target=create)
    writer.start()
    listed = []
    try:
        for folder in folders:
            start.wait()
            listed.append(storage.list_files(folder) + storage.child_dirs(folder))
    finally:
        start.abort()
        writer.join()
    assert listed == [[]] * len(folders)
