"""Over-fitting: training loss against held-out kNN accuracy over a long run, and what early stopping saves.

Trains on a small labelled slice (default 2 000 images, stratified) for many
epochs, so that the training loss keeps falling long after the held-out kNN
accuracy (test images against the training bank) stops rising. Writes one
JSON line per epoch (plot-ready: ``epoch``, ``train_loss``, ``heldout_knn``,
``seconds``), then replays the run's curve through ``--patience`` P for a few
values of P: the epoch where early stopping would have stopped, the kNN of
the best checkpoint it keeps, and the training time it saves.

Usage:
    python bench/overfitting.py --epochs 100 --out overfitting.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.data.dataset import DataSplits
from contrastkit.train import validation_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import pct, subset_per_class, train  # noqa: E402


def early_stop(curve: list[float], patience: int) -> tuple[int, int]:
    """(stop epoch, best epoch), 1-based, of ``--patience`` on a kNN curve (the rule of ``fit``).

    Training stops after ``patience`` epochs without a better score than the
    best so far; the best epoch's checkpoint is the one kept.
    """
    best, best_epoch, bad = None, 0, 0
    for epoch, score in enumerate(curve, start=1):
        if best is None or score > best:
            best, best_epoch, bad = score, epoch, 0
        else:
            bad += 1
        if bad >= patience and epoch < len(curve):
            return epoch, best_epoch
    return len(curve), best_epoch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-images", type=int, default=2000, help="stratified training slice (images)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("overfitting.jsonl"), help="per-epoch JSON lines")
    args = parser.parse_args(argv)

    print(describe())
    data = load_dataset(args.data)
    c = data.train.num_classes
    train_split = subset_per_class(data.train, [args.train_images // c] * c)
    config = TrainConfig(data=args.data, backbone=args.backbone, batch_size=args.batch_size, epochs=args.epochs,
                         monitor_bank=len(train_split))
    print(f"data: {len(train_split)} training images of {data.train.name}, held-out kNN on the validation slice "
          f"of {len(validation_split(train_split, config)[1])} of them (not trained on by the kNN bank, never the "
          f"test split); {args.epochs} epochs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _, result, seconds = train(config, DataSplits(train_split, data.test), Path(tmp) / "run")
    elapsed, lines = 0.0, []
    for h in result.history:
        elapsed += h["epoch_seconds"]
        lines.append({"epoch": h["epoch"], "train_loss": h["loss"], "heldout_knn": h["knn_top1"],
                      "lr": h["lr"], "seconds": elapsed})
    args.out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    curve = [x["heldout_knn"] for x in lines]
    best = max(range(len(curve)), key=curve.__getitem__)
    print(f"wrote {args.out} ({len(lines)} epochs, {seconds:.0f} s); loss {lines[0]['train_loss']:.3f} -> "
          f"{lines[-1]['train_loss']:.3f}; held-out kNN best {pct(curve[best])} at epoch {best + 1}, last {pct(curve[-1])}")
    print()
    print("| patience | stops at epoch | kept checkpoint (epoch, kNN) | epochs saved | training time saved | kNN vs last epoch |")
    print("|---|---|---|---|---|---|")
    for p in args.patience:
        stop, kept = early_stop(curve, p)
        saved = lines[-1]["seconds"] - lines[stop - 1]["seconds"]
        print(f"| {p} | {stop} | {kept}, {pct(curve[kept - 1])} | {len(curve) - stop} ({(len(curve) - stop) / len(curve):.0%}) | "
              f"{saved:.0f} s ({saved / lines[-1]['seconds']:.0%}) | "
              f"{100 * (curve[kept - 1] - curve[-1]):+.2f} points |")


if __name__ == "__main__":
    main()
