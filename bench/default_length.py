"""How long should a default run train? Fixed epochs against a fixed number of optimiser steps, per data-set size.

For each training set (stratified subsets of Fashion-MNIST's train split, and
any image folder given with ``--folder``) the script trains the default
recipe once per length rule:

- ``epochs=E``: a fixed number of passes (the old default was 30 epochs);
- ``steps=S``: ``--epochs`` omitted, so ``contrastkit.train.resolve_epochs``
  plans the fewest epochs that make ``S`` optimiser steps (the default rule).

Every encoder is judged against raw pixels on the same labelled set (the
training subset) with kNN (k=20) and a linear probe, twice:

- on a **validation set**: training-split images outside the subset (for a
  folder, which has no spare images, the kNN monitor's validation slice);
  rules are chosen on it;
- on the **test split**, which only reports.

Usage:
    python bench/default_length.py --sizes 1000 4000 --rules epochs=30 steps=2000 steps=5000
    python bench/default_length.py --sizes 0 --folder runs/emoji --image-size 32 --rules epochs=30 steps=5000
    python bench/emoji_folder.py runs/emoji   # builds the RGB folder used above from the npm registry
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.evaluation import raw_pixel_baselines
from contrastkit.train import resolve_epochs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import frozen_metrics, pct, train  # noqa: E402

VALIDATION_IMAGES = 5000  # Fashion-MNIST training images outside every subset, for choosing a rule


def parse_rule(text: str) -> dict[str, int | None]:
    """``epochs=E`` or ``steps=S`` into TrainConfig overrides."""
    key, _, value = text.partition("=")
    if key not in ("epochs", "steps") or not value.isdigit() or int(value) < 1:
        raise SystemExit(f"--rules {text!r}: expected epochs=E or steps=S with a positive integer")
    return {"epochs": int(value)} if key == "epochs" else {"epochs": None, "steps": int(value)}


def stratified_rows(labels: torch.Tensor, n: int, exclude: torch.Tensor, seed: int) -> torch.Tensor:
    """``n`` rows, the same share of every class, from a seeded shuffle of the rows not in ``exclude``."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = order[~torch.isin(order, exclude)]
    classes = int(labels.max()) + 1
    per_class = [n // classes + (1 if c < n % classes else 0) for c in range(classes)]
    keep = [order[labels[order] == c][:k] for c, k in enumerate(per_class)]
    return torch.cat(keep).sort().values


def fashion_sets(sizes: list[int], seed: int) -> tuple[list[tuple[str, DataSplits, DataSplits | None]], Any]:
    """(name, splits for training and test, splits for validation) per subset size of Fashion-MNIST."""
    full = load_dataset("fashion-mnist")
    labels = full.train.labels
    val_rows = stratified_rows(labels, VALIDATION_IMAGES, torch.zeros(0, dtype=torch.int64), seed + 1)
    validation = full.train.subset(val_rows)
    sets = []
    for n in sizes:
        rows = stratified_rows(labels, n, val_rows, seed)
        train_set = full.train.subset(rows)
        sets.append((f"fashion-mnist {n}", DataSplits(train_set, full.test), DataSplits(train_set, validation)))
    return sets, full


def measure(name: str, data: DataSplits, val: DataSplits | None, base: TrainConfig, rules: list[str],
            root: Path) -> list[dict[str, Any]]:
    """Raw pixels, then one trained encoder per rule; one row each, validation and test figures."""
    rows = []
    raw_test = raw_pixel_baselines(data)
    raw_val = raw_pixel_baselines(val) if val is not None else None
    row = {"data": name, "train_images": len(data.train), "rule": "raw pixels",
           "test_knn": raw_test["raw_pixel_knn_top1_k20"], "test_linear": raw_test["raw_pixel_linear_probe_top1"],
           "val_knn": raw_val["raw_pixel_knn_top1_k20"] if raw_val else None,
           "val_linear": raw_val["raw_pixel_linear_probe_top1"] if raw_val else None}
    print(json.dumps(row), flush=True)
    rows.append(row)
    for rule in rules:
        config = resolve_epochs(dataclasses.replace(base, **parse_rule(rule)), data.train)
        tag = f"{name.replace(' ', '-')}-{rule.replace('=', '')}"
        method, result, seconds = train(config, data, root / tag)
        test = frozen_metrics(method, data, config)
        valm = frozen_metrics(method, val, config) if val is not None else None
        steps = config.epochs * (len(data.train) // config.batch_size)  # label-free methods train on every row
        row = {"data": name, "train_images": len(data.train), "rule": rule, "epochs": config.epochs,
               "steps_about": steps, "train_seconds": round(seconds, 1),
               "monitor_best": result.best_knn, "monitor_last": result.history[-1].get("knn_top1"),
               "test_knn": test["knn_top1_k20"], "test_linear": test["linear_probe_top1"],
               "val_knn": valm["knn_top1_k20"] if valm else None,
               "val_linear": valm["linear_probe_top1"] if valm else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of BENCHMARKS.md."""
    out = ["| data | rule | epochs | steps | train s | monitor (val slice) | val kNN | val linear | test kNN | test linear |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['data']} ({r['train_images']}) | {r['rule']} | {r.get('epochs', '-')} | "
                   f"{r.get('steps_about', '-')} | {r.get('train_seconds', '-')} | "
                   f"{pct(r['monitor_best']) if r.get('monitor_best') is not None else '-'} | {pct(r['val_knn']) if r['val_knn'] is not None else '-'} | "
                   f"{pct(r['val_linear']) if r['val_linear'] is not None else '-'} | {pct(r['test_knn'])} | "
                   f"{pct(r['test_linear'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000],
                        help="Fashion-MNIST training subset sizes (0 = none)")
    parser.add_argument("--folder", type=Path, action="append", default=[], help="also an image folder (labelled)")
    parser.add_argument("--image-size", type=int, default=None, help="resize the folder's images to this side")
    parser.add_argument("--rules", nargs="+", default=["epochs=30", "steps=5000"], help="epochs=E or steps=S")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args(argv)
    for rule in args.rules:
        parse_rule(rule)

    print(describe())
    base = TrainConfig(seed=args.seed)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        sizes = [n for n in args.sizes if n > 0]
        if sizes:
            sets, _ = fashion_sets(sizes, args.seed)
            for name, data, val in sets:
                rows += measure(name, data, val, base, args.rules, root)
        for folder in args.folder:
            data = load_dataset(str(folder), image_size=args.image_size)
            fbase = dataclasses.replace(base, data=str(folder), image_size=args.image_size)
            rows += measure(f"{folder.name}", data, None, fbase, args.rules, root)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "environment": describe()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
