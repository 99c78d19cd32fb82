"""``contrastkit generate``: images from a run's generator (unconditional, like a query, or of a cluster)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "generate"
HELP = "generate images with a run's generator: unconditional, variations of a query, or of a cluster"
DESCRIPTION = (
    "Sample images with RUN/generator (written by `contrastkit train-generator`). Euler integration of the flow "
    "ODE in --steps steps, classifier-free guidance v = v_uncond + W (v_cond - v_uncond) with W = --guidance.\n"
    "  (default)      unconditional: a representation sampled by the representation generator, then pixels\n"
    "  --like QUERY   variations of an image file or an item index (its own embedding is the condition);\n"
    "                 --n images per query\n"
    "  --cluster K    images of cluster K of RUN/labels.csv: representations sampled by the representation\n"
    "                 generator and kept when their nearest cluster centroid is K (new representations, not\n"
    "                 copies of members)\n\n"
    "Writes into --out DIR:\n"
    "  samples/0000.png ...  one PNG per image\n"
    "  samples.npz           images: uint8 N x C x H x W (e.g. contrastkit fidelity RUN DIR/samples.npz)\n"
    "  grid.png              all images in a grid (with --like, each row starts with its query)\n"
    "  generate.json         the settings and what conditioned the images"
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run, the output folder and how the condition is chosen."""
    parser.add_argument("run", type=Path, help="run folder with a generator (contrastkit train-generator)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--n", type=int, default=16, help="images to generate; with --like, per query (default: 16)")
    parser.add_argument("--like", nargs="+", default=[], metavar="QUERY",
                        help="image files or item indices (rows of embeddings.npy) whose embedding conditions "
                        "the images")
    parser.add_argument("--cluster", type=int, default=None, metavar="K",
                        help="a cluster of RUN/labels.csv (contrastkit label --clusters) to generate images of")
    parser.add_argument("--guidance", type=float, default=1.0, metavar="W",
                        help="classifier-free guidance weight: 0 ignores the condition, 1 the conditional model, "
                        ">1 stronger (fewer, more typical images), e.g. 2 (default: 1)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps of each ODE (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every draw (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Generate, write the files, print a summary."""
    from contrastkit.generate.sampling import generate_run

    info = generate_run(args.run, args.out, n=args.n, like=args.like, cluster=args.cluster, guidance=args.guidance,
                        steps=args.steps, seed=args.seed)
    what = {"unconditional": "from sampled representations", "like": f"like {len(args.like)} quer{'y' if len(args.like) == 1 else 'ies'}",
            "cluster": f"of cluster {args.cluster} ({info.get('accepted_share', 0):.1%} of sampled representations fell in it)"}
    count = args.n * len(args.like) if args.like else args.n
    print(f"{count} images {what[info['mode']]}, guidance {args.guidance:g}, {args.steps} Euler steps, seed {args.seed}")
    print("wrote " + ", ".join(info["files"]))
    return 0
