"""Image files decoded with Pillow as an image folder reads them: one file now, or many on demand.

:func:`load_image_file` decodes one file (query images of ``contrastkit
search``, uploads of the explorer), :class:`LazyFolderImages` a list of files
when a batch asks for them. Below them: the header read without decoding
pixels (grayscale or not, size), the 8-bit conversion (16-bit scaled,
transparency on white), Pillow's pixel limit as a bad file, and the reason a
bad file gives, in a few words. The folder's layouts and its bad-file
handling are :mod:`contrastkit.data.folder`'s.
"""

from __future__ import annotations

import errno
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from contrastkit.errors import ConfigError, DataError
from contrastkit.sources import printable

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


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")


def load_image_file(path: Path, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """Decode one image file the way :func:`contrastkit.data.folder.load_folder` decodes its images.

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
