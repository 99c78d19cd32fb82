"""Training throughput end to end, per backbone and precision, and its distance to the hardware peak (MFU).

For every backbone and every variant (fp32 / bf16 autocast, with and without
channels_last) the script times whole training steps as ``fit`` runs them:
batch read + batched augmentation + forward + backward + optimiser step, and
reports images/s (each image gives two views), the share of the step spent
making views, and the model FLOPs utilisation: the step's FLOPs (counted by
``torch.utils.flop_counter`` on the forward and backward pass) per second,
divided by this machine's measured matmul peak in the same precision.
Variants run interleaved, ``--repeats`` rounds, and the median is reported.

Usage:
    python bench/throughput.py
    python bench/throughput.py --backbones small_cnn,resnet18 --repeats 5 --batch-size 256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.methods import build_method
from contrastkit.runtime import Runtime
from contrastkit.train import ViewMaker, augment_recipe, data_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import step_seconds  # noqa: E402

VARIANTS = {  # name: (precision, channels_last)
    "fp32": ("fp32", False),
    "fp32+cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16+cl": ("bf16", True),
}


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5) -> float:
    """This CPU's measured FLOP/s peak in ``dtype``: the fastest n x n x n matmul over ``sizes`` and ``repeats``.

    The best run, not the median: a peak is what the hardware can do, and
    every slower run was disturbed by something (convolution kernels
    measured against a median of 2048^3 matmuls came out above 100%).
    """
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        for _ in range(2):
            torch.mm(a, b)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def step_flops(config: TrainConfig, data) -> int:
    """FLOPs of one training step's forward and backward pass (convolutions and matmuls)."""
    runtime = Runtime.create("cpu", "fp32", False)
    info = data_info(data.train, config)
    method = build_method(config, info["channels"], info["num_classes"])
    make_views = ViewMaker(method, augment_recipe(info, config), info, runtime)
    idx = torch.arange(config.batch_size)
    views = make_views(data.train.get_batch(idx), torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = method(views, None)
        loss.backward()
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="data set (default: the embedded Fashion-MNIST subset, 28 px)")
    parser.add_argument("--backbones", default="seed_cnn,small_cnn,resnet18", help="comma-separated backbones")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--peak-sizes", default="2048,4096",
                        help="comma-separated n of the n x n x n matmuls that measure the peak (default: 2048,4096)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    print(describe())
    data = load_dataset(args.data)
    print(f"data: {data.train.name}, images {tuple(data.train.shape)}; {args.method}, batch {args.batch_size} "
          f"(x2 views), {args.steps} steps x {args.repeats} rounds", flush=True)
    # Only the precisions the variants use: on a CPU without bf16 instructions a 4096^3 bf16 matmul is
    # emulated and takes minutes.
    sizes = tuple(int(n) for n in args.peak_sizes.split(","))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(dtypes[p], sizes) for p in sorted({VARIANTS[v][0] for v in variants})}
    print(f"matmul peak (best of {' and '.join(f'{n}^3' for n in sizes)}, 5 runs each): "
          + ", ".join(f"{p} {peak / 1e9:.0f} GFLOP/s" for p, peak in peaks.items()), flush=True)

    base = TrainConfig(method=args.method, batch_size=args.batch_size, device="cpu")
    flops = {b: step_flops(dataclasses.replace(base, backbone=b), data) for b in backbones}
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    for round_ in range(args.repeats):
        for b in backbones:
            for v in variants:
                precision, cl = VARIANTS[v]
                cfg = dataclasses.replace(base, backbone=b, precision=precision, channels_last=cl)
                t = step_seconds(cfg, data, args.steps)
                cell = samples.setdefault((b, v), {"total": [], "views": []})
                cell["total"].append(statistics.median(t["total"]))
                cell["views"].append(statistics.median(t["views"]))
                print(f"round {round_ + 1}: {b} {v}: {args.batch_size / cell['total'][-1]:.0f} img/s", flush=True)

    print()
    print("| backbone | variant | images/s | vs fp32 | views share | GFLOP/step | GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for b in backbones:
        ref = statistics.median(samples[(b, variants[0])]["total"])
        for v in variants:
            total = statistics.median(samples[(b, v)]["total"])
            views = statistics.median(samples[(b, v)]["views"])
            achieved = flops[b] / total
            peak = peaks["bf16" if VARIANTS[v][0] == "bf16" else "fp32"]
            row = {"backbone": b, "variant": v, "images_per_s": args.batch_size / total, "step_s": total,
                   "views_s": views, "flops_per_step": flops[b], "flops_per_s": achieved, "mfu": achieved / peak,
                   "rounds": samples[(b, v)]["total"]}
            results.append(row)
            print(f"| {b} | {v} | {row['images_per_s']:.0f} | {ref / total:.2f}x | {views / total:.0%} | "
                  f"{flops[b] / 1e9:.2f} | {achieved / 1e9:.0f} | {row['mfu']:.1%} |")
    print(f"\n(vs fp32: speed-up over the '{variants[0]}' variant of the same backbone; MFU against the "
          f"measured matmul peak of the variant's precision)")
    if args.out:
        args.out.write_text(json.dumps({"environment": describe(), "peaks": peaks, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
