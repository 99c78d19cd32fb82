"""What a run's generator does for a user, at full size: variations that keep their query's class, completion
against its baselines, and copy detection that flags a generator trained on 200 images.

Given a run with a conditional generator (``contrastkit train-generator``,
e.g. ``runs/bench-generation/conditional`` from ``bench/generation.py``):

1. **--like class keeping.** A stratified sample of test images (item indices
   of the run's test rows, never trained on by encoder or generator) each
   gets ``--n`` variations (``contrastkit generate --like``). A judge
   classifier, the same backbone trained **with labels** (``contrastkit
   train --method supervised``; labels are used only to judge), classifies
   every variation; the figure is the share given the query's true class,
   beside the judge's own accuracy on the queries (its ceiling; chance is 1 /
   classes, the queries being stratified), and the judged class shares of
   the run's unconditional samples (``RUN/samples``, when there).
2. **Completion.** ``contrastkit complete`` on the same queries, per mask:
   masked-region squared error of one completion against one nearest
   neighbour and the mean fill, and of the average of ``--n`` completions
   against the average of ``--n`` nearest neighbours.
3. **Copy detection.** A copy of the run whose data are ``--copy-items``
   training images (stratified; 1 000 test images as its held-out split)
   gets its own generator (``--copy-epochs`` at ``--copy-batch-size`` within ``--copy-minutes``; the
   copy keeps the run's encoder, its config and checkpoints pointed at the
   small data), and
   ``contrastkit fidelity`` scores its samples against those images; the
   full-data generator's samples are scored the same way against the full
   training split. The share of samples above the copy level (the 99th
   percentile of train-to-train nearest-other similarity) is shown beside the
   held-out real images' share (the floor).

Nothing is asserted; the figures go to BENCHMARKS.md with the header printed
here.

Usage:
    python bench/generation_uses.py --run runs/bench-generation/conditional --queries 200 --out runs/generation-uses.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.cli import main as ck
from contrastkit.embedding import read_embeddings
from contrastkit.fidelity import fidelity_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, write_results  # noqa: E402
from generation import copy_run  # noqa: E402

COPY_HELDOUT = 1000  # test images of the small copy's data, its held-out floor


def stratified(labels: np.ndarray, rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of ``rows``, as equal a share of each label as possible, in a seeded order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[rows])
    per = [rng.permutation(rows[labels[rows] == c]) for c in classes]
    picked = [p[i] for i in range(max(len(p) for p in per)) for p in per if i < len(p)][:count]
    return np.sort(np.array(picked, dtype=np.int64))


def train_judge(run: Path, where: Path, epochs: int) -> Path:
    """The backbone trained with labels on the run's data (resumed when interrupted)."""
    config = json.loads((run / "config.json").read_text())
    done = where / "judge-done"
    if not done.is_file():
        args = ["train", "--data", str(config["data"]), "--method", "supervised", "--epochs", str(epochs),
                "--out", str(where), "--quiet"]
        if (where / "checkpoints" / "last.pt").is_file():
            args.append("--resume")
        if ck(args):
            raise SystemExit("training the judge failed")
        done.write_text("done\n")
    return where


def classify(judge: Path, images: np.ndarray) -> np.ndarray:
    """The judge's class of each uint8 (N, C, H, W) image."""
    from contrastkit.checkpoint import load_method
    from contrastkit.data.dataset import ImageDataset
    from contrastkit.embedding import compute_embeddings
    from contrastkit.runtime import Runtime

    method, config, info = load_method(judge)
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    method.to(runtime.device).eval()
    ds = ImageDataset(images=torch.from_numpy(images), labels=None, class_names=None, sources=[""] * len(images),
                      name="judged images")
    feats = compute_embeddings(method, ds, info, runtime)
    with torch.no_grad():
        return method.classifier(feats.to(runtime.device)).float().argmax(1).cpu().numpy()


