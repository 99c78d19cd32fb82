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

The remedy (``--balance clusters``, the default here; ``--balance none``
skips it) is a third run on the long-tailed set with ``train --balance
clusters`` (:mod:`contrastkit.balance`: batches drawn with weights inverse to
the size of each image's k-means cluster in the current embedding, no
labels), with the same configuration and epochs; the per-class table also
gives each class's share of that run's draws in its last epoch (the weights
its checkpoint keeps), against 1/C for a balanced set.

Usage:
    python bench/imbalance.py --epochs 10
    python bench/imbalance.py --epochs 10 --balance-clusters 30 --balance-every 1
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

import torch

from contrastkit.balance import inverse_size_weights
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.data.dataset import DataSplits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import frozen_metrics, pct, subset_per_class, train  # noqa: E402


def long_tail_counts(num_classes: int, max_per_class: int, ratio: float) -> list[int]:
    """Exponential profile: class c keeps max_per_class * ratio ** (-c / (C - 1)) images (at least 1)."""
    return [max(1, int(max_per_class * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def draw_share(run_dir: Path, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Each class's share of the draws of the run's last epoch: its items' weights (none balanced: its share of items)."""
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    clusters = state.get("source_state", {}).get("balance_clusters")
    w = inverse_size_weights(clusters) if clusters is not None else torch.full((len(labels),), 1.0 / len(labels))
    return [float(s) for s in torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, w.double())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--ratio", type=float, default=100.0, help="imbalance ratio: head class images / tail class images")
    parser.add_argument("--max-per-class", type=int, default=6000, help="images of the head class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="seeds (median reported)")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--balance", choices=("none", "clusters"), default="clusters",
                        help="the remedy run on the long-tailed set: clusters (train --balance clusters) or none (skip it)")
    parser.add_argument("--balance-clusters", type=int, default=TrainConfig().balance_clusters,
                        help="k-means clusters of the remedy (train --balance-clusters)")
    parser.add_argument("--balance-every", type=int, default=TrainConfig().balance_every,
                        help="epochs between cluster refreshes of the remedy (train --balance-every)")
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
    remedy = f"long-tailed + balance {args.balance_clusters} clusters / {args.balance_every} ep"
    runs = [("long-tailed", lt_counts, "none")]
    runs += [(remedy, lt_counts, "clusters")] if args.balance == "clusters" else []
    runs += [("balanced", bal_counts, "none")]
    results: dict[str, list[dict]] = {kind: [] for kind, _, _ in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            for kind, counts, balance in runs:
                train_split = subset_per_class(data.train, counts, seed=seed)
                config = TrainConfig(data=args.data, backbone=args.backbone, batch_size=args.batch_size,
                                     epochs=args.epochs, seed=seed, balance=balance,
                                     balance_clusters=args.balance_clusters, balance_every=args.balance_every)
                run_dir = Path(tmp) / f"{kind.split()[0]}-{balance}-{seed}"
                method, _, seconds = train(config, DataSplits(train_split, data.test), run_dir)
                m = frozen_metrics(method, data, config)
                row = {"seed": seed, "train_seconds": seconds, "knn_top1_k20": m["knn_top1_k20"],
                       "linear_probe_top1": m["linear_probe_top1"],
                       "per_class_knn": [m["per_class"]["knn_k20"][n] for n in names],
                       "per_class_linear": [m["per_class"]["linear_probe"][n] for n in names],
                       "draw_share": draw_share(run_dir, train_split.labels, c)}
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
    fixed = remedy in results
    print("| class | images (long-tailed) | kNN long-tailed |" + (" kNN remedy | draws (remedy) |" if fixed else "")
          + " kNN balanced |")
    print("|---|---|---|" + ("---|---|" if fixed else "") + "---|")
    for i, n in enumerate(names):
        lt = statistics.median(r["per_class_knn"][i] for r in results["long-tailed"])
        bal = statistics.median(r["per_class_knn"][i] for r in results["balanced"])
        cells = [n, str(lt_counts[i]), pct(lt)]
        if fixed:
            cells += [pct(statistics.median(r["per_class_knn"][i] for r in results[remedy])),
                      pct(statistics.median(r["draw_share"][i] for r in results[remedy]))]
        print("| " + " | ".join(cells + [pct(bal)]) + " |")
    if fixed:
        print(f"\ndraws: each class's share of the remedy's draws in its last epoch (long-tailed: its share of the "
              f"images, {pct(lt_counts[-1] / total)} for the rarest; balanced: {pct(1 / c)})")
    if args.out:
        args.out.write_text(json.dumps({"environment": describe(), "counts": lt_counts, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
