"""Tests for contrastkit.data.cifar: official-format batches, archives, refused pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.data.cifar import (
    ALLOWED_GLOBALS,
    CIFAR10,
    CIFAR100,
    extract_archive,
    is_cifar,
    load_cifar,
    load_pickle,
)
from contrastkit.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- writers (official format)


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _py2_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def _py2_uint8_array(a: np.ndarray) -> bytes:
    """A uint8 array as numpy 1.x under Python 2 pickles it (protocol 2)."""
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
        + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _py2_int(0) + b"tb"
    )
    shape = b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
        + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb"  # __setstate__
    )


def py2_pickle(d: dict[bytes, object]) -> bytes:
    """A dict pickled the way the official CIFAR archives were made (Python 2 cPickle, protocol 2)."""
    out = b"\x80\x02}("
    for k, v in d.items():
        out += _py2_str(k)
        if isinstance(v, np.ndarray):
            out += _py2_uint8_array(v)
        elif isinstance(v, bytes):
            out += _py2_str(v)
        elif isinstance(v, int):
            out += _py2_int(v)
        else:
            assert isinstance(v, list)
            out += b"](" + b"".join(_py2_int(x) if isinstance(x, int) else _py2_str(x) for x in v) + b"e"
    return out + b"u."


def write_pickle(path: Path, obj: object, style: str = "py2") -> None:
    """Write ``obj`` as the official files do (``py2``) or with Python 3 pickle protocol 2 / 5."""
    if style == "py2":
        path.write_bytes(py2_pickle(obj))  # type: ignore[arg-type]
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(style[-1])))


def random_batch(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, n_classes, size=n)]
    return data, labels


def write_cifar10(
    folder: Path, n_per_batch: int = 3, n_test: int = 2, n_batches: int = 5, style: str = "py2"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small CIFAR-10 folder; returns (train data, train labels, test data, test labels) as written."""
    folder.mkdir(parents=True, exist_ok=True)
    datas, labels = [], []
    for i in range(1, n_batches + 1):
        data, lab = random_batch(n_per_batch, 10, seed=i)
        write_pickle(
            folder / f"data_batch_{i}",
            {b"batch_label": f"training batch {i} of 5".encode(), b"labels": lab, b"data": data,
             b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)]},
            style,
        )
        datas.append(data)
        labels += lab
    test, test_lab = random_batch(n_test, 10, seed=99)
    write_pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_lab,
                                         b"data": test, b"filenames": [b"t.png"] * n_test}, style)
    write_pickle(folder / "batches.meta", {b"num_cases_per_batch": n_per_batch,
                                           b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                           b"num_vis": 3072}, style)
    return np.concatenate(datas), np.array(labels), test, np.array(test_lab)


def write_cifar100(folder: Path, n_train: int = 4, n_test: int = 2) -> tuple[list[int], list[int], list[str]]:
    """A small CIFAR-100 folder; returns (train fine labels, test fine labels, fine names)."""
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    out = []
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data, fine = random_batch(n, 100, seed)
        coarse = [f // 5 for f in fine]
        write_pickle(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                                     b"fine_labels": fine, b"coarse_labels": coarse, b"data": data})
        out.append(fine)
    write_pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in fine_names],
                                   b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]})
    return out[0], out[1], fine_names


