"""Few labels: every item's class from a few seed labels, by the seed model chosen on held-out seeds.

Four models label every item from the seeds (:data:`SEED_MODELS`): Poisson
learning on the Gaussian-weighted kNN graph (:mod:`contrastkit.poisson`,
Calder et al. 2020, arXiv 2006.11184), which stays informative at one label
per class where label spreading degenerates; the kNN vote among the seeds
(:func:`contrastkit.knn.knn_votes`); label spreading on the kNN graph of all
items (scikit-learn ``LabelSpreading``, ``kernel="knn"``, Zhou et al. 2004);
and a linear classifier (:func:`contrastkit.linear_probe.fit_linear_probe`).
Each model is scored by its held-out accuracy over folds of the seeds
(stratified k-fold with up to 5 folds; each fold's seeds are hidden and
predicted from the others), and the first model in :data:`SEED_MODELS`
order whose score is within one standard error of the best labels every
item (:func:`choose_model`, the one-standard-error rule); the confidence
is its probability of the assigned class. Both graphs come from one exact FAISS
search, made once per labelling, not once per fold.

Also the reader of seed CSVs (:func:`read_seed_labels`).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from contrastkit.errors import ConfigError, DataError
from contrastkit.vectors import exact_search, normalise
from contrastkit.knn import knn_votes
from contrastkit.linear_probe import fit_linear_probe
from contrastkit.poisson import gaussian_knn_weights, poisson_learning, poisson_proba
from contrastkit.runtime import torch_threads
from contrastkit.sources import source_from_text

# The order of preference: among models whose held-out accuracy is within one standard error of the best, the
# earliest is chosen (choose_model). With one seed per class every model ties at 0 (a held-out seed's class has no
# seed left), so the order decides: Poisson learning first, the best at very low label rates in Calder et al. 2020
# and on the training rows of a 5-epoch encoder of the embedded Fashion-MNIST subset (1 seed per class: 62-70%
# against 50-54% for the kNN vote, the next best; 10 per class: 73-75% against 68-71%).
SEED_MODELS = ("poisson", "knn", "propagation", "linear")
GRAPH_MODELS = ("propagation", "poisson")  # the models that need the kNN graph of all items


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


def _connectivity(ids: np.ndarray) -> Any:
    """(N, N) sparse 0/1 matrix with a 1 at (i, j) for each id j in row i of ``ids`` (N, k)."""
    from scipy import sparse

    n, width = ids.shape
    return sparse.csr_matrix((np.ones(ids.size), ids.ravel(), np.arange(0, ids.size + 1, width)), shape=(n, n))


def knn_graph(xn: np.ndarray, k: int) -> Any:
    """(N, N) sparse 0/1 graph linking each item to its ``k`` nearest items, itself included.

    The same graph as scikit-learn's ``kernel="knn"`` of ``LabelSpreading``
    (``kneighbors_graph`` of the fitted points, connectivity mode), found by
    exact cosine search (:func:`contrastkit.vectors.exact_search`; on
    L2-normalised rows the Euclidean neighbours).
    """
    return _connectivity(exact_search(xn, xn, k)[1])  # (N, k) ids, each row's own item first


@dataclass
class SeedGraphs:
    """The kNN graphs of all items that the graph models use, built once per labelling, not once per fold.

    At 70 000 items the exact search is most of a fit's time; one search of
    ``k + 1`` neighbours serves both graphs.
    """

    connectivity: Any = None  # (N, N) knn_graph(xn, k), for propagation
    weights: Any = None  # (N, N) Gaussian kNN weights of k neighbours besides self, for Poisson


def seed_graphs(xn: np.ndarray, k: int, models: tuple[str, ...]) -> SeedGraphs:
    """The graphs of ``models`` (propagation, poisson) on L2-normalised ``xn``, k clipped to N - 1."""
    out = SeedGraphs()
    need = [m for m in models if m in GRAPH_MODELS]
    if not need or len(xn) < 2:
        return out
    k = min(k, len(xn) - 1)
    scores, ids = exact_search(xn, xn, k + 1 if "poisson" in need else k)  # (N, k [+ 1]), own row first
    if "propagation" in need:
        out.connectivity = _connectivity(ids[:, :k])
    if "poisson" in need:
        out.weights = gaussian_knn_weights(ids, np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0))
    return out


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


def _predict_poisson(xn: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, k: int, weights: Any = None) -> np.ndarray:
    """(N, C) Poisson learning probabilities (:mod:`contrastkit.poisson`) on the Gaussian kNN graph.

    ``weights``: the graph of :func:`seed_graphs` when given, else built here
    (:func:`contrastkit.poisson.knn_weight_matrix`, the same graph).
    """
    from contrastkit.poisson import knn_weight_matrix

    if weights is None:
        weights = knn_weight_matrix(xn, k)
    return poisson_proba(poisson_learning(weights, idx, y, c))


def _predict(model: str, xn: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, k: int, seed: int,
             graphs: SeedGraphs | None = None) -> np.ndarray:
    """(N, C) class probabilities of every item from one model fitted on the seeds ``idx`` with labels ``y``.

    ``graphs``: the graph models' :func:`seed_graphs` of ``xn``, if already built.
    """
    graphs = graphs or SeedGraphs()
    with torch_threads(1):
        if model == "knn":
            return _predict_knn(xn, idx, y, c, k)
        if model == "propagation":
            return _predict_propagation(xn, idx, y, c, k, graphs.connectivity)
        if model == "poisson":
            return _predict_poisson(xn, idx, y, c, k, graphs.weights)
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


def choose_model(cv_accuracy: dict[str, float], models: tuple[str, ...], n_held_out: int) -> str:
    """The first of ``models`` whose held-out accuracy is within one standard error of the best one's.

    The one-standard-error rule (Breiman et al. 1984, *Classification and
    Regression Trees*, Sec. 3.4.3; Hastie et al., *The Elements of
    Statistical Learning*, 2nd ed., Sec. 7.10): cross-validation over a few
    seeds estimates each accuracy with a binomial standard error
    ``sqrt(p (1 - p) / n)`` (``p`` the best accuracy, ``n`` the held-out
    predictions), and a model that leads by less than that has not been
    shown better than the preferred one. With 10 seeds per class of 10
    classes, n = 100 and p = 0.75 give 0.043.
    """
    best = max(cv_accuracy[m] for m in models)
    se = float(np.sqrt(best * (1.0 - best) / max(n_held_out, 1)))
    return next(m for m in models if cv_accuracy[m] >= best - se - 1e-12)


def label_from_seeds(
    features: np.ndarray,
    seed_idx: np.ndarray,
    seed_labels: np.ndarray,
    num_classes: int | None = None,
    models: tuple[str, ...] = SEED_MODELS,
    neighbors: int = 10,
    max_folds: int = 5,
    seed: int = 0,
    on_stage: Callable[[str], None] | None = None,
) -> SeedResult:
    """Label every item from a few labelled ones, with the model chosen on held-out seeds (:func:`choose_model`).

    Args:
        features: (N, D) embeddings (L2-normalised here).
        seed_idx: (S,) distinct row indices of the seeds.
        seed_labels: (S,) class of each seed, in [0, num_classes).
        num_classes: number of classes (default: max seed label + 1).
        models: candidates, among ``SEED_MODELS``, in order of preference (see :func:`choose_model`).
        neighbors: k of the kNN vote (clipped to the seeds in use) and of the propagation and Poisson graphs.
        max_folds: at most this many cross-validation folds over the seeds.
        seed: seeds the folds and the linear probe (Poisson learning and propagation are deterministic).
        on_stage: called with a short description as each stage starts (the graphs, each model's
            held-out check, the final labelling), for a progress display.

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
    stage = on_stage or (lambda text: None)
    xn = normalise(features, dtype=np.float64)
    folds = seed_folds(seed_labels, max_folds, seed)
    cv: dict[str, float] = {}
    stage(f"building the {neighbors}-nearest-neighbour graphs of {n} items")
    graphs = seed_graphs(xn, neighbors, models)  # once for every fold
    for j, m in enumerate(models, 1):
        stage(f"held-out check of {m} ({j} of {len(models)} models, {len(folds)} folds)")
        correct = 0
        for tr, held in folds:
            proba = _predict(m, xn, seed_idx[tr], seed_labels[tr], c, neighbors, seed, graphs)
            correct += int((proba[seed_idx[held]].argmax(1) == seed_labels[held]).sum())
        cv[m] = correct / len(seed_idx)
    best = choose_model(cv, models, len(seed_idx))
    stage(f"labelling every item with {best}")
    proba = _predict(best, xn, seed_idx, seed_labels, c, neighbors, seed, graphs)
    labels = proba.argmax(1).astype(np.int64)
    confidence = proba.max(1)
    labels[seed_idx] = seed_labels  # a seed is its own label, with full confidence
    confidence[seed_idx] = 1.0
    return SeedResult(labels=labels, confidence=np.clip(confidence, 0.0, 1.0), proba=proba, model=best,
                      cv_accuracy=cv, folds=len(folds), num_classes=c)


# ----------------------------------------------------------------------------- seed CSV


def read_seed_labels(
    path: str | Path, sources: list[str], class_names: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read ``item,label`` rows of a seed CSV.

    ``item`` is a source string as written in items.csv (a name that is not
    UTF-8 with its ``\\xHH`` escapes, see :mod:`contrastkit.sources`) or a
    row index into it (a source that matches exactly wins). ``label`` is a
    class name or a class index when class names are known; without class
    names the labels must all be integers >= 0, or all names (which then
    become the class names, sorted).

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
        source = source_from_text(item)  # written as in items.csv (contrastkit.sources)
        if source in by_source:
            i = by_source[source]
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
