"""The official archive's path, on archives built here: MD5 refusal, safe extraction, resuming.

Downloads go to a real HTTP server on 127.0.0.1 that honours (or, to test the fallback, ignores)
``Range`` requests, since Caltech cannot be reached from CI.
"""

from __future__ import annotations

import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from birdray.data.cub import read_cub
from birdray.data.download import (
    EXTRACT_MARKER,
    ArchiveError,
    DownloadConfig,
    download_cub,
    extracted_dir,
    fetch,
    md5sum,
    open_source,
    safe_extract,
)
from tests.cub_fixture import jpeg_bytes, write_layout


def _cub_archive(tmp_path: Path) -> Path:
    root = write_layout(tmp_path / "layout", [(c, jpeg_bytes(), c % 2 == 0) for c in (1, 2, 3)])
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="CUB_200_2011")
    return archive


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def test_archive_with_the_right_md5_is_extracted_and_read(tmp_path):
    archive = _cub_archive(tmp_path)
    folder = open_source(archive, md5=md5sum(archive))
    assert folder == extracted_dir(archive) and (folder / EXTRACT_MARKER).is_file()
    cub = read_cub(folder)
    assert len(cub.records) == 3 and len(cub.class_names) == 3
    (folder / "CUB_200_2011" / "images.txt").write_text("edited")
    assert open_source(archive, md5=md5sum(archive)) == folder  # finished once: not redone
    assert (folder / "CUB_200_2011" / "images.txt").read_text() == "edited"


def test_wrong_md5_is_refused_before_extraction(tmp_path):
    archive = _cub_archive(tmp_path)
    with pytest.raises(ArchiveError, match="does not match the expected 0+; refusing it"):
        open_source(archive, md5="0" * 32)
    assert not extracted_dir(archive).exists()


def test_half_finished_extraction_is_redone(tmp_path):
    archive = _cub_archive(tmp_path)
    target = tmp_path / "out"
    (target / "CUB_200_2011").mkdir(parents=True)  # a crash left files but no marker
    (target / "CUB_200_2011" / "junk.txt").write_text("left over")
    safe_extract(archive, target)
    assert not (target / "CUB_200_2011" / "junk.txt").exists()
    assert (target / "CUB_200_2011" / "images.txt").is_file() and (target / EXTRACT_MARKER).exists()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../escaped.txt"), "escapes"),
        (tarfile.TarInfo("/abs/escaped.txt"), "escapes"),
        (
            lambda: _link("CUB_200_2011/passwd", "/etc/passwd"),
            "unsafe link",
        ),
        (lambda: _link("CUB_200_2011/up", "../../outside"), "unsafe link"),
        (lambda: _special("CUB_200_2011/fifo", tarfile.FIFOTYPE), "device or pipe"),
        (lambda: _special("CUB_200_2011/dev", tarfile.CHRTYPE), "device or pipe"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, member, message):
    member = member() if callable(member) else member
    archive = _tar_with(tmp_path / "evil.tgz", member)
    target = tmp_path / "sandbox" / "out"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, target)
    assert not target.exists() and not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "sandbox").exists()


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def test_not_an_archive_is_one_clear_error(tmp_path):
    bogus = tmp_path / "CUB_200_2011.tgz"
    bogus.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        open_source(bogus)
    with pytest.raises(FileNotFoundError, match="CUB source not found"):
        open_source(tmp_path / "nothing.tgz")


