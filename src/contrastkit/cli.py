"""The ``contrastkit`` command line: train, embed, evaluate, label, index, search, visualize, report.

Training options are generated from :class:`~contrastkit.config.TrainConfig`,
so their defaults and help live in one place. Errors a user can cause are
printed as one line naming the file or option, with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from contrastkit import __version__
from contrastkit.config import (
    DEVICE_NAMES,
    DISTANCE_NAMES,
    METHOD_NAMES,
    OPTIMIZER_NAMES,
    PRECISION_NAMES,
    RESUMABLE_FIELDS,
    TrainConfig,
)
from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.models.backbones import BACKBONES

CHOICES = {
    "method": METHOD_NAMES,
    "backbone": tuple(BACKBONES),
    "optimizer": OPTIMIZER_NAMES,
    "distance": DISTANCE_NAMES,
    "device": DEVICE_NAMES,
    "precision": PRECISION_NAMES,
}
TYPES = {"int": int, "float": float, "str": str}
def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults are suppressed so only given options are set."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = "omitted" if default is None else default
        help_text = f"{f.metadata['help']} (default: {shown})"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        base = TYPES[f.type.replace(" | None", "")]
        parser.add_argument(
            flag, type=base, default=argparse.SUPPRESS, choices=CHOICES.get(f.name),
            metavar=f.name.upper() if f.name not in CHOICES else None, help=help_text,
        )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="contrastkit",
        description="Contrastive self-supervised learning on images: train an encoder without labels, "
        "then embed and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"contrastkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train an encoder without labels",
        description="Train an image encoder with a contrastive method. Writes a run folder with config.json, "
        "log.jsonl (one JSON line per epoch) and checkpoints/{last,best}.pt. A run killed at any moment "
        "continues with --resume.",
    )
    train.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<data>-<method>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_options(train)

    embed = sub.add_parser(
        "embed", help="write backbone features of every image",
        description="Embed a data set with a run's best checkpoint (the epoch best on the validation slice of the "
        "training split; --checkpoint last for the last epoch). Writes embeddings.npy (float32, train rows "
        "then test rows), items.csv (index,split,source,label) and meta.json.",
    )
    embed.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    embed.add_argument("--data", default=None, help="data set to embed (default: the run's own)")
    embed.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    embed.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default: 512)")
    embed.add_argument("--checkpoint", choices=("best", "last"), default="best",
                       help="best: the epoch whose kNN monitor on the validation slice of the training split was best "
                       "(last.pt without labels); last: the last epoch (default: best)")
    embed.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                       help="image folders: leave out image files that cannot be decoded instead of stopping with "
                       "an error that lists them (default: as the run was trained)")
    embed.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes decoding image files ahead of the model, for image folders too large for "
                       "memory (0 = decode in this process; default: as the run was trained, where omitted = "
                       "automatic: min(4, CPU cores - 1) for such folders, 0 for data in memory)")

    evaluate = sub.add_parser(
        "evaluate", help="kNN and linear-probe accuracy against baselines",
        description="Evaluate a run's frozen features: kNN (cosine, k=20 vote and weighted k=200), a linear probe, "
        "per-class accuracy, and the raw-pixel kNN baseline; writes metrics.json into the run folder. "
        "Embeds the data first if embeddings.npy is missing.",
    )
    evaluate.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    evaluate.add_argument("--data", default=None, help="labelled data set to evaluate on (default: the run's own)")
    evaluate.add_argument(
        "--baseline", choices=("supervised",), default=None,
        help="also train the same backbone with labels on the same budget and report it beside the SSL figures",
    )
    evaluate.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                          help="with --data, an image folder: leave out image files that cannot be decoded instead "
                          "of stopping with an error that lists them (default: as the run was trained)")
    evaluate.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")

    label = sub.add_parser(
        "label", help="auto-label every image: clusters, or classes from a few seed labels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Label every item of a run's embeddings (train and test rows; embeds first when\n"
        "embeddings.npy is missing). Give --clusters K for clusters without labels, or --seed-labels CSV\n"
        "to spread a few labels to all items.\n\n"
        "Writes into the run folder (or --out):\n"
        "  labels.csv          item,source,label,confidence,cluster per item; label is the cluster number\n"
        "                      (--clusters) or the class name (--seed-labels); cluster is the group of\n"
        "                      the montage (the cluster, or the assigned class index)\n"
        "  label_metrics.json  the settings; with ground-truth labels in items.csv, cluster accuracy\n"
        "                      (Hungarian matching), NMI and ARI, or the accuracy on all non-seed items\n"
        "  montages/cluster_<k>.png  the 36 images nearest each centroid, from the run's data set",
    )
    label.add_argument("run", type=Path, help="run folder (or any folder with embeddings.npy and items.csv)")
    mode = label.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--clusters", type=int, metavar="K",
        help="cluster the L2-normalised embeddings into K groups (K may exceed the number of classes), no labels "
        "used; the confidence is the margin 1 - d1/d2 of the distances to the two nearest centroids (0 between "
        "two clusters, 1 on a centroid), or with --algorithm scan the head's probability of the cluster",
    )
    mode.add_argument(
        "--seed-labels", type=Path, metavar="CSV",
        help="a CSV with header item,label: item is a source from items.csv or its row index, label a class "
        "name or index. Labels every item with the kNN vote, label propagation on the kNN graph, a linear "
        "classifier and Poisson learning (Calder et al. 2020) on the Gaussian kNN graph, and keeps the one "
        "most accurate on held-out seeds (stratified k-fold, up to 5 folds); the confidence is its probability",
    )
    label.add_argument(
        "--algorithm", choices=("kmeans", "spectral", "scan"), default="kmeans",
        help="with --clusters: kmeans (scikit-learn KMeans, 10 seeded restarts), spectral (scikit-learn "
        "SpectralClustering on the symmetric kNN graph; slower, for non-convex clusters) or scan (SCAN, Van "
        "Gansbeke et al. 2020: clustering heads on the frozen embeddings trained so that each item agrees with "
        "its 20 nearest neighbours, then self-labelled on items above 0.99 probability; seeded) (default: kmeans)",
    )
    label.add_argument(
        "--kmeans-backend", choices=("auto", "sklearn", "faiss"), default="auto",
        help="with --algorithm kmeans: sklearn (float64, all items), faiss (spherical k-means on FAISS, float32, "
        "a sample of up to 500k items, for millions of embeddings) or auto: faiss above 200k items (default: auto)",
    )
    label.add_argument(
        "--neighbors", type=int, default=None,
        help="k of the kNN graph (spectral, propagation, Poisson) and of the kNN vote among seeds (default: 10), "
        "or of the neighbours SCAN mines (default: 20, the SCAN paper's)",
    )
    label.add_argument("--review", type=int, default=0, metavar="N",
                       help="print the N least confident items (index, source, label, confidence) to check by hand")
    label.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    label.add_argument("--no-montage", action="store_true", help="do not draw the montage PNGs")
    label.add_argument("--seed", type=int, default=0,
                       help="random seed of k-means, SCAN and the folds (default: 0)")
    label.add_argument("--quiet", action="store_true", help="no progress bar (SCAN training)")

    from contrastkit import index as ix  # the index defaults live there

    index = sub.add_parser(
        "index", help="build the similar-image search index (FAISS) of a run's embeddings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a FAISS index of the L2-normalised embeddings (inner product = cosine similarity;\n"
        f"embeds first when embeddings.npy is missing). Exact (IndexFlatIP) up to {ix.EXACT_MAX_ITEMS} items, IVF above,\n"
        f"IVF-PQ when the float32 vectors would exceed {ix.FLOAT_INDEX_MAX_BYTES / 2**30:g} GiB (about 1M x 512);\n"
        "an approximate index is tuned until its recall@10 against exact search, measured on a sample of\n"
        "items as queries, reaches --target-recall.\n\n"
        "Writes into the run folder:\n"
        "  index.faiss  the serialised index\n"
        "  index.json   kind, parameters (nlist, nprobe / ef_search), recall@10, build time",
    )
    index.add_argument("run", type=Path, help="run folder (or any folder with embeddings.npy and items.csv)")
    index.add_argument(
        "--kind", choices=ix.KINDS, default="auto",
        help="flat (exact), ivf (IndexIVFFlat, nlist ~ 4*sqrt(N)), ivfpq (IndexIVFPQ: 1 byte per 8 dimensions, "
        "candidates re-scored exactly from embeddings.npy), hnsw (IndexHNSWFlat), or auto: flat up to "
        f"{ix.EXACT_MAX_ITEMS} items, ivf above, ivfpq above {ix.FLOAT_INDEX_MAX_BYTES / 2**30:g} GiB of float32 "
        "vectors (default: auto)",
    )
    index.add_argument("--nprobe", type=int, default=None,
                       help="IVF cells visited per query (default: the smallest power of two reaching --target-recall)")
    index.add_argument("--target-recall", type=float, default=ix.TARGET_RECALL,
                       help=f"recall@10 an approximate index is tuned to reach (default: {ix.TARGET_RECALL})")
    index.add_argument("--recall-queries", type=int, default=ix.RECALL_QUERIES,
                       help=f"items used as queries to measure recall (default: {ix.RECALL_QUERIES})")
    index.add_argument("--seed", type=int, default=0, help="seed of the training sample and recall queries (default: 0)")
    index.add_argument("--json", action="store_true", help="print index.json instead of the summary")

    search = sub.add_parser(
        "search", help="find the images most similar to a query image or item",
        description="Print the items nearest each QUERY by cosine similarity of embeddings (rank, index, score, "
        "split, label, source). A QUERY is an image file (embedded with the run's model after the same channel, "
        "size and normalisation as the training data) or an integer, the row index of an item in items.csv. "
        "Builds the index (as `contrastkit index`) when it is missing or out of date.",
    )
    search.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    search.add_argument("queries", nargs="+", metavar="QUERY", help="an image file or an item index")
    search.add_argument("--top-k", type=int, default=10, help="results per query (default: 10)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.add_argument("--montage", type=Path, default=None, metavar="PNG",
                        help="also draw a PNG: one row per query, the query image then its results, from the run's data set")
    visualize = sub.add_parser(
        "visualize", help="draw figures of a run: 2-D map, neighbours, saliency, training curves",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw PNG figures of a run (embeds first when embeddings.npy is missing).\n\n"
        "Writes into RUN/figures/ (or --out):\n"
        "  map.png         t-SNE (openTSNE, seeded; PCA to 50 dims first) of at most --max-points items,\n"
        "                  coloured by class, or by cluster from labels.csv (see --colour)\n"
        "  neighbours.png  a few sampled test images, each followed by its 8 nearest training images (cosine)\n"
        "  saliency.png    image / nearest-neighbour pairs with heat maps of |d cosine similarity / d pixel|\n"
        "                  (needs the run's model and data set)\n"
        "  curves.png      loss, learning rate, kNN monitor, embedding spread and effective rank per epoch\n"
        "                  (from log.jsonl)",
    )
    visualize.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    visualize.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/figures)")
    visualize.add_argument("--what", default="map,neighbours,saliency,curves",
                           help="comma-separated figures to draw, of map, neighbours, saliency, curves (default: all)")
    visualize.add_argument("--colour", choices=("auto", "label", "cluster"), default="auto",
                           help="map colours: class labels of items.csv, clusters of labels.csv, or auto: labels.csv "
                           "when present, else class labels (default: auto)")
    visualize.add_argument("--max-points", type=int, default=5000,
                           help="items sampled for the t-SNE map (default: 5000, about a minute on 2 CPU cores)")
    visualize.add_argument("--seed", type=int, default=0, help="seed of the map sample, t-SNE and the sampled queries (default: 0)")

    report = sub.add_parser(
        "report", help="write one self-contained HTML report of a run",
        description="Write RUN/report.html (or --out): one file with every figure inlined (PNG data URIs), inline "
        "CSS, no JavaScript and no external resources. Sections: configuration, training curves, accuracy against "
        "baselines, per-class accuracy, kNN confusion matrix, 2-D map, nearest neighbours, cluster montages with "
        "auto-labels (from labels.csv, else k-means in memory) and saliency examples. Embeds and evaluates first "
        "when embeddings.npy or metrics.json is missing.",
    )
    report.add_argument("run", type=Path, help="run folder written by `contrastkit train`")
    report.add_argument("--out", type=Path, default=None, help="HTML file to write (default: RUN/report.html)")
    report.add_argument("--max-points", type=int, default=5000, help="items sampled for the t-SNE map (default: 5000)")
    report.add_argument("--seed", type=int, default=0, help="seed of the map, queries and k-means (default: 0)")
    return parser


def _config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
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


def _cmd_train(args: argparse.Namespace) -> int:
    from contrastkit.data import load_dataset
    from contrastkit.methods import build_method
    from contrastkit.train import fit

    config, out = _config_from_args(args)
    data = load_dataset(config.data, image_size=config.image_size, skip_bad=config.skip_bad)
    method = build_method(config, data.train.shape[0], data.train.num_classes)
    result = fit(method, data, config, out, resume=args.resume, progress=not args.quiet)
    best = f"{result.best_knn:.2%}" if result.best_knn is not None else "n/a (no labels)"
    print(f"run folder: {out}")
    completed = sum(1 for h in result.history if "steps" not in h)  # a last epoch cut short by --minutes has "steps"
    how = " (stopped early)" if result.stopped_early else ""
    how += f" (stopped on time (--minutes {config.minutes:g}); --resume with a larger --minutes continues it)" if result.stopped_on_time else ""
    print(f"epochs: {completed}/{config.epochs}{how}  best kNN monitor: {best}")
    print(f"next: contrastkit evaluate {out}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from contrastkit.data import load_dataset
    from contrastkit.evaluation import evaluate_run, format_metrics

    data = None
    if args.data is not None:
        config = TrainConfig.load(args.run / "config.json")
        skip_bad = config.skip_bad if args.skip_bad is None else args.skip_bad
        data = load_dataset(args.data, image_size=config.image_size, skip_bad=skip_bad)
    metrics = evaluate_run(args.run, data=data, baseline=args.baseline, progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
        print(f"run folder: {args.run}  (metrics written to {args.run / 'metrics.json'})")
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from contrastkit.label import LABEL_METRICS_FILE, LABELS_FILE, label_run, least_confident

    if args.review < 0:
        raise ConfigError(f"--review must be >= 0, got {args.review}")
    m = label_run(
        args.run, clusters=args.clusters, algorithm=args.algorithm, seed_labels=args.seed_labels,
        out_dir=args.out, montages=not args.no_montage, neighbors=args.neighbors, seed=args.seed,
        kmeans_backend=args.kmeans_backend, progress=not args.quiet,
    )
    out = args.out or args.run
    truth = m.get("ground_truth")
    if m["mode"] == "clusters":
        print(f"{m['clusters']} clusters ({m['algorithm']}) of {m['n_items']} items")
        if truth:
            print(f"against the {truth['n_labelled']} known labels: cluster accuracy {truth['cluster_accuracy']:.2%}, "
                  f"NMI {truth['nmi']:.3f}, ARI {truth['ari']:.3f}")
            for split, t in m.get("ground_truth_by_split", {}).items():
                print(f"  {split} rows ({t['n_labelled']}): cluster accuracy {t['cluster_accuracy']:.2%}, "
                      f"NMI {t['nmi']:.3f}, ARI {t['ari']:.3f}")
        if m["algorithm"] == "scan":
            sc = m["scan"]
            print(f"SCAN: head {sc['head']} of {len(sc['head_losses'])} kept (lowest SCAN loss "
                  f"{min(sc['head_losses']):.4f}); items above the self-labelling threshold: "
                  f"{sc['confident_before_selflabel']:.1%} before, {sc['confident_after']:.1%} after")
    else:
        cv = ", ".join(f"{k} {v:.2%}" for k, v in m["cv_accuracy"].items())
        print(f"{m['n_seeds']} seed labels; held-out accuracy over {m['folds']} folds: {cv}; chosen: {m['model']}")
        if truth and truth["accuracy_non_seed"] is not None:
            print(f"accuracy on the {truth['n_non_seed_labelled']} labelled non-seed items: {truth['accuracy_non_seed']:.2%}")
            for split, t in m.get("ground_truth_by_split", {}).items():
                print(f"  {split} rows ({t['n_non_seed_labelled']}): {t['accuracy_non_seed']:.2%}")
    if args.review:
        conf = m["result"].confidence
        print(f"least confident {min(args.review, len(conf))} items:")
        print(f"{'index':>7}  {'confidence':>10}  {'label':<16} source")
        for i in least_confident(conf, args.review).tolist():
            print(f"{i:>7}  {conf[i]:>10.4f}  {m['label_names'][i]:<16} {m['sources'][i]}")
    montage = f", {len(m['montages'])} montages in {out / 'montages'}" if m.get("montages") else ""
    print(f"wrote {out / LABELS_FILE}, {out / LABEL_METRICS_FILE}{montage}")
    if not m.get("montages"):
        print(f"note: no montages: {m['montage_note'] or 'no groups'}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from contrastkit.index import INDEX_FILE, INDEX_INFO_FILE, index_run

    info = index_run(args.run, args.kind, nprobe=args.nprobe, target_recall=args.target_recall,
                     recall_queries=args.recall_queries, seed=args.seed)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    params = {"ivf": f" (nlist {info.get('nlist')}, nprobe {info.get('nprobe')})",
              "ivfpq": f" (nlist {info.get('nlist')}, nprobe {info.get('nprobe')}, {info.get('code_bytes')} bytes per "
                       f"vector, re-ranking {info.get('rerank')}x)",
              "hnsw": f" (M {info.get('hnsw_m')}, ef_search {info.get('ef_search')})"}.get(info["kind"], "")
    print(f"{info['kind']} index{params} of {info['count']} x {info['dim']} embeddings in {info['build_seconds']:.1f} s")
    if info["kind"] == "flat":
        print("recall@10: 1.0 (exact search)")
    else:
        print(f"recall@10 against exact search on {info['recall_queries']} item queries: {info['recall_at_10']:.4f}")
    print(f"wrote {args.run / INDEX_FILE}, {args.run / INDEX_INFO_FILE}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from contrastkit.index import format_results, search_run

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


def _cmd_visualize(args: argparse.Namespace) -> int:
    from contrastkit.visualize import visualize_run

    if args.max_points < 5:
        raise ConfigError(f"--max-points must be >= 5, got {args.max_points}")
    written, skipped = visualize_run(args.run, args.what, args.out, colour=args.colour, seed=args.seed,
                                     max_points=args.max_points)
    for name, path in written.items():
        print(f"wrote {path}")
    for name, why in skipped.items():
        print(f"note: no {name} figure: {why}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from contrastkit.report import report_run

    if args.max_points < 5:
        raise ConfigError(f"--max-points must be >= 5, got {args.max_points}")
    path = report_run(args.run, args.out, seed=args.seed, max_points=args.max_points)
    print(f"wrote {path}")
    return 0


COMMANDS = {"train": _cmd_train, "embed": _cmd_embed, "evaluate": _cmd_evaluate, "label": _cmd_label,
            "index": _cmd_index, "search": _cmd_search, "visualize": _cmd_visualize, "report": _cmd_report}


def _quiet_other_ranks() -> None:
    """Under torchrun, all but rank 0 (``RANK`` in the environment) send standard output to the null device.

    Every process runs the same command, so the summary lines are printed
    once (DINO's ``setup_for_distributed`` does the same with ``print``).
    Standard error stays open on every rank: errors from any process show.
    """
    from contrastkit.distributed import env_rank

    if env_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contrastkit`` console script and of ``python -m contrastkit`` (also under torchrun)."""
    _quiet_other_ranks()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ContrastkitError as e:
        print(f"contrastkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ncontrastkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
