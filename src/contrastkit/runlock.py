"""One command at a time writes a run folder: ``RUN/.lock``, held with ``fcntl.flock``.

Two ``contrastkit train --out RUN`` (or ``embed``, ``label``, ``index``,
``evaluate``, ``visualize``, ``report``) started together would otherwise both
run and overwrite each other's checkpoints, logs and outputs. Every library
function that writes a run folder holds :func:`run_lock` while it works; a
second command on the same folder stops at once with a
:class:`RunLockedError` naming the folder and the PID of the holder.

- The lock is the kernel's ``flock`` on ``RUN/.lock``, not the file: the
  kernel releases it when the holder exits, is killed (even by SIGKILL) or
  crashes, so a lock never outlives its process. The file stays (it holds
  the last holder's PID, read only while someone holds the lock); deleting it
  would let two processes lock two different files.
- Re-entrant within one process: commands call each other (``label`` and
  ``index`` embed first when the embeddings are missing, ``report`` embeds,
  evaluates and draws), so a nested :func:`run_lock` on a folder this process
  already holds only counts up.
- A process forked while holding a lock (DataLoader workers) does not hold
  it: the child closes its copy of the descriptor at once, so the lock goes
  when the parent releases it, not when the last worker exits.
- Under torchrun only the rank that writes takes it (:func:`rank0_lock`:
  rank 0 of the process group; the others learn whether it got the lock), so
  the ranks of one launch never lock each other out. :func:`run_lock` alone
  is taken by every process except those with ``RANK`` set to a non-zero
  value.
- Platforms without ``fcntl`` (Windows), file systems without ``flock``, and
  folders this process cannot write (it cannot overwrite anything there
  either, e.g. ``visualize --out`` of a read-only run) run without the lock.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from contrastkit.errors import ContrastkitError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
PID_READ_TRIES = 20  # a holder writes its PID right after locking: retry an empty file this often, 10 ms apart

_guard = threading.Lock()
_held: dict[Path, list[int]] = {}  # resolved folder -> [fd, depth]


class RunLockedError(ContrastkitError):
    """Another process holds the run folder's lock: the message names the folder and that process's PID."""


def _forget_in_child() -> None:
    """After a fork: close the inherited lock descriptors (the parent keeps its locks) and hold nothing."""
    global _guard
    _guard = threading.Lock()  # the parent's may have been held by another thread at the fork
    for fd, _ in _held.values():
        try:
            os.close(fd)  # not flock(LOCK_UN): that would release the parent's lock
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _holder_pid(fd: int) -> str:
    """The PID written in the lock file by its holder ("unknown" if it has not written it yet)."""
    for _ in range(PID_READ_TRIES):
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def _acquire(folder: Path, shown: Path) -> int:
    """Open and lock ``folder/.lock`` without waiting; its descriptor, or -1 where locking is not possible.

    ``shown`` is the folder as the caller named it, for the messages.
    """
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return -1  # a folder this process cannot write: it cannot overwrite anything there either
        raise ContrastkitError(f"{shown}: cannot open the lock file {path} ({e.strerror or e})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            pid = _holder_pid(fd)
            os.close(fd)
            raise RunLockedError(
                f"{shown}: in use by another contrastkit command (PID {pid}, which holds {shown / LOCK_FILE}); "
                "wait for it to finish, or write into another folder"
            ) from None
        os.close(fd)
        return -1  # e.g. ENOLCK / EOPNOTSUPP: a file system without flock
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # e.g. a full disk: the lock holds all the same, a refused command says "PID unknown"
    return fd


def _non_writing_rank() -> bool:
    """Whether torchrun started this process as a rank other than 0 (``RANK`` in the environment)."""
    rank = os.environ.get("RANK", "")
    return rank.strip() not in ("", "0")


@contextmanager
def run_lock(folder: str | Path, *, writer: bool | None = None) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if missing) for the block; re-entrant in one process.

    Args:
        folder: the run folder (or any output folder a command writes).
        writer: whether this process writes the folder; False takes no lock.
            Default: every process but a torchrun rank other than 0.

    Raises:
        RunLockedError: another process holds it (the message names the
            folder and that process's PID); nothing was waited for.
    """
    if writer is None:
        writer = not _non_writing_rank()
    if not writer or fcntl is None:
        yield
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ContrastkitError(f"{folder}: cannot create the folder ({e.strerror or e})") from e
    key = folder.resolve()
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            _held[key] = entry = [_acquire(key, folder), 1]
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0 and _held.get(key) is entry:
                del _held[key]
                if entry[0] >= 0:
                    os.close(entry[0])  # closing the only descriptor releases the flock


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds the lock of ``folder``."""
    with _guard:
        return Path(folder).resolve() in _held


@contextmanager
def rank0_lock(folder: str | Path) -> Iterator[None]:
    """:func:`run_lock` on rank 0 of the process group only; every rank raises if rank 0 could not get it.

    In a single process (no process group) this is :func:`run_lock`. With
    one, rank 0 tries the lock and broadcasts the outcome, so the other ranks
    stop with the same :class:`RunLockedError` instead of waiting for rank 0
    in a collective.
    """
    from contrastkit import distributed

    main = distributed.rank() == 0
    with ExitStack() as stack:
        failure: tuple[bool, str] | None = None  # (locked by another process, message)
        if main:
            try:
                stack.enter_context(run_lock(folder, writer=True))
            except ContrastkitError as e:
                failure = (isinstance(e, RunLockedError), str(e))
        failure = distributed.broadcast_object(failure)  # the identity in a single process
        if failure is not None:
            raise (RunLockedError if failure[0] else ContrastkitError)(failure[1])
        yield
