"""Reader for ``.npz`` archives of image arrays.

Keys: ``images`` (required), ``labels``, ``class_names``, ``test_images`` and
``test_labels`` (optional). The archive is opened with ``allow_pickle=False``,
so it can hold plain arrays only, never Python objects.

Layout rule for 4-D arrays: channels-last (N, H, W, C) when the last axis has
1, 3 or 4 entries; otherwise channels-first (N, C, H, W) when axis 1 has 1, 3
or 4 entries; otherwise an error. Only images of at most 4 pixels in width
are ambiguous, and they are read as channels-last. 3-D arrays are grayscale
(N, H, W). Four channels are RGBA; the alpha channel is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contrastkit.data.dataset import DataSplits, ImageDataset, split_dataset
from contrastkit.errors import DataError

CHANNEL_COUNTS = (1, 3, 4)
KNOWN_KEYS = ("images", "labels", "class_names", "test_images", "test_labels")


def _get(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray | None:
    """Array ``key`` of the archive, or None when absent."""
    if key not in archive.files:
        return None
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(
                f"{path}: key '{key}' holds a Python object array, which contrastkit refuses "
                "to unpickle (allow_pickle=False); save plain numeric or string arrays"
            ) from e
        raise DataError(f"{path}: cannot read key '{key}' ({e})") from e
    except Exception as e:  # untrusted bytes: zlib.error, NotImplementedError (compression), EOFError, ...
        raise DataError(f"{path}: cannot read key '{key}' ({type(e).__name__}: {e})") from e


def to_nchw_uint8(x: np.ndarray, where: str) -> torch.Tensor:
    """Convert an image array to a uint8 tensor (N, C, H, W) with C in {1, 3}.

    Args:
        x: (N, H, W), (N, H, W, C) or (N, C, H, W); uint8, or float in [0, 1].
        where: ``"file: key"`` to name in error messages.

    Returns:
        uint8 tensor (N, C, H, W); float values become ``round(x * 255)``.
    """
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4:
        if x.shape[-1] in CHANNEL_COUNTS:
            x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        elif x.shape[1] not in CHANNEL_COUNTS:
            raise DataError(
                f"{where}: cannot tell the channel axis of shape {x.shape}: "
                "expected (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"
            )
    else:
        raise DataError(
            f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {x.shape}"
        )
    if x.shape[1] == 4:
        x = x[:, :3]  # RGBA -> RGB: alpha dropped
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise DataError(f"{where}: holds no pixels (shape {x.shape})")
    if x.dtype == np.uint8:
        out = np.ascontiguousarray(x)
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise DataError(
                f"{where}: float images must lie in [0, 1], found values in [{lo}, {hi}]; "
                "divide by 255, or save as uint8"
            )
        out = np.rint(x.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise DataError(f"{where}: images must be uint8, or float in [0, 1]; got dtype {x.dtype}")
    return torch.from_numpy(out)


def _labels(y: np.ndarray, n: int, where: str, class_names: list[str] | None) -> torch.Tensor:
    """Validate a label array against ``n`` images and the class names."""
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: expected {n} labels (one per image), got shape {y.shape}")
    if n and int(y.min()) < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    if n and class_names is not None and int(y.max()) >= len(class_names):
        raise DataError(f"{where}: label {int(y.max())} is out of range for {len(class_names)} class names")
    return torch.from_numpy(y.astype(np.int64))


def _dataset(
    path: Path, x: np.ndarray, y: np.ndarray | None, keys: tuple[str, str],
    class_names: list[str] | None, name: str,
) -> ImageDataset:
    """One split from an images array and optional labels array."""
    images = to_nchw_uint8(x, f"{path}: {keys[0]}")
    n = images.shape[0]
    labels = None if y is None else _labels(y, n, f"{path}: {keys[1]}", class_names)
    return ImageDataset(
        images=images,
        labels=labels,
        class_names=class_names,
        sources=[f"{path.name}:{keys[0]}:{i}" for i in range(n)],
        name=name,
    )


def load_npz(path: Path) -> DataSplits:
    """Read an ``.npz`` archive of images (see the module docstring for the keys).

    Returns:
        The splits: ``test_images`` / ``test_labels`` when present, else a
        deterministic held-out split of ``images``. Sources are
        ``"{file}:{key}:{index}"``.

    Raises:
        DataError: unreadable archive, missing ``images`` key (the message lists
            the keys found), object arrays, bad shapes, dtypes or values.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # untrusted bytes: BadZipFile, ValueError, EOFError, struct.error, ...
        raise DataError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: is a single .npy array, not an .npz archive; "
            "save with numpy.savez(path, images=..., labels=...)"
        )
    with archive:
        if "images" not in archive.files:
            raise DataError(
                f"{path}: no 'images' key; keys found: {', '.join(archive.files) or 'none'} "
                f"(known keys: {', '.join(KNOWN_KEYS)})"
            )
        arrays = {k: _get(archive, k, path) for k in KNOWN_KEYS}
    class_names = None
    if arrays["class_names"] is not None:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(
                f"{path}: class_names must be a 1-D string array, got {names.dtype} {names.shape}"
            )
        class_names = [str(s.decode() if isinstance(s, bytes) else s) for s in names.tolist()]
    if arrays["test_labels"] is not None and arrays["test_images"] is None:
        raise DataError(f"{path}: has 'test_labels' but no 'test_images'")
    stem = path.stem
    if arrays["test_images"] is None:
        ds = _dataset(path, arrays["images"], arrays["labels"], ("images", "labels"), class_names, stem)
        if len(ds) < 2:
            raise DataError(f"{path}: holds 1 image; need at least 2 to hold some out for testing")
        return split_dataset(ds)
    if (arrays["labels"] is None) != (arrays["test_labels"] is None):
        have = "labels" if arrays["labels"] is not None else "test_labels"
        lack = "test_labels" if have == "labels" else "labels"
        raise DataError(f"{path}: has '{have}' but no '{lack}'; give labels for both splits or neither")
    train = _dataset(
        path, arrays["images"], arrays["labels"], ("images", "labels"), class_names, f"{stem}:train"
    )
    test = _dataset(
        path, arrays["test_images"], arrays["test_labels"], ("test_images", "test_labels"),
        class_names, f"{stem}:test",
    )
    if train.shape != test.shape:
        raise DataError(f"{path}: images are {train.shape} (C, H, W) but test_images are {test.shape}")
    return DataSplits(train=train, test=test)
