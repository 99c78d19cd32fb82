"""``contrastkit complete``: fill the masked part of images with the run's generator, against two baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "complete"
HELP = "complete masked images with a run's generator (against mean fill and the nearest neighbour)"
DESCRIPTION = (
    "Hide part of each QUERY (an image file or an item index) and fill it with RUN/generator's pixel generator\n"
    "(contrastkit train-generator): replacement on the flow's straight paths (RePaint without resampling),\n"
    "conditioned on the encoder's embedding of the visible part, --guidance as in generate. The masked-region\n"
    "error (mean squared, intensities in [0, 1]) is reported beside two baselines: the visible pixels' mean, and\n"
    "the masked region of the training image nearest in embedding space (the query itself left out). Squared\n"
    "error favours averages, so it is also given for the pixel-wise average of the --n completions beside the\n"
    "average of the --n nearest neighbours.\n\n"
    "Writes into --out DIR:\n"
    "  completion.png   per query: original, masked input, mean fill, nearest neighbour, completions\n"
    "  completions.npz  images: uint8, every completion\n"
    "  complete.json    errors per query and method, their means, the settings"
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run, the queries, the mask and the sampler's settings."""
    from contrastkit.generate.complete import MASKS

    parser.add_argument("run", type=Path, help="run folder with a generator (contrastkit train-generator)")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="image files or item indices")
    parser.add_argument("--mask", choices=MASKS, default="center",
                        help="what is hidden: the centre square (half the side), a half, or random cells of a "
                        "4 x 4 grid (default: center)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--n", type=int, default=4, help="completions per query (default: 4)")
    parser.add_argument("--guidance", type=float, default=1.0, metavar="W", help="guidance weight (default: 1)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise and the random mask (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Complete, write the files, print the errors."""
    from contrastkit.generate.complete import complete_run

    info = complete_run(args.run, args.queries, args.out, mask=args.mask, n=args.n, steps=args.steps,
                        guidance=args.guidance, seed=args.seed)
    m = info["means"]
    print(f"{len(args.queries)} queries, mask {args.mask} ({info['hidden_fraction']:.0%} hidden), {args.n} "
          f"completions each; masked-region mean squared error (lower is better):")
    print(f"  one fill:        mean fill {m['mean_fill']:.4f}  nearest neighbour {m['nearest_neighbour']:.4f}  "
          f"generator {m['generator_mean']:.4f} (best of {args.n}: {m['generator_best']:.4f})")
    print(f"  average of {args.n}:    nearest neighbours {m['nearest_average']:.4f}  "
          f"completions {m['generator_average']:.4f}")
    print("wrote " + ", ".join(info["files"]))
    return 0
