"""Tests for contrastkit.data.download against a local HTTP server, and built-in downloads through it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from contrastkit.data import builtin
from contrastkit.data.builtin import BUILTIN_NAMES, REMOTE, RemoteFile, RemoteSet, load_builtin, mirror_env
from contrastkit.data.download import cache_dir, download
from contrastkit.errors import DataError
from test_data_builtin import write_idx_set
from test_data_cifar import make_archive, write_cifar10

SLOW_S = 1.0  # how long the /slow path stalls before answering


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder, records each requested path; /slow stalls."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/slow":
            time.sleep(SLOW_S)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # e.g. the broken pipe when a client gave up on /slow


@dataclass
class Server:
    root: Path  # the served folder
    url: str  # base URL, ends with "/"
    hits: list[str]  # paths requested so far


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    httpd = _QuietServer(
        ("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(root))
    )
    httpd.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        yield Server(root, url, httpd.hits)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _serve(server: Server, name: str, content: bytes) -> tuple[str, str]:
    """Put a file on the server; returns its (SHA-256, MD5)."""
    (server.root / name).write_bytes(content)
    return hashlib.sha256(content).hexdigest(), hashlib.md5(content).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- download()


def test_download_verifies_and_moves_into_place(server: Server, tmp_path: Path) -> None:
    content = b"contrastkit" * 1000
    sha, md5 = _serve(server, "file.bin", content)
    dest = tmp_path / "cache" / "sub" / "file.bin"
    assert download(server.url + "file.bin", dest, sha, md5=md5, progress=False) == dest
    assert dest.read_bytes() == content
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no temporary file left
    assert server.hits == ["/file.bin"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_downloaded_file_gets_the_mode_of_a_plain_open(server: Server, tmp_path: Path, umask: int, mode: int) -> None:
    sha, _ = _serve(server, "file.bin", b"data" * 100)
    before = os.umask(umask)
    try:
        dest = download(server.url + "file.bin", tmp_path / "cache" / "file.bin", sha, progress=False)
    finally:
        os.umask(before)
    assert dest.stat().st_mode & 0o777 == mode  # not mkstemp's 0600 whatever the umask


def test_progress_bar_goes_to_stderr(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sha, _ = _serve(server, "file.bin", bytes(5000))
    download(server.url + "file.bin", tmp_path / "a.bin", sha, progress=True)
    captured = capsys.readouterr()
    assert "a.bin" in captured.err and captured.out == ""
    download(server.url + "file.bin", tmp_path / "b.bin", sha, progress=False)
    assert capsys.readouterr().err == ""


def test_wrong_checksum_leaves_nothing_behind(server: Server, tmp_path: Path) -> None:
    _, _ = _serve(server, "file.bin", b"the real content")
    actual = hashlib.sha256(b"the real content").hexdigest()
    expected = "0" * 64
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DataError) as e:
        download(server.url + "file.bin", dest, expected, progress=False)
    msg = str(e.value)
    assert server.url + "file.bin" in msg and expected in msg and actual in msg
    assert list(dest.parent.iterdir()) == []


def test_wrong_md5_is_a_mismatch_too(server: Server, tmp_path: Path) -> None:
    sha, md5 = _serve(server, "file.bin", b"abc")
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match=f"expected MD5 {'f' * 32}, got {md5}"):
        download(server.url + "file.bin", dest, sha, md5="f" * 32, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]


def test_404_names_the_url_and_where_to_put_the_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "missing.gz"
    with pytest.raises(DataError) as e:
        download(server.url + "missing.gz", dest, "0" * 64, progress=False)
    msg = str(e.value)
    assert "HTTP 404" in msg and server.url + "missing.gz" in msg
    assert "'missing.gz'" in msg and str(dest.parent) in msg
    assert list(dest.parent.iterdir()) == []


def test_network_error_says_how_to_place_the_file_by_hand(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/data.tar.gz"
    dest = tmp_path / "cache" / "data.tar.gz"
    with pytest.raises(DataError) as e:
        download(url, dest, "0" * 64, progress=False)
    msg = str(e.value)
    assert url in msg and "by hand" in msg and "'data.tar.gz'" in msg and str(dest.parent) in msg
    assert list(dest.parent.iterdir()) == []


def test_stalled_server_times_out(server: Server, tmp_path: Path) -> None:
    sha, _ = _serve(server, "slow", b"late")
    start = time.perf_counter()
    with pytest.raises(DataError, match="timed out"):
        download(server.url + "slow", tmp_path / "slow", sha, progress=False, timeout=0.2)
    assert time.perf_counter() - start < SLOW_S
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]


def test_present_file_with_right_digest_is_not_fetched_again(server: Server, tmp_path: Path) -> None:
    sha, md5 = _serve(server, "file.bin", b"payload")
    dest = tmp_path / "file.bin"
    download(server.url + "file.bin", dest, sha, md5=md5, progress=False)
    download(server.url + "file.bin", dest, sha, md5=md5, progress=False)
    assert server.hits == ["/file.bin"]
    dest.write_bytes(b"corrupted")  # a damaged copy is replaced
    download(server.url + "file.bin", dest, sha, progress=False)
    assert server.hits == ["/file.bin", "/file.bin"] and dest.read_bytes() == b"payload"


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONTRASTKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "data"
    monkeypatch.delenv("CONTRASTKIT_DATA")
    assert cache_dir() == tmp_path / "xdg" / "contrastkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "contrastkit"


# ---------------------------------------------------------------- built-ins through a local mirror


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$CONTRASTKIT_DATA is an empty folder, no system folders, no mirror variables."""
    data = tmp_path / "data"
    monkeypatch.setenv("CONTRASTKIT_DATA", str(data))
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", {})
    for name in BUILTIN_NAMES:
        monkeypatch.delenv(mirror_env(name), raising=False)
    return data


