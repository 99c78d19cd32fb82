"""Verified downloads into the user's data cache.

:func:`download` streams a URL into a temporary file next to its destination,
checks the SHA-256 (and, where a publisher gives one, the MD5) of what
arrived, and only then moves it into place with :func:`os.replace`, so the
destination is either absent or complete and verified, never half written.
A destination that is already there with the right digest is not fetched
again.

:func:`cache_dir` is where built-in data sets live: ``$CONTRASTKIT_DATA`` if
set, else ``$XDG_CACHE_HOME/contrastkit``, else ``~/.cache/contrastkit``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from contrastkit import __version__
from contrastkit.atomic import give_plain_mode
from contrastkit.errors import DataError

DATA_ENV = "CONTRASTKIT_DATA"
TIMEOUT_S = 30.0  # seconds a connect or a single read may stall before we give up
CHUNK_BYTES = 1 << 20  # read and hash 1 MiB at a time


def cache_dir() -> Path:
    """The folder that holds downloaded and cached data sets.

    Returns:
        ``$CONTRASTKIT_DATA`` if set and not empty, else
        ``$XDG_CACHE_HOME/contrastkit``, else ``~/.cache/contrastkit``. The
        folder is not created here.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "contrastkit"


def file_digests(path: Path) -> tuple[str, str]:
    """(SHA-256, MD5) hex digests of a file, read once in chunks.

    Raises:
        OSError: the file cannot be read.
    """
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _matches(path: Path, sha256: str, md5: str | None) -> bool:
    """Whether ``path`` is a file with the expected digests."""
    if not path.is_file():
        return False
    got_sha, got_md5 = file_digests(path)
    return got_sha == sha256.lower() and (md5 is None or got_md5 == md5.lower())


def _by_hand(url: str, dest: Path) -> str:
    """The sentence that tells a user how to place a file themselves."""
    return (
        f"download {url} by hand (a browser or curl) and save it as '{dest.name}' "
        f"in the folder {dest.parent}"
    )


def _stream(
    response: BinaryIO, out: BinaryIO, total: int | None, label: str, progress: bool
) -> tuple[str, str]:
    """Copy ``response`` to ``out`` while hashing; returns (SHA-256, MD5) hex digests."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        file=sys.stderr,
        disable=not progress or total is None,
        leave=False,
    )
    with bar:
        for block in iter(lambda: response.read(CHUNK_BYTES), b""):
            out.write(block)
            sha.update(block)
            md5.update(block)
            bar.update(len(block))
    return sha.hexdigest(), md5.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch ``url`` to ``dest`` and verify it.

    Args:
        url: http(s) (or file) URL of the file.
        dest: where the verified file goes; its folder is created if needed.
        sha256: expected SHA-256 of the file, hex.
        md5: expected MD5 as well, when the publisher states one (checked in
            addition to the SHA-256, never instead of it).
        progress: show a progress bar on stderr when the size is known.
        timeout: seconds a connect or one read may stall.

    Returns:
        ``dest``.

    Raises:
        DataError: the network failed (the message says where to put the file
            by hand), the server answered with an error, or the digest of what
            arrived differs from the expected one (the message names the URL
            and both digests; nothing is left behind).
    """
    dest = Path(dest)
    if _matches(dest, sha256, md5):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        give_plain_mode(fd)  # mkstemp makes it 0600; the cache file gets a plain open()'s mode
    except OSError as e:
        raise DataError(f"cannot write into the folder {dest.parent} for {url}: {e.strerror or e}") from e
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"contrastkit/{__version__}"})
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                got_sha, got_md5 = _stream(response, out, total, dest.name, progress)
        except urllib.error.HTTPError as e:
            e.close()  # the error holds the open response
            raise DataError(
                f"could not download {url}: the server answered HTTP {e.code} {e.reason}; "
                + _by_hand(url, dest)
            ) from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"could not download {url} ({reason}); " + _by_hand(url, dest)) from e
        if got_sha != sha256.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256.lower()}, got {got_sha}; "
                "the download was deleted (a corrupt transfer, or the file changed on the server)"
            )
        if md5 is not None and got_md5 != md5.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected MD5 {md5.lower()}, got {got_md5}; "
                "the download was deleted"
            )
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise DataError(f"cannot move the download of {url} to {dest}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest
