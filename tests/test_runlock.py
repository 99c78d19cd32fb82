"""Tests for contrastkit.runlock: one command at a time writes a run folder.

A second process holds the lock for real (``fcntl.flock`` in a subprocess),
so the tests see what a user running two commands sees: the refused command
stops at once with one line naming the folder and the holder's PID, and a
holder killed with SIGKILL leaves nothing that blocks the next command.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest

from contrastkit.cli import main
from contrastkit.runlock import LOCK_FILE, RunLockedError, holds_lock, run_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")

TINY_ARGS = ("--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100")
HOLDER = """
import sys, time
from contrastkit.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""
TRY_LOCK = """
import sys
from contrastkit.runlock import RunLockedError, run_lock
try:
    with run_lock(sys.argv[1]):
        print("got it")
except RunLockedError as e:
    print(e)
"""


@contextmanager
def holder(folder: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the lock of ``folder`` until the block ends (or the test kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def try_lock_elsewhere(folder: Path) -> str:
    """What another process gets when it tries the lock: "got it", or the error message."""
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(folder)], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_a_second_process_is_refused_with_the_folder_and_the_holders_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with holder(run) as proc:
        with pytest.raises(RunLockedError) as err:
            with run_lock(run):
                pytest.fail("the lock was taken twice")
        msg = str(err.value)
        assert msg.startswith(f"{run}: in use by another contrastkit command (PID {proc.pid}, ")
        assert str(run / LOCK_FILE) in msg and "\n" not in msg
        assert not holds_lock(run)
    with run_lock(run):  # the holder exited: free again
        assert holds_lock(run)


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with holder(run) as proc:
        assert f"PID {proc.pid}" in try_lock_elsewhere(run)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert (run / LOCK_FILE).exists()  # the file stays, with the dead PID; only the kernel's lock counts
        assert try_lock_elsewhere(run) == "got it"
        with run_lock(run):
            assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    entered: list[str] = []

    def in_a_thread() -> None:
        with run_lock(run):  # another thread of the same process: counts up, no error
            entered.append("thread")

    with run_lock(run):
        with run_lock(run / "."):  # commands call each other: label embeds, report evaluates
            with run_lock(tmp_path / ".." / tmp_path.name / "run"):  # the same folder by another name
                assert "PID" in try_lock_elsewhere(run)
        assert holds_lock(run) and "PID" in try_lock_elsewhere(run)  # still held by the outer block
        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join()
        assert entered == ["thread"] and holds_lock(run)
    assert not holds_lock(run) and try_lock_elsewhere(run) == "got it"


def test_the_lock_is_released_on_an_exception(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError):
        with run_lock(run):
            raise ValueError("the command failed")
    assert not holds_lock(run) and try_lock_elsewhere(run) == "got it"


def _sleep_until_set(event: "multiprocessing.synchronize.Event") -> None:
    event.wait(60)


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked while the lock is held; the lock must go when the parent lets go."""
    run = tmp_path / "run"
    ctx = multiprocessing.get_context("fork")
    done = ctx.Event()
    with run_lock(run):
        child = ctx.Process(target=_sleep_until_set, args=(done,))
        child.start()
    try:
        assert child.is_alive() and try_lock_elsewhere(run) == "got it"
    finally:
        done.set()
        child.join(30)


def test_torchrun_ranks_other_than_0_take_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    with run_lock(run):
        assert not holds_lock(run) and try_lock_elsewhere(run) == "got it"
    monkeypatch.setenv("RANK", "0")
    with run_lock(run):
        assert holds_lock(run)


def test_a_folder_this_process_cannot_write_is_read_without_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. ``visualize --out elsewhere`` of a run on a read-only share (simulated: the tests may run as root)."""
    import errno

    import contrastkit.runlock as runlock

    def read_only(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(runlock.os, "open", read_only)
    with run_lock(run):
        assert holds_lock(run)  # counted, so nested calls agree, but no file and no flock
    monkeypatch.undo()
    assert not (run / LOCK_FILE).exists()


@pytest.fixture
def run(trained_copy: Callable[..., Path]) -> Path:
    return trained_copy("locked", *TINY_ARGS)


def test_every_command_that_writes_a_run_folder_is_refused_while_another_holds_it(
    run: Path, fmnist_small: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [
        ["embed", str(run)],
        ["evaluate", str(run)],
        ["label", str(run), "--clusters", "3"],
        ["index", str(run)],
        ["search", str(run), "0"],  # builds the missing index first
        ["visualize", str(run), "--what", "map"],
        ["report", str(run)],
    ]
    new = tmp_path / "new"
    with holder(run) as proc, holder(new) as other:
        for argv in commands:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err == (f"contrastkit {argv[0]}: error: {run}: in use by another contrastkit command "
                           f"(PID {proc.pid}, which holds {run / LOCK_FILE}); wait for it to finish, or write "
                           "into another folder\n"), argv
        data, _ = fmnist_small
        assert main(["train", "--data", str(data), "--out", str(new), "--quiet", *TINY_ARGS]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"contrastkit train: error: {new}: in use by another contrastkit command (PID {other.pid}, ")
        assert err.count("\n") == 1
        assert sorted(p.name for p in new.iterdir()) == [LOCK_FILE]  # nothing written
        assert not (run / "embeddings.npy").exists() and not (run / "labels.csv").exists()
        os.kill(proc.pid, signal.SIGKILL)  # a crashed holder
        proc.wait()
        assert main(["label", str(run), "--clusters", "3", "--no-montage"]) == 0  # embeds first, inside its own lock
    assert (run / "embeddings.npy").is_file() and (run / "labels.csv").is_file()
