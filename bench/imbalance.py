"""Pretraining on long-tailed data: per-class accuracy of head and tail classes against a balanced run.

The long-tailed training set follows the exponential profile of Cui et al.
(2019, arXiv 1901.05555): class c keeps ``n_max * ratio ** (-c / (C - 1))``
images, so the head class has ``ratio`` times the images of the tail class.
The balanced control has the same total number of images, spread evenly.
Both are pretrained with the same configuration and epochs (so the same
number of optimiser steps), then evaluated the same way: kNN and linear
probe on the frozen backbone, with the full balanced training split as the
labelled set and the balanced test split as queries, so the only difference
is the pretraining data. Per-class accuracy is reported for the head (most
frequent third of the classes) and the tail (least frequent third).

Usage:
    python bench/imbalance.py --epochs 10
    python bench/imbalance.py --ratio 100 --max-per-class 6000 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.data.dataset import DataSplits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import frozen_metrics, pct, subset_per_class, train  # noqa: E402


def long_tail_counts(num_classes: int, max_per_class: int, ratio: float) -> list[int]:
    """Exponential profile: class c keeps max_per_class * ratio ** (-c / (C - 1)) images (at least 1)."""
    return [max(1, int(max_per_class * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--ratio", type=float, default=100.0, help="imbalance ratio: head class images / tail class images")
    parser.add_argument("--max-per-class", type=int, default=6000, help="images of the head class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="seeds (median reported)")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    print(describe())
    data = load_dataset(args.data)
    c = data.train.num_classes
    lt_counts = long_tail_counts(c, args.max_per_class, args.ratio)
    total = sum(lt_counts)
    bal_counts = [total // c] * c
    third = max(1, c // 3)
    head, tail = list(range(third)), list(range(c - third, c))
    print(f"data: {data.train.name}; long-tailed per class {lt_counts} ({total} images, ratio {args.ratio:g}); "
          f"balanced {bal_counts[0]} per class; head classes {head}, tail classes {tail}; {args.epochs} epochs", flush=True)
    names = data.train.class_names or [str(i) for i in range(c)]
    results: dict[str, list[dict]] = {"long-tailed": [], "balanced": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            for kind, counts in (("long-tailed", lt_counts), ("balanced", bal_counts)):
                train_split = subset_per_class(data.train, counts, seed=seed)
                config = TrainConfig(data=args.data, backbone=args.backbone, batch_size=args.batch_size,
                                     epochs=args.epochs, seed=seed)
                method, _, seconds = train(config, DataSplits(train_split, data.test), Path(tmp) / f"{kind}-{seed}")
                m = frozen_metrics(method, data, config)
                row = {"seed": seed, "train_seconds": seconds, "knn_top1_k20": m["knn_top1_k20"],
                       "linear_probe_top1": m["linear_probe_top1"],
                       "per_class_knn": [m["per_class"]["knn_k20"][n] for n in names],
                       "per_class_linear": [m["per_class"]["linear_probe"][n] for n in names]}
                results[kind].append(row)
                print(f"{kind} seed {seed}: {seconds:.0f} s, kNN {pct(row['knn_top1_k20'])}, "
                      f"linear {pct(row['linear_probe_top1'])}", flush=True)

    def med(kind: str, key: str, classes: list[int] | None = None) -> float:
        rows = results[kind]
        if classes is None:
            return statistics.median(r[key] for r in rows)
        return statistics.median(statistics.mean(r[key][i] for i in classes) for r in rows)

    print()
    print("| pretraining data | kNN all | kNN head | kNN tail | linear all | linear head | linear tail |")
    print("|---|---|---|---|---|---|---|")
    for kind in results:
        print(f"| {kind} ({total} images) | {pct(med(kind, 'knn_top1_k20'))} | {pct(med(kind, 'per_class_knn', head))} | "
              f"{pct(med(kind, 'per_class_knn', tail))} | {pct(med(kind, 'linear_probe_top1'))} | "
              f"{pct(med(kind, 'per_class_linear', head))} | {pct(med(kind, 'per_class_linear', tail))} |")
    print()
    print("| class | images (long-tailed) | kNN long-tailed | kNN balanced |")
    print("|---|---|---|---|")
    for i, n in enumerate(names):
        lt = statistics.median(r["per_class_knn"][i] for r in results["long-tailed"])
        bal = statistics.median(r["per_class_knn"][i] for r in results["balanced"])
        print(f"| {n} | {lt_counts[i]} | {pct(lt)} | {pct(bal)} |")
    if args.out:
        args.out.write_text(json.dumps({"environment": describe(), "counts": lt_counts, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