def make_archive(src_parent: Path, folder_name: str, archive: Path) -> Path:
    """A .tar.gz holding ``src_parent/folder_name`` under ``folder_name/``, like the official archives."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_parent / folder_name, arcname=folder_name)
    return archive


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("style", ["py2", "proto2", "proto5"])
def test_cifar10_folder_round_trip(tmp_path: Path, style: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    x_tr, y_tr, x_te, y_te = write_cifar10(folder, style=style)
    splits = load_cifar(folder)
    assert splits.train.images.shape == (15, 3, 32, 32)
    assert splits.test.images.shape == (2, 3, 32, 32)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    np.testing.assert_array_equal(splits.train.images.numpy().reshape(15, 3072), x_tr)
    np.testing.assert_array_equal(splits.test.images.numpy().reshape(2, 3072), x_te)
    np.testing.assert_array_equal(splits.train.labels.numpy(), y_tr)
    np.testing.assert_array_equal(splits.test.labels.numpy(), y_te)
    assert splits.train.class_names == CIFAR10_NAMES
    assert splits.train.sources[:4] == ["data_batch_1:0", "data_batch_1:1", "data_batch_1:2", "data_batch_2:0"]
    assert splits.test.sources == ["test_batch:0", "test_batch:1"]
    assert splits.info == {"format": "cifar10", "path": str(folder)}
    assert splits.train.name == "cifar10:train"


def test_pixel_layout_is_rgb_planes_row_major(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, n_per_batch=2)
    data = np.zeros((2, 3072), dtype=np.uint8)
    # Image 1: green (plane 1) at row 5, column 7; blue (plane 2) at row 31, column 0.
    data[1, 1 * 1024 + 5 * 32 + 7] = 200
    data[1, 2 * 1024 + 31 * 32 + 0] = 17
    write_pickle(folder / "data_batch_1", {b"labels": [0, 1], b"data": data})
    img = load_cifar(folder).train.images[1]  # (3, 32, 32)
    assert int(img[1, 5, 7]) == 200
    assert int(img[2, 31, 0]) == 17
    assert int(img.sum()) == 217
    assert int(load_cifar(folder).train.images[0].sum()) == 0


def test_parent_folder_and_fewer_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", n_per_batch=2, n_batches=2)
    assert is_cifar(tmp_path)
    splits = load_cifar(tmp_path)
    assert len(splits.train) == 4


def test_gap_in_training_batches_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, n_per_batch=2, n_batches=3)
    (folder / "data_batch_2").unlink()
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar(folder)


def test_cifar100_uses_fine_labels_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    fine_tr, fine_te, names = write_cifar100(folder)
    splits = load_cifar(folder)
    assert splits.train.images.shape == (4, 3, 32, 32)
    assert splits.train.labels.tolist() == fine_tr
    assert splits.test.labels.tolist() == fine_te
    assert splits.train.class_names == names and len(names) == 100
    assert splits.info["format"] == "cifar100"
    assert splits.train.sources[0] == "train:0"


def test_archive_is_read_through_a_temporary_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    x_tr, y_tr, _, _ = write_cifar10(src / "cifar-10-batches-py", n_per_batch=2)
    archive = make_archive(src, "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    assert is_cifar(archive)
    splits = load_cifar(archive)
    np.testing.assert_array_equal(splits.train.images.numpy().reshape(10, 3072), x_tr)
    assert splits.info["path"] == str(archive)


def test_archive_extract_to_a_cache_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_cifar100(src / "cifar-100-python")
    archive = make_archive(src, "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    cache = tmp_path / "cache"
    splits = load_cifar(archive, extract_to=cache)
    assert len(splits.train) == 4
    assert sorted(p.name for p in (cache / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert not [p for p in cache.rglob("*.part")]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_extracted_files_get_the_mode_of_a_plain_open(tmp_path: Path, umask: int, mode: int) -> None:
    src = tmp_path / "src"
    write_cifar10(src / "cifar-10-batches-py", n_per_batch=2)
    archive = make_archive(src, "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    before = os.umask(umask)
    try:
        extract_archive(archive, tmp_path / "out")
    finally:
        os.umask(before)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {mode}  # not mkstemp's 0600 whatever the umask


def _tar_with(archive: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for m in members:
            if m.isfile():
                m.size = len(payload)
                tar.addfile(m, io.BytesIO(payload))
            else:
                tar.addfile(m)


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("cifar-10-batches-py/../../escaped", "'..'"),
        ("/tmp/contrastkit-absolute-escape", "absolute path"),
    ],
)
def test_archive_members_escaping_the_folder_are_refused(tmp_path: Path, member: str, why: str) -> None:
    ok = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    bad = tarfile.TarInfo(member)
    archive = tmp_path / "evil.tar.gz"
    _tar_with(archive, [ok, bad])
    dest = tmp_path / "a" / "b"
    with pytest.raises(DataError, match=why) as e:
        extract_archive(archive, dest)
    assert str(archive) in str(e.value) and member in str(e.value)
    assert not dest.exists()  # nothing written, not even the good member
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()
    assert not Path("/tmp/contrastkit-absolute-escape").exists()


def test_archive_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = tmp_path / "links.tar.gz"
    _tar_with(archive, [link])
    with pytest.raises(DataError, match="link"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_cifar(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.tar.gz").write_bytes(b"not a tar")
    assert not is_cifar(tmp_path / "folder")
    assert not is_cifar(tmp_path / "file.tar.gz")
    with pytest.raises(DataError, match="not a CIFAR folder or archive"):
        load_cifar(tmp_path / "folder")
    with pytest.raises(DataError, match="not a CIFAR archive"):
        load_cifar(tmp_path / "file.tar.gz")


# ---------------------------------------------------------------- malformed batches


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, n_per_batch=2)
    return folder


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"labels": [0, 1]}, r"missing key b'data'"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"missing key b'labels'"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(2, 3000\), expected \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"must be a uint8 array, got float32"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, r"2 images but 3 entries in b'labels'"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"out of range for the 10 class names"),
        ([1, 2, 3], r"expected a pickled dict, got list"),
    ],
)
def test_malformed_batch_names_the_file(cifar10_dir: Path, content: object, message: str) -> None:
    write_pickle(cifar10_dir / "data_batch_1", content, style="proto2")
    with pytest.raises(DataError, match=message) as e:
        load_cifar(cifar10_dir)
    assert "data_batch_1" in str(e.value)


@pytest.mark.parametrize("raw", [b"", b"\x80\x02}q\x00(U\x04data", b"garbage, not a pickle"])
def test_truncated_or_garbage_pickle(cifar10_dir: Path, raw: bytes) -> None:
    (cifar10_dir / "test_batch").write_bytes(raw)
    with pytest.raises(DataError, match="not a valid CIFAR pickle") as e:
        load_cifar(cifar10_dir)
    assert str(cifar10_dir / "test_batch") in str(e.value)


# ---------------------------------------------------------------- refused pickles


class _Payload:
    """Pickles as ``func(*args)``: what an attacker would put in a batch file."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        f"{os.system.__module__}.system": _Payload(os.system, f"touch '{marker}'"),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize(
    ("refused", "fix_imports", "reported"),
    [
        ("system", False, f"{os.system.__module__}.system"),  # 'posix.system' on Linux
        ("builtins.exec", False, "builtins.exec"),
        ("subprocess.call", False, "subprocess.call"),
        # Protocol 2 maps names to their Python 2 spelling by default.
        ("builtins.exec", True, "__builtin__.exec"),
        ("subprocess.call", True, "commands.call"),
    ],
)
def test_code_running_pickles_are_refused_and_nothing_runs(
    cifar10_dir: Path, tmp_path: Path, refused: str, fix_imports: bool, reported: str
) -> None:
    marker = tmp_path / "pwned"
    payload = next(v for k, v in _payloads(marker).items() if k.endswith(refused))
    evil = pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": payload}, protocol=2, fix_imports=fix_imports
    )

    # The payload is live: plain pickle would run it.
    pickle.loads(evil)
    assert marker.exists()
    marker.unlink()

    (cifar10_dir / "data_batch_1").write_bytes(evil)
    with pytest.raises(DataError) as e:
        load_cifar(cifar10_dir)
    assert str(cifar10_dir / "data_batch_1") in str(e.value)
    assert f"refused to load global '{reported}'" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("numpy", "load"), ("numpy.testing", "assert_equal"), ("numpy", "frombuffer"),
     ("numpy.core.multiarray", "fromfile"), ("numpy.lib.npyio", "load"), ("copyreg", "_reconstructor")],
)
def test_numpy_globals_outside_the_allow_list_are_refused(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "batch"
    # GLOBAL module.name; call it with ("x",); stop.
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nX\x01\x00\x00\x00x\x85R.")
    with pytest.raises(DataError, match=f"refused to load global '{module}.{name}'") as e:
        load_pickle(path)
    assert str(path) in str(e.value)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2))
    with pytest.raises(DataError, match="object dtype"):
        load_pickle(path)


def test_object_type_code_in_reconstruct_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    # numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'O')
    path.write_bytes(
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01O\x87R."
    )
    with pytest.raises(DataError, match="object dtype"):
        load_pickle(path)


def test_codecs_encode_only_for_latin1(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match="codec 'rot13'"):
        load_pickle(path)


def test_allow_list_is_exactly_the_numpy_array_internals() -> None:
    assert set(ALLOWED_GLOBALS) == {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }


def test_numpy_scalars_and_plain_values_load(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    obj = {b"n": np.int64(7), "s": "text", b"f": 1.5, b"l": [1, None, True], b"t": (b"b",)}
    path.write_bytes(pickle.dumps(obj, protocol=2))
    assert load_pickle(path) == obj


def test_layouts() -> None:
    assert CIFAR10.train == tuple(f"data_batch_{i}" for i in range(1, 6))
    assert (CIFAR100.labels_key, CIFAR100.names_key) == (b"fine_labels", b"fine_label_names")
