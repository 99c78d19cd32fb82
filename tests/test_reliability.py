"""Reliability and security: full disks, paths named in data files, bad input to every command.

- Write errors: a full disk (ENOSPC), an I/O error (EIO) or an unwritable
  folder while writing a checkpoint, embeddings, labels, a config, a figure
  or a report leaves the previous file intact, leaves no temporary file, and
  says which file and what went wrong (simulated by failing the real write
  calls, since a test cannot fill a real disk).
- Paths: names inside data files (archive members, items.csv sources,
  labels-CSV items) never make a command read or write outside its folders;
  an audit hook records every file the commands open.
- Bad input: empty and one-class data sets, bad option values of every
  command, malformed items.csv / labels.csv / embeddings, and --skip-bad
  from the command line to the saved run.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import contrastkit.atomic as atomic
from contrastkit.atomic import AtomicFiles, atomic_open, atomic_write_bytes, atomic_write_text
from contrastkit.checkpoint import save_checkpoint
from contrastkit.cli import build_parser, main
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.embedding import read_embeddings, write_embeddings
from contrastkit.errors import ConfigError, ContrastkitError, DataError
from contrastkit.label import write_labels_csv
from contrastkit.paths import join_inside, relative_parts
from contrastkit.visualize import read_label_groups

# The options of test_label's and test_index's run: trained once per session and shared.
TINY_ARGS = ("--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100")


# ============================================================================ write errors


class _FailingFile:
    """A file object that writes ``budget`` bytes, then fails every write with ``code``."""

    def __init__(self, f: Any, budget: int, code: int) -> None:
        self._f, self._budget, self._code = f, budget, code

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._budget:
            self._f.write(bytes(memoryview(data).cast("B")[: self._budget]))  # a partial write, as a full disk does
            self._budget = 0
            raise OSError(self._code, os.strerror(self._code))
        self._budget -= n
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_FailingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def fail_writes(monkeypatch: pytest.MonkeyPatch, target: str, code: int = errno.ENOSPC, budget: int = 10) -> None:
    """Make writes to the temporary file of every destination named ``target`` fail with ``code``."""
    names: dict[int, str] = {}
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = name
        return fd, name

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = real_fdopen(fd, *args, **kwargs)
        if Path(names.get(fd, "")).name.startswith(f".{target}."):
            return _FailingFile(f, budget, code)
        return f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def _checkpoint(path: Path, epoch: int) -> None:
    save_checkpoint(path, {"config": TrainConfig().to_dict(), "data": {}, "model": {"w": torch.full((3,), float(epoch))},
                           "epoch": epoch})


WRITERS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "checkpoint": ("last.pt", _checkpoint),
    "labels": ("labels.csv", lambda p, v: write_labels_csv(
        p, ["a.png", "b.png"], np.array([v, 0]), np.array([0.5, 1.0]), np.array([v, 0]))),
    "config": ("config.json", lambda p, v: TrainConfig(epochs=v + 1).save(p)),
    "figure": ("map.png", lambda p, v: atomic_write_bytes(p, bytes([v]) * 5000)),
    "report": ("report.html", lambda p, v: atomic_write_text(p, f"<p>{v}</p>" * 100)),
    "index": ("index.faiss", lambda p, v: _through_atomic_open(p, bytes([v]) * 3000)),
}


def _through_atomic_open(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:  # the way label montages, search montages and indexes are written
        for i in range(0, len(data), 100):
            f.write(data[i : i + 100])


@pytest.mark.parametrize("what", sorted(WRITERS))
@pytest.mark.parametrize("code, problem", [(errno.ENOSPC, "the disk is full"), (errno.EIO, "an I/O error")])
def test_a_failed_write_keeps_the_previous_file_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, code: int, problem: str
) -> None:
    name, write = WRITERS[what]
    path = tmp_path / "run" / name
    write(path, 1)
    before = path.read_bytes()
    fail_writes(monkeypatch, name, code)
    with pytest.raises(ContrastkitError) as err:
        write(path, 2)
    msg = str(err.value)
    assert msg.startswith(f"{path}: could not write: {problem}") and "previous version (if any) is intact" in msg
    assert "\n" not in msg
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    monkeypatch.undo()
    write(path, 2)  # space again: the write goes through
    assert path.read_bytes() != before and leftovers(tmp_path) == []


def _splits(n: int, label: int) -> DataSplits:
    def ds(split: str, k: int) -> ImageDataset:
        return ImageDataset(images=torch.zeros(k, 1, 2, 2, dtype=torch.uint8), labels=torch.full((k,), label),
                            class_names=["a", "b"], sources=[f"{split}{i}.png" for i in range(k)], name=split)
    return DataSplits(train=ds("train", n), test=ds("test", 1))


@pytest.mark.parametrize("failing", ["embeddings.npy", "items.csv", "meta.json"])
def test_embeddings_items_and_meta_are_replaced_together_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    write_embeddings(tmp_path, _splits(3, 0), torch.zeros(3, 4), torch.zeros(1, 4), {"run": "v1"})
    before = {n: (tmp_path / n).read_bytes() for n in ("embeddings.npy", "items.csv", "meta.json")}
    fail_writes(monkeypatch, failing)
    with pytest.raises(ContrastkitError, match=f"{failing}: could not write: the disk is full"):
        write_embeddings(tmp_path, _splits(5, 1), torch.ones(5, 4), torch.ones(1, 4), {"run": "v2"})
    assert {n: (tmp_path / n).read_bytes() for n in before} == before and leftovers(tmp_path) == []
    emb = read_embeddings(tmp_path)  # still the consistent first version
    assert emb.features.shape == (4, 4) and emb.meta["run"] == "v1"


def test_rename_fsync_and_temp_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")
    for name, code, problem in (("replace", errno.EIO, "an I/O error"), ("fsync", errno.EIO, "an I/O error"),
                                ("mkstemp", errno.ENOSPC, "the disk is full"),
                                ("mkstemp", errno.EACCES, "permission denied"),
                                ("mkstemp", errno.EROFS, "the file system is read-only")):
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise OSError(code, os.strerror(code))

        with monkeypatch.context() as m:
            m.setattr(tempfile if name == "mkstemp" else os, name, broken)
            with pytest.raises(ContrastkitError, match=f"metrics.json: could not write: {problem}"):
                atomic_write_text(path, "new")
        assert path.read_text() == "old" and leftovers(tmp_path) == [], name


def test_an_exception_while_serialising_removes_the_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(ValueError, match="not serialisable"):
        with atomic_open(path) as f:
            f.write(b"half")
            raise ValueError("not serialisable")
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with AtomicFiles() as out:
            out.write_text(tmp_path / "a.txt", "a")
            raise RuntimeError("later step failed")
    assert not (tmp_path / "a.txt").exists() and leftovers(tmp_path) == []


def _files(method: str) -> Callable[[Path], None]:
    """A writer through one staging method of AtomicFiles."""
    def write(path: Path) -> None:
        with AtomicFiles() as out:
            if method == "open":
                with out.open(path) as f:
                    f.write(b"x")
            elif method == "save_npy":
                out.save_npy(path, np.zeros(3, np.float32))
            else:
                getattr(out, method)(path, b"x" if method == "write_bytes" else "x")
    return write


def _written_by_atomic_open(path: Path) -> None:
    with atomic_open(path) as f:
        f.write(b"x")


# Every writer of contrastkit.atomic, and the torch.save-based checkpoint writers that go through it.
ATOMIC_WRITERS: dict[str, Callable[[Path], None]] = {
    "atomic_open": _written_by_atomic_open,
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"x"),
    "atomic_write_text": lambda p: atomic_write_text(p, "x"),
    "atomic_torch_save": lambda p: atomic.atomic_torch_save(p, {"w": torch.zeros(2)}),
    "atomic_save_npy": lambda p: atomic.atomic_save_npy(p, np.zeros(3, np.float32)),
    "AtomicFiles.open": _files("open"),
    "AtomicFiles.write_bytes": _files("write_bytes"),
    "AtomicFiles.write_text": _files("write_text"),
    "AtomicFiles.save_npy": _files("save_npy"),
    "save_checkpoint": lambda p: _checkpoint(p, 1),
}


@pytest.mark.parametrize("read_from", ["/proc", "os.umask"])
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("writer", sorted(ATOMIC_WRITERS))
def test_atomic_writes_get_the_mode_of_a_plain_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, umask: int, mode: int, read_from: str
) -> None:
    if read_from == "os.umask":  # where /proc/self/status is missing: set and restore the umask
        def no_proc(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOENT, "no /proc here")

        monkeypatch.setattr(atomic, "open", no_proc, raising=False)
    before = os.umask(umask)
    try:
        ATOMIC_WRITERS[writer](tmp_path / "out")
        with open(tmp_path / "plain", "w"):
            pass
        assert os.umask(umask) == umask  # reading it left it as it was
    finally:
        os.umask(before)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode == (tmp_path / "plain").stat().st_mode & 0o777
    assert leftovers(tmp_path) == []


# ============================================================================ paths in data files


@pytest.mark.parametrize(
    "name, why",
    [
        ("/etc/passwd", "an absolute path"),
        ("C:\\Windows\\win.ini", "an absolute path"),
        ("\\\\server\\share\\x.png", "an absolute path"),
        ("../secret.png", "'..' would leave the folder"),
        ("cat/../../secret.png", "'..' would leave the folder"),
        ("cat\\..\\..\\secret.png", "'..' would leave the folder"),
        ("a\x00b.png", "NUL byte"),
        ("", "empty path"),
    ],
)
def test_paths_that_could_leave_the_folder_are_refused(name: str, why: str) -> None:
    with pytest.raises(DataError, match=f"items.csv, line 7: .*{why}" if name else "items.csv, line 7: empty path"):
        relative_parts(name, "items.csv, line 7")


def test_join_inside_follows_links_but_not_out(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert relative_parts("./cat//1.png", "w") == ("cat", "1.png")
    assert join_inside(root, "cat/1.png", "w") == root / "cat" / "1.png"
    (root / "inner").symlink_to(root / "cat")  # a link that stays inside is fine
    assert join_inside(root, "inner/1.png", "w") == root / "inner" / "1.png"
    (root / "escape").symlink_to(outside)
    with pytest.raises(DataError, match=r"labels.csv, line 3: refused path 'escape/x.png': it leads outside"):
        join_inside(root, "escape/x.png", "labels.csv, line 3")


def test_cifar_archive_cannot_write_through_a_link_in_the_destination(tmp_path: Path) -> None:
    import io
    import tarfile

    from contrastkit.data.cifar import extract_archive

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"abc"))
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "cifar-10-batches-py").symlink_to(outside)  # planted before the extraction
    with pytest.raises(DataError, match="archive member: refused path 'cifar-10-batches-py/data_batch_1': it leads outside"):
        extract_archive(archive, dest)
    assert list(outside.iterdir()) == []


class _OpenedFiles:
    """Every path opened by this process while active (a sys.addaudithook hook cannot be removed, so it is gated)."""

    active: "_OpenedFiles | None" = None
    installed = False

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __enter__(self) -> "_OpenedFiles":
        if not _OpenedFiles.installed:
            sys.addaudithook(_OpenedFiles._hook)
            _OpenedFiles.installed = True
        _OpenedFiles.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        _OpenedFiles.active = None

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        watcher = _OpenedFiles.active
        if watcher is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            watcher.paths.append(os.fsdecode(args[0]))


@pytest.fixture(scope="module")
def run(trained_copy: Callable[..., Path]) -> Path:
    run = trained_copy("reliability", *TINY_ARGS)
    assert main(["embed", str(run)]) == 0
    return run


def test_crafted_items_csv_and_labels_csv_read_and_write_nothing_outside(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(secret)
    rel = os.path.relpath(secret, run)
    rows = list(csv.DictReader(open(run / "items.csv")))
    rows[0]["source"], rows[1]["source"], rows[2]["source"] = rel, str(secret), "../" * 12 + "etc/passwd"
    with open(run / "items.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seeds = tmp_path / "seeds.csv"  # items are matched against items.csv, never opened
    seeds.write_text(f"item,label\n{rel},T-shirt/top\n{secret},Trouser\n3,T-shirt/top\n4,Trouser\n")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"item,label\n{rel},T-shirt/top\n{outside / 'other.png'},Trouser\n")
    before = sorted(p for p in tmp_path.rglob("*"))
    with _OpenedFiles() as opened:
        assert main(["label", str(run), "--clusters", "3"]) == 0
        assert "items.csv sources differ" in capsys.readouterr().out  # montages skipped, not read from the paths
        assert main(["search", str(run), "0", "--top-k", "3", "--montage", str(run / "search.png")]) == 2
        assert "sources differ" in capsys.readouterr().err
        assert main(["visualize", str(run), "--what", "neighbours"]) == 0
        assert "sources differ" in capsys.readouterr().out
        assert main(["label", str(run), "--seed-labels", str(seeds)]) == 0  # the crafted sources are item names here
        assert main(["label", str(run), "--seed-labels", str(unknown)]) == 2
        assert "unknown.csv, line 3: unknown item" in capsys.readouterr().err
    names = [os.path.realpath(p) for p in opened.paths]
    assert opened.paths and not [p for p in names if p.startswith(str(outside)) or p == "/etc/passwd"]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written outside the run folder
    assert not (run / "search.png").exists()


# ============================================================================ bad input


def _cifar_folder(folder: Path, n_train: int, n_test: int) -> Path:
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
        d = {b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}
        (batches / name).write_bytes(pickle.dumps(d, protocol=5))  # protocol 2 stores b"" as builtins.bytes()
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    return batches


def _empty(kind: str, folder: Path) -> Path:
    """A data set of one format with no images; returns the path to load."""
    if kind == "idx":
        path = folder / "e-images-idx3-ubyte"
        path.write_bytes(bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        return path
    if kind == "npz":
        np.savez(folder / "e.npz", images=np.zeros((0, 28, 28), np.uint8))
        return folder / "e.npz"
    if kind == "npz-test":
        np.savez(folder / "t.npz", images=np.zeros((4, 8, 8), np.uint8), test_images=np.zeros((0, 8, 8), np.uint8))
        return folder / "t.npz"
    if kind == "folder":
        (folder / "imgs" / "cat").mkdir(parents=True)
        (folder / "imgs" / "cat" / "notes.txt").write_text("no images here")
        return folder / "imgs"
    if kind == "folder-all-bad":
        (folder / "imgs").mkdir()
        for i in range(3):
            (folder / "imgs" / f"{i}.png").write_bytes(b"")
        return folder / "imgs"
    if kind == "cifar-train":
        return _cifar_folder(folder, 0, 2)
    assert kind == "cifar-test"
    return _cifar_folder(folder, 2, 0)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("idx", r"e-images-idx3-ubyte: IDX images file holds no pixels \(shape 0 x 28 x 28\)"),
        ("npz", r"e\.npz: images: holds no pixels"),
        ("npz-test", r"t\.npz: test_images: holds no pixels"),
        ("folder", r"imgs: unrecognised data format; accepted formats:"),
        ("folder-all-bad", r"imgs: 3 of 3 image files cannot be read: 0\.png \(empty file\).*too few readable"),
        ("cifar-train", r"cifar-10-batches-py: the training batches \(data_batch_1\) hold no images"),
        ("cifar-test", r"test_batch: the test batch holds no images"),
    ],
)
def test_empty_data_sets_are_refused_naming_the_file(tmp_path: Path, kind: str, message: str) -> None:
    path = _empty(kind, tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path), skip_bad=True)


def test_one_class_data_set_trains_without_labels_and_the_supervised_baseline_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = np.random.default_rng(0).integers(0, 256, (36, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "one.npz", images=images, labels=np.zeros(36, np.int64))
    common = ["--data", str(tmp_path / "one.npz"), "--epochs", "1", "--batch-size", "16", "--quiet",
              "--monitor-bank", "32", "--monitor-queries", "4", "--device", "cpu"]
    assert main(["train", "--out", str(tmp_path / "ssl"), *common]) == 0
    assert "best kNN monitor" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "sup"), "--method", "supervised", *common]) == 2
    assert "needs at least 2 classes, got 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["label", "{run}", "--clusters", "1"], "--clusters must be >= 2, got 1"),
        (["label", "{run}", "--clusters", "2", "--neighbors", "0"], "--neighbors must be >= 1"),
        (["label", "{run}", "--clusters", "2", "--review", "-1"], "--review must be >= 0"),
        (["search", "{run}", "0", "--top-k", "0"], "--top-k must be >= 1"),
        (["index", "{run}", "--target-recall", "1.5"], "--target-recall must be in (0, 1]"),
        (["visualize", "{run}", "--what", "pie"], "choose from map,neighbours,saliency,curves"),
        (["visualize", "{run}", "--max-points", "2"], "--max-points must be >= 5"),
        (["report", "{run}", "--max-points", "0"], "--max-points must be >= 5"),
        (["embed", "{run}", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", "--knn-k", "0"], "--knn-k must be > 0"),
        (["train", "--lr", "-0.1"], "--lr must be > 0"),
        (["train", "--batch-size", "1"], "--batch-size must be at least 2"),
        (["train", "--image-size", "4"], "--image-size must be at least 8"),
    ],
)
def test_bad_values_of_every_command_fail_before_any_work(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    assert main([a.format(run=empty_run) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert list(empty_run.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["train", "--optimizer", "sgd"], "'adamw', 'lars'"),
        (["train", "--device", "tpu"], "'auto', 'cpu', 'cuda', 'mps'"),
        (["train", "--precision", "int4"], "'auto', 'bf16', 'fp16', 'fp32'"),
        (["label", "r", "--clusters", "2", "--algorithm", "dbscan"], "'kmeans', 'spectral'"),
        (["index", "r", "--kind", "lsh"], "'flat'"),
        (["visualize", "r", "--colour", "rainbow"], "'auto', 'label', 'cluster'"),
    ],
)
def test_unknown_choices_list_the_valid_values(argv: list[str], valid: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and valid in capsys.readouterr().err


def _write_items(folder: Path, rows: list[str], features: np.ndarray | None = None, meta: Any = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", features if features is not None else np.zeros((len(rows), 3), np.float32))
    (folder / "items.csv").write_text("index,split,source,label\n" + "".join(r + "\n" for r in rows))
    if meta is not None:
        (folder / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    "rows, features, meta, message",
    [
        (["0,train,a.png,0", "1,train,b.png,x"], None, None, r"items.csv, line 3: label 'x' is not an integer"),
        (["0,train,a.png,0", "1,train,b.png,-2"], None, None, r"items.csv, line 3: label -2 is out of range"),
        (["0,train,a.png,10**9", "1,train,b.png,1"], None, None, r"line 2: label '10\*\*9' is not an integer"),
        (["0,train,a.png,5000000", "1,train,b.png,1"], None, None, r"line 2: label 5000000 is out of range for labels 0..999999"),
        (["0,train,a.png,2", "1,train,b.png,1"], None, {"class_names": ["a", "b"]}, r"line 2: label 2 is out of range for the 2 class names"),
        (["0,train,a.png,0", "1,train"], None, None, r"items.csv, line 3: expected 4 fields"),
        (["0,train,a.png,0"], None, None, r"items.csv: 1 rows but .*embeddings.npy has 2 embeddings"),
        (["0,train,a.png,0", "1,train,b.png,1"], np.array([[0, np.nan, 0], [1, 1, 1]], np.float32), None,
         r"embeddings.npy: 1 rows hold NaN or inf"),
        (["0,train,a.png,0", "1,train,b.png,1"], np.array([["a"], ["b"]]), None, r"embeddings.npy: expected a numeric"),
        (["0,train,a.png,0", "1,train,b.png,1"], None, "{broken", r"meta.json: not valid JSON"),
        (["0,train,a.png,0", "1,train,b.png,1"], None, "[1, 2]", r"meta.json: expected a JSON object"),
    ],
)
def test_malformed_embedding_files_are_data_errors_naming_file_and_line(
    tmp_path: Path, rows: list[str], features: np.ndarray | None, meta: Any, message: str
) -> None:
    if features is None and "1 rows but" in message:
        features = np.zeros((2, 3), np.float32)
    folder = _write_items(tmp_path / "e", rows, features, meta)
    with pytest.raises(DataError, match=message):
        read_embeddings(folder)


def test_items_csv_that_is_not_utf8_or_embeddings_that_are_an_archive(tmp_path: Path) -> None:
    folder = _write_items(tmp_path / "e", ["0,train,a.png,0"])
    (folder / "items.csv").write_bytes(b"index,split,source,label\n0,train,\xff\xfe.png,0\n")
    with pytest.raises(DataError, match="items.csv: not UTF-8 text"):
        read_embeddings(folder)
    folder = _write_items(tmp_path / "z", ["0,train,a.png,0"])
    with open(folder / "embeddings.npy", "wb") as f:
        np.savez(f, a=np.zeros(3))
    with pytest.raises(DataError, match="embeddings.npy: an .npz archive, not a plain .npy array"):
        read_embeddings(folder)


@pytest.mark.parametrize(
    "text, message",
    [
        ("item,source,label,confidence,cluster\n0,a,0,1.0,-1\n", r"labels.csv, line 2: cluster '-1' is not an integer in 0..0"),
        ("item,source,label,confidence,cluster\n0,a,0,1.0,0\n1,b,x,1.0,99999999999\n", r"line 3: cluster '99999999999'"),
        ("item,source,label,confidence,cluster\n0,a,0,1.0,zero\n", r"line 2: cluster 'zero' is not an integer"),
        ("item,source,label,confidence,cluster\n0,a,0,1.0\n", r"line 2: cluster None"),
        ("item,label\n0,a\n", r"labels.csv: expected columns item,source,label,confidence,cluster"),
    ],
)
def test_malformed_labels_csv_is_a_data_error_not_a_huge_allocation(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_label_groups(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("item,source,label,confidence,cluster\n0,a,cat,1.0,1\n1,b,1,0.5,1\n2,c,0,0.5,0\n")
    groups, names = read_label_groups(tmp_path / "labels.csv")
    assert groups.tolist() == [1, 1, 0] and names == ["cluster 0", "cat"]


# ============================================================================ --skip-bad from the command line


def test_skip_bad_options_parse_into_the_config_and_commands() -> None:
    parser = build_parser()
    from contrastkit.cli import _config_from_args

    assert TrainConfig().skip_bad is False
    config, _ = _config_from_args(parser.parse_args(["train", "--skip-bad", "--out", "x"]))
    assert config.skip_bad is True
    config, _ = _config_from_args(parser.parse_args(["train", "--no-skip-bad", "--out", "x"]))
    assert config.skip_bad is False
    assert parser.parse_args(["embed", "r"]).skip_bad is None  # default: as the run was trained
    assert parser.parse_args(["embed", "r", "--skip-bad"]).skip_bad is True
    assert parser.parse_args(["evaluate", "r", "--no-skip-bad"]).skip_bad is False
    assert TrainConfig.from_dict({"epochs": 3}).skip_bad is False  # config.json of older runs


def test_train_on_a_folder_with_a_bad_file_stops_first_or_skips_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("dark", "light")):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 100, (16, 16), dtype=np.uint8) + 150 * c).save(root / cls / f"{i}.png")
    (root / "light" / "cut.png").write_bytes((root / "light" / "0.png").read_bytes()[:60])
    args = ["train", "--data", str(root), "--epochs", "1", "--batch-size", "8", "--quiet",
            "--monitor-bank", "16", "--monitor-queries", "4"]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "1 of 25 image files cannot be read: light/cut.png" in err and "--skip-bad" in err
    assert not (tmp_path / "strict").exists()  # stopped before any work
    run = tmp_path / "lenient"
    assert main([*args, "--out", str(run), "--skip-bad"]) == 0
    assert "skipped 1 of 25 image files" in capsys.readouterr().err
    assert TrainConfig.load(run / "config.json").skip_bad is True
    assert main(["embed", str(run)]) == 0  # reloads the run's data with the run's skip_bad
    sources = [r["source"] for r in csv.DictReader(open(run / "items.csv"))]
    assert len(sources) == 24 and "light/cut.png" not in sources
    assert main(["embed", str(run), "--no-skip-bad", "--out", str(tmp_path / "e")]) == 2
    assert "light/cut.png" in capsys.readouterr().err
    shutil.rmtree(run)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("config.json", "{broken", "config.json: not valid JSON"),
        ("config.json", "[1]", "config.json: expected a JSON object, got list"),
        ("metrics.json", "\xff", "metrics.json: not valid JSON"),
    ],
)
def test_report_of_a_folder_with_broken_json_names_the_file(
    tmp_path: Path, name: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _write_items(tmp_path / "run", ["0,train,a.png,0", "1,test,b.png,1"])
    (folder / name).write_bytes(text.encode("latin-1"))
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (folder / "report.html").exists()


def test_training_log_lines_that_are_not_objects_are_named(tmp_path: Path) -> None:
    from contrastkit.visualize import read_log

    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "loss": 2.0}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: expected a JSON object per line, got list"):
        read_log(tmp_path / "log.jsonl")
    (tmp_path / "log.jsonl").write_bytes(b'{"epoch": 1}\n\xff\n')
    with pytest.raises(DataError, match=r"log.jsonl: not UTF-8 text"):
        read_log(tmp_path / "log.jsonl")
