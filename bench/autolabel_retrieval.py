"""Auto-labelling and retrieval figures of a trained run, beside the same on raw pixels.

Reads the run's embeddings (``contrastkit embed`` writes them; the script
embeds first when they are missing) and the data set's ground truth, then:
1. unsupervised: k-means and SCAN (``contrastkit.scan``, its defaults) into
   as many clusters as classes on every item (train and test), cluster
   accuracy (Hungarian matching), NMI, ARI, over all rows and over the train
   rows alone;
2. few labels: for 1, 5, 10, 50 seed labels per class drawn from the train
   split, ``label_from_seeds`` labels every item; accuracy over all non-seed
   items (median of ``--draws`` draws), the model chosen (on held-out seeds),
   and the accuracy of each seed model alone (Poisson learning among them),
   for comparison only: nothing is chosen by these figures;
3. retrieval: every test image queries the train split by cosine similarity;
   precision@k (fraction of the top k with the query's class) and mAP over
   the whole ranked train split.
Each on the run's embeddings and on raw pixels (L2-normalised, as the kNN
baseline compares them). No figure here chooses anything (SCAN's settings are
its defaults, the seed model is chosen on held-out seeds of the train split),
so test rows are only reported.

Usage:
    python bench/autolabel_retrieval.py RUN
    python bench/autolabel_retrieval.py RUN --seeds-per-class 1 5 10 50 --draws 3 --out labels.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.data import load_dataset
from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings
from contrastkit.evaluation import raw_pixel_features, run_config
from contrastkit.vectors import normalise
from contrastkit.label import SEED_MODELS, cluster_metrics, label_clusters, label_from_seeds
from contrastkit.seeds import _predict, seed_graphs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402
from harness import pct  # noqa: E402


def retrieval_metrics(db: np.ndarray, db_y: np.ndarray, q: np.ndarray, q_y: np.ndarray,
                      ks: tuple[int, ...] = (1, 10, 100), chunk: int = 512) -> dict[str, float]:
    """precision@k for each k, and mAP over the full ranking of ``db`` for every query (cosine similarity).

    AP of one query: the mean, over the positions r of its relevant items
    (same class) in the ranking, of precision@r.
    """
    dbn, qn = torch.from_numpy(normalise(db)), torch.from_numpy(normalise(q))
    dby, qy = torch.from_numpy(np.asarray(db_y)), torch.from_numpy(np.asarray(q_y))
    hits = {k: 0.0 for k in ks}
    ap_sum = 0.0
    for start in range(0, len(qn), chunk):
        sims = qn[start:start + chunk] @ dbn.T  # (b, N)
        order = sims.argsort(dim=1, descending=True)
        rel = (dby[order] == qy[start:start + chunk, None]).float()  # (b, N) relevance in rank order
        for k in ks:
            hits[k] += rel[:, :k].mean(1).sum().item()
        cum = rel.cumsum(1)
        ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float32)
        n_rel = rel.sum(1).clamp(min=1)
        ap_sum += ((cum / ranks) * rel).sum(1).div(n_rel).sum().item()
    out = {f"precision_at_{k}": hits[k] / len(qn) for k in ks}
    out["mAP"] = ap_sum / len(qn)
    return out


def few_label_accuracy(features: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, per_class: int,
                       draw: int, models: tuple[str, ...] = SEED_MODELS) -> tuple[float, str, dict[str, float]]:
    """Accuracy on every non-seed item when ``per_class`` train items of each class are labelled; the model
    chosen on held-out seeds; and the accuracy of each model alone, fitted on all the seeds."""
    rng = np.random.default_rng(1000 + draw)
    seeds = np.concatenate([rng.choice(train_rows[labels[train_rows] == c], per_class, replace=False)
                            for c in np.unique(labels)])
    c = int(labels.max()) + 1
    res = label_from_seeds(features, seeds, labels[seeds], num_classes=c, models=models, seed=draw)
    rest = np.ones(len(labels), dtype=bool)
    rest[seeds] = False
    xn = normalise(features, dtype=np.float64)
    graphs = seed_graphs(xn, 10, models)
    alone = {m: float((_predict(m, xn, seeds, labels[seeds], c, 10, draw, graphs).argmax(1)[rest] == labels[rest]).mean())
             for m in models}
    return float((res.labels[rest] == labels[rest]).mean()), res.model, alone


def clustering(name: str, algorithm: str, features: np.ndarray, labels: np.ndarray, splits: np.ndarray,
               k: int) -> dict[str, float]:
    """Cluster accuracy, NMI and ARI over all rows, and the same over the train rows (``train_`` keys)."""
    t0 = time.perf_counter()
    clusters = label_clusters(features, k, algorithm=algorithm, seed=0).clusters
    out = {kk: v for kk, v in cluster_metrics(labels, clusters).items() if isinstance(v, float)}
    train = splits == "train"
    out.update({f"train_{kk}": v for kk, v in cluster_metrics(labels[train], clusters[train]).items()
                if isinstance(v, float)})
    out["seconds"] = time.perf_counter() - t0
    print(f"{name}: {algorithm} ({out['seconds']:.0f} s): " +
          ", ".join(f"{kk} {v:.4f}" for kk, v in out.items() if kk != "seconds"), flush=True)
    return out


def evaluate(name: str, features: np.ndarray, labels: np.ndarray, splits: np.ndarray, args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    k = int(labels.max()) + 1
    out["clusters"] = clustering(name, "kmeans", features, labels, splits, k)
    if not args.no_scan:
        out["scan"] = clustering(name, "scan", features, labels, splits, k)
    train_rows = np.flatnonzero(splits == "train")
    out["few_labels"] = {}
    models = tuple(args.models.split(","))
    for s in args.seeds_per_class:
        t0 = time.perf_counter()
        runs = [few_label_accuracy(features, labels, train_rows, s, d, models) for d in range(args.draws)]
        accs = [a for a, _, _ in runs]
        alone = {m: statistics.median(r[2][m] for r in runs) for m in models}
        out["few_labels"][s] = {"median": statistics.median(accs), "min": min(accs), "max": max(accs),
                                "models": [m for _, m, _ in runs], "alone_median": alone}
        print(f"{name}: {s} labels/class ({time.perf_counter() - t0:.0f} s): {pct(statistics.median(accs))} "
              f"[{pct(min(accs))}-{pct(max(accs))}], models {[m for _, m, _ in runs]}; alone: " +
              ", ".join(f"{m} {pct(v)}" for m, v in alone.items()), flush=True)
    test_rows = np.flatnonzero(splits == "test")
    t0 = time.perf_counter()
    out["retrieval"] = retrieval_metrics(features[train_rows], labels[train_rows], features[test_rows], labels[test_rows])
    print(f"{name}: retrieval ({time.perf_counter() - t0:.0f} s): " +
          ", ".join(f"{kk} {v:.4f}" for kk, v in out["retrieval"].items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of `contrastkit train`")
    parser.add_argument("--seeds-per-class", type=int, nargs="+", default=[1, 5, 10, 50])
    parser.add_argument("--draws", type=int, default=3, help="random seed draws per count (median reported)")
    parser.add_argument("--models", default=",".join(SEED_MODELS),
                        help="seed models to choose from (label propagation on the kNN graph of 70 000 items "
                             "takes minutes per fold on 2 cores; knn,linear takes seconds)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-pixel columns")
    parser.add_argument("--no-scan", action="store_true", help="skip SCAN (about a minute per 10 000 items on 2 cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    print(describe())
    config = run_config(args.run)
    data = load_dataset(config.data, image_size=config.image_size)
    if not (args.run / EMBEDDINGS_FILE).is_file():
        embed_run(args.run, data=data)
    emb = read_embeddings(args.run)
    if emb.labels is None or (emb.labels < 0).any():
        raise SystemExit(f"{args.run}: these figures need a label for every item")
    splits = np.array(emb.splits)
    print(f"data: {data.train.name}, {int((splits == 'train').sum())} train + {int((splits == 'test').sum())} test "
          f"items, embeddings {emb.features.shape[1]}-d", flush=True)
    results = {"ssl": evaluate("self-supervised", emb.features, emb.labels, splits, args)}
    if not args.no_raw:
        raw = torch.cat([raw_pixel_features(data.train), raw_pixel_features(data.test)]).numpy()
        results["raw"] = evaluate("raw pixels", raw, emb.labels, splits, args)

    cols = list(results)
    print()
    print("| measure | " + " | ".join({"ssl": "self-supervised", "raw": "raw pixels"}[c] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    print("| k-means cluster accuracy | " + " | ".join(pct(results[c]["clusters"]["cluster_accuracy"]) for c in cols) + " |")
    for key in ("nmi", "ari"):
        print(f"| k-means {key.upper()} | " + " | ".join(f"{results[c]['clusters'][key]:.4f}" for c in cols) + " |")
    print("| k-means cluster accuracy, train rows | " +
          " | ".join(pct(results[c]["clusters"]["train_cluster_accuracy"]) for c in cols) + " |")
    if not args.no_scan:
        print("| SCAN cluster accuracy | " + " | ".join(pct(results[c]["scan"]["cluster_accuracy"]) for c in cols) + " |")
        for key in ("nmi", "ari"):
            print(f"| SCAN {key.upper()} | " + " | ".join(f"{results[c]['scan'][key]:.4f}" for c in cols) + " |")
        print("| SCAN cluster accuracy, train rows | " +
              " | ".join(pct(results[c]["scan"]["train_cluster_accuracy"]) for c in cols) + " |")
    for s in args.seeds_per_class:
        print(f"| {s} label(s)/class: items labelled correctly | " +
              " | ".join(pct(results[c]["few_labels"][s]["median"]) for c in cols) + " |")
        for m in results["ssl"]["few_labels"][s]["alone_median"]:
            print(f"| {s} label(s)/class, {m} alone | " +
                  " | ".join(pct(results[c]["few_labels"][s]["alone_median"][m]) for c in cols) + " |")
    for key in results["ssl"]["retrieval"]:
        print(f"| retrieval {key.replace('_', ' ')} | " + " | ".join(f"{results[c]['retrieval'][key]:.4f}" for c in cols) + " |")
    if args.out:
        args.out.write_text(json.dumps({"environment": describe(), "run": str(args.run), **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
