"""Atomic file writes: a crash or a full disk never leaves a half-written file.

Every output (checkpoints, logs, embeddings, labels, indexes, figures,
reports) is written to a temporary file in the destination folder, flushed
to disk, then renamed over the destination with :func:`os.replace`, which is
atomic on POSIX and Windows. If anything fails (a full disk, an I/O error, a
folder that cannot be written, an exception while serialising), the
temporary file is removed, the previous file (if any) is left intact, and a
:class:`~contrastkit.errors.ContrastkitError` names the file and the problem
("the disk is full" for ENOSPC / EDQUOT, "an I/O error" for EIO).

:class:`AtomicFiles` writes several files that belong together (for example
embeddings.npy, items.csv and meta.json): every temporary file is written and
flushed first, and only then are they renamed, so a write error replaces none
of them.

A temporary file from :func:`tempfile.mkstemp` is private (mode 0600); it is
given the mode a plain ``open()`` would have given the file, ``0666 & ~umask``
(:func:`plain_file_mode`), before anything is written, so outputs are as
readable as any other file the user creates.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

from contrastkit.errors import ContrastkitError

_PROBLEMS = {
    code: problem
    for code, problem in (
        (errno.ENOSPC, "the disk is full"),
        (getattr(errno, "EDQUOT", None), "the disk quota is exceeded"),  # not on every platform
        (errno.EIO, "an I/O error"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
    )
    if code is not None
}


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the platform allows (Linux: /proc/self/status).

    Elsewhere it is set and restored at once (``os.umask`` is the only way to
    read it), under a lock so that two threads never interleave the two calls.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def give_plain_mode(fd: int) -> None:
    """Give the open file ``fd`` (a private temporary file) the mode of a plainly created one.

    A file system without Unix modes (FAT, some network shares) that refuses
    the change keeps its own; the write still goes through.
    """
    if hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, plain_file_mode())
        except OSError:
            pass


def write_error(path: Path, e: OSError) -> ContrastkitError:
    """The error for a failed write of ``path``: names the file, the problem, and that nothing was replaced."""
    problem = _PROBLEMS.get(e.errno or 0, "")
    detail = e.strerror or str(e) or type(e).__name__
    what = f"{problem} ({detail})" if problem else detail
    return ContrastkitError(f"{path}: could not write: {what}; the previous version (if any) is intact")


def _remove(tmp: str) -> None:
    """Remove a temporary file, ignoring one that is already gone or cannot be removed."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk where the platform allows it."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _temp_for(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file next to ``path`` (its folder is created first)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from e
    give_plain_mode(fd)  # mkstemp makes it 0600
    return fd, tmp


@contextmanager
def _temp_file(path: Path) -> Iterator[tuple[BinaryIO, str]]:
    """A flushed and fsynced temporary file for ``path``; removed again if the block fails."""
    fd, tmp = _temp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise


def _replace(tmp: str, path: Path) -> None:
    """Rename ``tmp`` over ``path``; on failure remove ``tmp`` and raise the write error."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise write_error(path, e) from e
    _fsync_folder(path.parent)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces ``path`` when the block exits cleanly.

    Raises:
        ContrastkitError: the file could not be written (the message names it
            and the problem); the previous ``path`` is untouched.
    """
    path = Path(path)
    with _temp_file(path) as (f, tmp):
        yield f
    _replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no pickle inside)."""
    with atomic_open(path) as f:
        np.save(f, array, allow_pickle=False)


class AtomicFiles:
    """Write several files that belong together: all are replaced, or (on a write error) none.

    Use as a context manager; each ``write_*`` call writes and fsyncs a
    temporary file at once, and the renames happen when the block exits
    without an exception. If a write fails or the block raises, every
    temporary file is removed and every destination keeps its previous
    version.

    Example::

        with AtomicFiles() as out:
            out.save_npy(folder / "embeddings.npy", features)
            out.write_text(folder / "items.csv", rows)
    """

    def __init__(self) -> None:
        """Start with nothing written."""
        self._pending: list[tuple[str, Path]] = []

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()
            return
        self.commit()

    @contextmanager
    def open(self, path: str | Path) -> Iterator[BinaryIO]:
        """A binary file for ``path``, renamed into place at :meth:`commit`."""
        path = Path(path)
        with _temp_file(path) as (f, tmp):
            yield f
        self._pending.append((tmp, path))

    def write_bytes(self, path: str | Path, data: bytes) -> None:
        """Stage ``data`` for ``path``."""
        with self.open(path) as f:
            f.write(data)

    def write_text(self, path: str | Path, text: str) -> None:
        """Stage UTF-8 ``text`` for ``path``."""
        self.write_bytes(path, text.encode("utf-8"))

    def save_npy(self, path: str | Path, array: np.ndarray) -> None:
        """Stage ``np.save`` of ``array`` (no pickle) for ``path``."""
        with self.open(path) as f:
            np.save(f, array, allow_pickle=False)

    def commit(self) -> None:
        """Rename every staged file into place (each rename is atomic)."""
        pending, self._pending = self._pending, []
        for i, (tmp, path) in enumerate(pending):
            try:
                _replace(tmp, path)
            except ContrastkitError:
                for later, _ in pending[i + 1 :]:
                    _remove(later)
                raise

    def abort(self) -> None:
        """Remove every staged temporary file; the destinations are untouched."""
        pending, self._pending = self._pending, []
        for tmp, _ in pending:
            _remove(tmp)
