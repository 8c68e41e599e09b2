"""Archives that look fine and are not: damaged streams, replaced archives, racing processes,
names listed twice, limits crossed early, a link where the unpacked folder goes."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading

import pytest

from birdray.data import archive_members
from birdray.data.archive import (
    EXTRACT_CHECKS,
    EXTRACT_MARKER,
    ArchiveError,
    md5sum,
    safe_extract,
)
from birdray.data.cub import read_cub
from birdray.data.download import DownloadConfig, download_cub, extracted_dir, open_source
from tests.cub_fixture import jpeg_bytes, write_layout


def _archive(tmp_path, name="CUB_200_2011.tgz", top="CUB_200_2011", images=6, mode="w:gz"):
    photos = [
        (i % 3 + 1, jpeg_bytes(color=(i * 37 % 256, 90, 200)), i % 2 == 0) for i in range(images)
    ]
    root = write_layout(tmp_path / f"layout-{name}", photos)
    archive = tmp_path / name
    with tarfile.open(archive, mode) as tar:
        tar.add(root, arcname=top)
    return archive


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w:"])
@pytest.mark.parametrize("where", [0.5, 0.8])
def test_a_damaged_archive_is_refused_whole_never_unpacked_in_part(tmp_path, mode, where):
    """tarfile stops at the first bad header as if the archive ended there (and never reads
    gzip's CRC): a flipped stretch used to unpack 7 of 12 photos, marked done, exit 0."""
    archive = _archive(tmp_path, images=24, mode=mode)
    at = int(archive.stat().st_size * where)
    if mode == "w:":  # no checksum over a plain tar's data (the MD5 guards it): hit a header
        with tarfile.open(archive) as tar:
            at = tar.getmembers()[int(len(tar.getmembers()) * where)].offset
    _refused_whole(archive, at, 64, "damaged|not a readable")


def _refused_whole(archive, at: int, length: int, message: str) -> None:
    """Flip ``length`` bytes of ``archive`` at ``at``: it is refused and nothing is unpacked."""
    data = bytearray(archive.read_bytes())
    data[at : at + length] = bytes(b ^ 0x5A for b in data[at : at + length])
    archive.write_bytes(bytes(data))
    target = archive.parent / "out"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, target)
    assert not target.exists()
    assert not [p for p in archive.parent.iterdir() if ".partial" in p.name]


def test_another_archive_in_the_same_folder_replaces_the_old_extraction(tmp_path):
    first = _archive(tmp_path / "a", images=3)
    second = _archive(tmp_path / "b", images=9)
    target = tmp_path / "out"
    before = len(read_cub(safe_extract(first, target)).records)
    assert len(read_cub(safe_extract(second, target)).records) > before
    assert md5sum(second) in (target / EXTRACT_MARKER).read_text()
    marker_time = (target / EXTRACT_MARKER).stat().st_mtime_ns
    safe_extract(second, target)  # the same archive again: kept, not redone
    assert (target / EXTRACT_MARKER).stat().st_mtime_ns == marker_time


def test_an_extraction_made_under_older_checks_is_redone(tmp_path):
    """A folder an older birdray unpacked (its marker names the MD5 but no checks' version) may
    hold what today's checks refuse, such as a link: it is unpacked again, not trusted."""
    archive = _archive(tmp_path, images=3)
    target = safe_extract(archive, tmp_path / "out")
    (target / EXTRACT_MARKER).write_text(json.dumps({"md5": md5sum(archive)}))
    (target / "CUB_200_2011" / "planted").symlink_to("/")
    safe_extract(archive, target)
    assert not (target / "CUB_200_2011" / "planted").is_symlink()
    assert json.loads((target / EXTRACT_MARKER).read_text())["checks"] == EXTRACT_CHECKS
    assert read_cub(target).records


