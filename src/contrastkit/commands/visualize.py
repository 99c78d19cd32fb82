"""``contrastkit visualize``: draw figures of a run: 2-D map, neighbours, saliency, training curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.errors import ConfigError

NAME = "visualize"
HELP = "draw figures of a run: 2-D map, neighbours, saliency, training curves"
DESCRIPTION = (
    "Draw PNG figures of a run (embeds first when embeddings.npy is missing).\n\n"
    "Writes into RUN/figures/ (or --out):\n"
    "  map.png         t-SNE (openTSNE, seeded; PCA to 50 dims first) of at most --max-points items,\n"
    "                  coloured by class, or by cluster from labels.csv (see --colour)\n"
    "  neighbours.png  a few sampled test images, each followed by its 8 nearest training images (cosine)\n"
    "  saliency.png    image / nearest-neighbour pairs with heat maps of |d cosine similarity / d pixel|\n"
    "                  (needs the run's model and data set)\n"
    "  curves.png      loss, learning rate, kNN monitor, embedding spread and effective rank per epoch\n"
    "                  (from log.jsonl)"
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, which figures, the map's colours and sample."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/figures)")
    parser.add_argument("--what", default="map,neighbours,saliency,curves",
                        help="comma-separated figures to draw, of map, neighbours, saliency, curves (default: all)")
    parser.add_argument("--colour", choices=("auto", "label", "cluster"), default="auto",
                        help="map colours: class labels of items.csv, clusters of labels.csv, or auto: labels.csv "
                        "when present, else class labels (default: auto)")
    parser.add_argument("--max-points", type=int, default=5000,
                        help="items sampled for the t-SNE map (default: 5000, about a minute on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the map sample, t-SNE and the sampled queries (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Draw the figures, then print each file written and why any figure was skipped."""
    from contrastkit.visualize import visualize_run

    if args.max_points < 5:
        raise ConfigError(f"--max-points must be >= 5, got {args.max_points}")
    written, skipped = visualize_run(args.run, args.what, args.out, colour=args.colour, seed=args.seed,
                                     max_points=args.max_points)
    for path in written.values():
        print(f"wrote {path}")
    for name, why in skipped.items():
        print(f"note: no {name} figure: {why}")
    return 0
