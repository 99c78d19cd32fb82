"""Quality at a wall-clock budget: train the default recipe for N minutes, then kNN and linear probe.

For each budget the script
1. times a few training steps of the configuration (``harness.images_per_second``)
   and sets the number of epochs so that training, with its per-epoch kNN
   monitor, fills the budget;
2. trains with ``contrastkit.fit`` in this process and evaluates the frozen
   backbone on the test split: kNN (k=20 majority vote, weighted k=200) and
   the linear probe;
3. repeats with seeds 0..R-1 and reports the median and the range.
In the same table: raw-pixel kNN and logistic regression, the untrained
network, and the supervised baseline (same backbone, labels, same budget).

Usage:
    python bench/quality.py --minutes 10
    python bench/quality.py --minutes 10 30 --repeats 3 --out quality.json
    python bench/quality.py --minutes 30 --supervised-only   # the supervised baseline alone
    python bench/quality.py --minutes 1 --set backbone=seed_cnn --set batch_size=256
    python bench/quality.py --minutes 10 --epochs 9 --set crop_min_scale=0.2 --no-supervised   # a recipe at fixed epochs
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

from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.evaluation import raw_pixel_baselines, supervised_baseline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import (  # noqa: E402
    epochs_for_budget, frozen_metrics, images_per_second, median_spread, pct, random_init_metrics, train,
)

MONITOR_SECONDS = 4.0  # budgeted per epoch for the kNN monitor and the checkpoint (measured: 2-4 s on 2 cores)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs into TrainConfig fields; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def budget_run(config: TrainConfig, data, minutes: float, root: Path, tag: str, epochs: int | None = None) -> dict[str, Any]:
    """Calibrate, train for the budget (or exactly ``epochs``), evaluate; one row of results."""
    rate = images_per_second(config, data)
    epochs = epochs or epochs_for_budget(minutes, rate, len(data.train), overhead=MONITOR_SECONDS)
    config = dataclasses.replace(config, epochs=epochs)
    method, result, seconds = train(config, data, root / tag)
    metrics = frozen_metrics(method, data, config)
    row = {
        "tag": tag, "minutes": minutes, "seed": config.seed, "epochs": epochs, "calibrated_images_per_s": rate,
        "train_seconds": seconds, "knn_monitor": [h["knn_top1"] for h in result.history],
        **{k: v for k, v in metrics.items() if k != "per_class"}, "per_class": metrics["per_class"],
    }
    print(f"{tag}: {epochs} epochs in {seconds:.0f} s ({rate:.0f} img/s calibrated): kNN {pct(row['knn_top1_k20'])}, "
          f"w-k200 {pct(row['knn_top1_k200_weighted'])}, linear {pct(row['linear_probe_top1'])}", flush=True)
    return row


def supervised_run(config: TrainConfig, data, minutes: float, root: Path, tag: str) -> dict[str, Any]:
    """The supervised baseline on the same budget (its own images/s calibration)."""
    sup = dataclasses.replace(config, method="supervised")
    rate = images_per_second(sup, data)
    epochs = epochs_for_budget(minutes, rate, len(data.train), overhead=MONITOR_SECONDS)
    run = root / tag
    run.mkdir(parents=True)
    out = supervised_baseline(run, dataclasses.replace(config, epochs=epochs), data, progress=False)
    print(f"{tag}: {epochs} epochs in {out['train_seconds']:.0f} s: test top-1 {pct(out['test_top1'])}, "
          f"feature kNN {pct(out['knn_top1_k20'])}", flush=True)
    return {"tag": tag, "minutes": minutes, "seed": config.seed, "epochs": epochs, **out}


def summary_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """'median [min-max]' cells of ``keys`` over ``rows``."""
    cells = []
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            cells.append("-")
            continue
        med, lo, hi = median_spread(values)
        cells.append(pct(med) if len(values) == 1 else f"{pct(med)} [{pct(lo)}-{pct(hi)}]")
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0], help="training budgets, wall-clock minutes")
    parser.add_argument("--data", default="fashion-mnist", help="data set (default: the full Fashion-MNIST)")
    parser.add_argument("--repeats", type=int, default=1, help="seeds per budget (median and range reported)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field (default: the default recipe)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-supervised", action="store_true", help="skip the supervised baseline")
    which.add_argument("--supervised-only", action="store_true",
                       help="train only the supervised baseline (with the raw-pixel and untrained rows)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train exactly this many epochs instead of filling the budget (to compare a recipe with "
                             "another at the epochs the budget gave it; the supervised baseline still fills the budget)")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args(argv)

    print(describe())
    base = TrainConfig(data=args.data, **parse_overrides(args.overrides))
    data = load_dataset(args.data, image_size=base.image_size)
    trained = "supervised" if args.supervised_only else base.method
    print(f"data: {data.train.name}, {len(data.train)} train / {len(data.test)} test; "
          f"{trained}/{base.backbone}, batch {base.batch_size}, budgets {args.minutes} min, {args.repeats} seed(s)",
          flush=True)
    t0 = time.perf_counter()
    raw = raw_pixel_baselines(data)
    print(f"raw pixels ({time.perf_counter() - t0:.0f} s): kNN {pct(raw['raw_pixel_knn_top1_k20'])}, "
          f"logistic regression {pct(raw['raw_pixel_linear_probe_top1'])}", flush=True)
    untrained = random_init_metrics(base, data)
    print(f"untrained network: kNN {pct(untrained['knn_top1_k20'])}, linear {pct(untrained['linear_probe_top1'])}", flush=True)

    ssl_rows: list[dict[str, Any]] = []
    sup_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for minutes in args.minutes:
            for seed in range(args.repeats):
                config = dataclasses.replace(base, seed=seed)
                if not args.supervised_only:
                    ssl_rows.append(budget_run(
                        config, data, minutes, root, f"{base.method}-{minutes:g}min-seed{seed}", args.epochs))
                if not args.no_supervised:
                    sup_rows.append(supervised_run(config, data, minutes, root, f"supervised-{minutes:g}min-seed{seed}"))

    keys = ("knn_top1_k20", "knn_top1_k200_weighted", "linear_probe_top1")
    print()
    print("| model | budget | epochs | train s | kNN k=20 | kNN w. k=200 | linear probe |")
    print("|---|---|---|---|---|---|---|")
    for minutes in args.minutes:
        rows = [r for r in ssl_rows if r["minutes"] == minutes]
        if not rows:
            continue
        epochs = "/".join(str(r["epochs"]) for r in rows)
        secs = "/".join(f"{r['train_seconds']:.0f}" for r in rows)
        print(f"| {base.method} ({base.backbone}) | {minutes:g} min | {epochs} | {secs} | " + " | ".join(summary_rows(rows, keys)) + " |")
    for minutes in args.minutes:
        rows = [r for r in sup_rows if r["minutes"] == minutes]
        if rows:
            epochs = "/".join(str(r["epochs"]) for r in rows)
            secs = "/".join(f"{r['train_seconds']:.0f}" for r in rows)
            knn20, knn200, top1 = summary_rows(rows, ("knn_top1_k20", "knn_top1_k200_weighted", "test_top1"))
            print(f"| supervised ({base.backbone}) | {minutes:g} min | {epochs} | {secs} | {knn20} | {knn200} | {top1} (classifier) |")
    print(f"| untrained {base.backbone} | - | 0 | 0 | " + " | ".join(summary_rows([untrained], keys)) + " |")
    print("| raw pixels | - | - | - | " + " | ".join(pct(raw[f"raw_pixel_{k}"]) for k in keys) + " |")
    if args.out:
        args.out.write_text(json.dumps({
            "environment": describe(), "config": base.to_dict(), "raw_pixels": raw,
            "untrained": {k: v for k, v in untrained.items() if k != "per_class"}, "ssl": ssl_rows, "supervised": sup_rows,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
