"""Reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT") is a
4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the payload in C order. Only the unsigned-byte
type (``0x08``) is used by the image data sets we read. Files may be gzip
compressed; compression is recognised by its magic bytes, not by the name.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from contrastkit.data.dataset import DataSplits, ImageDataset, split_dataset
from contrastkit.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08

# "train-images-idx3-ubyte", "train-images.idx3-ubyte", optionally ".gz".
_IMAGES_NAME = re.compile(r"^(?P<prefix>.*?)[-_.]?images[-_.]idx3-ubyte(\.gz)?$", re.IGNORECASE)
_ANY_IDX_NAME = re.compile(r"idx[13]-ubyte(\.gz)?$", re.IGNORECASE)


def _read_bytes(path: Path) -> bytes:
    """The whole file, gunzipped when it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from e
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from e
    return data


def _read_idx(path: str | Path, ndim: int, what: str) -> np.ndarray:
    """Parse one unsigned-byte IDX file with ``ndim`` dimensions.

    Args:
        path: the file, raw or gzip compressed.
        ndim: the number of dimensions the caller expects.
        what: a description of the expected content for error messages.

    Returns:
        A writable uint8 array with the file's dimensions.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header (4 bytes magic number)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: not an IDX file: the magic number starts with "
            f"0x{data[0]:02x} 0x{data[1]:02x}, expected 0x00 0x00"
        )
    if data[2] != IDX_UBYTE:
        raise DataError(
            f"{path}: IDX element type is 0x{data[2]:02x}; only unsigned byte (0x08) is supported"
        )
    if data[3] != ndim:
        raise DataError(f"{path}: IDX file has {data[3]} dimensions, expected {ndim} ({what})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # exact: a product of three uint32 sizes can overflow int64
    actual = len(data) - header
    if actual < expected:
        raise DataError(
            f"{path}: truncated IDX file: header says {' x '.join(map(str, dims))} "
            f"= {expected} bytes of data, file has {actual}"
        )
    if actual > expected:
        raise DataError(
            f"{path}: IDX file is longer than its header says: {' x '.join(map(str, dims))} "
            f"= {expected} bytes of data, file has {actual}"
        )
    # frombuffer over bytes is read-only; copy once so torch.from_numpy may share it.
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an ``*-idx3-ubyte`` images file (raw or gzip).

    Returns:
        uint8 array (N, H, W).

    Raises:
        DataError: the file is missing, not IDX, not unsigned bytes, not 3-D,
            or its length disagrees with its header.
    """
    return _read_idx(path, 3, "images N x H x W")


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an ``*-idx1-ubyte`` labels file (raw or gzip).

    Returns:
        uint8 array (N,).

    Raises:
        DataError: as for :func:`read_idx_images`, with 1 dimension expected.
    """
    return _read_idx(path, 1, "labels N")


def is_idx_name(name: str) -> bool:
    """Whether a file name looks like an IDX file (``*idx1-ubyte`` / ``*idx3-ubyte``, optional ``.gz``)."""
    return _ANY_IDX_NAME.search(name) is not None


def labels_file_for(images: Path) -> Path | None:
    """The labels file paired with an images file by name, if it exists.

    ``X-images-idx3-ubyte[.gz]`` pairs with ``X-labels-idx1-ubyte`` or
    ``X-labels-idx1-ubyte.gz`` in the same folder (raw preferred).
    """
    name = images.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    i = name.lower().rfind("images")
    j = name.lower().rfind("idx3")
    if i < 0 or j < 0:
        return None
    labels = name[:i] + "labels" + name[i + 6 : j] + "idx1" + name[j + 4 :]
    for candidate in (images.parent / labels, images.parent / (labels + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_idx_pair(
    images: Path, labels: Path | None, name: str, class_names: list[str] | None = None
) -> ImageDataset:
    """One data set from an images file and an optional labels file.

    Args:
        images: the ``*-idx3-ubyte[.gz]`` file.
        labels: the matching ``*-idx1-ubyte[.gz]`` file, or None.
        name: the data set name, e.g. ``"fashion-mnist:train"``.
        class_names: names of the label values, or None.

    Returns:
        An in-memory :class:`ImageDataset` with 1 channel; item ``i``'s source
        is ``"{images.name}:{i}"``.
    """
    images = Path(images)
    x = read_idx_images(images)  # (N, H, W)
    n, h, w = x.shape
    if n == 0 or h == 0 or w == 0:
        raise DataError(f"{images}: IDX images file holds no pixels (shape {n} x {h} x {w})")
    y: torch.Tensor | None = None
    if labels is not None:
        labels = Path(labels)
        y_np = read_idx_labels(labels)
        if len(y_np) != n:
            raise DataError(f"{images} has {n} images but {labels} has {len(y_np)} labels")
        y = torch.from_numpy(y_np).to(torch.int64)
        if class_names is not None and int(y.max()) >= len(class_names):
            raise DataError(
                f"{labels}: label {int(y.max())} is out of range for {len(class_names)} class names"
            )
    return ImageDataset(
        images=torch.from_numpy(x).unsqueeze(1),  # (N, H, W) -> (N, 1, H, W)
        labels=y,
        class_names=class_names,
        sources=[f"{images.name}:{i}" for i in range(n)],
        name=name,
    )


def _idx_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(images files, labels files) in ``root``; raw preferred over ``.gz`` twins."""
    by_stem: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_file() or not is_idx_name(p.name):
            continue
        stem = p.name[:-3] if p.name.lower().endswith(".gz") else p.name
        if stem not in by_stem or by_stem[stem].name.lower().endswith(".gz"):
            by_stem[stem] = p
    files = sorted(by_stem.values())
    imgs = [p for p in files if "idx3" in p.name.lower()]
    labs = [p for p in files if "idx1" in p.name.lower()]
    return imgs, labs


