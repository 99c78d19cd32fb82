"""Speed of batched view generation: images/s of ``ViewAugment(batch)``.

For each shape (28 x 28 x 1 with the grayscale recipe, 32 x 32 x 3 with the
CIFAR recipe, optionally 224 x 224 x 3 with the ImageNet recipe) it times
``--warmup`` untimed calls, then ``--runs`` timed calls on one uint8 batch,
and reports batch / median call time (and the best call, which is less
disturbed by other processes on a shared machine).

``--tune-malloc`` first raises glibc's mmap and trim thresholds (as the
environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
would), so that freed image-sized buffers are reused instead of being
returned to the kernel and page-faulted in again on the next call. On the
project's 2-core VM that alone makes this benchmark 2-3x faster.

Usage:
    python bench/augment_speed.py
    python bench/augment_speed.py --threads 1 --batch 1024 --tune-malloc
    python bench/augment_speed.py --device cuda --large
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import statistics
import time

import torch

from contrastkit.augment import ViewAugment, default_recipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tune_malloc() -> bool:
    """Raise glibc's mmap threshold to 256 MiB and trim threshold to 1 GiB; False if not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 256 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def time_augment(
    channels: int, side: int, batch: int, runs: int, warmup: int, device: torch.device
) -> dict[str, float | int | str]:
    """Time one view per call of a (batch, channels, side, side) uint8 batch.

    Args:
        channels: image channels (1 or 3).
        side: input and output side in pixels.
        batch: images per call.
        runs: timed calls.
        warmup: untimed calls first.
        device: where the batch and the generator live.

    Returns:
        One result row: shape, median and best milliseconds per call, images/s.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, channels, side, side)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen, device=device)
    aug = ViewAugment(default_recipe(channels, side), [0.5] * channels, [0.25] * channels)
    for _ in range(warmup):
        aug(images, gen)
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        aug(images, gen)
        _sync(device)
        times.append(time.perf_counter() - start)
    median, best = statistics.median(times), min(times)
    return {
        "shape": f"{batch}x{channels}x{side}x{side}",
        "median_ms": round(median * 1000, 3),
        "best_ms": round(best * 1000, 3),
        "images_per_s_median": round(batch / median),
        "images_per_s_best": round(batch / best),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=512, help="images per call")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per shape")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--large", action="store_true", help="also time 224 x 224 x 3 (ImageNet)")
    parser.add_argument("--tune-malloc", action="store_true", help="raise glibc's mmap/trim thresholds")
    args = parser.parse_args(argv)
    malloc = "default"
    if args.tune_malloc:
        malloc = "tuned" if tune_malloc() else "default (mallopt unavailable)"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = [(1, 28), (3, 32)] + ([(3, 224)] if args.large else [])
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {device}, threads {threads}, malloc {malloc}")
    for channels, side in shapes:
        row = time_augment(channels, side, args.batch, args.runs, args.warmup, device)
        row.update(device=str(device), threads=threads, malloc=malloc, torch=torch.__version__)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
