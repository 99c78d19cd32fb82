"""``contrastkit train-generator``: train RCG's representation and pixel generators on a run's encoder."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path

from contrastkit.generate.config import GeneratorConfig

NAME = "train-generator"
HELP = "train an image generator on a run's embeddings (RCG: representation generator + conditional pixel generator)"
_PARAGRAPHS = (
    "RCG at small scale (Li, Katabi, He 2023, arXiv 2312.03701) on the run's frozen encoder, both models trained "
    "with flow matching (arXiv 2210.02747, 2209.03003) on the same engine as `train` (progress, bf16, atomic "
    "checkpoints, exact --resume, --minutes budget):",
    "1. the representation generator: a residual MLP over the run's embeddings of its training images "
    "(RUN/embeddings.npy, standardised per dimension; embedded first when missing);",
    "2. the pixel generator: a small U-Net over the training images, conditioned on each image's embedding "
    "(projected and added to the time embedding), replaced by a learned null embedding for --p-uncond of the "
    "images so that classifier-free guidance works.",
    "The representation generator trains first. With --minutes M it gets --rep-share of M (0.2) and the pixel "
    "generator the rest. Without a budget the defaults take a few minutes (representations) and about 15 "
    "minutes (pixels, 10 epochs) for 10 000 images of 28 px on 2 busy CPU cores.",
    "Writes RUN/generator/config.json and the engine run folders RUN/generator/rep/ and RUN/generator/pixel/ "
    "(log.jsonl, checkpoints/{last,best}.pt). Then: contrastkit generate RUN --out DIR.",
)
DESCRIPTION = "\n".join(textwrap.fill(p, 100, subsequent_indent="   " if p[:2] in ("1.", "2.") else "")
                        for p in _PARAGRAPHS)
FORMATTER = argparse.RawDescriptionHelpFormatter
TYPES = {"int": int, "float": float, "str": str}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, --resume, --quiet and one option per GeneratorConfig field."""
    parser.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN/generator from its last checkpoints (only --minutes, --device and "
                        "--checkpoint-minutes may change)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    defaults = GeneratorConfig()
    for f in dataclasses.fields(GeneratorConfig):
        default = getattr(defaults, f.name)
        shown = "omitted" if default is None else default
        parser.add_argument("--" + f.name.replace("_", "-"), type=TYPES[f.type.replace(" | None", "")],
                            default=argparse.SUPPRESS, metavar=f.name.upper(),
                            help=f"{f.metadata['help']} (default: {shown})")


def run(args: argparse.Namespace) -> int:
    """Train both models, then print what was done and where it is."""
    from contrastkit.generate.training import GENERATOR_DIR, train_generator

    names = {f.name for f in dataclasses.fields(GeneratorConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    config = GeneratorConfig(**given)
    results = train_generator(args.run, config, resume=args.resume, progress=not args.quiet,
                              changed=tuple(given))
    for model, result in results.items():
        done = sum(1 for h in result.history if "steps" not in h)
        loss = f"{result.history[-1]['loss']:.4f}" if result.history else "n/a"
        how = " (stopped on time; --resume with a larger --minutes continues it)" if result.stopped_on_time else ""
        print(f"{model} generator: {done} epochs, last loss {loss}, {result.elapsed_s / 60:.2f} minutes{how}")
    print(f"generator folder: {args.run / GENERATOR_DIR}")
    print(f"next: contrastkit generate {args.run} --out {args.run / 'generated'}")
    return 0
