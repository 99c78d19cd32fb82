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
:data:`BAD_FILES_LISTED`, then a count); with ``skip_bad=True``
(``--skip-bad``) they are left out, and one warning line on stderr says how
many and names the first few. The held-out split is drawn from the files whose
headers read, so skipping a file whose pixel data is damaged only removes that
file from its split.

Pixels: the data set has 1 channel when every image is grayscale (judged from
the file headers, before any pixel is decoded), else 3 (RGB). 16-bit images
are scaled to 8 bits (``round(v * 255 / 65535)``); transparent images are
composited on a white background, as a browser shows them.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Container, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from contrastkit.data.dataset import DataSplits, ImageDataset, held_out_indices
from contrastkit.data.duplicates import find_duplicates
from contrastkit.errors import ConfigError, DataError
from contrastkit.sources import printable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROGRESS_MIN_ITEMS = 5000  # show a progress bar (stderr) above this many files
BAD_FILES_LISTED = 20  # bad files named in the error; the rest are counted ("and N more")
SKIPPED_FILES_NAMED = 5  # skipped files named in the --skip-bad warning

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link leads to no file ("dangling symbolic link ...", "symbolic link loop"); None otherwise."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
        return None
    except OSError as err:
        try:
            target = printable(os.readlink(path))
        except OSError:
            target = "?"
        if err.errno == errno.ELOOP:
            return f"symbolic link loop through {target}"
        return f"dangling symbolic link: its target {target} does not exist"


def _reason(path: Path, e: BaseException | None) -> str:
    """Why ``path`` cannot be decoded, in a few words on one line ("empty file", Pillow's reason)."""
    link = _link_problem(path)
    if link is not None:
        return link
    try:
        if path.stat().st_size == 0:
            return "empty file"
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can read"
    text = " ".join(str(e).split()) if e is not None else ""
    return text or type(e).__name__


def _decode_error(path: Path, e: Exception) -> DataError:
    """A DataError naming the file and Pillow's reason."""
    reason = _reason(path, e)
    detail = f" ({reason})" if reason == "empty file" else f": {reason}"
    try:
        shown = path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        shown = Path(os.path.abspath(path))
    return DataError(f"{printable(str(shown))}: cannot decode image{detail}")


