"""``contrastkit label``: auto-label every image, as clusters or as classes from a few seed labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.errors import ConfigError

NAME = "label"
HELP = "auto-label every image: clusters, or classes from a few seed labels"
DESCRIPTION = (
    "Label every item of a run's embeddings (train and test rows; embeds first when\n"
    "embeddings.npy is missing). Give --clusters K for clusters without labels, or --seed-labels CSV\n"
    "to spread a few labels to all items (add --finetune-minutes M to fine-tune the encoder on them).\n\n"
    "Writes into the run folder (or --out):\n"
    "  labels.csv          item,source,label,confidence,cluster per item; label is the cluster number\n"
    "                      (--clusters) or the class name (--seed-labels); cluster is the group of\n"
    "                      the montage (the cluster, or the assigned class index)\n"
    "  label_metrics.json  the settings; with ground-truth labels in items.csv, cluster accuracy\n"
    "                      (Hungarian matching), NMI and ARI, or the accuracy on all non-seed items\n"
    "  montages/cluster_<k>.png  the 36 images nearest each centroid, from the run's data set"
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, one of --clusters / --seed-labels, the algorithm and its settings, the outputs."""
    parser.add_argument("run", type=Path, help="run folder (or any folder with embeddings.npy and items.csv)")
    mode = parser.add_mutually_exclusive_group(required=True)
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
        "classifier and Poisson learning (Calder et al. 2020) on the Gaussian kNN graph, and keeps the first of "
        "poisson, knn, propagation, linear whose accuracy on held-out seeds (stratified k-fold, up to 5 folds) "
        "is within one standard error of the best; the confidence is its probability",
    )
    parser.add_argument(
        "--algorithm", choices=("kmeans", "spectral", "scan"), default="kmeans",
        help="with --clusters: kmeans (scikit-learn KMeans, 10 seeded restarts), spectral (scikit-learn "
        "SpectralClustering on the symmetric kNN graph; slower, for non-convex clusters) or scan (SCAN, Van "
        "Gansbeke et al. 2020: clustering heads on the frozen embeddings trained so that each item agrees with "
        "its 20 nearest neighbours, then self-labelled on items above 0.99 probability; seeded) (default: kmeans)",
    )
    parser.add_argument(
        "--kmeans-backend", choices=("auto", "sklearn", "faiss"), default="auto",
        help="with --algorithm kmeans: sklearn (float64, all items), faiss (spherical k-means on FAISS, float32, "
        "a sample of up to 500k items, for millions of embeddings) or auto: faiss above 200k items (default: auto)",
    )
    parser.add_argument(
        "--neighbors", type=int, default=None,
        help="k of the kNN graph (spectral, propagation, Poisson) and of the kNN vote among seeds (default: 10), "
        "or of the neighbours SCAN mines (default: 20, the SCAN paper's)",
    )
    parser.add_argument(
        "--finetune-minutes", type=float, default=None, metavar="M",
        help="with --seed-labels: fine-tune the run's encoder on the seeds for M minutes with FixMatch (Sohn et al. "
        "2020: seeds' weak views with their labels, and every training image's strong view trained towards the "
        "prediction on its weak view where that is above 0.95, and towards the frozen-embedding model's label on "
        "its most confident half), then label every item with it instead of the frozen model; writes RUN/finetune/ (checkpoints, log.jsonl). What it gains over the frozen models "
        "is measured in BENCHMARKS.md",
    )
    parser.add_argument("--resume", action="store_true",
                        help="with --finetune-minutes: continue RUN/finetune/ from its last checkpoint (the same "
                        "seeds; a larger --finetune-minutes trains on)")
    parser.add_argument("--review", type=int, default=0, metavar="N",
                        help="print the N least confident items (index, source, label, confidence) to check by hand")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    parser.add_argument("--no-montage", action="store_true", help="do not draw the montage PNGs")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of k-means, SCAN and the folds (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (SCAN training)")


def run(args: argparse.Namespace) -> int:
    """Label, then print the agreement with known labels, the items to review and the files written."""
    from contrastkit.label import LABEL_METRICS_FILE, LABELS_FILE, label_run, least_confident

    if args.review < 0:
        raise ConfigError(f"--review must be >= 0, got {args.review}")
    finetune = None
    if args.finetune_minutes is not None:
        from contrastkit.finetune import FineTuneConfig

        if args.seed_labels is None:
            raise ConfigError("--finetune-minutes fine-tunes on seed labels: give --seed-labels CSV")
        finetune = FineTuneConfig(minutes=args.finetune_minutes, seed=args.seed)
        finetune.check()
    elif args.resume:
        raise ConfigError("--resume continues a fine-tuning: give it with --finetune-minutes")
    m = label_run(
        args.run, clusters=args.clusters, algorithm=args.algorithm, seed_labels=args.seed_labels,
        out_dir=args.out, montages=not args.no_montage, neighbors=args.neighbors, seed=args.seed,
        kmeans_backend=args.kmeans_backend, progress=not args.quiet, finetune=finetune, resume=args.resume,
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
        if "finetune" in m:
            ft = m["finetune"]
            share = ft["last_epoch"].get("mask_rate")
            print(f"{m['n_seeds']} seed labels; fine-tuned with FixMatch for {ft['steps']} steps in "
                  f"{ft['seconds'] / 60:.1f} minutes" + (f" (last epoch: {share:.0%} of unlabelled images "
                                                        "pseudo-labelled)" if share is not None else ""))
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
