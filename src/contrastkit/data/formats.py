"""Detect the format of a data path and read it with the matching reader.

Formats, tried in this order:

- ``.npz`` archive (:mod:`contrastkit.data.npz`);
- CIFAR-10/100 python folder or archive (:mod:`contrastkit.data.cifar`);
- an IDX images file, named ``*-ubyte[.gz]`` or recognised by its header,
  paired with the labels file of the matching name in the same folder;
- a folder of IDX files (:func:`contrastkit.data.idx.load_idx_dir`);
- an image folder (:mod:`contrastkit.data.folder`).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import zlib
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.data.folder import check_image_size, load_folder
from contrastkit.data.folder_scan import IMAGE_EXTENSIONS, looks_like_image_folder
from contrastkit.data.idx import GZIP_MAGIC, is_idx_name, labels_file_for, load_idx_dir, split_idx_file
from contrastkit.data.npz import load_npz
from contrastkit.errors import DataError

ACCEPTED_FORMATS = (
    ".npz archive with 'images' (and optional 'labels')",
    "IDX images file *-images-idx3-ubyte[.gz] (labels file paired by name)",
    "folder of IDX files (MNIST / Fashion-MNIST layout)",
    "CIFAR-10/100 python folder or .tar.gz archive",
    f"image folder, flat or root/<class>/ ({', '.join(IMAGE_EXTENSIONS)})",
)
_RESIZE_CHUNK_BYTES = 64 << 20  # float32 working memory per resize chunk


def _cifar() -> ModuleType | None:
    """The CIFAR reader module, or None while it does not exist."""
    try:
        return importlib.import_module("contrastkit.data.cifar")
    except ModuleNotFoundError as e:
        if e.name != "contrastkit.data.cifar":
            raise
        return None


def _idx_ndim(path: Path) -> int | None:
    """The dimension count of an IDX file (raw or gzip), or None when it is not IDX."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == GZIP_MAGIC:
            with gzip.open(path, "rb") as g:
                head = g.read(4)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) == 4 and head[0] == 0 and head[1] == 0 and head[3] in (1, 3):
        return head[3]
    return None


def _has_idx_files(folder: Path) -> bool:
    return any(
        is_idx_name(p.name) and not p.name.startswith(".") and p.is_file() for p in folder.iterdir()
    )


def _unknown(path: Path) -> DataError:
    listing = "".join(f"\n  - {f}" for f in ACCEPTED_FORMATS)
    return DataError(f"{path}: unrecognised data format; accepted formats:{listing}")


def _read(path: Path, image_size: int | None, skip_bad: bool = False) -> tuple[DataSplits, str]:
    """(splits, format name) for an existing path; ``skip_bad`` applies to image folders."""
    cifar = _cifar()
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_npz(path), "npz"
        if cifar is not None and cifar.is_cifar(path):
            return cifar.load_cifar(path), "cifar"
        ndim = _idx_ndim(path)
        if ndim == 1:
            raise DataError(f"{path}: is an IDX labels file; pass the images file (*-images-idx3-ubyte)")
        if ndim == 3 or is_idx_name(path.name):
            name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
            return split_idx_file(path, labels_file_for(path), name), "idx"
        raise _unknown(path)
    if cifar is not None and cifar.is_cifar(path):
        return cifar.load_cifar(path), "cifar"
    if _has_idx_files(path):
        return load_idx_dir(path), "idx"
    if looks_like_image_folder(path):
        return load_folder(path, image_size=image_size, skip_bad=skip_bad), "folder"
    raise _unknown(path)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to ``size`` x ``size`` (bilinear, antialiased).

    Args:
        images: uint8 tensor (N, C, H, W).
        size: the output height and width.

    Returns:
        uint8 tensor (N, C, size, size); ``images`` itself when already that size.
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    out = torch.empty((n, c, size, size), dtype=torch.uint8)  # (N, C, size, size)
    chunk = max(1, _RESIZE_CHUNK_BYTES // (4 * c * max(h * w, size * size)))
    for s in range(0, n, chunk):
        x = images[s : s + chunk].float()  # (B, C, H, W)
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)  # (B, C, size, size)
    return out


def _resize_dataset(ds: ImageDataset, size: int) -> ImageDataset:
    if not isinstance(ds.images, torch.Tensor):
        raise DataError(f"{ds.name}: cannot resize lazily decoded images after loading")
    return dataclasses.replace(ds, images=resize_images(ds.images, size))


def resize_splits(splits: DataSplits, size: int) -> DataSplits:
    """Both splits of an in-memory data set resized to ``size`` x ``size``."""
    return DataSplits(
        train=_resize_dataset(splits.train, size),
        test=_resize_dataset(splits.test, size),
        info=splits.info,
    )


def load_path(path: str | Path, *, image_size: int | None = None, skip_bad: bool = False) -> DataSplits:
    """Read a data set in any supported format (see the module docstring).

    Args:
        path: a file or folder.
        image_size: resize every image to ``image_size`` x ``image_size``, or
            None to keep the stored size.
        skip_bad: image folders only: leave out image files that cannot be
            decoded (reported on stderr) instead of stopping with an error
            that lists them. Array formats (IDX, CIFAR, .npz) have no per-item
            files to skip; a bad file there is always an error.

    Returns:
        The train and test splits, with ``info["format"]`` (``"npz"``,
        ``"idx"``, ``"cifar"`` or ``"folder"``) and ``info["path"]``.

    Raises:
        DataError: the path does not exist, is of no accepted format (the
            message lists them), or its reader rejects it.
        ConfigError: ``image_size`` is not a positive integer.
    """
    check_image_size(image_size)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    splits, fmt = _read(path, image_size, skip_bad)
    if image_size is not None and fmt != "folder":
        splits = resize_splits(splits, image_size)
    splits.info = {**splits.info, "format": fmt, "path": str(path)}
    return splits
