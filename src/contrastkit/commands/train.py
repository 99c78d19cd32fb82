"""``contrastkit train``: train an encoder without labels."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from contrastkit.commands.options import add_config_options
from contrastkit.config import RESUMABLE_FIELDS, TrainConfig
from contrastkit.errors import ConfigError

NAME = "train"
HELP = "train an encoder without labels"
DESCRIPTION = (
    "Train an image encoder with a contrastive method. Writes a run folder with config.json, "
    "log.jsonl (one JSON line per epoch) and checkpoints/{last,best}.pt. A run killed at any moment "
    "continues with --resume."
)
FORMATTER = argparse.HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder options, then one option per TrainConfig field."""
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<data>-<method>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(parser)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The configuration and run folder of a ``train`` command line.

    On ``--resume`` the saved configuration is kept; only the fields in
    RESUMABLE_FIELDS (how the run executes) may change.

    Raises:
        ConfigError: ``--resume`` without ``--out``, or with an option that changes the saved configuration.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out, the run folder to continue")
        saved = TrainConfig.load(args.out / "config.json")
        changed = {k: v for k, v in given.items() if getattr(saved, k) != v and k not in RESUMABLE_FIELDS}
        if changed:
            opts = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(changed))
            raise ConfigError(f"{args.out}: a resumed run keeps its configuration; drop {opts} (saved in {args.out / 'config.json'})")
        config = dataclasses.replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_FIELDS})
        return config, args.out
    config = TrainConfig(**given)
    out = args.out
    if out is None:
        data_name = Path(config.data).name if config.data else "default"
        out = Path("runs") / f"{data_name}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    return config, out


def run(args: argparse.Namespace) -> int:
    """Train, then print the run folder, the epochs done and the best kNN monitor."""
    from contrastkit.data import load_dataset
    from contrastkit.methods import build_method
    from contrastkit.train import fit, resolve_epochs

    config, out = config_from_args(args)
    data = load_dataset(config.data, image_size=config.image_size, skip_bad=config.skip_bad)
    config = resolve_epochs(config, data.train)  # --epochs omitted: enough epochs for --steps steps
    method = build_method(config, data.train.shape[0], data.train.num_classes)
    result = fit(method, data, config, out, resume=args.resume, progress=not args.quiet)
    best = f"{result.best_knn:.2%}" if result.best_knn is not None else "n/a (no labels)"
    print(f"run folder: {out}")
    completed = sum(1 for h in result.history if "steps" not in h)  # a last epoch cut short by --minutes has "steps"
    how = " (stopped early)" if result.stopped_early else ""
    how += f" (stopped on time (--minutes {config.minutes:g}); --resume with a larger --minutes continues it)" if result.stopped_on_time else ""
    print(f"epochs: {completed}/{config.epochs}{how}  best kNN monitor: {best}")
    verdict = result.verdict()
    if verdict:
        print(verdict)
    print(f"next: contrastkit evaluate {out}")
    return 0
