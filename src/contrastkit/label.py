"""Auto-labelling from saved embeddings: clusters without labels, or classes from a few seed labels.

Reads the files of ``contrastkit embed`` (so it works on embeddings from any
source) and labels every item, train and test rows alike.

Unsupervised (:func:`label_clusters`): k-means (scikit-learn ``KMeans``,
``n_init`` seeded restarts) or spectral clustering on the symmetric kNN graph
(scikit-learn ``SpectralClustering(affinity="nearest_neighbors")``), both on
L2-normalised features (so Euclidean distance ranks like cosine similarity).
Above :data:`FAISS_KMEANS_MIN_ITEMS` items k-means runs on FAISS instead
(``faiss.Kmeans``, spherical: centroids kept at unit length, float32; each
of the seeded restarts starts from k-means++ seeds, as scikit-learn's do,
which FAISS's random starts would not give): it trains on a seeded sample of at most
:data:`FAISS_KMEANS_SAMPLE` items (or 256 per cluster when that is more) and
assigns every item in chunks, so a million 512-d embeddings cluster with
memory for the sample only (1 GiB), where scikit-learn would hold float64
copies of all of them (4 GiB each).
The confidence of an item is the margin between its two nearest centroids,
``1 - d1 / d2``: 0 for an item halfway between two clusters, 1 for an item on
its centroid. It needs no temperature (a softmax over distances would, and its
values would depend on the scale of the features), and it singles out exactly
the items a person should check: those between clusters.

Few labels (:func:`contrastkit.seeds.label_from_seeds`, re-exported here):
the kNN vote among the seeds, label spreading, a linear classifier and
Poisson learning each label every item from the seeds, and the one chosen
on held-out folds of the seeds (one-standard-error rule) labels every item
(see :mod:`contrastkit.seeds`).

SCAN (:mod:`contrastkit.scan`, ``algorithm="scan"``): a clustering head on
the frozen embeddings trained so that neighbours agree (Van Gansbeke et al.
2020), then self-labelled on its confident items.

Cluster quality against ground truth: cluster accuracy with the best
one-to-one matching of clusters to classes (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``), NMI and ARI (scikit-learn).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contrastkit.atomic import atomic_write_text
from contrastkit.errors import ConfigError, DataError
from contrastkit.vectors import normalise
from contrastkit.montage import (  # noqa: F401  (re-exported: they lived here)
    MONTAGE_DIR,
    MONTAGE_MIN_TILE,
    MONTAGE_SIZE,
    montage_image,
    montage_members,
    run_images,
    write_montages,
)
from contrastkit.runlock import run_lock
from contrastkit.seeds import (  # noqa: F401  (re-exported: the few-label API lived here)
    SEED_MODELS,
    SeedResult,
    _predict_propagation,
    knn_graph,
    label_from_seeds,
    read_seed_labels,
    seed_folds,
)
from contrastkit.sources import source_to_text

ALGORITHMS = ("kmeans", "spectral", "scan")
NEIGHBORS = 10  # default k of the spectral graph and the seed models; SCAN's own is ScanConfig.neighbours (20)
KMEANS_RESTARTS = 10  # k-means runs from different seeded starts; the lowest inertia is kept
KMEANS_BACKENDS = ("auto", "sklearn", "faiss")  # auto: faiss above FAISS_KMEANS_MIN_ITEMS items, sklearn up to it
FAISS_KMEANS_MIN_ITEMS = 200_000  # above this scikit-learn's float64 copies take > 800 MB at 512-d, and minutes
FAISS_KMEANS_SAMPLE = 500_000  # faiss k-means trains on at most this many items (1 GiB at 512-d) ...
FAISS_KMEANS_PER_CLUSTER = 256  # ... or 256 per cluster when that is more (FAISS's own default sample)
FAISS_KMEANS_ITERATIONS = 30  # Lloyd iterations per restart (FAISS has no tolerance stop; its default is 25)
KMEANS_PLUSPLUS_SAMPLE = 10_000  # k-means++ seeds are drawn from this many items of the sample (or 32 per cluster)
ASSIGN_CHUNK = 16_384  # items assigned to their nearest centroids at a time (float64: 64 MiB at 512-d)
LABELS_FILE = "labels.csv"
LABEL_METRICS_FILE = "label_metrics.json"


# ----------------------------------------------------------------------------- metrics


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, dict[int, int]]:
    """Accuracy under the best one-to-one matching of predicted clusters to true classes.

    Args:
        y_true: (N,) true class per item.
        y_pred: (N,) cluster per item (any number of clusters; unmatched clusters count as wrong).

    Returns:
        (accuracy, {cluster: class}) for the matched clusters.
    """
    from scipy.optimize import linear_sum_assignment

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan"), {}
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((len(clusters), len(classes)), dtype=np.int64)  # (clusters, classes)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols)}
    return float(counts[rows, cols].sum() / len(y_true)), mapping


def cluster_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Cluster accuracy (Hungarian), NMI and ARI of the items whose true label is known (>= 0)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    known = y_true >= 0
    acc, mapping = cluster_accuracy(y_true[known], y_pred[known])
    return {
        "cluster_accuracy": acc,
        "nmi": float(normalized_mutual_info_score(y_true[known], y_pred[known])),
        "ari": float(adjusted_rand_score(y_true[known], y_pred[known])),
        "n_labelled": int(known.sum()),
        "cluster_to_class": {str(k): v for k, v in sorted(mapping.items())},
    }


# ----------------------------------------------------------------------------- clustering


@dataclass
class ClusterResult:
    """Clusters of every item and how sure each assignment is."""

    clusters: np.ndarray  # (N,) int64 in [0, k)
    confidence: np.ndarray  # (N,) float64 in [0, 1]: 1 - d1 / d2 (k-means, spectral) or SCAN's max probability
    centroids: np.ndarray  # (k, D) centroids of the L2-normalised features (NaN rows for empty clusters)
    algorithm: str
    backend: str = ""  # for k-means: "sklearn" or "faiss"
    scan: Any = None  # for SCAN: its contrastkit.scan.ScanResult (head, losses, probabilities)


def centroid_margin(xn: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and the confidence ``1 - d1 / d2`` of every row of ``xn``.

    Empty clusters (NaN centroids) are never nearest. With one usable centroid
    the confidence is 1.
    """
    d = np.sqrt(np.maximum(
        (xn**2).sum(1, keepdims=True) - 2 * xn @ np.nan_to_num(centroids).T + (np.nan_to_num(centroids) ** 2).sum(1),
        0.0,
    ))  # (N, k)
    d[:, np.isnan(centroids).any(1)] = np.inf
    order = np.argsort(d, axis=1)
    nearest = order[:, 0]
    d1 = d[np.arange(len(d)), nearest]
    d2 = d[np.arange(len(d)), order[:, 1]] if d.shape[1] > 1 else np.full(len(d), np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(np.isinf(d2), 1.0, 1.0 - d1 / np.maximum(d2, 1e-12))
    return nearest.astype(np.int64), np.clip(conf, 0.0, 1.0)


def assign_in_chunks(features: np.ndarray, centroids: np.ndarray, rows: int = ASSIGN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """:func:`centroid_margin` of every item, ``rows`` items (L2-normalised here) at a time.

    Memory stays at one chunk whatever N is; ``features`` may be a memory map.
    """
    n = len(features)
    nearest, conf = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)
    for start in range(0, n, rows):
        nearest[start : start + rows], conf[start : start + rows] = centroid_margin(
            normalise(features[start : start + rows], dtype=np.float64), centroids)
    return nearest, conf


def check_cluster_options(k: int, algorithm: str = "kmeans", backend: str = "auto", n_init: int = KMEANS_RESTARTS,
                          neighbors: int = 10, n: int | None = None) -> None:
    """Raise :class:`ConfigError` for options :func:`label_clusters` cannot use (``n``: items, when known)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if backend not in KMEANS_BACKENDS:
        raise ConfigError(f"--kmeans-backend {backend!r} is not one of {', '.join(KMEANS_BACKENDS)}")
    if k < 2:
        raise ConfigError(f"--clusters must be >= 2, got {k}")
    if n is not None and k > n:
        raise ConfigError(f"--clusters {k} is larger than the number of items ({n}); give K between 2 and {n}")
    if n_init < 1:
        raise ConfigError(f"n_init must be >= 1, got {n_init}")
    if neighbors < 1:
        raise ConfigError(f"--neighbors must be >= 1, got {neighbors}")


def choose_kmeans_backend(n: int, backend: str = "auto") -> str:
    """The k-means backend for ``n`` items: ``backend`` itself, or for ``auto`` faiss above FAISS_KMEANS_MIN_ITEMS."""
    if backend != "auto":
        return backend
    return "faiss" if n > FAISS_KMEANS_MIN_ITEMS else "sklearn"


def faiss_kmeans(features: np.ndarray, k: int, n_init: int = KMEANS_RESTARTS, seed: int = 0,
                 sample: int = FAISS_KMEANS_SAMPLE) -> np.ndarray:
    """(k, D) unit-length centroids of spherical k-means (``faiss.Kmeans``) of the L2-normalised ``features``.

    Trains on a seeded sample of ``max(sample, 256 * k)`` items (all when
    fewer), read row by row from ``features`` (which may be a memory map).
    Each of the ``n_init`` restarts starts from k-means++ seeds (scikit-learn's
    ``kmeans_plusplus``, greedy, on up to :data:`KMEANS_PLUSPLUS_SAMPLE` items
    of the sample) and runs :data:`FAISS_KMEANS_ITERATIONS` Lloyd iterations;
    the restart with the largest total cosine similarity of items to their
    centroids is kept. (FAISS's own restarts start from k random items: with
    10 clusters nearly every such start puts two seeds in one cluster.)
    """
    try:
        import faiss
    except ImportError as e:
        raise ConfigError(f"--kmeans-backend faiss needs FAISS: pip install faiss-cpu ({e})") from None
    from sklearn.cluster import kmeans_plusplus

    n, d = features.shape
    size = min(n, max(int(sample), FAISS_KMEANS_PER_CLUSTER * k))
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if size >= n else np.sort(rng.choice(n, size=size, replace=False))
    xs = np.array(features[rows], dtype=np.float32)  # (S, D), a copy of the sample only (float32, not float64)
    xs /= np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    if not np.isfinite(xs).all():
        raise DataError("the embeddings hold NaN or infinite values; re-embed with a healthy checkpoint")
    seeds_from = xs[rng.choice(size, size=min(size, max(KMEANS_PLUSPLUS_SAMPLE, 32 * k)), replace=False)]
    best, best_obj = None, -np.inf
    for restart in range(n_init):
        init, _ = kmeans_plusplus(seeds_from, k, random_state=seed + restart)  # (k, D)
        km = faiss.Kmeans(d, k, niter=FAISS_KMEANS_ITERATIONS, spherical=True, seed=seed + restart,
                          max_points_per_centroid=-(-size // k), verbose=False)  # no subsampling inside faiss
        obj = float(km.train(xs, init_centroids=np.ascontiguousarray(init, dtype=np.float32)))  # sum of cosines
        if obj > best_obj:
            best, best_obj = np.asarray(km.centroids, dtype=np.float64), obj
    return best


def _class_centroids(xn: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """(k, D) mean of the rows assigned to each cluster; NaN for empty clusters."""
    out = np.full((k, xn.shape[1]), np.nan)
    for c in range(k):
        members = assign == c
        if members.any():
            out[c] = xn[members].mean(0)
    return out


def label_clusters(
    features: np.ndarray,
    k: int,
    algorithm: str = "kmeans",
    n_init: int = KMEANS_RESTARTS,
    neighbors: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    scan_config: Any = None,
    progress: bool = False,
) -> ClusterResult:
    """Cluster L2-normalised features into ``k`` groups.

    Args:
        features: (N, D) embeddings.
        k: number of clusters, 2 <= k <= N.
        algorithm: ``"kmeans"`` (k-means with ``n_init`` restarts, the best
            inertia kept), ``"spectral"`` (spectral clustering on the
            symmetric ``neighbors``-NN graph, clusters read off the spectral
            embedding with QR pivoting: deterministic, no restarts) or
            ``"scan"`` (:func:`contrastkit.scan.scan_cluster`; confidence:
            the head's max probability).
        n_init: k-means restarts.
        neighbors: neighbours per item in the spectral kNN graph (default
            :data:`NEIGHBORS`), or SCAN's mined neighbours (default
            ``scan_config.neighbours``, 20).
        seed: seeds k-means, the eigensolver and SCAN.
        backend: k-means on ``sklearn`` (float64, all items), ``faiss``
            (:func:`faiss_kmeans`: spherical, float32, a bounded sample,
            every item assigned in chunks) or ``auto``
            (:func:`choose_kmeans_backend`: faiss above FAISS_KMEANS_MIN_ITEMS).
        scan_config: a :class:`contrastkit.scan.ScanConfig` (default: its defaults).
        progress: show SCAN's progress bar.

    Raises:
        ConfigError: k, n_init or neighbors out of range (k above the number
            of items names both), or an unknown algorithm or backend.
    """
    if algorithm == "scan":
        from dataclasses import replace

        from contrastkit.scan import ScanConfig, scan_cluster

        config = scan_config or ScanConfig()
        config = replace(config, neighbours=neighbors) if neighbors is not None else config
        check_cluster_options(k, algorithm, backend, n_init, config.neighbours, len(features))
        res = scan_cluster(features, k, config, seed=seed, progress=progress)
        xn = normalise(features, dtype=np.float64)
        return ClusterResult(clusters=res.clusters, confidence=np.clip(res.confidence, 0.0, 1.0),
                             centroids=_class_centroids(xn, res.clusters, k), algorithm=algorithm, scan=res)
    neighbors = NEIGHBORS if neighbors is None else neighbors
    n = len(features)
    check_cluster_options(k, algorithm, backend, n_init, neighbors, n)
    if algorithm == "kmeans" and choose_kmeans_backend(n, backend) == "faiss":
        centroids = faiss_kmeans(features, k, n_init, seed)
        clusters, confidence = assign_in_chunks(features, centroids)  # the nearest centroid of every item
        return ClusterResult(clusters=clusters, confidence=confidence, centroids=centroids, algorithm=algorithm,
                             backend="faiss")
    xn = normalise(features, dtype=np.float64)
    if algorithm == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(xn)
        centroids = km.cluster_centers_
        clusters = km.labels_.astype(np.int64)
    else:
        from sklearn.cluster import SpectralClustering

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            sc = SpectralClustering(
                n_clusters=k, affinity="nearest_neighbors", n_neighbors=min(neighbors, n - 1),
                assign_labels="cluster_qr", random_state=seed,
            ).fit(xn)
        clusters = sc.labels_.astype(np.int64)
        centroids = _class_centroids(xn, clusters, k)
    _, confidence = centroid_margin(xn, centroids)
    return ClusterResult(clusters=clusters, confidence=confidence, centroids=centroids, algorithm=algorithm,
                         backend="sklearn" if algorithm == "kmeans" else "")


# ----------------------------------------------------------------------------- few labels (contrastkit.seeds)


def least_confident(confidence: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` least confident items, least confident first (stable order on ties)."""
    return np.argsort(confidence, kind="stable")[: max(n, 0)]


# ----------------------------------------------------------------------------- outputs


def write_labels_csv(
    path: Path, sources: list[str], labels: np.ndarray, confidence: np.ndarray, clusters: np.ndarray,
    class_names: list[str] | None = None,
) -> None:
    """``item,source,label,confidence,cluster`` per item (label as class name when names are given), atomically.

    Sources are written as in items.csv (:func:`contrastkit.sources.source_to_text`).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["item", "source", "label", "confidence", "cluster"])
    for i, (src, lbl, conf, cl) in enumerate(zip(sources, labels.tolist(), confidence.tolist(), clusters.tolist())):
        writer.writerow([i, source_to_text(src), class_names[lbl] if class_names is not None else lbl, f"{conf:.4f}", cl])
    atomic_write_text(path, buf.getvalue())


def label_run(
    run_dir: str | Path,
    *,
    clusters: int | None = None,
    algorithm: str = "kmeans",
    seed_labels: str | Path | None = None,
    out_dir: str | Path | None = None,
    montages: bool = True,
    neighbors: int | None = None,
    seed: int = 0,
    kmeans_backend: str = "auto",
    scan_config: Any = None,
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
    finetune: Any = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Label every item of a run's embeddings and write labels.csv, label_metrics.json and montages.

    Exactly one of ``clusters`` (unsupervised) and ``seed_labels`` (a CSV of
    ``item,label``) is given. Embeds first when the run folder has a
    config.json but no embeddings.npy (cluster options are checked before
    that). ``neighbors`` (default :data:`NEIGHBORS`, or SCAN's 20),
    ``kmeans_backend``, ``scan_config`` and ``progress`` go to
    :func:`label_clusters`; ``on_stage`` to :func:`label_from_seeds` (it is called with a short text as
    each stage of labelling from seeds starts, and before the files are written). With ``finetune`` (a
    :class:`contrastkit.finetune.FineTuneConfig`) the seeds fine-tune the run's encoder instead
    (``RUN/finetune/``; ``resume`` continues it).

    Returns:
        The metrics written to label_metrics.json, plus ``"result"`` (the
        :class:`ClusterResult` or :class:`SeedResult`), ``"sources"`` (as
        written in items.csv, :func:`contrastkit.sources.source_to_text`),
        ``"label_names"`` (label column values per item) and
        ``"montage_note"`` (why montages were skipped, or "").
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    if (clusters is None) == (seed_labels is None):
        raise ConfigError("give exactly one of --clusters K and --seed-labels CSV")
    if clusters is not None:  # before embedding: a bad option fails in a second, not after the model ran
        check_cluster_options(clusters, algorithm, kmeans_backend, neighbors=NEIGHBORS if neighbors is None else neighbors)
        if algorithm == "scan" and scan_config is not None:
            scan_config.check()
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder")
    with run_lock(out):  # one command at a time writes the folder (contrastkit.runlock); embed_run locks run_dir
        return _label_locked(run_dir, out, clusters, algorithm, seed_labels, montages, neighbors, seed,
                             kmeans_backend, scan_config, progress, on_stage or (lambda text: None), finetune, resume)


def _label_locked(
    run_dir: Path, out: Path, clusters: int | None, algorithm: str, seed_labels: str | Path | None, montages: bool,
    neighbors: int | None, seed: int, kmeans_backend: str, scan_config: Any, progress: bool,
    on_stage: Callable[[str], None], finetune: Any = None, resume: bool = False,
) -> dict[str, Any]:
    """:func:`label_run` once its options are checked and the output folder is locked."""
    from contrastkit import __version__
    from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

    if not (run_dir / EMBEDDINGS_FILE).is_file() and (run_dir / "config.json").is_file():
        embed_run(run_dir)
    emb = read_embeddings(run_dir)
    class_names = emb.meta.get("class_names")
    truth = emb.labels
    metrics: dict[str, Any] = {"contrastkit": __version__, "embeddings": str(run_dir / EMBEDDINGS_FILE),
                               "n_items": int(len(emb.features)), "seed": seed}
    result: ClusterResult | SeedResult
    if clusters is not None:
        result = label_clusters(emb.features, clusters, algorithm=algorithm, neighbors=neighbors, seed=seed,
                                backend=kmeans_backend, scan_config=scan_config, progress=progress)
        assign, labels, confidence, names = result.clusters, result.clusters, result.confidence, None
        metrics.update({
            "mode": "clusters", "algorithm": algorithm, "clusters": clusters,
            "confidence": "1 - d1/d2, the distances to the nearest and second nearest centroid",
            "cluster_sizes": np.bincount(assign, minlength=clusters).tolist(),
        })
        if algorithm == "kmeans":
            metrics.update({"n_init": KMEANS_RESTARTS, "kmeans_backend": result.backend})
        elif algorithm == "scan":
            sc = result.scan
            metrics.update({
                "confidence": "the SCAN head's probability of the assigned cluster (its max probability)",
                "neighbors": sc.config["neighbours"], "scan": {
                    "config": sc.config, "head": sc.head, "head_losses": sc.head_losses,
                    "confident_before_selflabel": sc.confident_before, "confident_after": sc.confident_after,
                    "epochs": len(sc.history), "last_epoch": sc.history[-1] if sc.history else None}})
        else:
            metrics["neighbors"] = NEIGHBORS if neighbors is None else neighbors
        if truth is not None:
            metrics["ground_truth"] = cluster_metrics(truth, assign)
            splits = np.asarray(emb.splits)
            metrics["ground_truth_by_split"] = {
                str(sp): {key: v for key, v in cluster_metrics(truth[splits == sp], assign[splits == sp]).items()
                          if key in ("cluster_accuracy", "nmi", "ari", "n_labelled")}
                for sp in sorted(set(splits.tolist())) if (truth[splits == sp] >= 0).any()}
        k = clusters
    else:
        idx, y, names = read_seed_labels(seed_labels, emb.sources, class_names)
        c = len(names) if names else int(max(y.max(), truth.max() if truth is not None else 0)) + 1
        neighbors = NEIGHBORS if neighbors is None else neighbors
        result = label_from_seeds(emb.features, idx, y, num_classes=c, neighbors=neighbors, seed=seed,
                                  on_stage=on_stage)
        if finetune is not None:  # FixMatch from the run's encoder (contrastkit.finetune), the frozen model teaching
            from contrastkit.finetune import label_by_finetuning

            frozen = result
            result, metrics["finetune"] = label_by_finetuning(run_dir, emb.sources, idx, y, c, finetune,
                                                              resume=resume, progress=progress, teacher=frozen.proba)
            metrics["finetune"].update(teacher=frozen.model, teacher_cv_accuracy=frozen.cv_accuracy)
        labels, confidence = result.labels, result.confidence
        assign = labels
        metrics.update({
            "mode": "seeds", "seed_labels": str(seed_labels), "n_seeds": int(len(idx)),
            "seeds_per_class": np.bincount(y, minlength=c).tolist(), "neighbors": neighbors,
            "model": result.model, "held_out_accuracy": result.cv_accuracy.get(result.model),
            "cv_accuracy": result.cv_accuracy, "folds": result.folds,
            "confidence": "the chosen model's probability of the assigned class (1 for seeds)",
            "class_sizes": np.bincount(labels, minlength=c).tolist(),
        })
        if truth is not None:
            rest = np.ones(len(labels), dtype=bool)
            rest[idx] = False
            rest &= truth >= 0
            metrics["ground_truth"] = {
                "accuracy_non_seed": float((labels[rest] == truth[rest]).mean()) if rest.any() else None,
                "n_non_seed_labelled": int(rest.sum()),
                "seed_labels_agree": float((truth[idx] == y)[truth[idx] >= 0].mean()) if (truth[idx] >= 0).any() else None,
            }
            splits = np.asarray(emb.splits)
            metrics["ground_truth_by_split"] = {
                str(sp): {"accuracy_non_seed": float((labels[rest & (splits == sp)] == truth[rest & (splits == sp)]).mean()),
                          "n_non_seed_labelled": int((rest & (splits == sp)).sum())}
                for sp in sorted(set(splits.tolist())) if (rest & (splits == sp)).any()}
        k = c
    metrics["class_names"] = names
    out.mkdir(parents=True, exist_ok=True)
    on_stage(f"writing {LABELS_FILE}")
    write_labels_csv(out / LABELS_FILE, emb.sources, labels, confidence, assign, names)
    montage_note = "turned off (--no-montage)"
    if montages:
        get_batch, montage_note = run_images(run_dir, emb.sources)
        if get_batch is not None:
            written = write_montages(out, get_batch, montage_members(emb.features, assign, k))
            metrics["montages"] = [str(p) for p in written]
    metrics["montage_note"] = montage_note
    atomic_write_text(out / LABEL_METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    label_names = [names[v] if names is not None else str(v) for v in labels.tolist()]
    shown = [source_to_text(src) for src in emb.sources]  # as in items.csv: valid UTF-8, printable
    return {**metrics, "result": result, "sources": shown, "label_names": label_names}
