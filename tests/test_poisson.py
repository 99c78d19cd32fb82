"""Poisson learning (Calder et al. 2020): against graphlearning, a dense NumPy Algorithm 1, and a hand-solved graph."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from contrastkit.errors import ConfigError
from contrastkit.vectors import normalise
from contrastkit.poisson import (
    gaussian_knn_weights,
    knn_weight_matrix,
    poisson_learning,
    poisson_proba,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def moons(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    return make_moons(n, noise=0.1, random_state=seed)


def test_gaussian_weights_equal_graphlearning_knn():
    """The same W as graphlearning.weightmatrix.knn(kernel="gaussian"), from our own neighbour table."""
    import graphlearning as gl
    from sklearn.neighbors import NearestNeighbors

    x, _ = moons()
    for k in (5, 10):
        dist, ids = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
        ours = gaussian_knn_weights(ids, dist**2)
        ref = gl.weightmatrix.knn(x, k)  # 2-D data: graphlearning searches with a k-d tree
        assert abs(ours - ref).max() < 1e-12
        assert abs(ours - ours.T).max() == 0 and ours.diagonal().max() == 0


def test_faiss_graph_on_unit_vectors_equals_graphlearning():
    """knn_weight_matrix (FAISS cosine search) is graphlearning's Euclidean kNN graph of the unit rows."""
    import graphlearning as gl

    rng = np.random.default_rng(1)
    xn = normalise(rng.normal(size=(200, 3)), dtype=np.float64)
    ref = gl.weightmatrix.knn(xn, 10)
    ours = knn_weight_matrix(xn, 10)
    assert (ours != 0).sum() == (ref != 0).sum()
    assert abs(ours - ref).max() < 1e-4  # FAISS scores are float32


@pytest.mark.parametrize("per_class", [(1, 1), (2, 3), (4, 1)])
def test_poisson_scores_equal_graphlearning_gradient_descent(per_class):
    """u before the class balancing is graphlearning's ssl.poisson(solver="gradient_descent"), same stopping rule."""
    import graphlearning as gl

    x, y = moons()
    W = gl.weightmatrix.knn(x, 10)
    idx = np.concatenate([np.flatnonzero(y == c)[:m] for c, m in enumerate(per_class)])
    ref = gl.ssl.poisson(W, solver="gradient_descent").fit(idx, y[idx])  # (N, 2)
    r = poisson_learning(W, idx, y[idx], 2)
    ybar = np.bincount(y[idx]) / len(idx)
    np.testing.assert_allclose(r.scores * ybar * 2, ref, atol=1e-10)  # undo u diag(b / ybar), b = (1/2, 1/2)
    assert 50 <= r.iterations <= 1000 and r.reached.all()


def dense_algorithm_1(W: np.ndarray, idx: np.ndarray, y: np.ndarray, c: int, T: int,
                      b: np.ndarray | None = None) -> np.ndarray:
    """Algorithm 1 of arXiv 2006.11184 written straight from the paper, dense, for T iterations; then u diag(b/ybar)."""
    n = len(W)
    D = np.diag(W.sum(1))
    L = D - W
    F = np.eye(c)[y].T  # (c, m) one-hot label matrix
    ybar = F.mean(1)  # (c,)
    B = np.zeros((c, n))
    B[:, idx] = F - ybar[:, None]
    U = np.zeros((n, c))
    for _ in range(T):
        U = U + np.linalg.inv(D) @ (B.T - L @ U)
    b = np.full(c, 1.0 / c) if b is None else b
    return U @ np.diag(b / ybar)


@pytest.mark.parametrize("T,priors", [(1, None), (7, None), (60, None), (60, (0.2, 0.3, 0.5))])
def test_poisson_equals_the_papers_algorithm_1(T, priors):
    rng = np.random.default_rng(T)
    x = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 3, 20, axis=0)
    W = knn_weight_matrix(normalise(x, dtype=np.float64), 6).toarray()
    y_all = np.repeat(np.arange(3), 20)
    idx = np.array([0, 1, 2, 20, 40, 41])  # 3, 1 and 2 seeds: diag(b / ybar) scales each class differently
    p = None if priors is None else np.array(priors)
    ref = dense_algorithm_1(W, idx, y_all[idx], 3, T, p)
    r = poisson_learning(sparse.csr_matrix(W), idx, y_all[idx], 3, class_priors=p, min_iter=T, max_iter=T)
    assert r.iterations == T
    np.testing.assert_allclose(r.scores, ref, atol=1e-12)


