"""SCAN (Van Gansbeke et al. 2020): the loss against Eq. 2, self-labelling's threshold, the engine, and clustering."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.scan import (
    ClusterHeads,
    FeatureBatches,
    SCANLoss,
    ScanConfig,
    ScanTrainable,
    SelfLabelLoss,
    SelfLabelTrainable,
    mine_neighbours,
    scan_cluster,
    scan_loss,
    self_label_loss,
    train_heads,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


# ----------------------------------------------------------------------------- the SCAN loss


def test_scan_loss_of_a_hand_computed_case():
    """p = (.8,.2), (.3,.7); neighbours (.6,.4), (.1,.9): <p_i, p_j> = .56 and .66, pbar = (.55, .45).

    consistency = -(ln .56 + ln .66) / 2 = 0.4976670; entropy = -(.55 ln .55 + .45 ln .45) = 0.6881388;
    with lambda = 5: 0.4976670 - 5 * 0.6881388 = -2.9430271.
    """
    total, consistency, entropy = scan_loss(logits_of([[0.8, 0.2], [0.3, 0.7]]), logits_of([[0.6, 0.4], [0.1, 0.9]]), 5.0)
    assert float(consistency) == pytest.approx(0.4976670, abs=1e-6)
    assert float(entropy) == pytest.approx(0.6881388, abs=1e-6)
    assert float(total) == pytest.approx(-2.9430271, abs=1e-6)


def eq2_reference(a: np.ndarray, nbrs: np.ndarray, lam: float) -> float:
    """Eq. 2 with loops (neighbour term averaged over each item's neighbours): a (B, K), nbrs (B, M, K) logits."""
    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    b, m, k = nbrs.shape
    cons = 0.0
    for i in range(b):
        p = softmax(a[i])
        cons -= sum(math.log(max(float(p @ softmax(nbrs[i, j])), 1e-8)) for j in range(m)) / m
    cons /= b
    pbar = np.mean([softmax(a[i]) for i in range(b)], axis=0)
    return cons + lam * float(sum(q * math.log(max(q, 1e-8)) for q in pbar))


@pytest.mark.parametrize("b,m,k,lam", [(1, 1, 2, 5.0), (7, 1, 3, 0.0), (16, 4, 10, 5.0), (5, 20, 7, 2.5)])
def test_scan_loss_matches_equation_2(b, m, k, lam):
    g = torch.Generator().manual_seed(b * 100 + m)
    a = torch.randn(b, k, generator=g, dtype=torch.float64) * 3
    n = torch.randn(b, m, k, generator=g, dtype=torch.float64) * 3
    ref = eq2_reference(a.numpy(), n.numpy(), lam)
    assert float(scan_loss(a, n, lam)[0]) == pytest.approx(ref, abs=1e-9)
    if m == 1:  # one neighbour each: (B, K) is the same as (B, 1, K)
        assert float(scan_loss(a, n[:, 0], lam)[0]) == pytest.approx(ref, abs=1e-9)
    heads = torch.stack([a, a.flip(0), a * 0.5])  # (H, B, K): a leading dim gives each head its own loss
    per_head = scan_loss(heads, torch.stack([n, n.flip(0), n]), lam)[0]
    assert per_head.shape == (3,) and float(per_head[0]) == pytest.approx(ref, abs=1e-9)
    assert float(per_head[2]) == pytest.approx(eq2_reference((a * 0.5).numpy(), n.numpy(), lam), abs=1e-9)


def test_scan_loss_closed_form_confident_and_balanced():
    """Every item and its neighbour sure of the same cluster, clusters used equally: consistency 0, loss -lambda ln K."""
    k = 4
    a = 50.0 * torch.eye(k, dtype=torch.float64).repeat(3, 1)  # (12, 4): 3 items per cluster
    total, consistency, entropy = scan_loss(a, a.clone(), 5.0)
    assert float(consistency) == pytest.approx(0.0, abs=1e-12)
    assert float(entropy) == pytest.approx(math.log(k), abs=1e-12)
    assert float(total) == pytest.approx(-5.0 * math.log(k), abs=1e-12)
    # all items in one cluster: consistency still 0 but no entropy; the loss is higher by lambda ln K
    one = 50.0 * torch.eye(k, dtype=torch.float64)[[0] * 12]
    assert float(scan_loss(one, one, 5.0)[0]) == pytest.approx(0.0, abs=1e-12)


def test_scan_trainable_sums_the_heads_and_checks_its_weight():
    torch.manual_seed(0)
    heads = ClusterHeads(6, 3, heads=4)
    x, nb = torch.randn(10, 6), torch.randn(10, 6)
    loss, logs = ScanTrainable(heads, 5.0)(x, nb)
    with torch.no_grad():
        per_head = [float(scan_loss(heads(x)[h], heads(nb)[h], 5.0)[0]) for h in range(4)]
    assert float(loss.detach()) == pytest.approx(sum(per_head), rel=1e-5) and logs["loss"] == pytest.approx(np.mean(per_head), rel=1e-5)
    single = heads.head(2)  # a standalone copy of head 2 gives its logits
    with torch.no_grad():
        torch.testing.assert_close(single(x), heads(x)[2])
    with pytest.raises(ConfigError, match="entropy weight"):
        SCANLoss(-1.0)


# ----------------------------------------------------------------------------- self-labelling


def test_only_items_above_the_threshold_contribute():
    """Weak confidences .995, .999, .98, .996: items 0, 1, 3 (classes 0, 0, 1) count, item 2 does not.

    Class-balanced weights n / n_c: 3/2 for class 0, 3 for class 1; the loss is the weighted mean
    (1.5 l0 + 1.5 l1 + 3 l3) / 6 of the strong view's cross-entropies.
    """
    weak = logits_of([[0.995, 0.005], [0.999, 0.001], [0.02, 0.98], [0.004, 0.996]])
    strong = torch.tensor([[1.0, 0.0], [0.2, 0.4], [-3.0, 5.0], [0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    loss, mask = self_label_loss(weak, strong, 0.99)
    assert mask.tolist() == [True, True, False, True]
    ce = -torch.log_softmax(strong.detach(), -1)
    expected = (1.5 * ce[0, 0] + 1.5 * ce[1, 0] + 3 * ce[3, 1]) / 6
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-12)
    loss.backward()
    assert (strong.grad[2] == 0).all() and (strong.grad[[0, 1, 3]] != 0).any(1).all()
    unbalanced, _ = self_label_loss(weak, strong, 0.99, balance=False)
    assert float(unbalanced.detach()) == pytest.approx(float((ce[0, 0] + ce[1, 0] + ce[3, 1]) / 3), abs=1e-12)
    # a threshold above every confidence: nothing counts, a constant 0 without gradient
    none, mask = self_label_loss(weak, strong, 0.9995)
    assert not mask.any() and float(none) == 0.0 and not none.requires_grad
    with pytest.raises(ConfigError, match="threshold"):
        SelfLabelLoss(1.0)


def test_self_labelling_takes_no_step_on_the_engine_without_confident_items():
    """A fresh head is far below 0.99 everywhere: no loss, so no step (weight decay must not shrink it)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in head.parameters()]
    x = torch.randn(40, 5) * 0.01
    history = train_heads(SelfLabelTrainable(head, 0.99, 0.5), FeatureBatches(x, None, 20, seed=0, stream=1), epochs=3,
                          lr=1e-2, weight_decay=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters()))
    assert [(h["epoch"], h["loss"], h["confident"]) for h in history] == [(1, 0.0, 0.0), (2, 0.0, 0.0), (3, 0.0, 0.0)]
    # a confident head does learn on the same path: the step is skipped only for want of a gradient
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0] = 1e4
    train_heads(SelfLabelTrainable(head, 0.99, 0.5), FeatureBatches(x + 1, None, 20, seed=0, stream=1), epochs=1,
                lr=1e-2, weight_decay=0.1)
    assert not torch.equal(before[1], head.bias)


def test_feature_batches_are_a_pure_function_of_seed_epoch_and_step():
    """Each epoch draws its own neighbour of every item and its own order; resuming at a step gives the same rest."""
    x = torch.arange(10.0)[:, None].repeat(1, 2)  # row i is (i, i)
    nbr = torch.stack([(torch.arange(10) + j) % 10 for j in (1, 2, 3)], 1)  # (10, 3): the next three items
    src = FeatureBatches(x, nbr, 4, seed=5, stream=0)
    assert (src.steps_per_epoch, src.items_per_step) == (2, 4)  # the last partial batch is dropped
    epoch1 = [tuple(t.clone() for t in b) for b in src.epoch(1, 0, None)]
    for anchors, neighbours in epoch1:
        assert torch.isin((neighbours[:, 0] - anchors[:, 0]) % 10, torch.tensor([1.0, 2.0, 3.0])).all()
    again = list(FeatureBatches(x, nbr, 4, seed=5, stream=0).epoch(1, 1, None))
    assert len(again) == 1 and all(torch.equal(a, b) for a, b in zip(again[0], epoch1[1]))
    other = [b[0] for b in src.epoch(2, 0, None)]
    assert not all(torch.equal(a, b[0]) for a, b in zip(other, epoch1))
    assert len(next(iter(FeatureBatches(x, None, 64, seed=5, stream=1).epoch(0, 0, None)))) == 1  # (items,), all 10


# ----------------------------------------------------------------------------- neighbours and clustering


def test_mined_neighbours_exclude_the_item_and_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 5)).astype(np.float32)
    nb = mine_neighbours(x, 6)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    ref = np.argsort(-sims, axis=1)[:, :6]
    assert nb.shape == (50, 6) and not (nb == np.arange(50)[:, None]).any()
    np.testing.assert_array_equal(np.sort(nb, 1), np.sort(ref, 1))


def blobs(per_class: int = 60, classes: int = 4, dim: int = 8, spread: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.standard_normal((per_class, dim)) for c in np.eye(dim)[:classes]])
    return x.astype(np.float32), np.repeat(np.arange(classes), per_class)


SMALL = ScanConfig(heads=5, epochs=1, min_steps=300, batch_size=64, lr=1e-2, selflabel_epochs=5, selflabel_batch_size=120)


def test_scan_clusters_blobs_deterministically_and_leaves_torch_rng_alone():
    from contrastkit.label import cluster_metrics

    x, y = blobs()
    state = torch.get_rng_state()
    r = scan_cluster(x, 4, SMALL, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert cluster_metrics(y, r.clusters)["cluster_accuracy"] > 0.95
    assert r.proba.shape == (240, 4) and np.allclose(r.proba.sum(1), 1)
    np.testing.assert_array_equal(r.confidence, r.proba.max(1))
    assert len(r.head_losses) == 5 and r.head == int(np.argmin(r.head_losses))
    again = scan_cluster(x, 4, SMALL, seed=3)
    np.testing.assert_array_equal(again.proba, r.proba)


@pytest.mark.parametrize("hidden", [0, 16])
def test_over_clustering(hidden):
    """K = 12 clusters of 4 blobs: every item gets one of 12 clusters, and no cluster mixes two blobs."""
    x, y = blobs(per_class=60)
    r = scan_cluster(x, 12, replace(SMALL, hidden=hidden), seed=0)
    assert r.proba.shape == (240, 12) and r.clusters.max() < 12
    for c in np.unique(r.clusters):
        assert len(np.unique(y[r.clusters == c])) == 1
    assert len(np.unique(r.clusters)) > 4


def test_bad_scan_options():
    x, _ = blobs(per_class=5)
    with pytest.raises(ConfigError, match="between 2 and the number of items"):
        scan_cluster(x, 21, SMALL)
    with pytest.raises(ConfigError, match="heads"):
        scan_cluster(x, 2, replace(SMALL, heads=0))
    with pytest.raises(ConfigError, match="threshold"):
        ScanConfig(threshold=1.5).check()
    with pytest.raises(ConfigError, match="dropout"):
        ScanConfig(feature_dropout=1.0).check()


def test_scan_beats_kmeans_on_fashion_mnist_pixels():
    """On 2 000 real Fashion-MNIST images (raw pixels), SCAN's neighbours give better clusters than k-means.

    Measured: k-means 50.8%, SCAN 59-63% (seeds 0, 1; 500 steps and 20 heads here to keep it to seconds,
    59-60% with the defaults' 2000 steps and 50 heads).
    """
    from contrastkit.data import load_dataset
    from contrastkit.label import cluster_metrics, label_clusters

    data = load_dataset(None)
    x = data.train.images[:2000].reshape(2000, -1).float().numpy()
    y = data.train.labels[:2000].numpy()
    kmeans = cluster_metrics(y, label_clusters(x, 10).clusters)["cluster_accuracy"]
    scan = cluster_metrics(y, scan_cluster(x, 10, ScanConfig(min_steps=500, heads=20), seed=0).clusters)
    assert scan["cluster_accuracy"] > kmeans + 0.05, (scan["cluster_accuracy"], kmeans)


def test_full_data_loss_in_chunks_is_equation_2_over_all_neighbours():
    from contrastkit.scan import full_scan_losses

    torch.manual_seed(0)
    heads = ClusterHeads(4, 3, heads=2)
    x = torch.randn(23, 4)
    nb = torch.randint(23, (23, 5))
    with torch.no_grad():
        logits = heads(x)  # (2, 23, 3)
    ref = [eq2_reference(logits[h].double().numpy(), logits[h][nb].double().numpy(), 5.0) for h in range(2)]
    assert full_scan_losses(heads, x, nb, 5.0, rows=4) == pytest.approx(ref, abs=1e-5)
