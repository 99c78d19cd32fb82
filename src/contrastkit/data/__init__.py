"""Data sets: readers for every supported format and the built-in sets.

:func:`load_dataset` is the one entry point: a built-in name, a path (format
detected), or None for the embedded Fashion-MNIST subset.
"""

from __future__ import annotations

from pathlib import Path

from contrastkit.data.dataset import DataSplits, ImageDataset

__all__ = ["DataSplits", "ImageDataset", "load_dataset"]


def load_dataset(
    spec: str | Path | None = None, *, image_size: int | None = None, skip_bad: bool = False
) -> DataSplits:
    """Load a data set with its train and test splits.

    Args:
        spec: None or ``"default"`` for the embedded Fashion-MNIST subset; a
            built-in name (``fashion-mnist``, ``cifar10``, ...; see
            ``contrastkit.data.builtin.BUILTIN_NAMES``); or a path to an IDX
            file or folder, a CIFAR folder or archive, an image folder or an
            ``.npz`` file.
        image_size: resize images to this square side (px); None keeps them.
        skip_bad: image folders: leave out files that cannot be decoded
            (one warning line on stderr) instead of stopping with an error
            that lists them.

    Raises:
        DataError: the path is missing or in no supported format, or a file is bad.
        ConfigError: an unknown built-in name.
    """
    from contrastkit.data import builtin, formats

    name = "default" if spec is None else str(spec)
    if name in builtin.BUILTIN_NAMES and not Path(name).exists():
        splits = builtin.load_builtin(name)
        if image_size is not None:
            splits = formats.resize_splits(splits, image_size)
        return splits
    return formats.load_path(name, image_size=image_size, skip_bad=skip_bad)
