"""GPU readiness check: SimCLR with ResNet-18 on CIFAR-10-shaped data, images/s and peak memory per variant.

The short, prepared script to run when a GPU machine is lent. It makes
``--images`` random CIFAR-10-shaped images in memory (uint8 3 x 32 x 32, 10
classes: no download, nothing to carry), then for each variant trains
``contrastkit.fit`` for ``--epochs`` epochs on ``--device``, exactly as
``contrastkit train`` does (batched augmentation on the device, the kNN
monitor, checkpoints), and reports:

- images/s of the training steps of the last epoch (fit's own epoch log:
  the first epoch carries cuDNN autotuning and, with ``--compile``, the
  compilation);
- peak device memory (``torch.cuda.max_memory_allocated``, reset per
  variant; on a CPU the process's peak RSS instead);
- that every epoch's loss is finite.

Variants: ``fp32`` (no autocast, NCHW), ``amp+cl`` (the default: bf16
autocast, fp16 where bf16 is missing, plus channels_last) and
``amp+cl+compile`` (the same with ``torch.compile`` of the backbone).

Usage:
    python bench/gpu_check.py                                   # on the lent GPU: ~2-4 minutes
    python bench/gpu_check.py --variants amp+cl --images 50000 --batch-size 1024
    python bench/gpu_check.py --device cpu --images 256 --batch-size 32 --backbone small_cnn --variants fp32   # smoke
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from contrastkit.config import TrainConfig
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.errors import ConfigError
from contrastkit.runtime import resolve_device

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, peak_rss_bytes, write_results  # noqa: E402
from harness import train  # noqa: E402

VARIANTS = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "amp+cl": {"precision": "auto", "channels_last": True, "compile": False},
    "amp+cl+compile": {"precision": "auto", "channels_last": True, "compile": True},
}
CLASSES = 10


def cifar_shaped(n_train: int, n_test: int, seed: int = 0) -> DataSplits:
    """Random uint8 images (N, 3, 32, 32) with labels in [0, 10): CIFAR-10's shapes, no content."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int, name: str) -> ImageDataset:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, CLASSES, (n,), generator=g)
        return ImageDataset(images, labels, [str(c) for c in range(CLASSES)], [f"{name}[{i}]" for i in range(n)], name)

    return DataSplits(split(n_train, "cifar-shaped:train"), split(n_test, "cifar-shaped:test"))


def peak_memory_mib(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), else this process's peak RSS, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def run_variant(name: str, base: TrainConfig, data: DataSplits) -> dict[str, Any]:
    """Train one variant; its images/s, peak memory and losses."""
    config = TrainConfig(**{**base.to_dict(), **VARIANTS[name]})
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        _, result, seconds = train(config, data, Path(tmp))
    losses = [h["loss"] for h in result.history]
    return {
        "variant": name, "images_per_s": result.history[-1]["images_per_s"],
        "first_epoch_images_per_s": result.history[0]["images_per_s"], "peak_memory_mib": peak_memory_mib(device),
        "memory_kind": "max_memory_allocated" if device.type == "cuda" else "peak RSS of the process",
        "losses": losses, "finite": all(math.isfinite(x) for x in losses), "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke run")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--images", type=int, default=50_000, help="training images (CIFAR-10: 50 000)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (default: 2)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        resolve_device(args.device)  # fail before making the data
    except ConfigError as e:
        raise SystemExit(str(e)) from None

    print(describe())
    data = cifar_shaped(args.images, max(args.batch_size, args.images // 5))
    base = TrainConfig(method=args.method, backbone=args.backbone, batch_size=args.batch_size, epochs=args.epochs,
                       device=args.device, monitor_bank=min(10_000, args.images), monitor_queries=min(2_000, args.images))
    print(f"data: {args.images} random CIFAR-10-shaped images; {args.method}/{args.backbone}, batch {args.batch_size}, "
          f"{args.epochs} epochs per variant on {args.device}", flush=True)
    rows = []
    for name in names:
        row = run_variant(name, base, data)
        rows.append(row)
        print(f"{name}: {row['images_per_s']:.0f} img/s (first epoch {row['first_epoch_images_per_s']:.0f}), "
              f"peak {row['peak_memory_mib']:.0f} MiB, losses {', '.join(f'{x:.3f}' for x in row['losses'])}, "
              f"{row['seconds']:.0f} s", flush=True)
    print()
    print("| variant | images/s (last epoch) | first epoch images/s | peak memory MiB | loss finite |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['images_per_s']:.0f} | {row['first_epoch_images_per_s']:.0f} | "
              f"{row['peak_memory_mib']:.0f} | {'yes' if row['finite'] else 'NO'} |")
    if args.out:
        write_results(args.out, args, rows)
    if not all(row["finite"] for row in rows):
        raise SystemExit("a variant's loss was not finite")


if __name__ == "__main__":
    main()
