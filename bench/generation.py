"""RCG on a run's encoder: representation-conditioned generation against the same pixel generator trained
unconditionally, with the same budget, scored by contrastkit fidelity.

For each variant (``conditional``: ``train-generator`` defaults, the pixel
generator conditioned on the embedding, 10% dropped; ``unconditional``:
``--p-uncond 1``, the condition never seen), on a copy of the run's files:
1. ``contrastkit train-generator`` with ``--minutes`` (the same budget for both;
   the representation generator's share is spent either way, it is unused by
   the unconditional variant's pixels);
2. ``contrastkit generate --n SAMPLES`` (unconditional sampling: a
   representation from the representation generator, then pixels; guidance
   ``--guidance``);
3. ``contrastkit.fidelity`` against the training split: Fréchet distance,
   precision and recall (k=3) in the run's embedding space and in raw pixels,
   each beside its real-vs-real floor.

Without ``--run`` an encoder is trained first (``contrastkit train --data
DATA --minutes ENCODER_MINUTES``). Nothing is asserted; the figures go to
BENCHMARKS.md with the header printed here.

Usage:
    python bench/generation.py --data fashion-mnist --encoder-minutes 10 --minutes 15 --work runs/bench-gen
    python bench/generation.py --run runs/fmnist --minutes 15 --samples 2000 --out gen.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from contrastkit.cli import main as ck
from contrastkit.fidelity import fidelity_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, write_results  # noqa: E402

RUN_FILES = ("config.json", "log.jsonl", "checkpoints", "embeddings.npy", "items.csv", "meta.json")
VARIANTS = (("conditional", []), ("unconditional", ["--p-uncond", "1"]))
FIGURES = (("frechet_distance", "FD", "{:.4g}"), ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"))


def copy_run(run: Path, dest: Path) -> Path:
    """The run's own files (not its generator) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        src = run / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def variant(run: Path, name: str, options: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Train one generator on a copy of ``run``, sample, score."""
    where = copy_run(run, args.work / name)
    shutil.rmtree(where / "generator", ignore_errors=True)
    t0 = time.perf_counter()
    code = ck(["train-generator", str(where), "--minutes", str(args.minutes), "--quiet", *options,
               *shlex.split(args.gen_options)])
    if code:
        raise SystemExit(f"train-generator failed for {name} (exit {code})")
    train_s = time.perf_counter() - t0
    out = where / "samples"
    t0 = time.perf_counter()
    if ck(["generate", str(where), "--n", str(args.samples), "--steps", str(args.steps), "--guidance",
           str(args.guidance), "--seed", str(args.seed), "--out", str(out)]):
        raise SystemExit(f"generate failed for {name}")
    sample_s = time.perf_counter() - t0
    result = fidelity_run(where, out / "samples.npz", "train", max_items=args.max_items, seed=args.seed)
    result.pop("_closest_images", None)
    return {"train_seconds": train_s, "sample_seconds": sample_s, "spaces": result["spaces"],
            "counts": result["counts"]}


def table(results: dict[str, dict[str, Any]]) -> str:
    """A row per variant and feature space: each figure beside its real-vs-real floor."""
    lines = [f"{'variant':<14} {'space':<12} " + " ".join(f"{lbl:>10} {'floor':>8}" for _, lbl, _ in FIGURES)]
    for name, r in results.items():
        for space, fig in r["spaces"].items():
            cells = " ".join(f"{fmt.format(fig['generated'][k]):>10} {fmt.format(fig['real_floor'][k]):>8}"
                             for k, _, fmt in FIGURES)
            lines.append(f"{name:<14} {space:<12} {cells}")
    lines.append("(Fréchet distance: lower is better; precision / recall: higher; floor = a disjoint real sample)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="a trained run (default: train one on --data)")
    p.add_argument("--data", default="fashion-mnist", help="data of the encoder trained without --run (default: fashion-mnist)")
    p.add_argument("--encoder-minutes", type=float, default=10.0, help="budget of that encoder (default: 10)")
    p.add_argument("--minutes", type=float, default=15.0, help="train-generator budget of each variant (default: 15)")
    p.add_argument("--samples", type=int, default=2000, help="images generated and scored per variant (default: 2000)")
    p.add_argument("--steps", type=int, default=50, help="Euler steps (default: 50)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance weight of the conditional variant (default: 1)")
    p.add_argument("--max-items", type=int, default=5000, help="fidelity's reference sample size (default: 5000)")
    p.add_argument("--gen-options", default="", help="more train-generator options, one string (e.g. '--width 48')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/bench-generation"), help="folder of the copies (default: runs/bench-generation)")
    p.add_argument("--out", type=Path, default=None, help="results JSON")
    args = p.parse_args()
    print(describe())
    run = args.run
    if run is None:
        run = args.work / "encoder"
        if ck(["train", "--data", args.data, "--minutes", str(args.encoder_minutes), "--epochs", "100", "--out",
               str(run), "--quiet"]):
            raise SystemExit("train failed")
    results = {name: variant(run, name, options, args) for name, options in VARIANTS}
    print(table(results))
    if args.out is not None:
        write_results(args.out, args, results)


if __name__ == "__main__":
    main()
