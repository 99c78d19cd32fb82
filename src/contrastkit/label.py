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

Few labels (:func:`label_from_seeds`): three models label every item from the
seeds: the kNN vote among the seeds (:func:`contrastkit.knn.knn_votes`),
label spreading on the kNN graph of all items (scikit-learn ``LabelSpreading``,
``kernel="knn"``, Zhou et al. 2004) and a linear classifier
(:func:`contrastkit.linear_probe.fit_linear_probe`). The model with the best
held-out accuracy over folds of the seeds (stratified k-fold with up to 5
folds; each fold's seeds are hidden and predicted from the others) labels
every item; the confidence is its probability of the assigned class.

Cluster quality against ground truth: cluster accuracy with the best
one-to-one matching of clusters to classes (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``), NMI and ARI (scikit-learn).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.atomic import atomic_open, atomic_write_text
from contrastkit.errors import ConfigError, ContrastkitError, DataError
from contrastkit.index import exact_search, normalise
from contrastkit.knn import knn_votes
from contrastkit.linear_probe import fit_linear_probe
from contrastkit.runtime import torch_threads

ALGORITHMS = ("kmeans", "spectral")
KMEANS_RESTARTS = 10  # k-means runs from different seeded starts; the lowest inertia is kept
KMEANS_BACKENDS = ("auto", "sklearn", "faiss")  # auto: faiss above FAISS_KMEANS_MIN_ITEMS items, sklearn up to it
FAISS_KMEANS_MIN_ITEMS = 200_000  # above this scikit-learn's float64 copies take > 800 MB at 512-d, and minutes
FAISS_KMEANS_SAMPLE = 500_000  # faiss k-means trains on at most this many items (1 GiB at 512-d) ...
FAISS_KMEANS_PER_CLUSTER = 256  # ... or 256 per cluster when that is more (FAISS's own default sample)
FAISS_KMEANS_ITERATIONS = 30  # Lloyd iterations per restart (FAISS has no tolerance stop; its default is 25)
KMEANS_PLUSPLUS_SAMPLE = 10_000  # k-means++ seeds are drawn from this many items of the sample (or 32 per cluster)
ASSIGN_CHUNK = 16_384  # items assigned to their nearest centroids at a time (float64: 64 MiB at 512-d)
SEED_MODELS = ("knn", "propagation", "linear")  # ties in held-out accuracy go to the earlier one
LABELS_FILE = "labels.csv"
LABEL_METRICS_FILE = "label_metrics.json"
MONTAGE_DIR = "montages"
MONTAGE_SIZE = 36  # images per montage: the 36 nearest the centroid, 6 x 6
MONTAGE_MIN_TILE = 48  # px; smaller images are enlarged (nearest neighbour) to at least this side


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
    confidence: np.ndarray  # (N,) float64 in [0, 1]: 1 - d1 / d2, margin of the two nearest centroids
    centroids: np.ndarray  # (k, D) centroids of the L2-normalised features (NaN rows for empty clusters)
    algorithm: str
    backend: str = ""  # for k-means: "sklearn" or "faiss"


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
    neighbors: int = 10,
    seed: int = 0,
    backend: str = "auto",
) -> ClusterResult:
    """Cluster L2-normalised features into ``k`` groups.

    Args:
        features: (N, D) embeddings.
        k: number of clusters, 2 <= k <= N.
        algorithm: ``"kmeans"`` (k-means with ``n_init`` restarts, the best
            inertia kept) or ``"spectral"`` (spectral clustering on the
            symmetric ``neighbors``-NN graph, clusters read off the spectral
            embedding with QR pivoting: deterministic, no restarts).
        n_init: k-means restarts.
        neighbors: neighbours per item in the spectral kNN graph.
        seed: seeds k-means and the eigensolver.
        backend: k-means on ``sklearn`` (float64, all items), ``faiss``
            (:func:`faiss_kmeans`: spherical, float32, a bounded sample,
            every item assigned in chunks) or ``auto``
            (:func:`choose_kmeans_backend`: faiss above FAISS_KMEANS_MIN_ITEMS).

    Raises:
        ConfigError: k, n_init or neighbors out of range (k above the number
            of items names both), or an unknown algorithm or backend.
    """
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