def _prefix(images: Path) -> str:
    """``"train"`` for ``train-images-idx3-ubyte.gz``; the full name when it has no prefix."""
    m = _IMAGES_NAME.match(images.name)
    return m.group("prefix").lower() if m and m.group("prefix") else images.name


def load_idx_dir(root: Path, class_names: list[str] | None = None) -> DataSplits:
    """Read a folder of IDX files.

    Either the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), which defines the
    train and test splits, or exactly one images file (plus an optional labels
    file) of any name, split with :func:`split_dataset`.

    Args:
        root: the folder.
        class_names: names of the label values, or None.

    Returns:
        The train and test splits (``info`` left empty for the caller).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    imgs, labs = _idx_files(root)
    if not imgs:
        raise DataError(f"{root}: no IDX images file (*-images-idx3-ubyte[.gz]) in this folder")
    by_prefix = {_prefix(p): p for p in imgs}
    if "train" in by_prefix and "t10k" in by_prefix:
        tr_img, te_img = by_prefix["train"], by_prefix["t10k"]
        tr_lab, te_lab = labels_file_for(tr_img), labels_file_for(te_img)
        if (tr_lab is None) != (te_lab is None):
            have, lack = (tr_img, te_img) if tr_lab is not None else (te_img, tr_img)
            raise DataError(f"{root}: found a labels file for {have.name} but none for {lack.name}")
        train = load_idx_pair(tr_img, tr_lab, f"{root.name}:train", class_names)
        test = load_idx_pair(te_img, te_lab, f"{root.name}:test", class_names)
        if train.shape != test.shape:
            raise DataError(
                f"{root}: {tr_img.name} has images of shape {train.shape[1:]} "
                f"but {te_img.name} has {test.shape[1:]}"
            )
        return DataSplits(train=train, test=test)
    if len(imgs) > 1:
        raise DataError(
            f"{root}: found {len(imgs)} IDX images files ({', '.join(p.name for p in imgs)}); "
            "expected train-* and t10k-* files, or exactly one images file"
        )
    lab = labels_file_for(imgs[0])
    if lab is None and len(labs) == 1:
        lab = labs[0]
    return split_idx_file(imgs[0], lab, root.name, class_names)


def split_idx_file(
    images: Path, labels: Path | None, name: str, class_names: list[str] | None = None
) -> DataSplits:
    """One images file (+ optional labels) split into train and test by :func:`split_dataset`."""
    ds = load_idx_pair(images, labels, name, class_names)
    if len(ds) < 2:
        raise DataError(f"{images}: holds 1 image; need at least 2 to hold some out for testing")
    return split_dataset(ds)
