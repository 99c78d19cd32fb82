"""``contrastkit report``: write one self-contained HTML report of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.errors import ConfigError

NAME = "report"
HELP = "write one self-contained HTML report of a run"
DESCRIPTION = (
    "Write RUN/report.html (or --out): one file with every figure inlined (PNG data URIs), inline "
    "CSS, no JavaScript and no external resources. Sections: configuration, training curves, accuracy against "
    "baselines, per-class accuracy, kNN confusion matrix, 2-D map, nearest neighbours, cluster montages with "
    "auto-labels (from labels.csv, else k-means in memory) and saliency examples; with a generator "
    "(RUN/generator/), 16 images sampled from it with --seed and the figures of RUN/fidelity.json beside their "
    "real-vs-real floors. Embeds and evaluates first when embeddings.npy or metrics.json is missing."
)
FORMATTER = argparse.HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, the HTML file and the map's sample."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("--out", type=Path, default=None, help="HTML file to write (default: RUN/report.html)")
    parser.add_argument("--max-points", type=int, default=5000, help="items sampled for the t-SNE map (default: 5000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the map, queries, k-means and generated samples (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Write the report, then print its path."""
    from contrastkit.report import report_run

    if args.max_points < 5:
        raise ConfigError(f"--max-points must be >= 5, got {args.max_points}")
    path = report_run(args.run, args.out, seed=args.seed, max_points=args.max_points)
    print(f"wrote {path}")
    return 0