# ----------------------------------------------------------------------------- few labels


@dataclass
class SeedResult:
    """Labels of every item from a few seed labels, and the model that gave them."""

    labels: np.ndarray  # (N,) int64 class per item (seeds keep their own label)
    confidence: np.ndarray  # (N,) float64 in [0, 1]: the chosen model's probability of the label
    proba: np.ndarray  # (N, C) the chosen model's class probabilities
    model: str  # one of SEED_MODELS
    cv_accuracy: dict[str, float]  # mean held-out accuracy over the folds, per model
    folds: int
    num_classes: int = field(default=0)


KNN_TEMPERATURE = 0.07  # weighted kNN vote among the seeds, exp(cosine / T) (Wu et al. 2018, as in knn.py)


def _predict_knn(xn: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, k: int) -> np.ndarray:
    """(N, C) kNN class probabilities: the weighted vote of knn_votes, each class's share of the vote weight.

    The weighted vote (not the majority) gives an informative probability
    even when k covers every seed: an item between two classes' seeds gets
    about 1/2 each.
    """
    votes = knn_votes(torch.from_numpy(xn[idx]).float(), torch.from_numpy(y), torch.from_numpy(xn).float(),
                      k=k, temperature=KNN_TEMPERATURE, num_classes=c).double().numpy()  # (N, C)
    return votes / votes.sum(1, keepdims=True)


def knn_graph(xn: np.ndarray, k: int) -> Any:
    """(N, N) sparse 0/1 graph linking each item to its ``k`` nearest items, itself included.

    The same graph as scikit-learn's ``kernel="knn"`` of ``LabelSpreading``
    (``kneighbors_graph`` of the fitted points, connectivity mode), found by
    exact cosine search (:func:`contrastkit.index.exact_search`; on
    L2-normalised rows the Euclidean neighbours). Built once per labelling,
    not once per cross-validation fold: at 70 000 items it is most of a
    fit's time.
    """
    from scipy import sparse

    _, ids = exact_search(xn, xn, k)  # (N, k), each row's own item first
    n, width = ids.shape
    return sparse.csr_matrix((np.ones(ids.size), ids.ravel(), np.arange(0, ids.size + 1, width)), shape=(n, n))