class _Server:
    """Serves one payload; ``honour_range`` False plays a server that ignores Range."""

    def __init__(self, payload: bytes, honour_range: bool = True):
        self.payload, self.honour_range, self.ranges = payload, honour_range, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                start = 0
                header = self.headers.get("Range")
                outer.ranges.append(header)
                if header and outer.honour_range:
                    start = int(header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(outer.payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/CUB_200_2011.tgz"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes_or_restarts(tmp_path, honour_range):
    payload = _cub_archive(tmp_path / "src").read_bytes()
    dest = tmp_path / "dl" / "CUB_200_2011.tgz"
    dest.parent.mkdir()
    half = len(payload) // 2
    dest.with_name(dest.name + ".part").write_bytes(payload[:half])  # an earlier attempt
    with _Server(payload, honour_range) as server:
        fetch(server.url, dest)
    assert server.ranges == [f"bytes={half}-"]  # it asked to resume
    assert dest.read_bytes() == payload  # either way the file is whole, never doubled
    assert not dest.with_name(dest.name + ".part").exists()


def test_download_cub_verifies_then_extracts_and_sets_a_bad_download_aside(tmp_path):
    payload = _cub_archive(tmp_path / "src").read_bytes()
    good_md5 = md5sum(tmp_path / "src" / "CUB_200_2011.tgz")
    with _Server(payload) as server:
        folder = download_cub(
            DownloadConfig(out=str(tmp_path / "raw"), url=server.url, md5=good_md5)
        )
        assert read_cub(folder).records and (folder / EXTRACT_MARKER).is_file()
        with pytest.raises(ArchiveError, match="refusing it"):
            download_cub(DownloadConfig(out=str(tmp_path / "raw2"), url=server.url, md5="f" * 32))
    bad = tmp_path / "raw2" / "CUB_200_2011.tgz.bad"
    assert bad.read_bytes() == payload  # kept for inspection, never used
    assert not (tmp_path / "raw2" / "CUB_200_2011.tgz").exists()
    assert not (tmp_path / "raw2" / "extracted").exists()


def test_download_cub_takes_an_archive_already_on_disk(tmp_path):
    """README's offline form, ``birdray download --url file:///path/to/CUB_200_2011.tgz``."""
    archive = _cub_archive(tmp_path / "src")
    cfg = DownloadConfig(out=str(tmp_path / "raw"), url=archive.as_uri(), md5=md5sum(archive))
    folder = download_cub(cfg)
    assert folder == tmp_path / "raw" / "extracted" and read_cub(folder).records
    assert (tmp_path / "raw" / "CUB_200_2011.tgz").read_bytes() == archive.read_bytes()
    assert archive.is_file()  # copied, the user's file left where it was


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


@pytest.mark.parametrize(
    "link",
    [
        lambda: _link("CUB_200_2011/images/a.jpg", "b.jpg"),  # points inside: still refused
        lambda: _hardlink("CUB_200_2011/images/a.jpg", "CUB_200_2011/images/b.jpg"),
    ],
)
def test_every_link_is_refused_even_one_pointing_inside(tmp_path, link):
    archive = tmp_path / "links.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        real = tarfile.TarInfo("CUB_200_2011/images/b.jpg")
        real.size = 3
        tar.addfile(real, io.BytesIO(b"jpg"))
        tar.addfile(link())
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match="link.*a CUB archive holds none"):
        safe_extract(archive, target)
    assert not target.exists() and not (tmp_path / "out.partial").exists()


def test_archive_larger_than_the_cap_is_refused_before_writing(tmp_path):
    member = tarfile.TarInfo("CUB_200_2011/images/big.bin")
    member.size = 50_000
    archive = _tar_with(tmp_path / "bomb.tgz", member, b"\0" * member.size)  # compresses to ~100 B
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"would unpack to at least 0\.00 GB, more than the cap"):
        safe_extract(archive, target, max_bytes=10_000)
    assert not target.exists() and not (tmp_path / "out.partial").exists()
    with pytest.raises(ArchiveError, match="--max-extract-gb"):
        open_source(archive, max_extract_gb=1e-5)
    assert not extracted_dir(archive).exists()
    assert (safe_extract(archive, target, max_bytes=60_000) / "CUB_200_2011").is_dir()


def test_archive_without_md5_has_its_checksum_printed(tmp_path, capsys):
    archive = _cub_archive(tmp_path)
    open_source(archive)
    out = capsys.readouterr().out
    assert f"MD5 {md5sum(archive)}" in out and "no --md5 given" in out
