"""Training speed of every registered backbone: images/s per precision mode.

One training step is forward + backward + SGD step on a batch of random
images (no data loading or augmentation: this measures the model alone).
For each backbone and mode (fp32, bf16 autocast, bf16 autocast +
channels_last) it times ``--warmup`` untimed steps, then ``--steps`` timed
steps, and reports batch_size / median step time. Three probe steps on 32
images first estimate the full step's time; a row whose estimate is over
``--max-step-seconds`` is skipped, so a slow machine finishes in bounded
time.

Usage:
    python bench/backbone_speed.py
    python bench/backbone_speed.py --backbones small_cnn,resnet18 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from contrastkit.models.backbones import BACKBONES, build_backbone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402

MODES = ("fp32", "bf16", "bf16+cl")
PROBE_BATCH = 32  # images in the probe steps that estimate a full step's time
SMALL_IMAGE_BACKBONES = ("seed_cnn", "small_cnn")  # timed on 28 x 28 x 1, others 32 x 32 x 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    name: str,
    mode: str,
    batch_size: int,
    warmup: int,
    steps: int,
    max_step_seconds: float,
    device: torch.device,
) -> tuple[float | None, str]:
    """Time training steps of one backbone in one mode.

    Args:
        name: registered backbone name.
        mode: one of ``MODES``.
        batch_size: images per step.
        warmup: untimed steps before timing.
        steps: timed steps.
        max_step_seconds: skip the row if a step is estimated to take longer.
        device: where to run.

    Returns:
        (images per second or None when skipped, shape or skip note).
    """
    torch.manual_seed(0)
    c, s = (1, 28) if name in SMALL_IMAGE_BACKBONES else (3, 32)
    model = build_backbone(name, c).to(device)
    x = torch.randn(batch_size, c, s, s, device=device)  # (B, C, S, S)
    if mode == "bf16+cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    use_bf16 = mode != "fp32"

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            feats = model(x)  # (B, embed_dim)
        loss = feats.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    shape = f"{c}x{s}x{s}"
    # Estimate the full step from a small slice before paying for one (the
    # first probe step builds the kernels, the fastest of the next two counts).
    full, x = x, x[:PROBE_BATCH]
    step()
    estimate = min(step(), step()) * batch_size / len(x)
    x = full
    if estimate > max_step_seconds:
        return None, f"{shape}, skipped: step estimated {estimate:.1f}s > {max_step_seconds}s"
    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    return batch_size / statistics.median(times), shape


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, print the environment, then one table row per backbone."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help="comma-separated registered names (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument("--steps", type=int, default=5, help="timed steps; the median counts")
    parser.add_argument("--max-step-seconds", type=float, default=4.0,
                        help="skip a row whose step is estimated slower than this (seconds)")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]

    print(describe())
    print(f"batch {args.batch_size}, {args.warmup} warm-up + median of {args.steps} steps, "
          f"train step = forward + backward + SGD; images/s")
    print()
    print(f"| {'backbone':<10} | {'input':<8} | " + " | ".join(f"{m:>8}" for m in MODES) + " |")
    print(f"|{'-' * 12}|{'-' * 10}|" + "|".join("-" * 10 for _ in MODES) + "|")
    for name in names:
        cells, notes, shape = [], [], ""
        for mode in MODES:
            ips, note = time_steps(name, mode, args.batch_size, args.warmup,
                                   args.steps, args.max_step_seconds, device)
            shape = note.split(",")[0]
            cells.append(f"{ips:>8.0f}" if ips is not None else f"{'skip':>8}")
            if ips is None:
                notes.append(f"{mode}: {note.split(', ', 1)[1]}")
        line = f"| {name:<10} | {shape:<8} | " + " | ".join(cells) + " |"
        print(line + (("  " + "; ".join(notes)) if notes else ""), flush=True)


if __name__ == "__main__":
    main()
