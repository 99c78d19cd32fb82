"""Reader for folders of image files (PNG, JPEG, WebP, BMP), decoded with Pillow.

Layouts:

- ``root/<class>/**/*.png``: labelled; class names are the sorted subfolder names.
- ``root/*.png``: unlabelled.
- ``root/train/...`` with ``root/test/...`` (or ``root/val/...``): the two
  splits, each in one of the layouts above; class names come from train. A
  ``root/train`` without a test or val folder is read alone and split.

Without train/test folders a deterministic stratified 10 % is held out for
testing (:func:`held_out_indices`). Hidden files and folders (names starting
with ``.``) and files with other extensions are ignored.

One file under several names (symbolic or hard links, byte-identical
copies; :mod:`contrastkit.data.duplicates`) is read once: the first name in
item order (train before test, classes and names sorted) is kept, the others
are merged into it before the held-out split is drawn, so one image never
lands in both splits; one warning line on stderr says how many were merged
and ``info["merged"]`` holds the count.

Bad files (zero bytes, not an image, corrupt or truncated pixel data, a
symbolic link whose target is missing or that loops): every
image is opened and decoded once while loading, so all bad files are found
before any training starts. By default loading stops with one
:class:`~contrastkit.errors.DataError` that lists them (the first
:data:`~contrastkit.data.folder_scan.BAD_FILES_LISTED`, then a count); with ``skip_bad=True``
(``--skip-bad``) they are left out, and one warning line on stderr says how
many and names the first few. The held-out split is drawn from the files whose
headers read, so skipping a file whose pixel data is damaged only removes that
file from its split.

Pixels: the data set has 1 channel when every image is grayscale (judged from
the file headers, before any pixel is decoded), else 3 (RGB). 16-bit images
are scaled to 8 bits (``round(v * 255 / 65535)``); transparent images are
composited on a white background, as a browser shows them.

The files are found by :mod:`contrastkit.data.folder_scan` and decoded by
:mod:`contrastkit.data.decode`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Container

import torch
from tqdm import tqdm

from contrastkit.data.dataset import DataSplits, ImageDataset, held_out_indices
from contrastkit.data.decode import LazyFolderImages, _decode, _read_header, _reason
from contrastkit.data.duplicates import find_duplicates
from contrastkit.data.folder_scan import _common_size, _split_items, _warn_merged, _warn_skipped, bad_files_error
from contrastkit.errors import ConfigError, DataError

PROGRESS_MIN_ITEMS = 5000  # show a progress bar (stderr) above this many files


def check_image_size(image_size: int | None) -> None:
    """Raise a ConfigError unless ``image_size`` is None or a positive integer."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"--image-size must be a positive integer or None, got {image_size!r}")


def _decode_all(
    files: list[Path], channels: int, size: tuple[int, int], desc: str, keep: bool, bad: dict[Path, str]
) -> torch.Tensor | None:
    """Decode every file; record the ones that fail in ``bad`` (path -> reason).

    Args:
        files: the files, in item order.
        channels: 1 or 3.
        size: (H, W) every image is decoded to.
        desc: the progress bar's label.
        keep: return the pixels (uint8 (N, C, H, W); rows of bad files are
            zeros) or only check that every file decodes (returns None).
        bad: filled with the files that cannot be decoded.
    """
    out = torch.zeros((len(files), channels, *size), dtype=torch.uint8) if keep else None  # (N, C, H, W)
    bar = tqdm(files, desc=desc, disable=len(files) <= PROGRESS_MIN_ITEMS, leave=False)
    for i, path in enumerate(bar):
        try:
            arr = _decode(path, channels, size)
        except DataError as e:
            bad[path] = _reason(path, e.__cause__)
            continue
        if out is not None:
            out[i] = torch.from_numpy(arr)
    return out


def _read_headers(files: list[Path], bad: dict[Path, str]) -> dict[Path, tuple[bool, tuple[int, int]]]:
    """(is grayscale, (H, W)) of every file whose header reads; the others go into ``bad``."""
    quiet = len(files) <= PROGRESS_MIN_ITEMS
    headers: dict[Path, tuple[bool, tuple[int, int]]] = {}
    for p in tqdm(files, desc="reading headers", disable=quiet, leave=False):
        try:
            headers[p] = _read_header(p)
        except DataError as e:
            bad[p] = _reason(p, e.__cause__)
    return headers