def like_part(run: Path, judge: Path, rows: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
              images_of) -> dict[str, Any]:
    """Variations of each query, judged; the judge on the queries; unconditional samples as chance."""
    out: dict[str, Any] = {"queries": len(rows), "n": args.n, "guidance": {}}
    truth = labels[rows]
    judged_queries = classify(judge, images_of(rows))
    out["judge_accuracy_on_queries"] = float(np.mean(judged_queries == truth))
    for g in args.guidance:
        where = args.work / f"like-g{g:g}"
        t0 = time.perf_counter()
        if ck(["generate", str(run), "--like", *map(str, rows), "--n", str(args.n), "--guidance", str(g),
               "--steps", str(args.steps), "--seed", str(args.seed), "--out", str(where)]):
            raise SystemExit("generate --like failed")
        seconds = time.perf_counter() - t0
        images = np.load(where / "samples.npz")["images"]
        judged = classify(judge, images).reshape(len(rows), args.n)
        keep = judged == truth[:, None]
        agree = judged == judged_queries[:, None]
        per_class = {int(c): float(keep[truth == c].mean()) for c in np.unique(truth)}
        out["guidance"][f"{g:g}"] = {"class_kept": float(keep.mean()), "agrees_with_judged_query": float(agree.mean()),
                                     "majority_kept": float(np.mean(keep.mean(1) > 0.5)), "per_class": per_class,
                                     "seconds": seconds}
        print(f"--like guidance {g:g}: {keep.mean():.1%} of {keep.size} variations judged the query's class "
              f"(judge on the queries: {out['judge_accuracy_on_queries']:.1%}; {seconds:.0f} s)", flush=True)
    samples = args.run / "samples" / "samples.npz"
    if samples.is_file():  # the judged classes of unconditional samples: every class should be there
        uncond = classify(judge, np.load(samples)["images"])
        out["unconditional_class_shares"] = (np.bincount(uncond, minlength=int(labels.max()) + 1) / len(uncond)).tolist()
    return out


