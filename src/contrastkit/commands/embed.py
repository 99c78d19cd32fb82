"""``contrastkit embed``: write backbone features of every image."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.errors import ConfigError

NAME = "embed"
HELP = "write backbone features of every image"
DESCRIPTION = (
    "Embed a data set with a run's best checkpoint (the epoch best on the validation slice of the "
    "training split; --checkpoint last for the last epoch). Writes embeddings.npy (float32, train rows "
    "then test rows), items.csv (index,split,source,label) and meta.json."
)
FORMATTER = argparse.HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, the data set and how to read it."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("--data", default=None, help="data set to embed (default: the run's own)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default: 512)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best: the epoch whose kNN monitor on the validation slice of the training split was best "
                        "(last.pt without labels); last: the last epoch (default: best)")
    parser.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                        help="image folders: leave out image files that cannot be decoded instead of stopping with "
                        "an error that lists them (default: as the run was trained)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes decoding image files ahead of the model, for image folders too large for "
                        "memory (0 = decode in this process; default: as the run was trained, where omitted = "
                        "automatic: min(4, CPU cores - 1) for such folders, 0 for data in memory)")


def run(args: argparse.Namespace) -> int:
    """Embed, then print the files written."""
    from contrastkit.embedding import embed_run

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0 = decode in this process), got {args.workers}")
    emb = embed_run(args.run, data_spec=args.data, out_dir=args.out, batch_size=args.batch_size,
                    skip_bad=args.skip_bad, workers=args.workers, checkpoint=args.checkpoint)
    out = args.out or args.run
    print(f"wrote {out / 'embeddings.npy'} ({emb.features.shape[0]} x {emb.features.shape[1]} float32), "
          f"{out / 'items.csv'}, {out / 'meta.json'}")
    return 0