def _predict_propagation(xn: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, k: int, graph: Any = None) -> np.ndarray:
    """(N, C) label-spreading class distributions (kNN graph of all items; unreached items uniform).

    scikit-learn's ``LabelSpreading`` (Zhou et al. 2004; alpha 0.2, at most
    100 iterations) on :func:`knn_graph`, passed as its kernel: ``graph``
    when given (the same items), else built here.
    """
    from sklearn.semi_supervised import LabelSpreading

    target = np.full(len(xn), -1, dtype=np.int64)
    target[idx] = y
    if graph is None:
        graph = knn_graph(xn, min(k, len(xn) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning, and 0/0 rows of unreached components
        model = LabelSpreading(kernel=lambda a, b: graph, max_iter=100).fit(xn, target)
    dist = np.nan_to_num(model.label_distributions_)  # (N, classes present in y)
    proba = np.zeros((len(xn), c))
    proba[:, model.classes_] = dist
    total = proba.sum(1, keepdims=True)
    # Items no seed reaches: uniform over the seeds' classes only. Uniform over
    # all c classes would make argmax say class 0 even when no seed has it,
    # which a cross-validation fold that holds out class 0 would count as right.
    unreached = np.zeros(c)
    unreached[model.classes_] = 1.0 / len(model.classes_)
    return np.where(total > 0, proba / np.maximum(total, 1e-300), unreached)


def _predict_linear(xn: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, k: int, seed: int = 0) -> np.ndarray:
    """(N, C) probabilities of a linear probe fitted on the seeds.

    Seeds of a single class (a cross-validation fold of very few seeds can
    leave one) admit no classifier: every item gets that class.
    """
    if len(np.unique(y)) < 2:
        proba = np.zeros((len(xn), c))
        proba[:, int(y[0])] = 1.0
        return proba
    probe = fit_linear_probe(torch.from_numpy(xn[idx]).float(), torch.from_numpy(y), num_classes=c, seed=seed)
    return probe.predict_proba(torch.from_numpy(xn).float()).double().numpy()


def _predict(model: str, xn: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, k: int, seed: int,
             graph: Any = None) -> np.ndarray:
    """(N, C) class probabilities of every item from one model fitted on the seeds ``idx`` with labels ``y``.

    ``graph``: the propagation model's :func:`knn_graph` of ``xn``, if already built.
    """
    with torch_threads(1):
        if model == "knn":
            return _predict_knn(xn, idx, y, c, k)
        if model == "propagation":
            return _predict_propagation(xn, idx, y, c, k, graph)
        return _predict_linear(xn, idx, y, c, k, seed)


def seed_folds(labels: np.ndarray, max_folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) positions into the seeds: stratified k-fold when every class has >= 2 seeds.

    With ``min(max_folds, smallest class size)`` folds each class has a seed
    in every held-out part and in every training part. When some class has
    a single seed, plain k-fold over all seeds is used (that seed, when held
    out, cannot be predicted and counts as wrong for every model alike).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(labels)
    smallest = counts[counts > 0].min()
    if smallest >= 2:
        splitter: Any = StratifiedKFold(n_splits=int(min(max_folds, smallest)), shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(labels)), labels))
    splitter = KFold(n_splits=int(min(max_folds, len(labels))), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels))))


def label_from_seeds(
    features: np.ndarray,
    seed_idx: np.ndarray,
    seed_labels: np.ndarray,
    num_classes: int | None = None,
    models: tuple[str, ...] = SEED_MODELS,
    neighbors: int = 10,
    max_folds: int = 5,
    seed: int = 0,
) -> SeedResult:
    """Label every item from a few labelled ones, with the model best on held-out seeds.

    Args:
        features: (N, D) embeddings (L2-normalised here).
        seed_idx: (S,) distinct row indices of the seeds.
        seed_labels: (S,) class of each seed, in [0, num_classes).
        num_classes: number of classes (default: max seed label + 1).
        models: candidates, among ``SEED_MODELS``.
        neighbors: k of the kNN vote (clipped to the seeds in use) and of the propagation graph.
        max_folds: at most this many cross-validation folds over the seeds.
        seed: seeds the folds and the linear probe.

    Raises:
        ConfigError: fewer than 2 seeds, an unknown model, bad indices or labels.
    """
    seed_idx = np.asarray(seed_idx, dtype=np.int64)
    seed_labels = np.asarray(seed_labels, dtype=np.int64)
    n = len(features)
    unknown = [m for m in models if m not in SEED_MODELS]
    if unknown or not models:
        raise ConfigError(f"seed models {unknown or list(models)} are not a choice of {', '.join(SEED_MODELS)}")
    if len(seed_idx) != len(seed_labels):
        raise ConfigError(f"{len(seed_idx)} seed items but {len(seed_labels)} seed labels")
    if len(seed_idx) < 2:
        raise ConfigError(f"labelling from seeds needs at least 2 seed labels, got {len(seed_idx)}")
    if len(np.unique(seed_idx)) != len(seed_idx) or seed_idx.min() < 0 or seed_idx.max() >= n:
        raise ConfigError(f"seed indices must be distinct rows in [0, {n})")
    if neighbors < 1:
        raise ConfigError(f"--neighbors must be >= 1, got {neighbors}")
    c = int(num_classes if num_classes is not None else seed_labels.max() + 1)
    if seed_labels.min() < 0 or seed_labels.max() >= c:
        raise ConfigError(f"seed labels must be in [0, {c})")
    xn = normalise(features, dtype=np.float64)
    folds = seed_folds(seed_labels, max_folds, seed)
    cv: dict[str, float] = {}
    graph = knn_graph(xn, min(neighbors, n - 1)) if "propagation" in models and n > 1 else None  # once for every fold
    for m in models:
        correct = 0
        for tr, held in folds:
            proba = _predict(m, xn, seed_idx[tr], seed_labels[tr], c, neighbors, seed, graph)
            correct += int((proba[seed_idx[held]].argmax(1) == seed_labels[held]).sum())
        cv[m] = correct / len(seed_idx)
    best = max(models, key=lambda m: (cv[m], -models.index(m)))
    proba = _predict(best, xn, seed_idx, seed_labels, c, neighbors, seed, graph)
    labels = proba.argmax(1).astype(np.int64)
    confidence = proba.max(1)
    labels[seed_idx] = seed_labels  # a seed is its own label, with full confidence
    confidence[seed_idx] = 1.0
    return SeedResult(labels=labels, confidence=np.clip(confidence, 0.0, 1.0), proba=proba, model=best,
                      cv_accuracy=cv, folds=len(folds), num_classes=c)


