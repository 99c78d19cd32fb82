"""Compare training recipes by the kNN monitor, side by side in one run.

The monitor scores a validation slice of the training split (see
``contrastkit.train.validation_split``), never the test split: a recipe
chosen here has not seen the images it will be reported on.

Each variant is a set of TrainConfig overrides; every variant trains from the
same seeds on the same data, and the table gives the kNN monitor after each
epoch (median over seeds) with the final spread, beside the raw-pixel and
untrained-network kNN on the same images. Variants alternate seed by seed, so
machine noise spreads evenly over them.

A variant may carry a third element, overrides of the view recipe
(:class:`contrastkit.augment.AugmentConfig` fields, e.g. stronger intensity
jitter) applied on top of the default recipe for the data: a way to try a
recipe before it becomes a default or an option.

Usage:
    python bench/recipe_sweep.py --epochs 5 --variants '[["b512", {"batch_size": 512}], ["b128", {"batch_size": 128}]]'
    python bench/recipe_sweep.py --epochs 3 --variants '[["default", {}], ["jitter0.8", {}, {"brightness": 0.8, "contrast": 0.8}]]'
    python bench/recipe_sweep.py --data fashion-mnist --epochs 3 --seeds 3
    python bench/recipe_sweep.py --data runs/emoji --image-size 32 --epochs 40 --variants '[["default", {}], ["crop0.5", {"crop_min_scale": 0.5}]]'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import torch

import contrastkit.train as train_module
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.embedding import compute_embeddings
from contrastkit.knn import knn_accuracy
from contrastkit.methods import build_method
from contrastkit.runtime import Runtime
from contrastkit.train import data_info, fit, validation_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402

DEFAULT_VARIANTS = [["default", {}]]


@contextlib.contextmanager
def view_recipe_overrides(overrides: dict):
    """Within the block, training views use the default recipe with these AugmentConfig fields replaced."""
    if not overrides:
        yield
        return
    original = train_module.augment_recipe

    def patched(info, config):
        return dataclasses.replace(original(info, config), **overrides)

    train_module.augment_recipe = patched
    try:
        yield
    finally:
        train_module.augment_recipe = original


def monitor_rows(config: TrainConfig, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank, validation) rows of the training split: those of ``fit``'s own kNN monitor."""
    monitor = train_module._Monitor(data, config, *validation_split(data.train, config))
    return monitor.bank_idx, monitor.query_idx


def untrained_knn(config: TrainConfig, data) -> float:
    """kNN (k=20) of the network at initialisation, on the monitor's images (the validation slice)."""
    method = build_method(config, data.train.shape[0])
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    info = data_info(data.train, config)
    bank_idx, val_idx = monitor_rows(config, data)
    bank = compute_embeddings(method, data.train, info, runtime, indices=bank_idx)
    queries = compute_embeddings(method, data.train, info, runtime, indices=val_idx)
    return knn_accuracy(bank, data.train.labels[bank_idx], queries, data.train.labels[val_idx], k=config.knn_k)


def raw_pixel_validation_knn(config: TrainConfig, data) -> float:
    """kNN (k=20) of raw pixels on the monitor's images (the validation slice): the monitor's own raw-pixel line."""
    return train_module._Monitor(data, config, *validation_split(data.train, config)).raw_pixel_knn(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="data set (default: the embedded Fashion-MNIST subset)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=None, help="resize the images to this side (folders)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant (seeds 0..N-1)")
    parser.add_argument("--variants", default=json.dumps(DEFAULT_VARIANTS),
                        help='JSON list of [name, {TrainConfig overrides}] or [name, {TrainConfig overrides}, {AugmentConfig overrides}]')
    args = parser.parse_args(argv)
    variants = [(v[0], v[1], v[2] if len(v) > 2 else {}) for v in json.loads(args.variants)]

    print(describe())
    data = load_dataset(args.data, image_size=args.image_size)
    print(f"data: {data.train.name} {len(data.train)} train / {len(data.test)} test; {args.epochs} epochs, seeds 0..{args.seeds - 1}")
    first = TrainConfig(**{"data": args.data, "epochs": args.epochs, "image_size": args.image_size, **variants[0][1]})
    print(f"raw-pixel kNN (k=20) on the validation slice ({len(monitor_rows(first, data)[1])} training images held out "
          f"of the monitor's bank; the test split is not used): {raw_pixel_validation_knn(first, data):.2%}")
    results: dict[str, list[list[float]]] = {name: [] for name, _, _ in variants}
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for seed in range(args.seeds):
        for name, overrides, view_overrides in variants:
            config = TrainConfig(**{"data": args.data, "epochs": args.epochs, "image_size": args.image_size, "seed": seed,
                                    **overrides})
            if seed == 0:
                print(f"{name}: untrained network kNN {untrained_knn(config, data):.2%}", flush=True)
            method = build_method(config, data.train.shape[0], data.train.num_classes)
            with tempfile.TemporaryDirectory() as tmp, view_recipe_overrides(view_overrides):
                t0 = time.perf_counter()
                result = fit(method, data, config, tmp, progress=False)
                seconds[name].append(time.perf_counter() - t0)
            results[name].append([h["knn_top1"] for h in result.history])
            print(f"{name} seed {seed}: " + " ".join(f"{k:.2%}" for k in results[name][-1]), flush=True)

    print()
    print(f"| variant | overrides | kNN monitor per epoch (median of {args.seeds}) | final min-max | seconds |")
    print("|---|---|---|---|---|")
    for name, overrides, view_overrides in variants:
        runs = results[name]
        per_epoch = [statistics.median(r[e] for r in runs) for e in range(len(runs[0]))]
        finals = [r[-1] for r in runs]
        shown = json.dumps(overrides) + (f" views {json.dumps(view_overrides)}" if view_overrides else "")
        print(f"| {name} | `{shown}` | {' '.join(f'{k:.1%}' for k in per_epoch)} | "
              f"{min(finals):.1%}-{max(finals):.1%} | {statistics.median(seconds[name]):.0f} |")


if __name__ == "__main__":
    main()