def test_two_processes_unpacking_one_archive_both_get_all_of_it(tmp_path):
    archive = _archive(tmp_path, images=36)
    target = tmp_path / "out"
    results, errors = [], []

    def unpack() -> None:
        try:
            results.append(safe_extract(archive, target))
        except Exception as exc:  # any failure is the test's finding
            errors.append(exc)

    threads = [threading.Thread(target=unpack) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [target] * 3
    assert len(read_cub(target).records) == len(read_cub(safe_extract(archive, target)).records)
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_a_fifo_where_the_archive_goes_is_an_error_not_a_hang(tmp_path):
    archive = _archive(tmp_path / "src")
    out = tmp_path / "raw"
    out.mkdir()
    os.mkfifo(out / "CUB_200_2011.tgz")
    with pytest.raises(ArchiveError, match="not a regular file"):
        download_cub(DownloadConfig(out=str(out), url=archive.as_uri(), md5=md5sum(archive)))
    os.mkfifo(tmp_path / "pipe.tgz")
    with pytest.raises(ArchiveError, match="not a regular file"):
        open_source(tmp_path / "pipe.tgz")


def test_download_says_where_images_txt_is_when_the_archive_wraps_it(tmp_path):
    wrapped = _archive(tmp_path, name="wrapped.tgz", top="wrapper/CUB_200_2011")
    cfg = DownloadConfig(out=str(tmp_path / "raw"), url=wrapped.as_uri(), md5=md5sum(wrapped))
    with pytest.raises(ArchiveError, match="wrapper/CUB_200_2011/images.txt"):
        download_cub(cfg)
    renamed = _archive(tmp_path, name="v2.tgz", top="CUB_200_2011_v2")  # one top folder, any name
    cfg = DownloadConfig(out=str(tmp_path / "raw2"), url=renamed.as_uri(), md5=md5sum(renamed))
    assert read_cub(download_cub(cfg)).records


def test_network_failures_and_unwritable_folders_are_one_line_errors(tmp_path):
    cfg = DownloadConfig(out=str(tmp_path / "raw"), url="http://127.0.0.1:9/CUB_200_2011.tgz")
    with pytest.raises(
        ArchiveError, match="download of http://127.0.0.1:9/CUB_200_2011.tgz failed"
    ):
        download_cub(cfg)
    (tmp_path / "file").write_text("x")
    archive = _archive(tmp_path / "src")
    with pytest.raises(ArchiveError, match="cannot be written"):
        download_cub(DownloadConfig(out=str(tmp_path / "file" / "raw"), url=archive.as_uri()))


def test_a_plain_tar_cut_where_a_header_would_start_is_refused(tmp_path):
    """A plain .tar has no checksum over its data: cut at a block boundary (a download stopped at
    a 1 MiB chunk), it used to read as a shorter, complete archive."""
    archive = _archive(tmp_path, name="CUB_200_2011.tar", images=12, mode="w:")
    with tarfile.open(archive) as tar:
        cut = tar.getmembers()[10].offset
    archive.write_bytes(archive.read_bytes()[:cut])
    with pytest.raises(ArchiveError, match="without its end-of-archive blocks"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_unpacked_folder_is_readable_by_others_and_a_killed_runs_leftovers_go(tmp_path):
    archive = _archive(tmp_path)
    (tmp_path / "out.partial" / "CUB_200_2011").mkdir(parents=True)  # a kill -9's
    umask = os.umask(0o022)
    try:
        target = safe_extract(archive, tmp_path / "out")
    finally:
        os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o755  # the umask's, not a private temp folder's
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def _zip(path, members: dict[str, bytes], modes: dict[str, int] | None = None, flags: int = 0):
    """A zip as tools write them: ``members`` name -> bytes; ``modes`` Unix modes to record."""
    import warnings
    import zipfile

    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # zipfile warns about a name written twice
        for name, data in members.items() if isinstance(members, dict) else members:
            if name not in (modes or {}):  # as zipfile writes it: permissions, no file type
                zf.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = modes[name] << 16
            zf.writestr(info, data)
    if flags:  # zipfile writes no encrypted members: set the flag in every header it wrote
        data = bytearray(path.read_bytes())
        for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start = data.find(signature)
            while start >= 0:
                data[start + at] |= flags
                start = data.find(signature, start + 4)
        path.write_bytes(bytes(data))
    return path


def test_a_zip_of_species_folders_made_on_a_mac_ingests_as_its_species(tmp_path):
    """What people send: ``photos.zip`` holding ``photos/<species>/`` (Finder adds
    ``__MACOSX/`` resource forks), or made on Windows with ``\\`` separators. It unpacks like a
    .tgz, and the folder it wraps is the dataset; before, a zip was 'not a readable tar'."""
    from birdray.data.folders import find_layout, read_layout

    photos = {
        f"photos/{species}/{n}.jpg": jpeg_bytes(color=(40 * n, 90, 200))
        for species in ("Cardinal", "Blue_Jay")
        for n in range(3)
    }
    forks = {f"__MACOSX/{name.rsplit('/', 1)[0]}/._x.jpg": b"\x00\x05\x16\x07" for name in photos}
    for name, members in {
        "mac.zip": {**photos, "photos/.DS_Store": b"\x00", **forks},
        "windows.zip": {name.replace("/", "\\"): data for name, data in photos.items()},
        "unwrapped.zip": {  # species at the top: the forks' folder is not a species
            **{n.split("/", 1)[1]: d for n, d in photos.items()},
            **{f"__MACOSX/{n.split('/', 1)[1]}": b"\x00\x05" for n in photos},
        },
    }.items():
        folder = open_source(_zip(tmp_path / name, members))
        top = "unwrapped_extracted" if name == "unwrapped.zip" else "photos"
        assert folder.name == top and find_layout(folder) == "folders", sorted(folder.iterdir())
        dataset = read_layout(folder, "folders")
        assert dataset.class_names == ["Blue_Jay", "Cardinal"] and len(dataset.records) == 6
        for record in dataset.records:  # the bytes are the photo's, not a copy of another
            assert (folder / record.rel_path).read_bytes() == photos[f"photos/{record.rel_path}"]
        assert not dataset.warnings, dataset.warnings  # nothing of macOS's taken for a photo


@pytest.mark.parametrize(
    "members, modes, flags, message",
    [
        ({"photos/a.jpg": b"x", "../escaped.txt": b"x"}, None, 0, "escapes"),
        ({"/escaped.txt": b"x"}, None, 0, "escapes"),
        ({"..\\escaped.txt": b"x"}, None, 0, "escapes"),
        ({"C:/escaped.txt": b"x"}, None, 0, "escapes"),
        ({"photos/link.jpg": b"/etc/passwd"}, {"photos/link.jpg": 0o120777}, 0, "unsafe link"),
        ({"photos/fifo": b""}, {"photos/fifo": 0o010644}, 0, "not a file or folder"),
        ({"photos/a.jpg": b"x"}, None, 0x1, "encrypted"),
        ([("photos/a.jpg", b"x"), ("photos/a.jpg", b"y")], None, 0, "twice"),
        ({"photos/zeros.bin": bytes(3_000_000)}, None, 0, "more than the cap"),
    ],
    ids=["dotdot", "absolute", "backslash-dotdot", "drive", "symlink", "fifo", "encrypted",
         "twice", "bomb"],
)  # fmt: skip
def test_unsafe_zip_members_are_refused_and_nothing_is_written(
    tmp_path, members, modes, flags, message
):
    archive = _zip(tmp_path / "evil.zip", members, modes, flags)
    target = tmp_path / "sandbox" / "out"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, target, max_bytes=1_000_000)
    assert not target.exists() and not (tmp_path / "escaped.txt").exists()


def test_a_damaged_zip_is_refused_whole(tmp_path):
    """A flipped stretch inside one photo's compressed bytes: its CRC is checked before any
    member is written, so nothing of the archive is unpacked."""
    members = {
        f"photos/Wren/{n}.jpg": jpeg_bytes(size=(160, 120), color=(n, 9, 9)) for n in range(6)
    }
    archive = _zip(tmp_path / "photos.zip", members)
    _refused_whole(archive, archive.stat().st_size // 2, 32, "damaged zip")


def test_zips_as_other_tools_make_them_unpack_to_what_the_folder_was(tmp_path):
    """Folder entries written ``photos\\robin\\`` (older Windows tools: were 0-byte files, so
    every photo fell into one class 'photos'), a note beside the species folders (stopped the
    unwrapping there), a CSV of path,label (read as one species), a ``12:30`` folder name (a
    time, not a drive: was refused as an escape)."""
    from birdray.data.folders import find_layout, read_layout

    jpg = {n: jpeg_bytes(color=(30 * n, 60, 90)) for n in range(4)}
    cases = {
        "explorer.zip": [
            ("photos\\", b""), ("photos\\robin\\", b""), ("photos\\robin\\0.jpg", jpg[0]),
            ("photos\\sparrow\\", b""), ("photos\\sparrow\\1.jpg", jpg[1]), ("photos\\wren\\", b""),
        ],
        "noted.zip": [("photos/README.txt", b"taken in May"), ("photos/robin/0.jpg", jpg[0]),
                      ("photos/sparrow/1.jpg", jpg[1])],
        "csv.zip": [("birds/labels.csv", b"a.jpg,robin\nb.jpg,sparrow\n"),
                    ("birds/a.jpg", jpg[0]), ("birds/b.jpg", jpg[1])],
        "time.zip": [("12:30 robin/0.jpg", jpg[0]), ("sparrow/1.jpg", jpg[1])],
    }  # fmt: skip
    for name, members in cases.items():
        source = open_source(_zip(tmp_path / name, members))
        layout = find_layout(source)
        dataset = read_layout(source, layout)
        expected = ["12:30 robin", "sparrow"] if name == "time.zip" else ["robin", "sparrow"]
        assert dataset.class_names == expected, (name, layout, source)
        assert layout == ("csv" if name == "csv.zip" else "folders"), name


def test_a_zip_member_compressed_with_a_method_python_cannot_read_is_named(tmp_path):
    """Deflate64 (Windows Explorer, large files), PPMd, zstd: before, a NotImplementedError
    traceback from zipfile; now the member, its method and what to do."""
    archive = _zip(tmp_path / "big.zip", {"photos/robin/0.jpg": jpeg_bytes()})
    data = bytearray(archive.read_bytes())
    for signature, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # method 9: Deflate64
        start = data.find(signature)
        data[start + at : start + at + 2] = (9).to_bytes(2, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(
        ArchiveError, match=r"'photos/robin/0.jpg' uses compression method 9.*Deflate"
    ):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tar(path, members: list[tuple[str, bytes | None]], mode: str = "w:gz"):
    """A tar as other tools write them: (name, bytes) for a file, (name, None) for a folder."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("again", ["photos/robin/1.jpg", "./photos/robin/1.jpg"])
def test_a_tar_listing_a_name_twice_is_refused_as_a_zip_is(tmp_path, again):
    """The later copy used to replace the first silently (a wren photo labelled robin)."""
    archive = _tar(
        tmp_path / "birds.tar",
        [("photos/robin/1.jpg", jpeg_bytes()), ("photos/robin/2.jpg", jpeg_bytes()),
         (again, b"another photo")],
        mode="w:",
    )  # fmt: skip
    with pytest.raises(ArchiveError, match=f"the tar lists {again!r} twice; which one is meant"):
        open_source(archive)
    assert not extracted_dir(archive).exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize(
    "members, file, folder",
    [
        ([("p/x.jpg", b"jpg"), ("p/x.jpg/", None)], "p/x.jpg", "p/x.jpg/"),
        ([("p/x.jpg/", None), ("p/x.jpg", b"jpg")], "p/x.jpg", "p/x.jpg/"),
        ([("p/x.jpg", b"jpg"), ("p/x.jpg/y.jpg", b"jpg")], "p/x.jpg", "p/x.jpg/y.jpg"),
        ([("p/x.jpg/y.jpg", b"jpg"), ("p/x.jpg", b"jpg")], "p/x.jpg", "p/x.jpg/y.jpg"),
    ],
    ids=["file-then-folder", "folder-then-file", "file-then-inside", "inside-then-file"],
)
def test_a_file_and_a_folder_of_one_name_is_an_archive_error_naming_both(
    tmp_path, kind, members, file, folder
):
    """Was '[Errno 17] File exists' (or 'Not a directory'), which reads like a disk problem."""
    if kind == "tar":
        archive = _tar(tmp_path / "a.tgz", members)
    else:
        archive = _zip(tmp_path / "a.zip", [(n, b"" if d is None else d) for n, d in members])
    message = rf"the {kind} holds '{file}' both as a file and as a folder \('{folder}'\)"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cut_after(path, infos: list[tarfile.TarInfo]):
    """A .tgz of these headers (no data), then garbage where the next header should be: only
    a reader that stops at the first header over a limit refuses it for that limit."""
    with gzip.open(path, "wb") as fh:
        for info in infos:
            fh.write(info.tobuf(format=tarfile.GNU_FORMAT))
        fh.write(b"\x01" * 700)
    return path


def test_a_tar_crossing_a_limit_is_refused_at_that_header_not_after_reading_it_all(
    tmp_path, monkeypatch
):
    """The limits were checked after the whole stream was decompressed and every header kept:
    an 8 MB .tgz declaring 8 GB took 20 s to refuse, 2 million empty entries 99 s and 1 GB."""
    bomb = tarfile.TarInfo("CUB_200_2011/images/big.jpg")
    bomb.size = 10**12  # its data is not there: reading past it would fail as damaged
    with pytest.raises(ArchiveError, match="at least 1000.00 GB, more than the cap"):
        safe_extract(_cut_after(tmp_path / "bomb.tgz", [bomb]), tmp_path / "out")
    monkeypatch.setattr(archive_members, "MAX_MEMBERS", 5)
    many = [tarfile.TarInfo(f"d/{n}.jpg") for n in range(6)]
    with pytest.raises(ArchiveError, match="more than 5 entries"):
        safe_extract(_cut_after(tmp_path / "many.tgz", many), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArchiveError, match="unreadable entry header"):  # under the limits
        safe_extract(_cut_after(tmp_path / "cut.tgz", many[:5]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_link_where_the_extraction_folder_goes_is_refused_not_followed(tmp_path):
    """The link was resolved, then the folder it points to emptied and unpacked into."""
    archive = _archive(tmp_path, name="photos.tgz")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    extracted_dir(archive).symlink_to(victim)
    with pytest.raises(ArchiveError, match=r"photos_extracted is a symbolic link \(to .*victim"):
        open_source(archive)
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
    assert extracted_dir(archive).is_symlink()
    (tmp_path / "elsewhere").mkdir()  # a link above the folder is followed as ever
    (tmp_path / "via").symlink_to(tmp_path / "elsewhere")
    assert read_cub(safe_extract(archive, tmp_path / "via" / "out")).records
    assert (tmp_path / "elsewhere" / "out" / EXTRACT_MARKER).is_file()


@pytest.mark.parametrize("inside", [False, True], ids=["beside-images-txt", "in-its-folder"])
def test_a_cub_archive_with_a_stray_csv_reads_as_cub_as_its_folder_does(tmp_path, inside):
    """A lone CSV was taken for the dataset over CUB's images.txt ('notes.csv: lists no
    images'), while the same folder unarchived ingested fine; a folder of only a CSV still
    reads as that CSV (``csv.zip`` above)."""
    from birdray.data.folders import find_layout

    root = write_layout(tmp_path / "cub", [(c, jpeg_bytes(), c % 2 == 0) for c in (1, 2, 3)])
    top = root if inside else root.parent  # CUB_200_2011/ alone, or beside attributes.txt
    (top / "notes.csv").write_text("path,label\n")
    archive = tmp_path / "cub_with_notes.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname="CUB_200_2011" if inside else ".")
    source = open_source(archive)
    assert find_layout(source) == find_layout(top) == "cub", source
    assert len(read_cub(source).records) == 3
