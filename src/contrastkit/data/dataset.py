"""The in-memory data set every reader produces, and deterministic splits.

A data set is a uint8 tensor ``N x C x H x W`` (or, for image folders too
large for memory, an object that decodes index batches on demand), optional
int64 labels, optional class names and one source string per item (a file
path, or ``name:split:index`` for items that come from an array file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch

from contrastkit.errors import DataError


class LazyImages(Protocol):
    """Images decoded on demand: the protocol a lazy reader implements."""

    shape: tuple[int, int, int, int]  # (N, C, H, W)

    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode ``indices`` (int64, shape (B,)) into a uint8 tensor (B, C, H, W)."""
        ...


@dataclass
class ImageDataset:
    """Images with optional labels.

    Attributes:
        images: uint8 tensor (N, C, H, W) in memory, or a :class:`LazyImages`.
        labels: int64 tensor (N,) or None when the data set has no labels.
        class_names: one name per class index, or None.
        sources: one string per item saying where it came from.
        name: a short human-readable name of the data set and split.
    """

    images: torch.Tensor | LazyImages
    labels: torch.Tensor | None
    class_names: list[str] | None
    sources: list[str]
    name: str

    def __post_init__(self) -> None:
        n = len(self.images)
        if isinstance(self.images, torch.Tensor):
            if self.images.dtype != torch.uint8 or self.images.ndim != 4:
                raise DataError(
                    f"{self.name}: images must be a uint8 tensor N x C x H x W, "
                    f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
                )
        if self.labels is not None:
            if self.labels.ndim != 1 or len(self.labels) != n:
                raise DataError(
                    f"{self.name}: {len(self.labels)} labels for {n} images"
                )
            self.labels = self.labels.to(torch.int64)
        if len(self.sources) != n:
            raise DataError(f"{self.name}: {len(self.sources)} sources for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = tuple(self.images.shape)[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabelled)."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None or len(self.labels) == 0:
            return 0
        return int(self.labels.max()) + 1

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) for int64 ``indices`` of shape (B,)."""
        if isinstance(self.images, torch.Tensor):
            return self.images[indices]
        return self.images.get_batch(indices)

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> "ImageDataset":
        """The items at ``indices``, in that order (in memory data sets only)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(
            images=self.get_batch(idx),
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            sources=[self.sources[i] for i in idx.tolist()],
            name=name or self.name,
        )


@dataclass
class DataSplits:
    """The train split (used for self-supervised training) and the held-out test split."""

    train: ImageDataset
    test: ImageDataset
    info: dict[str, str] = field(default_factory=dict)  # e.g. {"format": "idx", "path": ...}


def held_out_indices(
    n: int, labels: torch.Tensor | None, fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, test) index arrays for a data set without a split.

    Stratified by label when labels exist, so every class with at least two
    items appears in both parts. The same ``n``, labels and seed always give
    the same split.
    """
    if n < 2:
        raise DataError(f"need at least 2 images to hold some out for testing, got {n}")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        n_test = max(1, int(round(n * fraction)))
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    y = labels.numpy()
    test: list[np.ndarray] = []
    train: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction)) if len(idx) >= 2 else 0
        k = max(1, k) if len(idx) >= 2 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_dataset(ds: ImageDataset, fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """Split an in-memory data set that defines no split into train and test."""
    tr, te = held_out_indices(len(ds), ds.labels, fraction, seed)
    return DataSplits(
        train=ds.subset(tr, name=f"{ds.name}:train"),
        test=ds.subset(te, name=f"{ds.name}:test"),
    )
