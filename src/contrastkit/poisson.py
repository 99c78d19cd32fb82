"""Poisson learning: labels from very few seeds by the Poisson equation on a kNN graph.

Calder, Cook, Thorpe, Slepcev, "Poisson Learning: Graph Based Semi-Supervised
Learning At Very Low Label Rates", ICML 2020 (arXiv 2006.11184), Algorithm 1.
Label propagation (Zhu et al. 2003; Zhou et al. 2004) fixes the label values
at the seeds; with a handful of seeds its solution is nearly constant away
from them and its argmax degenerates (18% of Fashion-MNIST from 1 label per
class in the paper). Poisson learning instead places a source at every seed
and solves ``L u = b`` with ``b_j = onehot(y_j) - ybar`` (so the sources sum
to zero), which stays informative at 1 label per class (61% in the paper).

Written by hand on scipy.sparse, not with the ``graphlearning`` package (the
paper authors' own, used as the reference in tests/test_poisson.py): it
builds its own graph (annoy search) and brings heavy dependencies, while
here Poisson learning must run on the exact FAISS kNN graph that the other
seed models share (:func:`contrastkit.vectors.exact_search`) and on each
cross-validation fold of the seeds. The facts taken from graphlearning
(1.7.5, ``weightmatrix.knn`` and ``ssl.poisson`` with
``solver="gradient_descent"``; the 2020 ``graphlearning.py`` of the paper for
the class balancing) are cited where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from contrastkit.errors import ConfigError
from contrastkit.vectors import exact_search

POISSON_NEIGHBOURS = 10  # k of the graph (paper and graphlearning default)
POISSON_MIN_ITER = 50  # iterations before the stopping rule is checked (graphlearning default)
POISSON_MAX_ITER = 1000  # at most this many iterations (graphlearning default)
# Softmax temperature, in units of the RMS of the balanced scores (see poisson_proba). 0.5 makes the mean
# confidence match the accuracy within 5 points on the training rows of a 5-epoch SimCLR encoder of the
# embedded Fashion-MNIST subset at 1, 3 and 10 seeds per class (0.1: 0.92 mean confidence at 70% accuracy).
POISSON_TEMPERATURE = 0.5


def gaussian_knn_weights(ids: np.ndarray, sq_dist: np.ndarray) -> sparse.csr_matrix:
    """(N, N) symmetric Gaussian kNN weight matrix with a zero diagonal.

    ``w_ij = exp(-4 |x_i - x_j|^2 / d_k(x_i)^2)`` for the k nearest neighbours
    j of i, ``d_k`` the distance to the k-th neighbour (self not counted),
    then ``W = (W + W^T) / 2`` and the diagonal set to 0: graphlearning's
    ``weightmatrix.knn(kernel="gaussian", symmetrize=True)``, the weights of
    the paper's experiments.

    Args:
        ids: (N, k + 1) neighbour ids of each row, the row's own id first.
        sq_dist: (N, k + 1) squared distances to them, ascending.
    """
    n, width = ids.shape
    eps = np.maximum(sq_dist[:, -1], 1e-12)  # d_k^2; > 0 even when k duplicates sit on the item
    w = np.exp(-4.0 * sq_dist / eps[:, None])  # (N, k + 1)
    rows = np.repeat(np.arange(n), width)
    W = sparse.csr_matrix((w.ravel(), (rows, ids.ravel())), shape=(n, n))
    W = ((W + W.T) / 2).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    return W


def knn_weight_matrix(xn: np.ndarray, k: int = POISSON_NEIGHBOURS) -> sparse.csr_matrix:
    """:func:`gaussian_knn_weights` of the exact ``k``-NN graph of L2-normalised rows ``xn`` (k clipped to N - 1).

    One exact cosine search (FAISS) of ``k + 1`` neighbours, self included; on
    unit vectors ``|x_i - x_j|^2 = 2 - 2 cos(x_i, x_j)``.
    """
    if k < 1:
        raise ConfigError(f"--neighbors must be >= 1, got {k}")
    scores, ids = exact_search(xn, xn, min(k, len(xn) - 1) + 1)  # (N, k + 1), own row first
    return gaussian_knn_weights(ids, np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0))


@dataclass
class PoissonResult:
    """Poisson learning scores of every item."""

    scores: np.ndarray  # (N, C) balanced u of the present classes, -inf in the columns of absent classes
    reached: np.ndarray  # (N,) bool: the item's connected component holds a seed
    iterations: int


def poisson_learning(
    W: sparse.spmatrix,
    seed_idx: np.ndarray,
    seed_labels: np.ndarray,
    num_classes: int,
    class_priors: np.ndarray | None = None,
    min_iter: int = POISSON_MIN_ITER,
    max_iter: int = POISSON_MAX_ITER,
) -> PoissonResult:
    """Algorithm 1 of Calder et al. 2020: iterate ``u <- u + D^-1 (b - L u)``, then balance the classes.

    ``L = D - W`` (combinatorial Laplacian, W with a zero diagonal), sources
    ``b_i = onehot(y_i) - ybar`` at the seeds (``ybar``: the fraction of
    seeds in each class), 0 elsewhere; ``u`` starts at 0. Since ``W`` is
    symmetric the step is ``u <- D^-1 b + D^-1 W u``, as graphlearning
    iterates it.

    Stopping (the paper: T near the mixing time of the random walk): after
    at least ``min_iter`` iterations, stop once a random walk started
    uniformly on the seeds (``v <- W D^-1 v``) is within ``1/N`` (max norm)
    of its limit, or after ``max_iter``: graphlearning's rule. On a connected
    graph the limit is ``deg / sum(deg)``, as there; on a graph of several
    components it is that restricted to each component, times the walk's
    mass there (components without seeds get 0), so a component without
    seeds does not keep the walk from ever mixing.

    Class balancing (the paper's label decision, ``training_balance`` of its
    2020 code): ``u <- u diag(b / ybar)`` with ``b`` the class priors
    (uniform over the seeds' classes when not given), so a class with more
    seeds does not win by its larger source alone.

    Args:
        W: (N, N) symmetric non-negative weights (:func:`knn_weight_matrix`).
        seed_idx: (S,) distinct rows of the seeds.
        seed_labels: (S,) their classes in [0, num_classes).
        num_classes: C; classes without a seed get score -inf.
        class_priors: (C,) expected fraction of items per class (only the
            seeds' classes are used; renormalised over them).
        min_iter, max_iter: iteration bounds.
    """
    from scipy.sparse.csgraph import connected_components

    n = W.shape[0]
    seed_idx = np.asarray(seed_idx, dtype=np.int64)
    seed_labels = np.asarray(seed_labels, dtype=np.int64)
    present = np.unique(seed_labels)  # (P,) the seeds' classes
    onehot = (seed_labels[:, None] == present[None, :]).astype(np.float64)  # (S, P)
    ybar = onehot.mean(0)  # (P,)
    b = np.zeros((n, len(present)))
    np.add.at(b, seed_idx, onehot - ybar)
    W = sparse.csr_matrix(W, dtype=np.float64)
    deg = np.asarray(W.sum(1)).ravel()
    inv_deg = 1.0 / np.maximum(deg, 1e-300)  # isolated items have no edges: their u stays D^-1 b
    P = sparse.diags(inv_deg) @ W  # D^-1 W
    RW = W @ sparse.diags(inv_deg)  # the walk's transition, W D^-1 (= P^T)
    Db = inv_deg[:, None] * b

    _, comp = connected_components(W, directed=False)
    v = np.zeros(n)
    v[seed_idx] = 1.0 / len(seed_idx)
    comp_mass = np.bincount(comp, weights=v)  # the walk's mass in each component, constant in time
    comp_deg = np.bincount(comp, weights=deg)
    with np.errstate(invalid="ignore", divide="ignore"):
        vinf = np.where(comp_deg[comp] > 0, deg * comp_mass[comp] / comp_deg[comp], 0.0)  # isolated: the walk leaves
    u = np.zeros((n, len(present)))
    t = 0
    while (t < min_iter or np.abs(v - vinf).max() > 1.0 / n) and t < max_iter:
        u = Db + P @ u
        v = RW @ v
        t += 1

    prior = np.full(len(present), 1.0) if class_priors is None else np.asarray(class_priors, dtype=np.float64)[present]
    if (prior <= 0).any() or not np.isfinite(prior).all():
        raise ConfigError("class priors must be positive and finite for every class that has seeds")
    u = u * (prior / prior.sum() / ybar)  # (N, P) the paper's u diag(b / ybar)
    scores = np.full((n, num_classes), -np.inf)
    scores[:, present] = u
    reached = comp_mass[comp] > 0
    return PoissonResult(scores=scores, reached=reached, iterations=t)


def poisson_proba(result: PoissonResult, temperature: float = POISSON_TEMPERATURE) -> np.ndarray:
    """(N, C) class probabilities from Poisson scores: ``softmax(u / (temperature * rms(u)))``.

    Poisson scores are not probabilities (they are signed and their scale
    grows with the graph's size and degree), so they are divided by their
    root mean square over the reached items and the seeds' classes, which
    makes the result independent of that scale, then passed through a softmax
    at :data:`POISSON_TEMPERATURE`. The argmax is Poisson learning's balanced
    label decision exactly; the probability ranks items by how far their
    best class leads, and its mean roughly matches the accuracy (see the
    constant), but it is not calibrated item by item. Classes without seeds get 0;
    items no seed reaches (another connected component) are uniform over the
    seeds' classes, as in label propagation.
    """
    if temperature <= 0:
        raise ConfigError(f"the Poisson softmax temperature must be > 0, got {temperature}")
    s = result.scores
    present = np.isfinite(s[0]) if len(s) else np.zeros(0, dtype=bool)
    u = s[:, present]  # (N, P)
    rms = float(np.sqrt(np.mean(u[result.reached] ** 2))) if result.reached.any() else 1.0
    z = u / max(rms * temperature, 1e-300)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(1, keepdims=True)
    p[~result.reached] = 1.0 / present.sum()
    out = np.zeros(s.shape)
    out[:, present] = p
    return out
