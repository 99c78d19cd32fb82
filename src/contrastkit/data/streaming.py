"""Batches decoded ahead of the model: image folders larger than memory stream from disk.

A lazy data set (:class:`~contrastkit.data.decode.LazyFolderImages`) decodes
its image files on demand. :func:`prefetch` hands that work to a
:class:`torch.utils.data.DataLoader` with worker processes, so the next
batches are decoded while the model trains on the current one; augmentation
stays batched on the model's device (:mod:`contrastkit.augment`), so a worker
only turns files into uint8 tensors.

The caller chooses the index batches (:class:`IndexBatches`: the epoch's
permutation in steps, or this rank's share of each global batch), and
:func:`prefetch` yields their images in the same order with the same content
as ``get_batch`` called batch by batch: shuffling, determinism and exact
resume (start at the step reached) are those of the in-process path. Item
``i`` of the loader's data set is the whole batch ``i`` (``batch_size=None``),
so one worker decodes one batch and the order never depends on which worker
finishes first.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import Any, overload

import torch
from torch.utils.data import DataLoader, Dataset

from contrastkit.data.dataset import ImageDataset, LazyImages
from contrastkit.distributed import shard
from contrastkit.errors import ConfigError

MAX_AUTO_WORKERS = 4  # auto: more rarely helps; each worker holds prefetch_factor batches
PREFETCH_FACTOR = 2  # batches decoded ahead per worker (DataLoader's default)


def is_streamed(images: ImageDataset | LazyImages | torch.Tensor) -> bool:
    """Whether a data set decodes its images on demand (a lazy folder) rather than holding them in memory."""
    if isinstance(images, ImageDataset):
        images = images.images
    return not isinstance(images, torch.Tensor)


def _cores() -> int:
    """CPU cores this process may use (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(workers: int | None, images: ImageDataset | LazyImages | torch.Tensor) -> int:
    """The worker processes to decode with: ``workers``, or the automatic choice for None.

    Auto is 0 for data in memory (a batch is one indexing operation, nothing
    to overlap) and, for a streamed folder, ``min(4, cores - 1)`` but at
    least 1, where cores are this process's share of the machine's (divided
    by ``LOCAL_WORLD_SIZE`` under torchrun, whose processes each start
    their own workers).

    Raises:
        ConfigError: ``workers`` is negative.
    """
    if workers is not None:
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0 (0 = decode in the training process), got {workers}")
        return int(workers)
    if not is_streamed(images):
        return 0
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(MAX_AUTO_WORKERS, _cores() // local_world - 1))


class IndexBatches(Sequence[torch.Tensor]):
    """Index batches ``start, ..., stop - 1`` of an item order, as int64 tensors, computed on demand.

    Batch ``s`` is ``order[s * batch_size : (s + 1) * batch_size]`` (the last
    one shorter when ``stop`` reaches past the end), or with ``world`` > 1
    rank ``rank``'s block of it (:func:`contrastkit.distributed.shard`).
    Nothing is stored per batch, so it is as cheap to send to a worker
    process as ``order`` itself.
    """

    def __init__(
        self,
        order: torch.Tensor | int,
        batch_size: int,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        """Set up the batches.

        Args:
            order: item indices (N,) in the order to visit them, or N for 0..N-1.
            batch_size: items per (global) batch, >= 1.
            start: the first batch (a resumed epoch starts at its step).
            stop: one past the last batch; None = every batch, the last one partial.
            rank: this rank, with ``world`` > 1.
            world: the number of ranks sharing each batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.order = order if isinstance(order, int) else torch.as_tensor(order, dtype=torch.int64)
        n = order if isinstance(order, int) else len(self.order)
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.start = start
        self.stop = -(-n // batch_size) if stop is None else stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    @overload
    def __getitem__(self, i: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[torch.Tensor]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        step = self.start + i
        lo, hi = step * self.batch_size, min((step + 1) * self.batch_size, self.n)
        if isinstance(self.order, int):
            idx = torch.arange(lo, hi, dtype=torch.int64)
        else:
            idx = self.order[lo:hi]
        return shard(idx, self.rank, self.world) if self.world > 1 else idx


class _BatchDataset(Dataset):
    """A map-style data set whose item ``i`` is the decoded batch ``batches[i]``: uint8 (B, C, H, W)."""

    def __init__(self, images: ImageDataset | LazyImages, batches: Sequence[torch.Tensor]) -> None:
        self.images = images
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images.get_batch(self.batches[i])  # (B, C, H, W)


def _worker_init(worker_id: int) -> None:
    """Each worker decodes on one thread: several workers times torch's default thread count oversubscribe the CPU."""
    torch.set_num_threads(1)


def prefetch(
    images: ImageDataset | LazyImages,
    batches: Sequence[torch.Tensor],
    workers: int,
    *,
    pin_memory: bool = False,
    prefetch_factor: int = PREFETCH_FACTOR,
) -> Generator[torch.Tensor, None, None]:
    """The images of ``batches``, in order: uint8 (B, C, H, W) per batch, as ``images.get_batch`` gives them.

    Args:
        images: an in-memory or lazy data set (anything with ``get_batch``).
        batches: int64 index batches (e.g. :class:`IndexBatches`); it is
            sent to the workers, so keep it small (not a list of copies).
        workers: worker processes decoding ahead; 0 = call ``get_batch`` here,
            one batch at a time when the next one is asked for.
        pin_memory: return page-locked tensors (for a fast ``.to("cuda",
            non_blocking=True)``); only with ``workers`` > 0.
        prefetch_factor: batches each worker decodes ahead.

    Worker processes start when iteration starts and stop when it ends, or
    when the generator is closed (``close()``) or dropped. They leave the global random
    state alone: the loader draws its worker seeds from a generator of its
    own, so training takes the same random numbers with or without workers.
    """
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0 = decode in the training process), got {workers}")
    if workers == 0 or len(batches) == 0:
        for idx in batches:
            yield images.get_batch(idx)
        return
    if isinstance(images, ImageDataset) and is_streamed(images):
        images = images.images  # only the file table goes to the workers, not sources and labels
    loader = DataLoader(
        _BatchDataset(images, batches),
        batch_size=None,  # item i is already the whole batch i
        shuffle=False,
        num_workers=workers,
        prefetch_factor=prefetch_factor,
        persistent_workers=False,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(0),  # worker seeds not drawn from the global RNG
    )
    yield from loader
