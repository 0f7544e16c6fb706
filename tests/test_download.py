"""Downloads against an HTTP server on loopback started here: verified, cut-short, corrupt, refused, absent.

Also the helpers ``serve`` and ``fake_omniglot`` (a tiny Omniglot with the real layout), which
``test_omniglot`` reuses.
"""

from __future__ import annotations

import hashlib
import io
import stat
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from torchmaml.data import omniglot
from torchmaml.data.download import DownloadError, UnsafeArchiveError, checked_zip_members, download
from torchmaml.data.images import DatasetError
from torchmaml.data.omniglot import load_omniglot

SMALL_LAYOUT = {"images_background": {"Alpha": 2, "Beta": 1}, "images_evaluation": {"Gamma": 2}}


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder; ``/cut/<name>`` announces the file's full length but sends only 10 bytes."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:10])
        self.close_connection = True
        return None


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) serving ``folder``; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dead_url() -> str:
    """A loopback URL with nothing listening."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/"


def drawing(character: int, drawer: int) -> bytes:
    """A 1-bit 105x105 PNG, white with a black square whose place encodes ``character`` and ``drawer``."""
    image = Image.new("1", (105, 105), 1)
    image.paste(0, (5 * character, 5 * drawer, 5 * character + 20, 5 * drawer + 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_files(layout: dict[str, dict[str, int]]) -> dict[str, bytes]:
    """``{path: PNG}`` of an Omniglot with the given characters per alphabet, in the official layout."""
    files, number = {}, 0
    for image_set, alphabets in layout.items():
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                number += 1
                for drawer in range(1, 21):
                    name = f"{image_set}/{alphabet}/character{c:02d}/{number:04d}_{drawer:02d}.png"
                    files[name] = drawing(number, drawer)
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> str:
    """Write ``files`` as a zip at ``path``; returns its md5."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_omniglot(folder: Path, monkeypatch: pytest.MonkeyPatch, as_zips: bool = True) -> dict[str, str]:
    """Write ``SMALL_LAYOUT`` into ``folder`` as the two zips (or unpacked folders); patch the expected
    structure to match; return the md5 of each zip."""
    monkeypatch.setattr(omniglot, "EXPECTED", {"images_background": (2, 3), "images_evaluation": (1, 2)})
    folder.mkdir(parents=True, exist_ok=True)
    files = omniglot_files(SMALL_LAYOUT)
    md5 = {}
    for image_set in SMALL_LAYOUT:
        members = {name: data for name, data in files.items() if name.startswith(f"{image_set}/")}
        if as_zips:
            md5[image_set] = write_zip(folder / f"{image_set}.zip", members)
        else:
            for name, data in members.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
    return md5


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


# -- download() ---------------------------------------------------------------------------------------


def test_a_good_download_is_verified_and_renamed_into_place(tmp_path):
    (tmp_path / "served").mkdir()
    payload = bytes(range(256)) * 5000
    (tmp_path / "served" / "data.bin").write_bytes(payload)
    with serve(tmp_path / "served") as url:
        path = download(url + "data.bin", tmp_path / "out" / "data.bin", md5=hashlib.md5(payload).hexdigest())
    assert path.read_bytes() == payload
    assert files_under(tmp_path / "out") == {"data.bin"}


def test_a_corrupt_download_is_deleted_and_reported(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "data.bin").write_bytes(b"not what was published")
    (tmp_path / "out").mkdir()
    with serve(tmp_path / "served") as url, pytest.raises(DownloadError, match=r"corrupt: md5 .*expected 0{32}"):
        download(url + "data.bin", tmp_path / "out" / "data.bin", md5="0" * 32)
    assert files_under(tmp_path / "out") == set()


def test_a_download_cut_short_is_deleted_and_reported(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "data.bin").write_bytes(b"x" * 5000)
    (tmp_path / "out").mkdir()
    with serve(tmp_path / "served") as url, pytest.raises(DownloadError, match=r"cut short|IncompleteRead"):
        download(url + "cut/data.bin", tmp_path / "out" / "data.bin")
    assert files_under(tmp_path / "out") == set()


