"""Every method on the same data, backbone and wall-clock budget: kNN, linear probe, images/s, peak memory.

For each method the script
1. times a few training steps (augmentation + forward + backward + optimiser)
   to estimate its images/s, and sets the number of epochs so that training
   fills the budget (at least one epoch);
2. trains it with ``contrastkit train`` in a child process (so that the peak
   resident memory of each method is measured on its own);
3. evaluates it with ``contrastkit evaluate --json``.
Methods run one after the other in one invocation, on the same machine state.

Usage:
    python bench/methods.py --minutes 2
    python bench/methods.py --minutes 10 --data fashion-mnist --methods simclr,byol
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from contrastkit.config import METHOD_NAMES, TrainConfig
from contrastkit.data import load_dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import images_per_second, run_child  # noqa: E402

SSL_METHODS = [m for m in METHOD_NAMES if m not in ("supcon", "supervised")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per method (wall clock)")
    parser.add_argument("--data", default=None, help="data set (default: the embedded Fashion-MNIST subset)")
    parser.add_argument("--methods", default=",".join(SSL_METHODS), help="comma-separated methods")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    print(describe())
    data = load_dataset(args.data)
    print(f"data: {data.train.name}, {len(data.train)} train / {len(data.test)} test; backbone {args.backbone}; "
          f"budget {args.minutes} min of training per method")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for name in methods:
            config = TrainConfig(data=args.data, method=name, backbone=args.backbone)
            rate = images_per_second(config, data)
            epochs = max(1, int(args.minutes * 60 * rate / len(data.train)))
            run = root / name
            train_args = ["train", "--method", name, "--backbone", args.backbone, "--epochs", str(epochs),
                          "--out", str(run), "--quiet"] + (["--data", args.data] if args.data else [])
            status, seconds, rss = run_child(train_args)
            if status != 0:
                print(f"{name}: training failed with status {status}", flush=True)
                continue
            out = subprocess.run([sys.executable, "-m", "contrastkit", "evaluate", str(run), "--json", "--quiet"],
                                 capture_output=True, text=True, check=True)
            metrics = json.loads(out.stdout)["ssl"]
            log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            row = (name, epochs, seconds, log[-1]["images_per_s"], rss, metrics["knn_top1_k20"],
                   metrics["knn_top1_k200_weighted"], metrics["linear_probe_top1"], log[-1]["embedding_std"])
            rows.append(row)
            print(f"{name}: {epochs} epochs in {seconds:.0f} s, kNN {row[5]:.2%}, linear {row[7]:.2%}", flush=True)

    print()
    print("| method | epochs | train + monitor s | images/s | peak RSS MiB | kNN k=20 | kNN w. k=200 | linear probe | spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, epochs, seconds, rate, rss, k20, k200, lin, spread in rows:
        print(f"| {name} | {epochs} | {seconds:.0f} | {rate:.0f} | {rss:.0f} | {k20:.2%} | {k200:.2%} | {lin:.2%} | {spread:.2f} |")


if __name__ == "__main__":
    main()
