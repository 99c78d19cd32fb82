"""``contrastkit fidelity``: score generated images in the run's embedding space."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "fidelity"
HELP = "score a set of generated images against real ones in the run's embedding space"
DESCRIPTION = (
    "Compare GENERATED images (any folder, .npz or IDX file contrastkit reads, from any generator) with real "
    "images through the run's encoder: Fréchet distance, KID, precision and recall (k=3), density and coverage "
    "(k=5), authenticity, and copy detection (each generated image's highest cosine similarity to a training "
    "image; the share above the 99th percentile of training images' similarity to their nearest other one). "
    "Every figure is printed beside its real-vs-real floor (a disjoint real sample of the same size; held-out "
    "images for copies) and again in a second feature space (raw pixels, or --second-run's encoder). Writes "
    "RUN/fidelity.json and RUN/fidelity_closest.png (the closest generated / training pairs side by side)."
)
FORMATTER = argparse.HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run, the generated images, the real reference and the sample sizes."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("generated", help="generated images: an image folder, .npz or IDX file")
    parser.add_argument("--real", default="train",
                        help="the real reference: train or test (that split of the run's data) or a path "
                        "(default: train)")
    parser.add_argument("--second-run", type=Path, default=None, metavar="RUN2",
                        help="another run whose encoder is the second feature space (default: raw pixels)")
    parser.add_argument("--max-items", type=int, default=5000,
                        help="at most this many generated images, and real ones in the reference (default: 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the samples and KID's subsets (default: 0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    """Measure, write fidelity.json and the closest-pairs PNG, print the table."""
    from contrastkit.checkpoint import run_checkpoint
    from contrastkit.errors import ConfigError
    from contrastkit.fidelity import fidelity_run, format_fidelity, write_fidelity
    from contrastkit.runlock import run_lock

    if args.max_items < 10:
        raise ConfigError(f"--max-items must be >= 10, got {args.max_items}")
    run_checkpoint(args.run)  # a missing or untrained run is named before the lock would create its folder
    with run_lock(args.run):
        result = fidelity_run(args.run, args.generated, args.real, second_run=args.second_run,
                              max_items=args.max_items, seed=args.seed)
        written = write_fidelity(args.run, result)
    print(json.dumps(result, indent=2) if args.json else format_fidelity(result))
    if not args.json:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
