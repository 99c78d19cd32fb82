"""``contrastkit evaluate``: kNN and linear-probe accuracy against baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit.config import TrainConfig

NAME = "evaluate"
HELP = "kNN and linear-probe accuracy against baselines"
DESCRIPTION = (
    "Evaluate a run's frozen features: kNN (cosine, k=20 vote and weighted k=200), a linear probe, "
    "per-class accuracy, and the raw-pixel kNN baseline; writes metrics.json into the run folder. "
    "Embeds the data first if embeddings.npy is missing."
)
FORMATTER = argparse.HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, another labelled data set, the supervised baseline and the output form."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("--data", default=None, help="labelled data set to evaluate on (default: the run's own)")
    parser.add_argument(
        "--baseline", choices=("supervised",), default=None,
        help="also train the same backbone with labels on the same budget and report it beside the SSL figures",
    )
    parser.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                        help="with --data, an image folder: leave out image files that cannot be decoded instead "
                        "of stopping with an error that lists them (default: as the run was trained)")
    parser.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print the metrics table (or metrics.json with --json)."""
    from contrastkit.data import load_dataset
    from contrastkit.evaluation import evaluate_run, format_metrics

    data = None
    if args.data is not None:
        config = TrainConfig.load(args.run / "config.json")
        skip_bad = config.skip_bad if args.skip_bad is None else args.skip_bad
        data = load_dataset(args.data, image_size=config.image_size, skip_bad=skip_bad)
    metrics = evaluate_run(args.run, data=data, baseline=args.baseline, progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
        print(f"run folder: {args.run}  (metrics written to {args.run / 'metrics.json'})")
    return 0
