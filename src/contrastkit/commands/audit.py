"""``contrastkit audit``: data problems of a run: duplicates, train/test leaks, outliers, doubtful labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit import audit as au  # numpy, torch and the index module only; cleanlab loads on use

NAME = "audit"
HELP = "find data problems: exact and near duplicates, train/test leaks, outliers, labels that disagree with neighbours"
DESCRIPTION = (
    "Audit a run's images through its embeddings (embeds first when embeddings.npy is missing):\n"
    "  exact duplicates   identical decoded pixels (identical embeddings when the images cannot be loaded)\n"
    f"  near duplicates    cosine distance to a neighbour < {au.NEAR_DUPLICATE_FACTOR} x the median nearest-neighbour\n"
    "                     distance (cleanlab Datalab's rule)\n"
    "  leaks              an exact or near duplicate in the other split (train vs test: inflates evaluation)\n"
    "  outliers           mean distance to the k neighbours above Q3 + 1.7 x IQR (cleanlab Datalab's rule)\n"
    "  label issues       where items.csv has labels: cleanlab's confident learning on the out-of-sample\n"
    "                     vote of each item's neighbours\n\n"
    "Writes into the run folder:\n"
    "  audit.csv   item,split,source,label,problems,duplicate_of,nearest,similarity,mean_distance,\n"
    "              label_quality,suggested_label per item (problems: space-separated names)\n"
    "  audit.json  the counts and the thresholds used"
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, the graph's k, the near-duplicate factor, the output form."""
    parser.add_argument("run", type=Path, help="run folder (or any folder with embeddings.npy and items.csv)")
    parser.add_argument("--neighbours", type=int, default=au.NEIGHBOURS,
                        help=f"neighbours per item in the kNN graph (default: {au.NEIGHBOURS})")
    parser.add_argument("--near-factor", type=float, default=au.NEAR_DUPLICATE_FACTOR,
                        help="near duplicates lie closer than this times the median nearest-neighbour distance "
                        f"(default: {au.NEAR_DUPLICATE_FACTOR}, cleanlab's)")
    parser.add_argument("--no-images", action="store_true",
                        help="find exact duplicates by identical embeddings instead of decoding the run's images")
    parser.add_argument("--top", type=int, default=5, metavar="N",
                        help="print up to N examples of each problem (default: 5; 0: none)")
    parser.add_argument("--json", action="store_true", help="print audit.json instead of the summary")


def run(args: argparse.Namespace) -> int:
    """Audit, write audit.csv / audit.json, print the summary and a few examples of each problem."""
    from contrastkit.errors import ConfigError
    from contrastkit.sources import printable

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    summary = au.audit_run(args.run, k=args.neighbours, near_factor=args.near_factor, images=not args.no_images)
    result, splits, names = summary.pop("result"), summary.pop("splits"), summary.pop("class_names")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(au.format_summary(summary, args.run))
    if args.top:
        for line in au.examples(result, splits, args.top, names):
            print(printable(line))
    return 0
