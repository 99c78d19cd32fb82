"""Which features of a trained small_cnn to embed: the pooled last stage, or more.

For a run folder of ``contrastkit train`` (small_cnn backbone), compares
feature read-outs of the same frozen network:

- ``layer3``: global average pool of the last stage (what ``embed`` writes);
- ``layer2+3``: that, concatenated with the pooled previous stage, each
  part L2-normalised first so neither dominates the cosine;
- ``layer3 max``: global max pool of the last stage;
- ``layer3 avg+max``: average and max pools concatenated (each normalised);
- ``projector``: the projection head's output (what the loss sees).

The choice is made on the run's validation slice (``train.validation_split``:
its 2 000 held-out training images queried against the rest of the training
split, kNN k=20); the test split only reports (kNN k=20 against all 60 000
training images, and the linear probe). Issue 13 asks for this comparison.

Usage:
    python bench/feature_choice.py runs/quality/simclr-10min-seed0
    python bench/feature_choice.py RUN --no-linear --out features.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from contrastkit.augment import to_float
from contrastkit.checkpoint import load_method
from contrastkit.data import load_dataset
from contrastkit.evaluation import evaluate_features
from contrastkit.knn import knn_accuracy
from contrastkit.train import validation_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402


def stage_outputs(method, images: torch.Tensor, info: dict, batch: int = 1024) -> dict[str, torch.Tensor]:
    """Pooled read-outs of every candidate for uint8 images (N, C, H, W), in eval mode on the CPU."""
    bb = method.backbone
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("layer2", "layer3", "layer3_max", "projector")}
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = to_float(images[start:start + batch], info["mean"], info["std"], info["image_size"])  # as embed does
            h2 = bb.layer2(bb.layer1(bb.stem(x)))
            h3 = bb.layer3(h2)
            avg3 = h3.mean((2, 3))
            out["layer2"].append(h2.mean((2, 3)))
            out["layer3"].append(avg3)
            out["layer3_max"].append(h3.amax((2, 3)))
            out["projector"].append(method.head(avg3) if hasattr(method, "head") else avg3)
    return {k: torch.cat(v) for k, v in out.items()}


def readouts(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n: Callable[[torch.Tensor], torch.Tensor] = lambda t: F.normalize(t, dim=1)
    return {
        "layer3 (embed's)": parts["layer3"],
        "layer2+3": torch.cat([n(parts["layer2"]), n(parts["layer3"])], 1),
        "layer3 max": parts["layer3_max"],
        "layer3 avg+max": torch.cat([n(parts["layer3"]), n(parts["layer3_max"])], 1),
        "projector": parts["projector"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--no-linear", action="store_true", help="skip the linear probe (minutes per read-out)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    print(describe())
    print("command: python bench/feature_choice.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    torch.set_num_threads(os.cpu_count() or 1)
    method, config, info = load_method(args.run, "best")
    if not hasattr(method.backbone, "layer3"):
        raise SystemExit(f"{args.run}: this script reads small_cnn's stages; the run's backbone is {config.backbone}")
    data = load_dataset(config.data, image_size=config.image_size)
    rest, val = validation_split(data.train, config)
    train_parts = stage_outputs(method, data.train.images, info)
    test_parts = stage_outputs(method, data.test.images, info)
    tr, te = readouts(train_parts), readouts(test_parts)
    y, yt = data.train.labels, data.test.labels
    results = {}
    print("\n| read-out | dims | validation kNN k=20 | test kNN k=20 | test kNN w. k=200 | test linear probe |")
    print("|---|---|---|---|---|---|")
    for name in tr:
        v = knn_accuracy(tr[name][rest], y[rest], tr[name][val], y[val], k=20, num_classes=data.train.num_classes)
        ev = evaluate_features(tr[name], y, te[name], yt, linear=not args.no_linear)
        results[name] = {"dims": tr[name].shape[1], "validation_knn": v, **{k: ev[k] for k in
                         ("knn_top1_k20", "knn_top1_k200_weighted", "linear_probe_top1") if k in ev}}
        r = results[name]
        lin = f"{r['linear_probe_top1']:.2%}" if "linear_probe_top1" in r else "-"
        print(f"| {name} | {r['dims']} | {v:.2%} | {r['knn_top1_k20']:.2%} | {r['knn_top1_k200_weighted']:.2%} | {lin} |",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"environment": describe(), "run": str(args.run), "results": results}, indent=2))


if __name__ == "__main__":
    main()