def least_confident(confidence: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` least confident items, least confident first (stable order on ties)."""
    return np.argsort(confidence, kind="stable")[: max(n, 0)]


# ----------------------------------------------------------------------------- seed CSV


def read_seed_labels(
    path: str | Path, sources: list[str], class_names: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read ``item,label`` rows of a seed CSV.

    ``item`` is a source string from items.csv or a row index into it (a
    source that matches exactly wins). ``label`` is a class name or a class
    index when class names are known; without class names the labels must
    all be integers >= 0, or all names (which then become the class names,
    sorted).

    Returns:
        (seed indices, seed labels, class names) with class names possibly new.

    Raises:
        DataError: naming the file, line and value, for a missing column, an
            unknown item, an unknown label, or one item given two labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: seed label file not found")
    n = len(sources)
    by_source = {s: i for i, s in enumerate(sources)}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of "item"
        reader = csv.DictReader(f)
        fields = [h.strip() for h in reader.fieldnames or []]
        missing = [col for col in ("item", "label") if col not in fields]
        if missing:
            raise DataError(f"{path}, line 1: missing column(s) {', '.join(missing)}; expected a header item,label, got {fields}")
        reader.fieldnames = fields
        rows = [(reader.line_num, (r["item"] or "").strip(), (r["label"] or "").strip()) for r in reader]
    if not rows:
        raise DataError(f"{path}: no seed labels (only a header)")
    raw_items: list[tuple[int, int, str]] = []
    for line, item, label in rows:
        if item in by_source:
            i = by_source[item]
        else:
            try:
                i = int(item)
            except ValueError:
                raise DataError(f"{path}, line {line}: unknown item {item!r} (neither a source in items.csv nor an index)") from None
            if not 0 <= i < n:
                raise DataError(f"{path}, line {line}: unknown item {item!r} (index out of range 0..{n - 1})")
        raw_items.append((line, i, label))
    names = list(class_names) if class_names else None
    if names is None and not all(_is_int(lbl) for _, _, lbl in raw_items):
        names = sorted({lbl for _, _, lbl in raw_items})
        for line, _, lbl in raw_items:
            if _is_int(lbl) or lbl == "":
                raise DataError(f"{path}, line {line}: label {lbl!r} mixes with class names; give all labels as names or all as integers")
    seeds: dict[int, tuple[int, int]] = {}
    for line, i, lbl in raw_items:
        if names is not None and lbl in names:
            y = names.index(lbl)
        elif _is_int(lbl) and int(lbl) >= 0 and (names is None or int(lbl) < len(names)):
            y = int(lbl)
        else:
            known = f"one of {', '.join(names)} or 0..{len(names) - 1}" if names else "an integer >= 0"
            raise DataError(f"{path}, line {line}: unknown label {lbl!r} (expected {known})")
        if i in seeds and seeds[i][1] != y:
            raise DataError(f"{path}, line {line}: item {i} already labelled on line {seeds[i][0]} with another label")
        seeds.setdefault(i, (line, y))
    idx = np.array(sorted(seeds), dtype=np.int64)
    return idx, np.array([seeds[i][1] for i in idx], dtype=np.int64), names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- outputs


def write_labels_csv(
    path: Path, sources: list[str], labels: np.ndarray, confidence: np.ndarray, clusters: np.ndarray,
    class_names: list[str] | None = None,
) -> None:
    """``item,source,label,confidence,cluster`` per item (label as class name when names are given), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["item", "source", "label", "confidence", "cluster"])
    for i, (src, lbl, conf, cl) in enumerate(zip(sources, labels.tolist(), confidence.tolist(), clusters.tolist())):
        writer.writerow([i, src, class_names[lbl] if class_names is not None else lbl, f"{conf:.4f}", cl])
    atomic_write_text(path, buf.getvalue())


def montage_members(features: np.ndarray, assign: np.ndarray, k: int, per: int = MONTAGE_SIZE) -> dict[int, np.ndarray]:
    """Per group, up to ``per`` item indices nearest the group's centroid (L2-normalised features), nearest first."""
    out = {}
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        xn = normalise(features[members], dtype=np.float64)  # one group at a time: no float64 copy of all the features
        d = ((xn - xn.mean(0)) ** 2).sum(1)
        out[c] = members[np.argsort(d, kind="stable")[:per]]
    return out


def montage_image(images: np.ndarray, columns: int = 6, pad: int = 2) -> Any:
    """A Pillow image of uint8 (B, C, H, W) images in a grid (``columns`` wide), on a white background.

    Images smaller than MONTAGE_MIN_TILE px are enlarged by a whole factor
    (nearest neighbour). One channel is drawn grey, three as RGB; other
    channel counts show their first channel.
    """
    from PIL import Image

    b, ch, h, w = images.shape
    scale = max(1, math.ceil(MONTAGE_MIN_TILE / max(h, w)))
    th, tw = h * scale, w * scale
    cols = min(columns, b)
    rows = math.ceil(b / cols)
    mode = "RGB" if ch == 3 else "L"
    sheet = Image.new(mode, (cols * (tw + pad) + pad, rows * (th + pad) + pad), color=255 if mode == "L" else (255,) * 3)
    for j, img in enumerate(images):
        arr = img.transpose(1, 2, 0) if ch == 3 else img[0]  # (H, W, 3) or (H, W)
        tile = Image.fromarray(np.ascontiguousarray(arr), mode=mode).resize((tw, th), Image.NEAREST)
        sheet.paste(tile, (pad + (j % cols) * (tw + pad), pad + (j // cols) * (th + pad)))
    return sheet


def write_montages(out_dir: Path, get_batch: Any, members: dict[int, np.ndarray]) -> list[Path]:
    """Write ``out_dir/montages/cluster_<k>.png`` per group; remove cluster PNGs of earlier runs that no group has now.

    Args:
        out_dir: output folder.
        get_batch: ``indices (LongTensor) -> uint8 (B, C, H, W)`` images of the embedding rows.
        members: item indices per group (from :func:`montage_members`).
    """
    folder = Path(out_dir) / MONTAGE_DIR
    written = []
    for c, idx in members.items():
        images = np.asarray(get_batch(torch.from_numpy(idx)))
        sheet = montage_image(images)
        path = folder / f"cluster_{c}.png"
        with atomic_open(path) as f:
            sheet.save(f, format="PNG")
        written.append(path)
    for old in folder.glob("cluster_*.png"):
        if old not in written:
            old.unlink()
    return written


class _RowImages:
    """Images of embedding rows (train rows then test rows) from a loaded data set."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.n_train = len(data.train)

    def __call__(self, indices: torch.Tensor) -> np.ndarray:
        out = []
        for i in indices.tolist():  # montages are small: one image at a time keeps the order simple
            ds, j = (self.data.train, i) if i < self.n_train else (self.data.test, i - self.n_train)
            out.append(ds.get_batch(torch.tensor([j])).numpy())
        return np.concatenate(out)


def run_images(run_dir: Path, sources: list[str]) -> tuple[_RowImages | None, str]:
    """The run's images in embedding-row order, or (None, why not) when they cannot be loaded or do not match."""
    from contrastkit.config import TrainConfig
    from contrastkit.data import load_dataset

    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        return None, f"{run_dir} has no config.json, so its images are unknown"
    try:
        config = TrainConfig.load(config_path)
        data = load_dataset(config.data, image_size=config.image_size, skip_bad=config.skip_bad)
    except ContrastkitError as e:
        return None, f"the run's data set could not be loaded ({e})"
    if list(data.train.sources) + list(data.test.sources) != list(sources):
        return None, "the embeddings are not of the run's own data set (items.csv sources differ)"
    return _RowImages(data), ""


def label_run(
    run_dir: str | Path,
    *,
    clusters: int | None = None,
    algorithm: str = "kmeans",
    seed_labels: str | Path | None = None,
    out_dir: str | Path | None = None,
    montages: bool = True,
    neighbors: int = 10,
    seed: int = 0,
    kmeans_backend: str = "auto",
) -> dict[str, Any]:
    """Label every item of a run's embeddings and write labels.csv, label_metrics.json and montages.

    Exactly one of ``clusters`` (unsupervised) and ``seed_labels`` (a CSV of
    ``item,label``) is given. Embeds first when the run folder has a
    config.json but no embeddings.npy (cluster options are checked before
    that). ``kmeans_backend`` goes to :func:`label_clusters`.

    Returns:
        The metrics written to label_metrics.json, plus ``"result"`` (the
        :class:`ClusterResult` or :class:`SeedResult`), ``"sources"``,
        ``"label_names"`` (label column values per item) and
        ``"montage_note"`` (why montages were skipped, or "").
    """
    from contrastkit import __version__
    from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    if (clusters is None) == (seed_labels is None):
        raise ConfigError("give exactly one of --clusters K and --seed-labels CSV")
    if clusters is not None:  # before embedding: a bad option fails in a second, not after the model ran
        check_cluster_options(clusters, algorithm, kmeans_backend, neighbors=neighbors)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder")
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
                                backend=kmeans_backend)
        assign, labels, confidence, names = result.clusters, result.clusters, result.confidence, None
        metrics.update({
            "mode": "clusters", "algorithm": algorithm, "clusters": clusters,
            "confidence": "1 - d1/d2, the distances to the nearest and second nearest centroid",
            "cluster_sizes": np.bincount(assign, minlength=clusters).tolist(),
        })
        if algorithm == "kmeans":
            metrics.update({"n_init": KMEANS_RESTARTS, "kmeans_backend": result.backend})
        else:
            metrics["neighbors"] = neighbors
        if truth is not None:
            metrics["ground_truth"] = cluster_metrics(truth, assign)
        k = clusters
    else:
        idx, y, names = read_seed_labels(seed_labels, emb.sources, class_names)
        c = len(names) if names else int(max(y.max(), truth.max() if truth is not None else 0)) + 1
        result = label_from_seeds(emb.features, idx, y, num_classes=c, neighbors=neighbors, seed=seed)
        labels, confidence = result.labels, result.confidence
        assign = labels
        metrics.update({
            "mode": "seeds", "seed_labels": str(seed_labels), "n_seeds": int(len(idx)),
            "seeds_per_class": np.bincount(y, minlength=c).tolist(), "neighbors": neighbors,
            "model": result.model, "held_out_accuracy": result.cv_accuracy[result.model],
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
        k = c
    metrics["class_names"] = names
    out.mkdir(parents=True, exist_ok=True)
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
    return {**metrics, "result": result, "sources": emb.sources, "label_names": label_names}
