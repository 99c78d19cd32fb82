"""Few labels: FixMatch fine-tuning (``label --finetune-minutes``) against the frozen-embedding seed models,
from the same seeds, on a trained run.

For each draw of ``--seeds-per-class`` seeds per class (training rows only,
seeded), on a copy of the run's files: ``contrastkit label --seed-labels``
with the frozen models (the chosen one, as the command picks it), then with
``--finetune-minutes``. Accuracy is reported on the non-seed **training**
rows (what a setting is chosen by: a held-out part of the training split,
unlabelled while fine-tuning) and on the **test** rows (reported only; the
test images are never trained on, labelled or not). A ``--variant
"field=value,..."`` overrides :class:`contrastkit.finetune.FineTuneConfig`
fields, e.g. ``--variant lr=1e-3``; several ``--variant`` options compare
settings side by side (``--variant ""`` is the default).

Usage:
    python bench/finetune_seeds.py runs/demo --seeds-per-class 10 --minutes 3 --draws 1
    python bench/finetune_seeds.py runs/quality/simclr-10min-seed0 --minutes 10 --draws 3 --out ft.json
    python bench/finetune_seeds.py runs/demo --minutes 3 --variant "" --variant "lr=1e-3" --variant "threshold=0.8"
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.cli import main as ck
from contrastkit.finetune import FineTuneConfig
from contrastkit.label import label_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, write_results  # noqa: E402

RUN_FILES = ("config.json", "checkpoints", "embeddings.npy", "items.csv", "meta.json")


def parse_variant(text: str) -> dict[str, Any]:
    """``"lr=1e-3,mu=7"`` -> FineTuneConfig overrides, typed as the field's default."""
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(FineTuneConfig)}
    for part in filter(None, text.split(",")):
        key, value = part.split("=", 1)
        if key not in fields:
            raise SystemExit(f"--variant {text!r}: {key} is not a FineTuneConfig field ({', '.join(fields)})")
        default = fields[key].default
        out[key] = type(default)(value) if default is not None else float(value)
    return out


def draw_seeds(items: Path, per_class: int, seed: int, path: Path) -> None:
    with open(items, newline="") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([int(r["label"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    rng = np.random.default_rng(seed)
    picked = [int(i) for c in np.unique(truth[train]) for i in rng.choice(np.flatnonzero(train & (truth == c)),
                                                                          per_class, replace=False)]
    path.write_text("item,label\n" + "".join(f"{i},{truth[i]}\n" for i in picked))


def accuracies(m: dict[str, Any]) -> dict[str, float]:
    by = m["ground_truth_by_split"]
    return {split: by[split]["accuracy_non_seed"] for split in ("train", "test") if split in by}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a trained run with labels in its items")
    p.add_argument("--seeds-per-class", type=int, default=10)
    p.add_argument("--draws", type=int, default=1, help="seed draws (median and range reported)")
    p.add_argument("--minutes", type=float, default=10.0, help="--finetune-minutes of each fine-tuning")
    p.add_argument("--variant", action="append", default=None,
                   help="FineTuneConfig overrides 'field=value,...' ('' = the defaults); repeatable")
    p.add_argument("--work", type=Path, default=Path("runs/bench-finetune"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    variants = args.variant if args.variant is not None else [""]
    print(describe())
    if not (args.run / "items.csv").is_file() and ck(["embed", str(args.run)]):  # a run fresh from bench/quality.py
        raise SystemExit(f"embedding {args.run} failed")
    results: dict[str, list[dict[str, Any]]] = {"frozen": []}
    for v in variants:
        results[f"finetune {v or 'default'}"] = []
    for draw in range(args.draws):
        where = args.work / f"draw{draw}"
        where.mkdir(parents=True, exist_ok=True)
        seeds = where / "seeds.csv"
        draw_seeds(args.run / "items.csv", args.seeds_per_class, draw, seeds)
        for name in ["frozen", *variants]:
            copy = where / (name.replace("=", "-").replace(",", "_") or "default")
            shutil.rmtree(copy, ignore_errors=True)
            copy.mkdir()
            for f in RUN_FILES:
                src = args.run / f
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy / f)
            if name == "frozen":
                m = label_run(copy, seed_labels=seeds, montages=False, seed=draw)
                row = {"draw": draw, "model": m["model"], **accuracies(m)}
                results["frozen"].append(row)
            else:
                config = FineTuneConfig(**{"minutes": args.minutes, "seed": draw, **parse_variant(name)})
                m = label_run(copy, seed_labels=seeds, montages=False, seed=draw, finetune=config, progress=False)
                row = {"draw": draw, "steps": m["finetune"]["steps"], "seconds": m["finetune"]["seconds"],
                       "mask_rate": m["finetune"]["last_epoch"].get("mask_rate"), **accuracies(m)}
                results[f"finetune {name or 'default'}"].append(row)
            print(f"draw {draw} {name or 'finetune default'}: " + ", ".join(
                f"{k} {v:.2%}" for k, v in row.items() if k in ("train", "test")), flush=True)
    print(f"\n{args.seeds_per_class} seeds per class, {args.draws} draw(s); accuracy on non-seed rows, "
          "median [min-max]:")
    for name, rows in results.items():
        cells = []
        for split in ("train", "test"):
            vals = [r[split] for r in rows if split in r]
            if vals:
                cells.append(f"{split} {statistics.median(vals):.2%} [{min(vals):.2%}-{max(vals):.2%}]")
        print(f"  {name:<32} " + "  ".join(cells))
    if args.out is not None:
        write_results(args.out, args, results)


if __name__ == "__main__":
    main()
