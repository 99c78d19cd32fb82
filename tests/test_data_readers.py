"""Tests for the IDX, .npz and image-folder readers and format detection.

Every test writes real files to ``tmp_path`` (IDX bytes with the spec's
header, numpy archives, images saved by Pillow) and reads them back.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from contrastkit.data.dataset import DataSplits
from contrastkit.data.decode import LazyFolderImages, load_image_file
from contrastkit.data.folder import load_folder
from contrastkit.data.formats import load_path, resize_images
from contrastkit.data.idx import (
    load_idx_dir,
    load_idx_pair,
    read_idx_images,
    read_idx_labels,
)
from contrastkit.data.npz import load_npz
from contrastkit.errors import ConfigError, DataError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, magic: bytes = b"\x00\x00", type_byte: int = 0x08) -> bytes:
    """IDX encoding per the spec: magic, type, ndim, big-endian uint32 dims, data."""
    header = magic + bytes([type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, **kw: object) -> Path:
    data = idx_bytes(arr, **kw)  # type: ignore[arg-type]
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def rand_images(n: int, h: int = 5, w: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path)
    return path


def named(name: str) -> PngInfo:
    """A PNG text chunk holding ``name``: files of the same pixels that are not byte-identical copies."""
    info = PngInfo()
    info.add_text("name", name)
    return info


def gray(value: int, h: int = 4, w: int = 4) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    x = rand_images(7, 5, 4)
    y = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    xi = read_idx_images(write_idx(tmp_path / "a-images-idx3-ubyte", x, gz=gz))
    yi = read_idx_labels(write_idx(tmp_path / "a-labels-idx1-ubyte", y, gz=gz))
    assert xi.dtype == np.uint8 and xi.shape == (7, 5, 4)
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)


def test_idx_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    x = rand_images(3)
    gz_without_suffix = write_idx(tmp_path / "x-images-idx3-ubyte", x, gz=True)
    raw_with_gz_suffix = write_idx(tmp_path / "y-images-idx3-ubyte.gz", x, gz=False)
    np.testing.assert_array_equal(read_idx_images(gz_without_suffix), x)
    np.testing.assert_array_equal(read_idx_images(raw_with_gz_suffix), x)


@pytest.mark.parametrize(
    ("kw", "damage", "words"),
    [
        ({"magic": b"\x08\x03"}, None, "magic number"),
        ({"type_byte": 0x0D}, None, "0x0d"),
        ({}, "truncate", "truncated"),
        ({}, "extend", "longer than its header"),
    ],
)
def test_idx_errors_name_file_and_problem(
    tmp_path: Path, kw: dict[str, object], damage: str | None, words: str
) -> None:
    path = tmp_path / "bad-images-idx3-ubyte"
    data = idx_bytes(rand_images(4), **kw)  # type: ignore[arg-type]
    if damage == "truncate":
        data = data[:-5]
    elif damage == "extend":
        data = data + b"\x00\x00"
    path.write_bytes(data)
    with pytest.raises(DataError, match=words) as err:
        read_idx_images(path)
    assert "bad-images-idx3-ubyte" in str(err.value)


def test_idx_wrong_ndim_and_tiny_files(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "t-images-idx3-ubyte", rand_images(2))
    with pytest.raises(DataError, match=r"3 dimensions, expected 1"):
        read_idx_labels(images)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx_images(short)
    header_cut = tmp_path / "cut-idx3-ubyte"
    header_cut.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx_images(header_cut)
    broken_gz = tmp_path / "gz-idx3-ubyte.gz"
    broken_gz.write_bytes(gzip.compress(idx_bytes(rand_images(2)))[:-10])
    with pytest.raises(DataError, match="gzip") as err:
        read_idx_images(broken_gz)
    assert "gz-idx3-ubyte.gz" in str(err.value)


def test_idx_pair_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "p-images-idx3-ubyte", rand_images(4))
    labels = write_idx(tmp_path / "p-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError) as err:
        load_idx_pair(images, labels, "p")
    msg = str(err.value)
    assert "p-images-idx3-ubyte" in msg and "p-labels-idx1-ubyte" in msg
    assert "4 images" in msg and "3 labels" in msg


def test_idx_pair_dataset(tmp_path: Path) -> None:
    x = rand_images(3, 2, 3)
    images = write_idx(tmp_path / "q-images-idx3-ubyte.gz", x, gz=True)
    labels = write_idx(tmp_path / "q-labels-idx1-ubyte.gz", np.array([2, 0, 1], np.uint8), gz=True)
    ds = load_idx_pair(images, labels, "q", class_names=["a", "b", "c"])
    assert ds.images.shape == (3, 1, 2, 3)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(x))
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [2, 0, 1]
    assert ds.sources == ["q-images-idx3-ubyte.gz:0", "q-images-idx3-ubyte.gz:1", "q-images-idx3-ubyte.gz:2"]
    with pytest.raises(DataError, match="out of range for 2 class names"):
        load_idx_pair(images, labels, "q", class_names=["a", "b"])


def test_idx_dir_mnist_layout(tmp_path: Path) -> None:
    xtr, xte = rand_images(6, seed=1), rand_images(4, seed=2)
    ytr = np.array([0, 1, 2, 0, 1, 2], np.uint8)
    yte = np.array([2, 1, 0, 0], np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", ytr, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yte)
    splits = load_idx_dir(tmp_path, class_names=["x", "y", "z"])
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(xtr))
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(xte))
    assert splits.train.labels.tolist() == ytr.tolist()
    assert splits.test.labels.tolist() == yte.tolist()
    assert splits.train.class_names == ["x", "y", "z"]
    assert splits.test.sources[0] == "t10k-images-idx3-ubyte:0"


def test_idx_dir_single_file_is_split(tmp_path: Path) -> None:
    x = rand_images(20)
    y = np.repeat(np.arange(2, dtype=np.uint8), 10)
    write_idx(tmp_path / "mine-images-idx3-ubyte", x)
    write_idx(tmp_path / "other-labels-idx1-ubyte", y)  # the only labels file: used
    splits = load_idx_dir(tmp_path)
    assert len(splits.train) + len(splits.test) == 20
    assert sorted(splits.test.labels.tolist()) == [0, 1]  # stratified: one of each class
    both = sorted(splits.train.sources + splits.test.sources, key=lambda s: int(s.split(":")[1]))
    assert both == [f"mine-images-idx3-ubyte:{i}" for i in range(20)]


def test_idx_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no IDX images file"):
        load_idx_dir(tmp_path)
    write_idx(tmp_path / "a-images-idx3-ubyte", rand_images(2))
    write_idx(tmp_path / "b-images-idx3-ubyte", rand_images(2))
    with pytest.raises(DataError, match="found 2 IDX images files"):
        load_idx_dir(tmp_path)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_t10k() -> None:
    x = read_idx_images(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    y = read_idx_labels(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert 0 < x.mean() < 255


# ---------------------------------------------------------------- npz


def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(10, 5, 6, 3), dtype=np.uint8)
    nchw = rng.integers(0, 256, size=(10, 1, 5, 6), dtype=np.uint8)
    nhw = rng.integers(0, 256, size=(10, 5, 6), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(10, 5, 6, 4), dtype=np.uint8)
    expected = {
        "nhwc": nhwc.transpose(0, 3, 1, 2),
        "nchw": nchw,
        "nhw": nhw[:, None],
        "rgba": rgba[..., :3].transpose(0, 3, 1, 2),
    }
    for name, arr in (("nhwc", nhwc), ("nchw", nchw), ("nhw", nhw), ("rgba", rgba)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=arr)
        splits = load_npz(path)
        assert splits.train.labels is None
        got = torch.cat([splits.train.images, splits.test.images])
        order = [int(s.split(":")[2]) for s in splits.train.sources + splits.test.sources]
        assert splits.train.sources[0].startswith(f"{name}.npz:images:")
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(expected[name][order])))


def test_npz_float_images_rounded(tmp_path: Path) -> None:
    x = np.array([0.0, 1.0, 0.5, 0.2, 1 / 255, 0.999], dtype=np.float32).reshape(1, 2, 3)
    x = np.repeat(x, 2, axis=0)
    np.savez(tmp_path / "f.npz", images=x, test_images=x[:1])
    splits = load_npz(tmp_path / "f.npz")
    assert splits.test.images.dtype == torch.uint8
    assert splits.test.images.flatten().tolist() == [0, 255, 128, 51, 1, 255]
    np.savez(tmp_path / "g.npz", images=x * 2)
    with pytest.raises(DataError, match=r"g\.npz: images: float images must lie in \[0, 1\]"):
        load_npz(tmp_path / "g.npz")
    np.savez(tmp_path / "h.npz", images=np.full((2, 3, 3), np.nan))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "h.npz")
    np.savez(tmp_path / "i.npz", images=np.zeros((2, 3, 3), np.int64))
    with pytest.raises(DataError, match="got dtype int64"):
        load_npz(tmp_path / "i.npz")


def test_npz_missing_images_lists_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", x_train=np.zeros((2, 3, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError) as err:
        load_npz(tmp_path / "m.npz")
    msg = str(err.value)
    assert "m.npz" in msg and "'images'" in msg and "x_train" in msg and "y_train" in msg


def test_npz_object_array_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", images=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match=r"o\.npz: key 'images' holds a Python object array"):
        load_npz(tmp_path / "o.npz")


def test_npz_test_split_labels_and_class_names(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "s.npz", images=x, labels=np.array([0, 1, 1, 0]),
        test_images=x[:2], test_labels=np.array([1, 1], np.int32), class_names=np.array(["cat", "dog"]),
    )
    splits = load_npz(tmp_path / "s.npz")
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(x))
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(x[:2]))
    assert splits.train.labels.tolist() == [0, 1, 1, 0]
    assert splits.test.labels.tolist() == [1, 1]
    assert splits.train.class_names == ["cat", "dog"]
    assert splits.test.sources == ["s.npz:test_images:0", "s.npz:test_images:1"]


def test_npz_bad_labels_and_files(tmp_path: Path) -> None:
    x = np.zeros((4, 3, 3), np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"a\.npz: labels: expected 4 labels"):
        load_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", images=x, labels=np.array([0.0, 1, 0, 1]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", images=x, test_images=x, labels=np.arange(4))
    with pytest.raises(DataError, match="has 'labels' but no 'test_labels'"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 5, 3, 5), np.uint8))
    with pytest.raises(DataError, match="cannot tell the channel axis"):
        load_npz(tmp_path / "d.npz")
    (tmp_path / "e.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"e\.npz: cannot read as \.npz"):
        load_npz(tmp_path / "e.npz")
    np.savez(tmp_path / "one.npz", images=np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(DataError, match=r"one\.npz: holds 1 image"):
        load_npz(tmp_path / "one.npz")


# ---------------------------------------------------------------- image folders


def test_folder_labelled(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for c, cls in enumerate(["dog", "cat"]):
        for i in range(5):
            save_png(root / cls / f"{i}.png", gray(10 * c + i))
    (root / "README.txt").write_text("ignored")
    (root / "cat" / ".hidden.png").write_bytes(b"garbage, but hidden")
    splits = load_folder(root)
    assert splits.train.class_names == ["cat", "dog"]
    assert len(splits.train) == 8 and len(splits.test) == 2
    assert sorted(splits.test.labels.tolist()) == [0, 1]
    assert splits.train.images.shape[1:] == (1, 4, 4)
    for ds in (splits.train, splits.test):
        for img, label, src in zip(ds.images, ds.labels.tolist(), ds.sources):
            cls, name = src.split("/")
            assert cls == ["cat", "dog"][label]
            value = 10 * (cls == "cat") + int(name[0])
            assert torch.all(img == value)


def test_folder_flat_and_train_test(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for i in range(3):
        save_png(flat / f"{i}.png", gray(i))
    s = load_folder(flat)
    assert s.train.labels is None and s.test.labels is None
    assert sorted(s.train.sources + s.test.sources) == ["0.png", "1.png", "2.png"]

    root = tmp_path / "tt"
    save_png(root / "train" / "a" / "1.png", gray(1))
    save_png(root / "train" / "b" / "2.png", gray(2))
    save_png(root / "val" / "b" / "3.png", gray(3))
    s = load_folder(root)
    assert s.train.sources == ["train/a/1.png", "train/b/2.png"]
    assert s.test.sources == ["val/b/3.png"]
    assert s.test.labels.tolist() == [1] and s.test.class_names == ["a", "b"]
    save_png(root / "val" / "zebra" / "4.png", gray(4))
    with pytest.raises(DataError, match="zebra: class folder not among the train classes"):
        load_folder(root)

    flat_test = tmp_path / "ft"
    save_png(flat_test / "train" / "a" / "1.png", gray(1))
    save_png(flat_test / "test" / "2.png", gray(2))
    with pytest.raises(DataError, match="train has class subfolders but test has a flat folder"):
        load_folder(flat_test)

    train_only = tmp_path / "to"  # root/train without test/val: train is split
    for i in range(4):
        save_png(train_only / "train" / "a" / f"{i}.png", gray(i))
    s = load_folder(train_only)
    assert s.train.class_names == ["a"] and len(s.train) + len(s.test) == 4
    assert all(src.startswith("train/a/") for src in s.train.sources + s.test.sources)


def test_folder_channels_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    save_png(root / "l.png", gray(100))
    save_png(root / "l2.png", gray(100), mode="1")
    s = load_folder(root, image_size=None)
    assert s.train.images.shape[1] == 1  # all grayscale -> 1 channel
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    save_png(root / "rgb.png", rgb)
    s = load_folder(root)
    imgs = {src: img for ds in (s.train, s.test) for src, img in zip(ds.sources, ds.images)}
    assert imgs["l.png"].shape == (3, 4, 4) and torch.all(imgs["l.png"] == 100)  # gray -> RGB copies
    assert imgs["rgb.png"][:, 0, 0].tolist() == [200, 0, 0]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black -> mid grey
    rgba[1, 1] = (0, 0, 255, 255)
    path = save_png(tmp_path / "a.png", rgba)
    t = load_image_file(path, 3, None)
    assert t.shape == (3, 2, 2)
    assert t[:, 0, 0].tolist() == [255, 0, 0]
    assert t[:, 0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in t[:, 1, 0].tolist())
    assert t[:, 1, 1].tolist() == [0, 0, 255]


def test_palette_images(tmp_path: Path) -> None:
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[:2] = (10, 200, 30)
    colour[2:] = (250, 5, 60)
    p_colour = tmp_path / "colour"
    for name in ("p.png", "q.png"):  # the same pixels; a text chunk with the name keeps the files apart
        save_png(p_colour / name, colour)
        Image.open(p_colour / name).convert("P", palette=Image.Palette.ADAPTIVE).save(p_colour / name, pnginfo=named(name))
    assert Image.open(p_colour / "p.png").mode == "P"
    s = load_folder(p_colour)
    assert s.train.images.shape[1:] == (3, 4, 4)
    assert s.train.images[0, :, 0, 0].tolist() == [10, 200, 30]
    assert s.train.images[0, :, 3, 0].tolist() == [250, 5, 60]

    p_gray = tmp_path / "grey"
    g = np.array([[0, 50], [100, 250]], np.uint8)
    p_gray.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(g).convert("P").save(p_gray / name, pnginfo=named(name))  # L -> P keeps a grey palette
    assert Image.open(p_gray / "a.png").mode == "P"
    s = load_folder(p_gray)
    assert s.train.images.shape[1] == 1  # grey palette -> 1 channel
    assert s.train.images[0, 0].tolist() == g.tolist()


def test_sixteen_bit_scaled(tmp_path: Path) -> None:
    v = np.array([[0, 65535], [257 * 100, 32896]], np.uint16)
    path = tmp_path / "d.png"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode.startswith("I")
    t = load_image_file(path, 1, None)
    assert t.dtype == torch.uint8 and t[0].tolist() == [[0, 255], [100, 128]]
    assert load_image_file(path, 3, None)[:, 1, 0].tolist() == [100, 100, 100]


def test_mixed_sizes(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    save_png(root / "a.png", gray(30, 4, 4))
    save_png(root / "b.png", gray(60, 6, 8))
    save_png(root / "c.png", gray(90, 2, 2))
    with pytest.raises(DataError, match="--image-size") as err:
        load_folder(root)
    assert "a.png" in str(err.value) and "b.png" in str(err.value)
    s = load_folder(root, image_size=3)
    both = torch.cat([s.train.images, s.test.images])
    assert both.shape == (3, 1, 3, 3)
    values = {src: int(img.unique().item()) for src, img in zip(s.train.sources + s.test.sources, both)}
    assert values == {"a.png": 30, "b.png": 60, "c.png": 90}  # a constant image stays constant
    with pytest.raises(ConfigError, match="--image-size"):
        load_folder(root, image_size=0)


def _bad_folder(root: Path) -> dict[str, str]:
    """Six good class-folder images and one of each kind of bad file; returns {bad file: expected reason}."""
    for cls in ("a", "b"):
        for i in range(3):
            save_png(root / cls / f"{i}.png", gray(10 * i + (cls == "b")))
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "a" / "notes.png").write_text("a text file with an image extension")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    save_png(root / "b" / "cut.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    (root / "b" / "cut.png").write_bytes((root / "b" / "cut.png").read_bytes()[:200])  # header reads, pixels do not
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpg, "JPEG")
    (root / "b" / "cut.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    return {
        "a/zero.jpg": "empty file",
        "a/notes.png": "not an image file Pillow can read",
        "b/broken.png": "not an image file Pillow can read",
        "b/cut.png": "truncated",
        "b/cut.jpg": "truncated",
    }


@pytest.mark.parametrize("lazy", [False, True])
def test_bad_files_are_listed_in_one_error(tmp_path: Path, lazy: bool, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bad"
    expected = _bad_folder(root)
    budget = 10 if lazy else 2 << 30
    with pytest.raises(DataError) as err:
        load_folder(root, image_size=4, max_in_memory_bytes=budget)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{root.resolve()}: 5 of 11 image files cannot be read: ")
    for name, reason in expected.items():
        assert name in msg, name
        assert reason.lower() in msg.split(name, 1)[1].split(")", 1)[0].lower(), (name, msg)
    assert "--skip-bad" in msg
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("lazy", [False, True])
def test_skip_bad_leaves_them_out_and_says_how_many(
    tmp_path: Path, lazy: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "bad"
    expected = _bad_folder(root)
    s = load_folder(root, image_size=4, skip_bad=True, max_in_memory_bytes=10 if lazy else 2 << 30)
    sources = s.train.sources + s.test.sources
    assert sorted(sources) == [f"{c}/{i}.png" for c in "ab" for i in range(3)]
    assert s.info == {"skipped": "5"}
    assert isinstance(s.train.images, LazyFolderImages) == lazy
    images = torch.cat([s.train.get_batch(torch.arange(len(s.train))), s.test.get_batch(torch.arange(len(s.test)))])
    for src, img in zip(sources, images):
        cls, name = src.split("/")
        assert torch.all(img == 10 * int(name[0]) + (cls == "b"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 5 of 11 image files" in err[0] and "--skip-bad" in err[0]
    assert all(name in err[0] for name in expected)
    assert load_path(root, image_size=4, skip_bad=True).info["skipped"] == "5"  # plumbed through load_path


def test_bad_file_listing_is_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "many"
    for i in range(3):
        save_png(root / f"good{i}.png", gray(i))
    for i in range(25):
        (root / f"bad{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"25 of 28 image files cannot be read: bad00\.png \(empty file\)") as err:
        load_folder(root)
    msg = str(err.value)
    assert "bad19.png" in msg and "bad20.png" not in msg and "and 5 more" in msg
    s = load_folder(root, skip_bad=True)
    assert len(s.train) + len(s.test) == 3
    warning = capsys.readouterr().err
    assert "skipped 25 of 28" in warning and "bad04.png" in warning and "bad05.png" not in warning
    assert "and 20 more" in warning


def test_skip_bad_with_too_few_good_images(tmp_path: Path) -> None:
    root = tmp_path / "few"
    save_png(root / "ok.png", gray(1))
    (root / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"1 of 2 image files cannot be read: zero\.png \(empty file\); too few"):
        load_folder(root, skip_bad=True)
    (root / "ok.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 of 2 image files cannot be read.*too few readable images remain"):
        load_folder(root, skip_bad=True)
    with pytest.raises(DataError, match="pass --skip-bad"):
        load_folder(root)


def test_dangling_and_looping_symbolic_links_are_listed_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "links"
    for cls in ("a", "b"):
        for i in range(3):
            save_png(root / cls / f"{i}.png", gray(10 * i + (cls == "b")))
    (root / "a" / "gone.png").symlink_to("deleted.png")
    (root / "b" / "deep").mkdir()
    (root / "b" / "deep" / "gone.jpg").symlink_to(tmp_path / "elsewhere" / "x.jpg")
    (root / "b" / "loop.png").symlink_to("loop.png")
    with pytest.raises(DataError) as err:
        load_folder(root)
    msg = str(err.value)
    assert msg.startswith(f"{root.resolve()}: 3 of 9 image files cannot be read: ") and "--skip-bad" in msg
    assert "a/gone.png (dangling symbolic link: its target deleted.png does not exist)" in msg
    assert f"b/deep/gone.jpg (dangling symbolic link: its target {tmp_path / 'elsewhere' / 'x.jpg'} does not exist)" in msg
    assert "b/loop.png (symbolic link loop through loop.png)" in msg
    s = load_folder(root, skip_bad=True)
    assert sorted(s.train.sources + s.test.sources) == [f"{c}/{i}.png" for c in "ab" for i in range(3)]
    assert s.info == {"skipped": "3"}
    warning = capsys.readouterr().err
    assert "skipped 3 of 9 image files that cannot be read (--skip-bad): a/gone.png, b/deep/gone.jpg, b/loop.png" in warning


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("lazy", [False, True])
def test_several_names_for_one_file_are_read_once(
    tmp_path: Path, lazy: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dups"
    for cls in ("a", "b"):
        for i in range(10):
            save_png(root / cls / f"{i}.png", gray(20 * i + (cls == "b")))
    (root / "a" / "z-link.png").symlink_to("0.png")
    os.link(root / "a" / "1.png", root / "a" / "z-hard.png")
    shutil.copyfile(root / "b" / "2.png", root / "b" / "z-copy.png")
    (root / "b" / "z-from-a.png").symlink_to(root / "a" / "3.png")  # one image under two classes: the first is kept
    os.link(root / "b" / "z-copy.png", root / "b" / "z-hard-copy.png")  # a hard link of a copy
    s = load_folder(root, max_in_memory_bytes=10 if lazy else 2 << 30)
    originals = [f"{c}/{i}.png" for c in "ab" for i in range(10)]
    assert sorted(s.train.sources + s.test.sources) == originals
    assert s.info == {"merged": "5"}
    train_files = {_digest(root / src) for src in s.train.sources}
    test_files = {_digest(root / src) for src in s.test.sources}
    assert len(train_files) + len(test_files) == 20 and not train_files & test_files  # no image in both splits
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "merged 5 of 25 image files that are another file again" in warning[0]
    for name, kept in (("a/z-hard.png", "a/1.png"), ("a/z-link.png", "a/0.png"), ("b/z-copy.png", "b/2.png"),
                       ("b/z-from-a.png", "a/3.png"), ("b/z-hard-copy.png", "b/2.png")):
        assert f"{name} (= {kept})" in warning[0]
    again = load_folder(root, max_in_memory_bytes=10 if lazy else 2 << 30)
    assert again.train.sources == s.train.sources and again.test.sources == s.test.sources  # deterministic


def test_a_file_in_both_train_and_test_folders_stays_in_train_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "given"
    for k, split in enumerate(("train", "test")):
        for cls in ("a", "b"):
            for i in range(3):
                save_png(root / split / cls / f"{i}.png", gray(100 * k + 10 * i + (cls == "b")))
    shutil.copyfile(root / "train" / "a" / "0.png", root / "test" / "b" / "leak.png")
    (root / "test" / "a" / "link.png").symlink_to(root / "train" / "b" / "1.png")
    s = load_folder(root)
    assert "train/a/0.png" in s.train.sources and "train/b/1.png" in s.train.sources
    assert sorted(s.test.sources) == [f"test/{c}/{i}.png" for c in "ab" for i in range(3)]
    assert s.info == {"merged": "2"}
    assert "merged 2 of 14 image files" in capsys.readouterr().err


def test_copies_of_a_bad_file_are_each_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bad-copies"
    for i in range(3):
        save_png(root / f"ok{i}.png", gray(i))
    save_png(root / "cut.png", np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8))
    (root / "cut.png").write_bytes((root / "cut.png").read_bytes()[:60])  # the header reads, the pixels do not
    shutil.copyfile(root / "cut.png", root / "cut-copy.png")
    with pytest.raises(DataError, match=r"2 of 5 image files cannot be read: cut-copy\.png \(.*\), cut\.png"):
        load_folder(root)
    s = load_folder(root, skip_bad=True)
    assert s.info == {"skipped": "2"} and "merged" not in capsys.readouterr().err


def test_one_bad_file_is_named_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    save_png(root / "ok.png", gray(1))
    save_png(root / "ok2.png", gray(2))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match=r"1 of 3 image files cannot be read: broken\.png \(not an image"):
        load_folder(root)
    # a single file read alone (search queries) still names its full path
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image") as err:
        load_image_file(root / "broken.png", 1, None)
    assert str((root / "broken.png").resolve()) in str(err.value)
    (root / "zero.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.jpg: cannot decode image \(empty file\)"):
        load_image_file(root / "zero.jpg", 3, (4, 4))


def png16_rgb(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), which Pillow cannot write."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


RGB = (200, 100, 50)
LUMA = 124  # ITU-R 601-2 luma of RGB, as Pillow's "L": 0.299 R + 0.587 G + 0.114 B


def _mode_file(folder: Path, mode: str, h: int, w: int) -> tuple[Path, list[int], int]:
    """An (h, w) image file of one Pillow mode; returns (path, expected RGB, tolerance)."""
    folder.mkdir(parents=True, exist_ok=True)
    solid = Image.new("RGB", (w, h), RGB)
    if mode == "I;16":
        path = folder / "i16.png"
        Image.fromarray(np.full((h, w), 257 * LUMA, np.uint16)).save(path)
        return path, [LUMA] * 3, 0
    if mode == "RGB;16":
        return png16_rgb(folder / "rgb16.png", np.full((h, w, 3), [257 * c for c in RGB], np.uint16)), list(RGB), 0
    if mode == "CMYK":
        path = folder / "cmyk.jpg"
        solid.convert("CMYK").save(path, quality=95)
        return path, list(RGB), 4
    if mode == "P":
        path = folder / "p.png"
        solid.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        return path, list(RGB), 0
    if mode == "LA-transparent":
        path = folder / "la0.png"
        Image.new("LA", (w, h), (30, 0)).save(path)
        return path, [255] * 3, 0  # fully transparent: white background
    if mode == "1":
        path = folder / "bw.png"
        Image.new("1", (w, h), 1).save(path)
        return path, [255] * 3, 0
    path = folder / f"{mode.lower()}.png"
    solid.convert(mode).save(path)
    gray_mode = mode in ("L", "LA")
    return path, [LUMA] * 3 if gray_mode else list(RGB), 0


MODES = ["L", "LA", "LA-transparent", "1", "RGB", "RGBA", "P", "I;16", "RGB;16", "CMYK"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_to_gray_and_rgb(tmp_path: Path, mode: str) -> None:
    path, rgb, tol = _mode_file(tmp_path, mode, 3, 5)
    with Image.open(path) as im:
        assert im.mode.startswith(mode.split("-")[0].split(";")[0][:1])  # really that kind of file
    t3 = load_image_file(path, 3, None)
    assert t3.shape == (3, 3, 5) and t3.dtype == torch.uint8
    assert (t3.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= tol, t3[:, 0, 0].tolist()
    luma = round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    t1 = load_image_file(path, 1, (2, 2))
    assert t1.shape == (1, 2, 2) and (t1.int() - luma).abs().max() <= tol + 1


def test_folder_of_mixed_modes_and_sizes_is_resized(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    sizes = [(4, 4), (6, 8), (5, 5), (3, 3), (7, 2), (2, 9), (9, 9), (4, 6), (3, 7), (8, 3)]
    expected = {}
    for mode, (h, w) in zip(MODES, sizes):
        path, rgb, tol = _mode_file(root / mode.replace(";", "_"), mode, h, w)
        expected[path.relative_to(root).as_posix()] = (rgb, tol)
    with pytest.raises(DataError, match="--image-size"):
        load_folder(root)
    s = load_folder(root, image_size=6)
    assert s.train.class_names is not None and len(s.train) + len(s.test) == len(MODES)
    for ds in (s.train, s.test):
        assert ds.images.shape[1:] == (3, 6, 6)  # some colour file -> every image RGB
        for src, img in zip(ds.sources, ds.images):
            rgb, tol = expected[src]
            assert (img.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= tol, (src, img[:, 0, 0].tolist())


def test_empty_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no images found \(looked for \.png, \.jpg"):
        load_folder(empty)
    (empty / "notes.txt").write_text("x")
    (empty / "sub").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_folder(empty)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nope")
    one = tmp_path / "one"
    save_png(one / "a.png", gray(1))
    with pytest.raises(DataError, match="holds 1 image"):
        load_folder(one)
    mixed = tmp_path / "mixedlayout"
    save_png(mixed / "a.png", gray(1))
    save_png(mixed / "cls" / "b.png", gray(1))
    with pytest.raises(DataError, match="both images and class subfolders"):
        load_folder(mixed)


def test_lazy_matches_eager(tmp_path: Path) -> None:
    root = tmp_path / "lazy"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(4):
            save_png(root / cls / f"{i}.png", rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    eager = load_folder(root)
    lazy = load_folder(root, max_in_memory_bytes=10)
    for e, z in ((eager.train, lazy.train), (eager.test, lazy.test)):
        assert isinstance(z.images, LazyFolderImages)
        assert z.images.shape == tuple(e.images.shape) == (len(e), 3, 5, 6)
        assert z.sources == e.sources and torch.equal(z.labels, e.labels)
        idx = torch.arange(len(e) - 1, -1, -1)
        assert torch.equal(z.get_batch(idx), e.images[idx])
    view = lazy.train.images.view([2, 0])
    assert torch.equal(view.get_batch(torch.tensor([0, 1])), eager.train.images[[2, 0]])


def test_load_image_file(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 1] = 77
    path = save_png(tmp_path / "q.PNG", rgb)
    t = load_image_file(path, 1, (3, 4))
    assert t.shape == (1, 3, 4) and t.dtype == torch.uint8
    assert torch.all(t == round(0.587 * 77))  # ITU-R 601-2 luma, as Pillow's "L"
    with pytest.raises(DataError, match="does not exist"):
        load_image_file(tmp_path / "missing.png", 3, None)
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        load_image_file(path, 2, None)


# ---------------------------------------------------------------- format detection


def test_load_path_detects_each_format(tmp_path: Path) -> None:
    x = rand_images(10)
    y = np.repeat(np.arange(2, dtype=np.uint8), 5)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    s = load_path(tmp_path / "d.npz")
    assert isinstance(s, DataSplits) and s.info == {"format": "npz", "path": str(tmp_path / "d.npz")}

    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    images = write_idx(idx_dir / "mine-images-idx3-ubyte.gz", x, gz=True)
    write_idx(idx_dir / "mine-labels-idx1-ubyte", y)
    s = load_path(str(images))
    assert s.info["format"] == "idx" and len(s.train) + len(s.test) == 10
    assert s.train.labels is not None  # paired by name
    s = load_path(idx_dir)
    assert s.info == {"format": "idx", "path": str(idx_dir)}
    with pytest.raises(DataError, match="IDX labels file"):
        load_path(idx_dir / "mine-labels-idx1-ubyte")
    odd_name = tmp_path / "pixels.bin"  # IDX recognised by its header alone
    write_idx(odd_name, x)
    assert load_path(odd_name).info["format"] == "idx"

    folder = tmp_path / "imgs"
    for i in range(3):
        save_png(folder / "only" / f"{i}.png", gray(i))
    s = load_path(folder)
    assert s.info["format"] == "folder" and s.train.class_names == ["only"]


def test_load_path_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unrecognised data format") as err:
        load_path(tmp_path / "notes.txt")
    assert "notes.txt" in str(err.value) and ".npz" in str(err.value) and "IDX" in str(err.value)
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"just text"))
    with pytest.raises(DataError, match="unrecognised data format"):
        load_path(tmp_path / "x.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="unrecognised data format"):
        load_path(empty)
    with pytest.raises(DataError, match=r"nope: does not exist"):
        load_path(tmp_path / "nope")
    with pytest.raises(ConfigError, match="--image-size"):
        load_path(tmp_path / "notes.txt", image_size=-3)


def test_load_path_image_size_for_arrays(tmp_path: Path) -> None:
    x = np.concatenate([np.full((3, 6, 8), 40, np.uint8), np.full((3, 6, 8), 200, np.uint8)])
    np.savez(tmp_path / "r.npz", images=x, labels=np.array([0, 0, 0, 1, 1, 1]))
    s = load_path(tmp_path / "r.npz", image_size=4)
    for ds in (s.train, s.test):
        assert ds.images.shape[1:] == (1, 4, 4)
        for img, label in zip(ds.images, ds.labels.tolist()):
            assert torch.all(img == (40 if label == 0 else 200))
    folder = tmp_path / "f"
    save_png(folder / "a.png", gray(5, 3, 3))
    save_png(folder / "b.png", gray(6, 7, 5))
    assert load_path(folder, image_size=2).train.images.shape[1:] == (1, 2, 2)


def test_resize_images() -> None:
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    assert resize_images(x, 4) is x
    x[:, :, :, 2:] = 255  # left half black, right half white
    y = resize_images(x, 2)
    assert y.shape == (3, 1, 2, 2) and y.dtype == torch.uint8
    assert torch.all(y[:, :, :, 0] < 64) and torch.all(y[:, :, :, 1] > 191)
    assert torch.equal(y[:, :, 0], y[:, :, 1])  # rows are unchanged by a horizontal edge