def test_http_errors_and_a_dead_server_are_download_errors(tmp_path):
    (tmp_path / "served").mkdir()
    with serve(tmp_path / "served") as url, pytest.raises(DownloadError, match="HTTP 404"):
        download(url + "missing.bin", tmp_path / "missing.bin")
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1"):
        download(dead_url() + "data.bin", tmp_path / "data.bin", timeout=5)
    assert files_under(tmp_path) == set()


# -- checked_zip_members() ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_an_entry_that_escapes_its_folder_refuses_the_archive(tmp_path, name):
    write_zip(tmp_path / "bad.zip", {"fine/a.txt": b"a", name: b"evil"})
    with zipfile.ZipFile(tmp_path / "bad.zip") as archive, pytest.raises(UnsafeArchiveError, match="outside"):
        checked_zip_members(archive)


def test_a_symbolic_link_refuses_the_archive(tmp_path):
    link = zipfile.ZipInfo("fine/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr(link, "/etc/passwd")
    with zipfile.ZipFile(tmp_path / "bad.zip") as archive, pytest.raises(UnsafeArchiveError, match="symbolic link"):
        checked_zip_members(archive)


# -- Omniglot over HTTP -------------------------------------------------------------------------------


def test_omniglot_downloads_verifies_and_caches(tmp_path, monkeypatch):
    md5 = fake_omniglot(tmp_path / "served", monkeypatch)
    with serve(tmp_path / "served") as url:
        data = load_omniglot(tmp_path / "root", download=True, base_url=url, md5=md5, image_size=8)
    assert data.images.shape == (5, 20, 8, 8)
    assert [c.replace("character", "") for c in data.characters] == [
        "Alpha/01",
        "Alpha/02",
        "Beta/01",
        "Gamma/01",
        "Gamma/02",
    ]
    assert data.background.tolist() == [True, True, True, False, False]
    assert files_under(tmp_path / "root") == {"images_background.zip", "images_evaluation.zip", "omniglot-8.npz"}


def test_omniglot_refuses_a_corrupt_download_and_leaves_nothing(tmp_path, monkeypatch):
    md5 = fake_omniglot(tmp_path / "served", monkeypatch)
    md5["images_evaluation"] = "f" * 32
    with serve(tmp_path / "served") as url, pytest.raises(DownloadError, match=r"images_evaluation\.zip is corrupt"):
        load_omniglot(tmp_path / "root", download=True, base_url=url, md5=md5)
    assert files_under(tmp_path / "root") == {"images_background.zip"}  # the verified one is kept


def test_omniglot_refuses_a_downloaded_zip_with_an_escaping_entry(tmp_path, monkeypatch):
    md5 = fake_omniglot(tmp_path / "served", monkeypatch)
    files = omniglot_files({"images_background": SMALL_LAYOUT["images_background"]})
    md5["images_background"] = write_zip(
        tmp_path / "served" / "images_background.zip", {**files, "images_background/../../evil.txt": b"x"}
    )
    with serve(tmp_path / "served") as url, pytest.raises(DownloadError, match=r"not a usable zip.*outside"):
        load_omniglot(tmp_path / "work" / "root", download=True, base_url=url, md5=md5)
    assert files_under(tmp_path / "work") == set()
    assert not list(tmp_path.rglob("evil.txt"))


def test_omniglot_with_the_server_down_says_what_to_put_where(tmp_path):
    url = dead_url()
    with pytest.raises(DownloadError) as caught:
        load_omniglot(tmp_path / "root", download=True, base_url=url, timeout=5)
    message = str(caught.value)
    for expected in ("images_background.zip", "images_evaluation.zip", str(tmp_path / "root"), url):
        assert expected in message
    assert files_under(tmp_path) == set()


def test_omniglot_without_a_copy_or_download_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_omniglot(tmp_path)
    message = str(caught.value)
    for expected in (str(tmp_path), omniglot.OMNIGLOT_URL + "images_background.zip", "download=True"):
        assert expected in message
