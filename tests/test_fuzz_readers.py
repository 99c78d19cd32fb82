"""Fuzz the IDX, CIFAR, image and .npz readers with hypothesis (a short, derandomised run).

The harness (valid seed files, mutations, targets, the check) lives in
``tools/fuzz_readers.py``, which also runs the long fuzz. Here every target
gets a few dozen inputs: random bytes, the valid seeds, and mutated seeds.
The only outcomes allowed are a well-formed data set or a ContrastkitError
whose message names the fuzzed file (see ``outcome`` in the tool). The
regression tests below pin the raw exceptions fuzzing found, one each.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from contrastkit.data.cifar import load_pickle
from contrastkit.data.decode import load_image_file
from contrastkit.data.folder import load_folder
from contrastkit.data.formats import load_path
from contrastkit.data.idx import read_idx_images
from contrastkit.errors import DataError

TOOL = Path(__file__).resolve().parents[1] / "tools" / "fuzz_readers.py"
# Inputs per target in make test: 0.5-1.5 s each on one core, about 5 s for all.
EXAMPLES = {"idx-images": 150, "idx-labels": 150, "cifar-batch": 80, "cifar-meta": 80,
            "image-file": 200, "image-folder": 120, "npz": 150}


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_readers", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_readers"] = module  # hypothesis and dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


fuzz_readers = _load_tool()


def test_every_target_has_a_budget() -> None:
    assert {t.name for t in fuzz_readers.targets()} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzzed_files_give_data_or_a_data_error_naming_the_file(name: str, tmp_path: Path) -> None:
    target = next(t for t in fuzz_readers.targets() if t.name == name)
    target.setup(tmp_path)
    fuzz_readers.fuzz(target, tmp_path, EXAMPLES[name], derandomize=True)
    assert target.failures == [], target.failures[:3]
    assert target.tried >= EXAMPLES[name] // 2  # hypothesis may stop early only on duplicate inputs


def test_the_check_catches_raw_exceptions_and_unnamed_files(tmp_path: Path) -> None:
    """The oracle itself: a raw exception, or an error that does not name the file, is a failure."""

    def raises(exc: BaseException) -> object:
        def run(folder: Path, seed: str, data: bytes) -> None:
            raise exc
        return fuzz_readers.Target("npz", "test", [], lambda folder: None, run)

    assert fuzz_readers.outcome(raises(ValueError("boom")), tmp_path, "x", b"").startswith("ValueError at ")
    assert "does not name the file" in fuzz_readers.outcome(raises(DataError("something is wrong")), tmp_path, "x", b"")
    assert "empty message" in fuzz_readers.outcome(raises(DataError("")), tmp_path, "x", b"")
    assert fuzz_readers.outcome(raises(DataError("fuzz.npz: bad")), tmp_path, "x", b"") is None


# ---------------------------------------------------------------- regressions found by fuzzing


def test_idx_dimensions_whose_product_overflows_int64(tmp_path: Path) -> None:
    # 2**31 * 2**31 * 4 = 2**64 wrapped to 0 in int64 and matched an empty payload.
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 4))
    with pytest.raises(DataError, match=r"x-images-idx3-ubyte: truncated IDX file: .* = 18446744073709551616 bytes"):
        read_idx_images(path)


def _npz_bytes(compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        arr = io.BytesIO()
        np.save(arr, np.zeros((3, 4, 4), np.uint8))
        z.writestr("images.npy", arr.getvalue())
    return buf.getvalue()


def test_npz_with_corrupt_deflate_stream_or_unknown_compression(tmp_path: Path) -> None:
    data = bytearray(_npz_bytes(zipfile.ZIP_DEFLATED))
    start = data.index(b"images.npy") + len("images.npy")  # the local header's name, then the deflate stream
    data[start : start + 8] = b"\xff" * 8
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.npz: cannot read"):
        load_path(tmp_path / "bad.npz")
    data = bytearray(_npz_bytes(zipfile.ZIP_STORED))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # compression method 99 in the local and central headers
        at = data.index(sig)
        offset = 8 if sig == b"PK\x03\x04" else 10
        data[at + offset : at + offset + 2] = struct.pack("<H", 99)
    (tmp_path / "method.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"method\.npz: cannot read"):
        load_path(tmp_path / "method.npz")


def test_pickle_length_beyond_the_file_is_refused_before_allocating(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A BYTEARRAY8 claiming 2**60 bytes made the C unpickler fail allocating (and print a SystemError).
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 2**60) + b"abc")
    with pytest.raises(DataError, match=r"data_batch_1: not a valid CIFAR pickle .*expected 1152921504606846976 bytes"):
        load_pickle(path)
    assert "SystemError" not in capfd.readouterr().err
    path.write_bytes(pickle.dumps({b"ok": 1}, protocol=5) + b"trailing bytes after STOP are ignored")
    assert load_pickle(path) == {b"ok": 1}


def _png(width: int, height: int, value: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    row = b"\0" + bytes([value]) * width  # filter type 0, then the pixels
    pixels = row * height if width * height <= 4096 else b"\0" * 64  # a huge image gets only a few bytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def test_image_header_claiming_a_huge_size_is_a_bad_file_not_an_allocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 12000 x 9000 = 108 M pixels: Pillow only warns below 2x its limit and would allocate it.
    (tmp_path / "bomb.png").write_bytes(_png(12000, 9000))
    with pytest.raises(DataError, match=r"bomb\.png: cannot decode image: Image size \(108000000 pixels\) exceeds limit"):
        load_image_file(tmp_path / "bomb.png", 1, (8, 8))
    root = tmp_path / "folder"
    root.mkdir()
    (root / "bomb.png").write_bytes(_png(12000, 9000))
    (root / "a.png").write_bytes(_png(8, 8))
    (root / "b.png").write_bytes(_png(8, 8, value=255))  # not a copy of a.png, which would be merged into it
    with pytest.raises(DataError, match=r"1 of 3 image files cannot be read: bomb\.png \(Image size"):
        load_folder(root)
    s = load_folder(root, skip_bad=True)
    assert sorted(s.train.sources + s.test.sources) == ["a.png", "b.png"]
    assert "skipped 1 of 3" in capsys.readouterr().err