def two_triangles(bridge: float = 1.0) -> sparse.csr_matrix:
    """Triangles {0, 1, 2} and {3, 4, 5} (unit weights) joined by the edge 2-3 of weight ``bridge``."""
    W = np.zeros((6, 6))
    for a, b in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)]:
        W[a, b] = W[b, a] = 1.0
    W[2, 3] = W[3, 2] = bridge
    return sparse.csr_matrix(W)


def test_two_clusters_one_seed_each_by_hand():
    """Seeds at nodes 0 (class 0) and 5 (class 1): sources +1/2 at 0 and -1/2 at 5 for class 0.

    A current of 1/2 flows from node 0 to node 5. In triangle {0,1,2} it takes
    the edge 0-2 (conductance 1) and the path 0-1-2 (1/2): u0 - u2 = 0.5/1.5
    = 1/3, u0 - u1 = 1/6; across the bridge u2 - u3 = 0.5. The iteration
    keeps sum(d_i u_i) = 0, so by symmetry u = (7/12, 5/12, 1/4, -1/4,
    -5/12, -7/12) for class 0 and its negative for class 1 (one seed each:
    the balancing is a factor of 1).
    """
    W = two_triangles()
    idx, y = np.array([0, 5]), np.array([0, 1])
    r = poisson_learning(W, idx, y, 2, min_iter=3000, max_iter=3000)
    u0 = np.array([7, 5, 3, -3, -5, -7]) / 12
    np.testing.assert_allclose(r.scores[:, 0], u0, atol=1e-9)
    np.testing.assert_allclose(r.scores[:, 1], -u0, atol=1e-9)
    default = poisson_learning(W, idx, y, 2)  # stops at the mixing time: the decision is already there
    assert default.scores.argmax(1).tolist() == [0, 0, 0, 1, 1, 1]
    p = poisson_proba(default)
    assert np.allclose(p.sum(1), 1) and (p[[0, 1, 2], 0] > 0.5).all() and p[0, 0] > p[1, 0] > p[2, 0]


def test_classes_without_seeds_and_unreached_items():
    """Three disconnected clumps, seeds in two: the third is uniform over the seeds' classes; class 0 never wins."""
    blocks = [np.ones((4, 4)) - np.eye(4)] * 3
    W = sparse.block_diag(blocks).tocsr()
    r = poisson_learning(W, np.array([4, 8]), np.array([1, 2]), 3)
    p = poisson_proba(r)
    assert r.reached.tolist() == [False] * 4 + [True] * 8
    assert (p[:, 0] == 0).all() and np.allclose(p[:4, 1:], 0.5)
    assert p[4:8].argmax(1).tolist() == [1] * 4 and p[8:].argmax(1).tolist() == [2] * 4
    assert r.iterations < 1000  # a component without seeds does not keep the walk from mixing


def test_poisson_beats_propagation_at_one_label_per_class_on_fashion_mnist_pixels():
    """The paper's point, on 2 000 real Fashion-MNIST images (raw pixels): from 1 label per class label
    spreading degenerates, Poisson learning does not (mean over 3 draws of seeds)."""
    from contrastkit.data import load_dataset
    from contrastkit.seeds import label_from_seeds

    data = load_dataset(None)
    x = data.train.images[:2000].reshape(2000, -1).float().numpy()
    y = data.train.labels[:2000].numpy()
    acc = {"poisson": [], "propagation": []}
    for draw in range(3):
        rng = np.random.default_rng(draw)
        idx = np.array([rng.choice(np.flatnonzero(y == c)) for c in range(10)])
        rest = np.setdiff1d(np.arange(len(y)), idx)
        for m in acc:
            r = label_from_seeds(x, idx, y[idx], num_classes=10, models=(m,))
            acc[m].append((r.labels[rest] == y[rest]).mean())
    assert np.mean(acc["poisson"]) > np.mean(acc["propagation"]) + 0.05, acc


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--neighbors"):
        knn_weight_matrix(np.eye(3), 0)
    r = poisson_learning(two_triangles(), np.array([0, 5]), np.array([0, 1]), 2)
    with pytest.raises(ConfigError, match="temperature"):
        poisson_proba(r, 0.0)
    with pytest.raises(ConfigError, match="priors"):
        poisson_learning(two_triangles(), np.array([0, 5]), np.array([0, 1]), 2, class_priors=np.array([0.0, 1.0]))