def complete_part(run: Path, rows: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """``contrastkit complete`` per mask; the means of complete.json."""
    out = {}
    for mask in args.masks:
        where = args.work / f"complete-{mask}"
        t0 = time.perf_counter()
        if ck(["complete", str(run), *map(str, rows), "--mask", mask, "--n", str(args.n), "--steps",
               str(args.steps), "--seed", str(args.seed), "--out", str(where)]):
            raise SystemExit(f"complete --mask {mask} failed")
        info = json.loads((where / "complete.json").read_text())
        out[mask] = {**info["means"], "hidden_fraction": info["hidden_fraction"], "seconds": time.perf_counter() - t0}
    return out


def copy_scores(run: Path, samples: Path, max_items: int) -> dict[str, Any]:
    """Copy figures of ``samples`` against the run's training split, beside the held-out floor."""
    result = fidelity_run(run, samples, "train", max_items=max_items, seed=0)
    enc = next(iter(result["spaces"].values()))
    keys = ("copy_share", "copy_similarity_median")
    return {"generated": {k: enc["generated"][k] for k in keys}, "floor": {k: enc["real_floor"][k] for k in keys},
            "copy_level": enc["generated"]["copy_level"], "counts": result["counts"],
            "spaces": {s: {"generated": {k: f["generated"][k] for k in keys}, "floor": {k: f["real_floor"][k] for k in keys}}
                       for s, f in result["spaces"].items()}}


def point_at(copy: Path, data: Path) -> None:
    """Make the copied run's data ``data``: its config.json and its checkpoints' configs (the encoder is kept)."""
    from contrastkit.checkpoint import load_checkpoint, save_checkpoint

    config = json.loads((copy / "config.json").read_text())
    config["data"] = str(data)
    (copy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for path in (copy / "checkpoints").glob("*.pt"):
        state = load_checkpoint(path)
        state["config"]["data"] = str(data)
        save_checkpoint(path, state)


def copy_part(run: Path, emb, labels: np.ndarray, args: argparse.Namespace, images_of) -> dict[str, Any]:
    """A generator trained on ``--copy-items`` images against the full-data one, by copy detection."""
    train_rows = np.flatnonzero(np.array([s == "train" for s in emb.splits]))
    test_rows = np.flatnonzero(np.array([s == "test" for s in emb.splits]))
    small = args.work / f"copy{args.copy_items}"
    data = small / "data.npz"
    if not data.is_file():
        small.mkdir(parents=True, exist_ok=True)
        picked = stratified(labels, train_rows, args.copy_items, args.seed)
        held = stratified(labels, test_rows, COPY_HELDOUT, args.seed)
        np.savez(data, images=images_of(picked), labels=labels[picked], test_images=images_of(held),
                 test_labels=labels[held])
    copy = small / "run"
    if not (copy / "generator" / "done").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        copy_run(run, copy)
        for name in ("embeddings.npy", "items.csv", "meta.json"):
            (copy / name).unlink(missing_ok=True)
        point_at(copy, data.resolve())
        if ck(["embed", str(copy)]):
            raise SystemExit("embedding the small copy failed")
        # Epoch counts, not "unlimited": the warm-up and cosine schedule span the planned steps, so an
        # epoch cap far beyond what the budget reaches would keep the learning rate near zero throughout.
        if ck(["train-generator", str(copy), "--minutes", str(args.copy_minutes), "--epochs", str(args.copy_epochs),
               "--rep-epochs", str(args.copy_rep_epochs), "--rep-batch-size", str(min(256, args.copy_items)), "--batch-size",
               str(min(args.copy_batch_size, args.copy_items)), "--quiet"]):
            raise SystemExit("train-generator on the small copy failed")
        (copy / "generator" / "done").write_text("done\n")
    out_small = small / "samples"
    if ck(["generate", str(copy), "--n", str(args.copy_samples), "--steps", str(args.steps), "--seed",
           str(args.seed), "--out", str(out_small)]):
        raise SystemExit("generate on the small copy failed")
    full_samples = args.work / "full-samples"
    if ck(["generate", str(run), "--n", str(args.copy_samples), "--steps", str(args.steps), "--seed",
           str(args.seed), "--out", str(full_samples)]):
        raise SystemExit("generate on the full run failed")
    result = {f"trained on {args.copy_items}": copy_scores(copy, out_small / "samples.npz", args.max_items),
              "trained on the full split": copy_scores(run, full_samples / "samples.npz", args.max_items)}
    for name, r in result.items():
        print(f"copies, generator {name}: {r['generated']['copy_share']:.1%} of samples above the copy level "
              f"{r['copy_level']:.3f} (held-out real images: {r['floor']['copy_share']:.1%})", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run with a conditional generator")
    p.add_argument("--queries", type=int, default=200, help="test images used as queries, stratified (default: 200)")
    p.add_argument("--n", type=int, default=4, help="variations / completions per query (default: 4)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0], help="guidance weights of --like (default: 1 2)")
    p.add_argument("--masks", nargs="+", default=["center", "right", "random"], help="completion masks")
    p.add_argument("--steps", type=int, default=50, help="Euler steps (default: 50)")
    p.add_argument("--judge-epochs", type=int, default=3, help="epochs of the supervised judge (default: 3)")
    p.add_argument("--copy-items", type=int, default=200, help="training images of the small generator (default: 200)")
    p.add_argument("--copy-minutes", type=float, default=15.0, help="its train-generator budget (default: 15)")
    p.add_argument("--copy-epochs", type=int, default=1000,
                   help="its pixel generator's epochs: the schedule's length, sized to end within the budget (default: 1000)")
    p.add_argument("--copy-rep-epochs", type=int, default=400,
                   help="its representation generator's epochs (one step each at 200 items; default: 400)")
    p.add_argument("--copy-batch-size", type=int, default=32,
                   help="its pixel generator's batch size: more steps per minute on 200 images (default: 32)")
    p.add_argument("--copy-samples", type=int, default=500, help="samples scored for copies (default: 500)")
    p.add_argument("--max-items", type=int, default=5000, help="fidelity's reference sample size (default: 5000)")
    p.add_argument("--parts", nargs="+", default=["like", "complete", "copy"], choices=["like", "complete", "copy"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/bench-generation-uses"), help="output folder")
    p.add_argument("--out", type=Path, default=None, help="results JSON")
    args = p.parse_args()
    print(describe())
    args.work.mkdir(parents=True, exist_ok=True)
    emb = read_embeddings(args.run)
    if emb.labels is None:
        raise SystemExit(f"{args.run}: no labels in embeddings.npy's items; the judge and the strata need them")
    labels = emb.labels
    from contrastkit.montage import run_images

    get, why = run_images(args.run, emb.sources)
    if get is None:
        raise SystemExit(f"{args.run}: cannot read its images: {why}")

    def images_of(rows: np.ndarray) -> np.ndarray:
        return np.asarray(get(torch.from_numpy(np.asarray(rows, dtype=np.int64))))

    test_rows = np.flatnonzero(np.array([s == "test" for s in emb.splits]))
    rows = stratified(labels, test_rows, args.queries, args.seed)
    results: dict[str, Any] = {"query_rows": rows.tolist()}
    if "like" in args.parts:
        judge = train_judge(args.run, args.work / "judge", args.judge_epochs)
        results["like"] = like_part(args.run, judge, rows, labels, args, images_of)
    if "complete" in args.parts:
        results["complete"] = complete_part(args.run, rows, args)
        for mask, m in results["complete"].items():
            print(f"complete --mask {mask}: one fill: mean {m['mean_fill']:.4f}, nearest {m['nearest_neighbour']:.4f}, "
                  f"generator {m['generator_mean']:.4f}; average of {args.n}: nearest {m['nearest_average']:.4f}, "
                  f"generator {m['generator_average']:.4f}", flush=True)
    if "copy" in args.parts:
        results["copy"] = copy_part(args.run, emb, labels, args, images_of)
    if args.out is not None:
        write_results(args.out, args, results)


if __name__ == "__main__":
    main()