def _register(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path, files: list[str],
              base_urls: tuple[str, ...] | None = None) -> None:
    """Patch the registry entry of ``name`` with the digests of the files in ``folder``."""
    remote = tuple(
        RemoteFile(f, hashlib.sha256((folder / f).read_bytes()).hexdigest(),
                   hashlib.md5((folder / f).read_bytes()).hexdigest())
        for f in files
    )
    monkeypatch.setitem(REMOTE, name, RemoteSet(base_urls=base_urls or REMOTE[name].base_urls, files=remote))


FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_fashion_mnist_downloads_from_the_mirror(
    server: Server, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = write_idx_set(server.root, n_train=5, n_test=3, size=28)
    _register(monkeypatch, "fashion-mnist", server.root, FASHION_FILES)
    monkeypatch.setenv("CONTRASTKIT_MIRROR_FASHION_MNIST", server.url.rstrip("/"))
    splits = load_builtin("fashion-mnist", progress=False)
    assert splits.train.images.shape == (5, 1, 28, 28) and splits.test.images.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(splits.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert splits.train.class_names == builtin.FASHION_MNIST_CLASSES
    assert sorted(p.name for p in (empty_cache / "fashion-mnist").iterdir()) == sorted(FASHION_FILES)
    assert sorted(server.hits) == sorted("/" + f for f in FASHION_FILES)
    load_builtin("fashion-mnist", progress=False)  # found in the cache: no new request
    assert len(server.hits) == 4


def test_fashion_mnist_tampered_mirror_is_refused(
    server: Server, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_set(server.root, n_train=5, n_test=3)
    _register(monkeypatch, "fashion-mnist", server.root, FASHION_FILES)
    write_idx_set(server.root, n_train=5, n_test=3, seed=1)  # the mirror now serves other data
    monkeypatch.setenv(mirror_env("fashion-mnist"), server.url)
    with pytest.raises(DataError, match="checksum mismatch for " + server.url + "train-images"):
        load_builtin("fashion-mnist", progress=False)
    assert list((empty_cache / "fashion-mnist").iterdir()) == []


def test_next_base_url_is_tried_when_one_fails(
    server: Server, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx_set(server.root, n_train=4, n_test=2)
    dead = f"http://127.0.0.1:{_closed_port()}/"
    _register(monkeypatch, "mnist", server.root, FASHION_FILES, base_urls=(dead, server.url))
    splits = load_builtin("mnist", progress=False)
    assert len(splits.train) == 4 and splits.train.class_names == [str(i) for i in range(10)]


def test_cifar10_downloads_extracts_and_loads(
    server: Server, empty_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    x_tr, y_tr, _, _ = write_cifar10(tmp_path / "src" / "cifar-10-batches-py", n_per_batch=2)
    make_archive(tmp_path / "src", "cifar-10-batches-py", server.root / "cifar-10-python.tar.gz")
    _register(monkeypatch, "cifar10", server.root, ["cifar-10-python.tar.gz"])
    monkeypatch.setenv(mirror_env("cifar10"), server.url)
    splits = load_builtin("cifar10", progress=False)
    assert splits.train.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(splits.train.images.numpy().reshape(10, 3072), x_tr)
    np.testing.assert_array_equal(splits.train.labels.numpy(), y_tr)
    assert (empty_cache / "cifar10" / "cifar-10-python.tar.gz").is_file()
    assert (empty_cache / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert server.hits == ["/cifar-10-python.tar.gz"]
    load_builtin("cifar10", progress=False)  # the extracted folder is found: no new request
    assert len(server.hits) == 1


def test_registry_digests_are_well_formed() -> None:
    for name, remote in REMOTE.items():
        assert remote.files and remote.base_urls, name
        for f in remote.files:
            assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0, (name, f.name)
            assert len(f.md5) == 32 and int(f.md5, 16) >= 0, (name, f.name)
        assert all(u.endswith("/") for u in remote.base_urls)