def load_folder(
    root: Path,
    image_size: int | None = None,
    max_in_memory_bytes: int = 2 << 30,
    skip_bad: bool = False,
) -> DataSplits:
    """Read an image folder (layouts and bad-file handling in the module docstring).

    Args:
        root: the folder.
        image_size: resize every image to ``image_size`` x ``image_size``
            (bilinear, antialiased); None requires all images to share a size.
        max_in_memory_bytes: decode everything into memory when the decoded
            uint8 pixels of both splits fit in this many bytes; otherwise the
            splits hold :class:`LazyFolderImages` that decode on demand (every
            file is still decoded once while loading, to find bad files).
        skip_bad: leave out files that cannot be decoded (one warning line on
            stderr) instead of stopping with an error that lists them.

    Returns:
        The train and test splits; sources are paths relative to ``root``;
        ``info["skipped"]`` is the number of bad files left out (as a string)
        when ``skip_bad`` skipped any, ``info["merged"]`` the number of names
        merged into a file read under another name (links, identical copies).

    Raises:
        DataError: no images, a layout problem, images of differing sizes
            without ``image_size``, or (without ``skip_bad``) files that cannot
            be decoded: one error naming them all (up to
            :data:`~contrastkit.data.folder_scan.BAD_FILES_LISTED`).
    """
    root = Path(root)
    check_image_size(image_size)
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'image folder does not exist'}")
    train_dir, test_dir = root, None
    if (root / "train").is_dir():
        train_dir = root / "train"
        test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    tr_files, tr_labels, class_names = _split_items(train_dir, None)
    te_files: list[Path] = []
    te_labels: list[int] | None = None
    if test_dir is not None:
        te_files, te_labels, _ = _split_items(test_dir, class_names)
        if (tr_labels is None) != (te_labels is None):
            kinds = ["class subfolders", "a flat folder"]
            if tr_labels is None:
                kinds.reverse()
            raise DataError(f"{root}: {train_dir.name} has {kinds[0]} but {test_dir.name} has {kinds[1]}")
    total = len(tr_files) + len(te_files)
    bad: dict[Path, str] = {}
    headers = _read_headers(tr_files + te_files, bad)
    tr_files, tr_labels = _without(tr_files, tr_labels, bad)
    te_files, te_labels = _without(te_files, te_labels, bad)
    merged = find_duplicates(tr_files + te_files)  # before the held-out split: one file, one split
    tr_files, tr_labels = _without(tr_files, tr_labels, merged)
    te_files, te_labels = _without(te_files, te_labels, merged)
    good = tr_files + te_files
    if not good:
        raise bad_files_error(root, bad, total, skip_bad)
    channels = 1 if all(headers[p][0] for p in good) else 3
    if image_size is not None:
        size = (image_size, image_size)
    else:
        size = _common_size(good, [headers[p][1] for p in good])

    if test_dir is None:
        if len(tr_files) < 2:
            if bad:
                raise bad_files_error(root, bad, total, skip_bad)
            again = f" (and {len(merged)} other name{'s' * (len(merged) > 1)} for it, merged)" if merged else ""
            raise DataError(f"{root}: holds 1 image{again}; need at least 2 to hold some out for testing")
        y = None if tr_labels is None else torch.tensor(tr_labels, dtype=torch.int64)
        tr_idx, te_idx = held_out_indices(len(tr_files), y)
        te_files = [tr_files[i] for i in te_idx]
        te_labels = None if tr_labels is None else [tr_labels[i] for i in te_idx]
        tr_files = [tr_files[i] for i in tr_idx]
        tr_labels = None if tr_labels is None else [tr_labels[i] for i in tr_idx]

    lazy = len(good) * channels * size[0] * size[1] > max_in_memory_bytes
    decoded = {
        split: _decode_all(files, channels, size, f"decoding {split}", not lazy, bad)
        for split, files in (("train", tr_files), ("test", te_files))
    }
    for name, kept in merged.items():  # another name of a file that does not decode is as bad
        if kept in bad:
            bad[name] = bad[kept]
    merged = {name: kept for name, kept in merged.items() if name not in bad}
    if bad and not skip_bad:
        raise bad_files_error(root, bad, total)

    def make(split_files: list[Path], labels: list[int] | None, split: str) -> ImageDataset:
        keep = [i for i, p in enumerate(split_files) if p not in bad]
        split_files, labels = _without(split_files, labels, bad)
        images: torch.Tensor | LazyFolderImages
        pixels = decoded[split]
        if pixels is None:
            images = LazyFolderImages(split_files, channels, size)
        else:
            images = pixels if len(keep) == len(pixels) else pixels[keep]  # (N, C, H, W)
        return ImageDataset(
            images=images,
            labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
            class_names=class_names,
            sources=[p.relative_to(root).as_posix() for p in split_files],
            name=f"{root.name}:{split}",
        )

    splits = DataSplits(train=make(tr_files, tr_labels, "train"), test=make(te_files, te_labels, "test"))
    if bad:
        if len(splits.train) == 0:
            raise bad_files_error(root, bad, total, skip_bad)
        _warn_skipped(root, bad, total)
        splits.info = {"skipped": str(len(bad))}
    if merged:
        _warn_merged(root, merged, total)
        splits.info = {**splits.info, "merged": str(len(merged))}
    return splits


def _without(
    files: list[Path], labels: list[int] | None, drop: Container[Path]
) -> tuple[list[Path], list[int] | None]:
    """``files`` and their ``labels`` without those in ``drop`` (bad files, merged names)."""
    keep = [i for i, p in enumerate(files) if p not in drop]
    return [files[i] for i in keep], None if labels is None else [labels[i] for i in keep]
