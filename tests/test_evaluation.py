"""evaluation.py against scikit-learn on synthetic features: kNN, weighted kNN, linear probe, temperature choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from contrastkit.evaluation import WEIGHTED_TEMPERATURES, evaluate_features, per_class_accuracy, tune_knn_temperature
from contrastkit.knn import knn_predict
from contrastkit.linear_probe import fit_linear_probe


def _mixture(n: int, d: int = 16, classes: int = 5, spread: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: neither perfect nor chance, so disagreements would show."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * spread
    y = rng.integers(0, classes, size=n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def features() -> tuple[torch.Tensor, ...]:
    x, y = _mixture(1400)
    return torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000]), torch.from_numpy(x[1000:]), torch.from_numpy(y[1000:])


def test_knn_k20_equals_scikit_learn_cosine_neighbours(features):
    train_x, train_y, test_x, test_y = features
    out = evaluate_features(train_x, train_y, test_x, test_y, linear=False)
    ours = knn_predict(train_x, train_y, test_x, k=20, num_classes=5).numpy()
    assert out["knn_top1_k20"] == pytest.approx((ours == test_y.numpy()).mean())
    sk = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(train_x.numpy(), train_y.numpy())
    want = sk.predict(test_x.numpy())
    # scikit-learn breaks a tied vote by the lowest class, contrastkit by the summed similarity: compare the
    # queries whose vote has a single winner, and require that they are most of them.
    _, idx = sk.kneighbors(test_x.numpy())
    counts = np.stack([np.bincount(row, minlength=5) for row in train_y.numpy()[idx]])
    clear = (counts == counts.max(1, keepdims=True)).sum(1) == 1
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(ours[clear], want[clear])
    assert 0.3 < out["knn_top1_k20"] < 0.99  # neither chance nor perfect: a disagreement would show


def test_weighted_knn_equals_scikit_learn_with_exponential_weights(features):
    """Wu et al. 2018, Eq. 9-10: each of the 200 neighbours votes exp(cos / T); scikit-learn's callable weights."""
    train_x, train_y, test_x, test_y = features
    out = evaluate_features(train_x, train_y, test_x, test_y, linear=False)
    t = out["knn_k200_temperature"]
    assert t in WEIGHTED_TEMPERATURES
    sk = KNeighborsClassifier(n_neighbors=200, metric="cosine", algorithm="brute",
                              weights=lambda dist: np.exp((1.0 - dist.astype(np.float64)) / t))  # cosine distance = 1 - cos
    want = sk.fit(train_x.numpy(), train_y.numpy()).predict(test_x.numpy())
    assert out["knn_top1_k200_weighted"] == pytest.approx((want == test_y.numpy()).mean(), abs=1.5 / len(test_y))


def test_temperature_is_chosen_on_training_features_only(features):
    train_x, train_y, test_x, test_y = features
    t = tune_knn_temperature(train_x, train_y)
    shuffled = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(1))]
    assert evaluate_features(train_x, train_y, test_x, shuffled, linear=False)["knn_k200_temperature"] == t
    assert evaluate_features(train_x, train_y, -test_x, test_y, linear=False)["knn_k200_temperature"] == t


def test_temperature_follows_the_scale_of_the_similarities():
    """Raw pixels: cosines bunched near 1 need a small temperature; the choice adapts instead of a fixed 0.07."""
    x, y = _mixture(1200, spread=0.3, seed=3)
    offset = np.full((1, x.shape[1]), 30.0, dtype=np.float32)  # every cosine near 1, like raw pixel vectors
    bunched = tune_knn_temperature(torch.from_numpy(x + offset), torch.from_numpy(y))
    spread = tune_knn_temperature(torch.from_numpy(x), torch.from_numpy(y))
    assert bunched < spread


def test_linear_probe_equals_scikit_learn_logistic_regression(features):
    """The same penalised objective: CE mean + l2 * |W|^2 equals scikit-learn's with C = 1 / (2 * l2 * N)."""
    train_x, train_y, test_x, test_y = features
    l2 = 1e-3
    probe = fit_linear_probe(train_x, train_y, num_classes=5, l2_grid=(l2,), max_iter=500)
    x = ((train_x - probe.mean) / probe.std).numpy()
    sk = LogisticRegression(C=1.0 / (2 * l2 * len(x)), tol=1e-10, max_iter=5000).fit(x, train_y.numpy())
    xt = ((test_x - probe.mean) / probe.std).numpy()
    np.testing.assert_allclose(probe.predict_proba(test_x).numpy(), sk.predict_proba(xt), atol=2e-3)
    ours = float((probe.logits(test_x).argmax(1) == test_y).float().mean())
    assert ours == pytest.approx(sk.score(xt, test_y.numpy()), abs=2 / len(test_y))


def test_linear_probe_accuracy_in_evaluate_features_is_the_probe_s(features):
    train_x, train_y, test_x, test_y = features
    out = evaluate_features(train_x, train_y, test_x, test_y)
    probe = fit_linear_probe(train_x, train_y, 5)
    assert out["linear_probe_top1"] == pytest.approx(float((probe.logits(test_x).argmax(1) == test_y).float().mean()))
    assert out["linear_probe_l2"] == probe.l2


def test_per_class_accuracy_equals_scikit_learn_recall():
    from sklearn.metrics import recall_score

    rng = np.random.default_rng(0)
    labels, pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    got = per_class_accuracy(torch.from_numpy(pred), torch.from_numpy(labels), ["a", "b", "c", "d"])
    want = recall_score(labels, pred, average=None)
    assert list(got) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(list(got.values()), want)
