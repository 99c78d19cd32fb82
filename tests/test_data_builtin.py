"""Tests for contrastkit.data.builtin: the embedded default, lookup order, digits, CIFAR by name."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from contrastkit.data import builtin
from contrastkit.data.builtin import (
    BUILTIN_NAMES,
    FASHION_MNIST_CLASSES,
    load_builtin,
    mirror_env,
)
from contrastkit.errors import ConfigError, DataError
from test_data_cifar import make_archive, write_cifar10, write_cifar100

REPO = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_debian_fashion = pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic 0 0 8 ndim, big-endian sizes, then the data."""
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, size: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-layout files (gzipped) with random content; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(arr), mtime=0))
    return arrays


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $CONTRASTKIT_DATA, an empty XDG cache, no system folders, no mirrors."""
    monkeypatch.delenv("CONTRASTKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", {})
    for name in BUILTIN_NAMES:
        monkeypatch.delenv(mirror_env(name), raising=False)
    return tmp_path


# ---------------------------------------------------------------- default (embedded)


def test_default_shapes_counts_and_speed() -> None:
    start = time.perf_counter()
    splits = load_builtin("default")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"the embedded default took {elapsed:.2f} s to load"
    assert splits.train.images.shape == (10000, 1, 28, 28)
    assert splits.test.images.shape == (2000, 1, 28, 28)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    assert torch.bincount(splits.train.labels).tolist() == [1000] * 10
    assert torch.bincount(splits.test.labels).tolist() == [200] * 10
    assert splits.train.class_names == FASHION_MNIST_CLASSES == splits.test.class_names
    assert len(set(splits.train.sources)) == 10000
    assert splits.train.sources[0].startswith("fashion-mnist:train:")
    assert splits.test.sources[0].startswith("fashion-mnist:t")
    assert splits.info["name"] == "default"
    # Real images, not blank or noise: Fashion-MNIST's mean pixel is about 73 with many zero pixels.
    mean = splits.train.images.float().mean().item()
    assert 60 < mean < 90
    assert (splits.train.images == 0).float().mean().item() > 0.3


def test_notice_names_source_licence_and_method() -> None:
    text = (REPO / "src/contrastkit/data/embedded/NOTICE.txt").read_text(encoding="utf-8")
    assert "Zalando Research" in text and "Fashion-MNIST" in text
    assert "Copyright © 2017 Zalando SE" in text
    assert "Permission is hereby granted, free of charge" in text
    assert "numpy.random.default_rng(0)" in text


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    """tools/make_embedded_default.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("make_embedded_default", REPO / "tools/make_embedded_default.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_debian_fashion
def test_default_is_the_stated_subset_of_the_real_files(tool: ModuleType) -> None:
    """Every embedded image equals the original at its recorded index, and the draw is reproducible."""
    from contrastkit.data.idx import read_idx_images, read_idx_labels

    splits = load_builtin("default")
    y_train = read_idx_labels(DEBIAN_FASHION / "train-labels-idx1-ubyte.gz")
    y_test = read_idx_labels(DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(tool.SEED)
    tr = tool.stratified_indices(y_train, 1000, rng)
    te = tool.stratified_indices(y_test, 200, rng)
    assert [f"fashion-mnist:train:{i}" for i in tr] == splits.train.sources
    assert [f"fashion-mnist:test:{i}" for i in te] == splits.test.sources
    x_test = read_idx_images(DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(splits.test.images[:, 0].numpy(), x_test[te])
    np.testing.assert_array_equal(splits.train.labels.numpy(), y_train[tr])


@needs_debian_fashion
def test_registry_digests_are_those_of_the_official_fashion_mnist_files(tool: ModuleType) -> None:
    """The Debian copies with the official gzip header restored hash to the registry's SHA-256 and MD5."""
    for remote in builtin.REMOTE["fashion-mnist"].files:
        data = tool.official_gzip(DEBIAN_FASHION / remote.name)
        assert hashlib.sha256(data).hexdigest() == remote.sha256, remote.name
        assert hashlib.md5(data).hexdigest() == remote.md5, remote.name
        assert gzip.decompress(data) == gzip.decompress((DEBIAN_FASHION / remote.name).read_bytes())


# ---------------------------------------------------------------- fashion-mnist lookup


@needs_debian_fashion
def test_fashion_mnist_from_the_debian_package(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", {"fashion-mnist": (DEBIAN_FASHION,)})
    splits = load_builtin("fashion-mnist", allow_download=False)
    assert splits.train.images.shape == (60000, 1, 28, 28)
    assert splits.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(splits.train.labels).tolist() == [6000] * 10
    assert splits.train.class_names == FASHION_MNIST_CLASSES
    assert splits.info["path"] == str(DEBIAN_FASHION)
    assert splits.train.name == "fashion-mnist:train"


def test_contrastkit_data_comes_first(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = isolated / "data"
    arrays = write_idx_set(data / "fashion-mnist", n_train=6, n_test=3)
    write_idx_set(isolated / "xdg" / "contrastkit" / "fashion-mnist", n_train=7, n_test=2)
    system = isolated / "system"
    write_idx_set(system, n_train=8, n_test=2)
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    monkeypatch.setenv("CONTRASTKIT_DATA", str(data))
    splits = load_builtin("fashion-mnist", allow_download=False)
    assert splits.train.images.shape == (6, 1, 4, 4)
    np.testing.assert_array_equal(splits.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(splits.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert splits.info["path"] == str(data / "fashion-mnist")


def test_then_the_user_cache_then_the_system_folder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = isolated / "system"
    write_idx_set(system, n_train=8, n_test=2)
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    assert len(load_builtin("fashion-mnist", allow_download=False).train) == 8
    write_idx_set(isolated / "xdg" / "contrastkit" / "fashion-mnist", n_train=7, n_test=2)
    assert len(load_builtin("fashion-mnist", allow_download=False).train) == 7


def test_incomplete_folder_is_skipped(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = isolated / "data"
    write_idx_set(data / "fashion-mnist", n_train=6, n_test=3)
    (data / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    system = isolated / "system"
    write_idx_set(system, n_train=8, n_test=2)
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    monkeypatch.setenv("CONTRASTKIT_DATA", str(data))
    assert len(load_builtin("fashion-mnist", allow_download=False).train) == 8


def test_not_found_without_download(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRASTKIT_DATA", str(isolated / "data"))
    with pytest.raises(DataError) as e:
        load_builtin("mnist", allow_download=False)
    msg = str(e.value)
    assert "'mnist'" in msg and str(isolated / "data" / "mnist") in msg
    assert "train-images-idx3-ubyte.gz" in msg


# ---------------------------------------------------------------- cifar by name


def test_cifar10_from_contrastkit_data(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = isolated / "data"
    x_tr, _, _, _ = write_cifar10(data / "cifar10" / "cifar-10-batches-py", n_per_batch=2)
    monkeypatch.setenv("CONTRASTKIT_DATA", str(data))
    splits = load_builtin("cifar10", allow_download=False)
    assert splits.train.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(splits.train.images.numpy().reshape(10, 3072), x_tr)
    assert splits.train.name == "cifar10:train" and splits.info["name"] == "cifar10"


def test_cifar100_batches_folder_directly_in_the_cache(isolated: Path) -> None:
    fine, _, names = write_cifar100(isolated / "xdg" / "contrastkit" / "cifar-100-python")
    splits = load_builtin("cifar100", allow_download=False)
    assert splits.train.labels.tolist() == fine and splits.train.class_names == names


def test_cifar_archive_placed_by_hand_is_extracted(isolated: Path) -> None:
    src = isolated / "src"
    write_cifar10(src / "cifar-10-batches-py", n_per_batch=2)
    home = isolated / "xdg" / "contrastkit" / "cifar10"
    home.mkdir(parents=True)
    make_archive(src, "cifar-10-batches-py", home / "cifar-10-python.tar.gz")
    splits = load_builtin("cifar10", allow_download=False)
    assert len(splits.train) == 10
    assert (home / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_wrong_cifar_variant_in_the_folder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = isolated / "data"
    write_cifar100(data / "cifar10" / "cifar-10-batches-py")  # CIFAR-100 files under the CIFAR-10 name
    monkeypatch.setenv("CONTRASTKIT_DATA", str(data))
    with pytest.raises(DataError, match="holds cifar100, expected cifar10"):
        load_builtin("cifar10", allow_download=False)


# ---------------------------------------------------------------- digits, names


def test_digits() -> None:
    splits = load_builtin("digits")
    assert len(splits.train) + len(splits.test) == 1797
    assert splits.train.images.shape[1:] == (1, 8, 8) and splits.test.images.shape[1:] == (1, 8, 8)
    assert len(splits.test) == 359  # round(0.2 * n) for every class
    assert splits.train.images.dtype == torch.uint8
    assert int(splits.train.images.max()) == 255 and int(splits.train.images.min()) == 0
    assert splits.train.class_names == [str(i) for i in range(10)]
    assert sorted(set(splits.test.labels.tolist())) == list(range(10))
    again = load_builtin("digits")
    assert splits.test.sources == again.test.sources
    from sklearn.datasets import load_digits

    first = int(splits.train.sources[0].split(":")[1])
    expected = np.rint(load_digits().images[first] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(splits.train.images[0, 0].numpy(), expected)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_builtin("fashion_mnist")
    assert "'fashion_mnist'" in str(e.value)
    for name in BUILTIN_NAMES:
        assert name in str(e.value)


def test_mirror_variable_names() -> None:
    assert mirror_env("fashion-mnist") == "CONTRASTKIT_MIRROR_FASHION_MNIST"
    assert mirror_env("cifar10") == "CONTRASTKIT_MIRROR_CIFAR10"