def _is_gray(im: Image.Image) -> bool:
    """Whether an opened (not decoded) image is grayscale, from its mode and palette."""
    if im.mode in _GRAY_MODES:
        return True
    if im.mode in ("P", "PA") and im.palette is not None:
        k = len(im.palette.mode)  # "RGB" -> 3 bytes per entry, "RGBA" -> 4
        pal = np.frombuffer(bytes(im.palette.palette), dtype=np.uint8)
        if k < 3 or pal.size == 0 or pal.size % k:
            return False
        pal = pal.reshape(-1, k)  # (entries, k)
        return bool(np.all(pal[:, 0] == pal[:, 1]) and np.all(pal[:, 1] == pal[:, 2]))
    return False


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` that refuses images above Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``).

    Pillow only warns between 1x and 2x the limit; a file whose header claims
    that many pixels is far larger than any training image and is treated as
    bad (a possible decompression bomb) instead of allocating the memory.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            yield im


def _read_header(path: Path) -> tuple[bool, tuple[int, int]]:
    """(is grayscale, (H, W)) of one image file, without decoding its pixels."""
    try:
        with _open_image(path) as im:
            return _is_gray(im), (im.height, im.width)
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ...) on bad files
        raise _decode_error(path, e) from e


def _convert(im: Image.Image, channels: int) -> Image.Image:
    """A decoded image as 8-bit "L" (channels 1) or "RGB" (channels 3)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8))  # 16 -> 8 bits, rounded
    elif im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("L" if channels == 1 else "RGB")


def _decode(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one file to uint8 (C, H, W), resized to ``size`` = (H, W) when given."""
    try:
        with _open_image(path) as im:
            im.load()
            out = _convert(im, channels)
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ...) on bad files
        raise _decode_error(path, e) from e
    if size is not None and (out.height, out.width) != size:
        # Pillow's bilinear filter widens its support when shrinking: antialiased.
        out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.array(out)  # (H, W) or (H, W, 3); a writable copy
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # -> (C, H, W)


def check_image_size(image_size: int | None) -> None:
    """Raise a ConfigError unless ``image_size`` is None or a positive integer."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"--image-size must be a positive integer or None, got {image_size!r}")


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")


def load_image_file(path: Path, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """Decode one image file the way :func:`load_folder` decodes its images.

    Args:
        path: the image file.
        channels: 1 (grayscale) or 3 (RGB).
        size: (H, W) to resize to (bilinear, antialiased), or None to keep it.

    Returns:
        uint8 tensor (C, H, W).
    """
    path = Path(path)
    _check_channels(channels)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    return torch.from_numpy(np.ascontiguousarray(_decode(path, channels, size)))


class LazyFolderImages:
    """Image files decoded on demand (implements the ``LazyImages`` protocol).

    The paths are kept in two numpy arrays (their bytes, joined, and the
    offsets), not as one Python object per file: a few bytes per image, quick
    to pickle for DataLoader worker processes, and nothing for forked workers
    to copy page by page as they touch reference counts (a list of millions
    of paths would be duplicated in every worker).

    Attributes:
        files: the image files, in item order (a list built on each access;
            :meth:`path` gives one).
        shape: (N, C, H, W) of the decoded images.
    """

    def __init__(self, files: Sequence[Path], channels: int, size: tuple[int, int]) -> None:
        """Set up the files; nothing is decoded here.

        Args:
            files: the image files, in item order.
            channels: 1 or 3.
            size: (H, W) every image is decoded to (resized when it differs).
        """
        _check_channels(channels)
        encoded = [os.fsencode(p) for p in files]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)  # (N + 1,) path i is bytes [o[i], o[i + 1])
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)  # (total bytes,)
        self.channels = channels
        self.size = size
        self.shape = (len(encoded), channels, size[0], size[1])

    def __len__(self) -> int:
        return self.shape[0]

    def path(self, i: int) -> Path:
        """The file of item ``i`` (negative counts from the end, as in a list)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"item {i} of a lazy data set of {n} images")
        i %= n
        start, stop = int(self._offsets[i]), int(self._offsets[i + 1])
        return Path(os.fsdecode(self._bytes[start:stop].tobytes()))

    @property
    def files(self) -> list[Path]:
        """Every file, in item order."""
        return [self.path(i) for i in range(len(self))]

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode the files at int64 ``indices`` (B,) into uint8 (B, C, H, W)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).tolist()
        out = torch.empty((len(idx), *self.shape[1:]), dtype=torch.uint8)  # (B, C, H, W)
        for j, i in enumerate(idx):
            out[j] = torch.from_numpy(_decode(self.path(i), self.channels, self.size))
        return out

    def view(self, indices: Sequence[int] | np.ndarray) -> "LazyFolderImages":
        """A lazy data set of the files at ``indices`` (nothing is decoded)."""
        return LazyFolderImages([self.path(int(i)) for i in indices], self.channels, self.size)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """Sorted image files under ``folder``, skipping hidden files and folders.

    Symbolic links that lead to no file (dangling, or a loop) are included,
    so that they are listed with the other unreadable files.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (p.is_file() or (p.is_symlink() and not p.exists()))
    )


def _scan(folder: Path) -> tuple[list[Path], dict[str, list[Path]] | None]:
    """(flat image files, None) or ([], {class name: files}) for one split folder."""
    top = _image_files(folder, recursive=False)
    classes: dict[str, list[Path]] = {}
    for d in sorted(folder.iterdir(), key=lambda p: p.name):
        if d.is_dir() and not d.name.startswith("."):
            files = _image_files(d, recursive=True)
            if files:
                classes[d.name] = files
    if top and classes:
        raise DataError(
            f"{folder}: holds both images and class subfolders ({', '.join(classes)}); "
            "put every image into a class folder, or use a flat folder of images"
        )
    if not top and not classes:
        raise DataError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files, "
            "directly or in class subfolders)"
        )
    return (top, None) if top else ([], classes)


def _split_items(
    folder: Path, class_names: list[str] | None
) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(files, labels, class names) of one split folder.

    Args:
        folder: the split folder.
        class_names: the train split's class names to map a test split onto,
            or None to take them from this folder.
    """
    flat, classes = _scan(folder)
    if classes is None:
        return flat, None, None
    names = class_names if class_names is not None else list(classes)
    files: list[Path] = []
    labels: list[int] = []
    for name, paths in classes.items():
        if name not in names:
            raise DataError(
                f"{folder / name}: class folder not among the train classes ({', '.join(names)})"
            )
        files += paths
        labels += [names.index(name)] * len(paths)
    return files, labels, names


def looks_like_image_folder(root: Path) -> bool:
    """Whether ``root`` holds image files directly or one or two folder levels down."""
    root = Path(root)
    if not root.is_dir():
        return False
    for pattern in ("*", "*/*", "*/*/*"):
        for p in root.glob(pattern):
            rel = p.relative_to(root).parts
            if p.suffix.lower() in IMAGE_EXTENSIONS and not any(s.startswith(".") for s in rel):
                return True
    return False


def _common_size(files: list[Path], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The one (H, W) all images share; a DataError naming two that differ otherwise."""
    for path, size in zip(files, sizes):
        if size != sizes[0]:
            raise DataError(
                f"images differ in size: {files[0]} is {sizes[0][0]}x{sizes[0][1]} (H x W) but "
                f"{path} is {size[0]}x{size[1]}; pass --image-size N to resize every image to N x N"
            )
    return sizes[0]


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


def _listing(root: Path, paths: Sequence[Path], reasons: dict[Path, str] | None, limit: int) -> str:
    """``"a.png (reason), b/c.png (reason) and 3 more"``: paths relative to ``root``."""
    def name(p: Path) -> str:
        try:
            return printable(p.relative_to(root).as_posix())  # a name that is not UTF-8 as \xHH escapes
        except ValueError:
            return printable(str(p))

    shown = [name(p) + (f" ({reasons[p]})" if reasons is not None else "") for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(shown) + more


def bad_files_error(root: Path, bad: dict[Path, str], total: int, skip_bad: bool = False) -> DataError:
    """The one error that lists the bad files of an image folder (at most :data:`BAD_FILES_LISTED`).

    Args:
        root: the image folder.
        bad: path -> reason of every bad file.
        total: the number of image files found.
        skip_bad: whether they were being skipped (then too few good files remain).
    """
    paths = sorted(bad)
    advice = (
        "too few readable images remain" if skip_bad
        else "remove or fix them, or pass --skip-bad to leave them out"
    )
    return DataError(
        f"{root.resolve()}: {len(paths)} of {total} image files cannot be read: "
        f"{_listing(root, paths, bad, BAD_FILES_LISTED)}; {advice}"
    )


def _warn_skipped(root: Path, bad: dict[Path, str], total: int) -> None:
    """One stderr line: how many bad files were skipped, and the first few names."""
    paths = sorted(bad)
    print(
        f"warning: {root}: skipped {len(paths)} of {total} image files that cannot be read "
        f"(--skip-bad): {_listing(root, paths, None, SKIPPED_FILES_NAMED)}",
        file=sys.stderr,
    )


def _warn_merged(root: Path, merged: dict[Path, Path], total: int) -> None:
    """One stderr line: how many names of an already read file were merged into it, and the first few."""
    paths = sorted(merged)
    shown = [f"{_listing(root, [p], None, 1)} (= {_listing(root, [merged[p]], None, 1)})" for p in paths[:SKIPPED_FILES_NAMED]]
    more = f" and {len(paths) - SKIPPED_FILES_NAMED} more" if len(paths) > SKIPPED_FILES_NAMED else ""
    print(
        f"warning: {root}: merged {len(paths)} of {total} image files that are another file again (a link to it, "
        f"or the same bytes); each is read once, under its first name: {', '.join(shown)}{more}",
        file=sys.stderr,
    )


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
            :data:`BAD_FILES_LISTED`).
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
