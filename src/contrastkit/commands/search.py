"""``contrastkit search``: find the images most similar to a query image or item."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "search"
HELP = "find the images most similar to a query image or item"
DESCRIPTION = (
    "Print the items nearest each QUERY by cosine similarity of embeddings (rank, index, score, "
    "split, label, source). A QUERY is an image file (embedded with the run's model after the same channel, "
    "size and normalisation as the training data) or an integer, the row index of an item in items.csv. "
    "Builds the index (as `contrastkit index`) when it is missing or out of date."
)
FORMATTER = argparse.HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, the queries and the output form."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="an image file or an item index")
    parser.add_argument("--top-k", type=int, default=10, help="results per query (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--montage", type=Path, default=None, metavar="PNG",
                        help="also draw a PNG: one row per query, the query image then its results, from the run's data set")


def run(args: argparse.Namespace) -> int:
    """Search, then print the results table (or JSON) and the montage written."""
    from contrastkit.similar import format_results, search_run

    result = search_run(args.run, args.queries, args.top_k, montage=args.montage)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if result["index_note"]:
        print(f"note: {result['index_note']}")
    print(format_results(result))
    if args.montage is not None:
        print(f"wrote {result['montage']}")
    return 0
