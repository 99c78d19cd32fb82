"""Tests of contrastkit.losses against slow references written from the papers.

The references below loop over anchors and pairs in float64 NumPy, straight
from the equations: Hadsell, Chopra, LeCun 2006 Eq. 4; SimCLR (arXiv
2002.05709) Eq. 1 with L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]; SupCon
(arXiv 2004.11362) Eq. 2. The modules get the same numbers in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.losses import (
    NTXentLoss,
    PairwiseMarginLoss,
    SupConLoss,
    contrastive_pair_loss,
    nt_xent_loss,
    pairwise_margin_loss,
    supcon_loss,
)

BATCHES = (1, 2, 3, 8)
DIMS = (2, 16)
TEMPERATURES = (0.1, 0.5, 1.0)
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ----------------------------------------------------------------- references


def ref_hadsell(d: float, similar: bool, margin: float) -> float:
    """Hadsell et al. 2006 Eq. 4 for one pair; the paper's Y is 0 for similar pairs."""
    y = 0.0 if similar else 1.0
    return (1 - y) * 0.5 * d**2 + y * 0.5 * max(0.0, margin - d) ** 2


def ref_distance(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    """Euclidean distance or 1 - cosine similarity of two vectors."""
    if distance == "euclidean":
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    return 1.0 - float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_pairwise(z1: np.ndarray, z2: np.ndarray, margin: float, distance: str) -> float:
    """Mean Eq. 4 loss over positive pairs plus mean over negative pairs, by loops."""
    n = len(z1)
    points = [(z1[i], i) for i in range(n)] + [(z2[i], i) for i in range(n)]
    pos = [ref_hadsell(ref_distance(z1[i], z2[i], distance), True, margin) for i in range(n)]
    neg = []
    for a in range(2 * n):
        for b in range(a + 1, 2 * n):
            (za, ia), (zb, ib) = points[a], points[b]
            if ia != ib:
                neg.append(ref_hadsell(ref_distance(za, zb, distance), False, margin))
    assert len(neg) == 2 * n * (n - 1)
    return sum(pos) / n + (sum(neg) / len(neg) if neg else 0.0)


def ref_cos(a: np.ndarray, b: np.ndarray) -> float:
    """sim(u, v) = u^T v / (||u|| ||v||) of SimCLR."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR Eq. 1 with the paper's ordering: z_{2k-1}, z_{2k} are the views of image k."""
    n = len(z1)
    z = [None] * (2 * n)
    for k in range(n):
        z[2 * k], z[2 * k + 1] = z1[k], z2[k]  # 0-based 2k, 2k+1 = the paper's 2k-1, 2k

    def l(i: int, j: int) -> float:
        num = math.exp(ref_cos(z[i], z[j]) / tau)
        den = sum(math.exp(ref_cos(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(num / den)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def ref_supcon(z: np.ndarray, labels: np.ndarray, tau: float) -> float:
    """SupCon Eq. 2 summed over anchors, divided by the number of anchors with a positive."""
    n, v, _ = z.shape
    items = [(z[i, a] / np.linalg.norm(z[i, a]), labels[i]) for i in range(n) for a in range(v)]
    total, anchors = 0.0, 0
    for i, (zi, yi) in enumerate(items):
        others = [k for k in range(len(items)) if k != i]  # A(i)
        positives = [p for p in others if items[p][1] == yi]  # P(i)
        if not positives:
            continue
        den = sum(math.exp(np.dot(zi, items[a][0]) / tau) for a in others)
        total += -sum(math.log(math.exp(np.dot(zi, items[p][0]) / tau) / den) for p in positives) / len(positives)
        anchors += 1
    return total / anchors if anchors else 0.0


def views(n: int, d: int, seed: int, v: int = 2) -> np.ndarray:
    """Random float64 embeddings of shape (n, v, d)."""
    return np.random.default_rng(seed).normal(size=(n, v, d))


def t32(a: np.ndarray) -> torch.Tensor:
    """float32 tensor of a float64 array."""
    return torch.from_numpy(a).float()


# ----------------------------------------------------- against the references


@pytest.mark.parametrize("margin", (0.5, 1.0, 2.0))
def test_contrastive_pair_loss_matches_eq4(margin: float) -> None:
    rng = np.random.default_rng(0)
    d = rng.uniform(0.0, 3.0, size=20)
    similar = rng.uniform(size=20) < 0.5
    got = contrastive_pair_loss(torch.from_numpy(d), torch.from_numpy(similar), margin)
    want = [ref_hadsell(float(di), bool(si), margin) for di, si in zip(d, similar)]
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, **TOL)


@pytest.mark.parametrize("distance", ("euclidean", "cosine"))
@pytest.mark.parametrize("margin", (0.5, 1.0, 4.0))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", BATCHES)
def test_pairwise_margin_matches_reference(n: int, d: int, margin: float, distance: str) -> None:
    z = views(n, d, seed=n * 100 + d)
    want = ref_pairwise(z[:, 0], z[:, 1], margin, distance)
    got = PairwiseMarginLoss(margin, distance)(t32(z[:, 0]), t32(z[:, 1]))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), want, **TOL)


def test_pairwise_euclidean_is_accurate_far_from_the_origin() -> None:
    # Distances are translation invariant; the loss must stay accurate for a
    # batch centred far from 0 (where |a|^2 + |b|^2 - 2ab would cancel badly).
    z = views(8, 16, seed=11) + 300.0
    want = ref_pairwise(z[:, 0], z[:, 1], 6.0, "euclidean")
    got = pairwise_margin_loss(t32(z[:, 0]), t32(z[:, 1]), 6.0, "euclidean")
    np.testing.assert_allclose(got.item(), want, **TOL)


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", BATCHES)
def test_nt_xent_matches_simclr_eq1(n: int, d: int, tau: float) -> None:
    z = views(n, d, seed=n * 100 + d + 1)
    want = ref_nt_xent(z[:, 0], z[:, 1], tau)
    got = NTXentLoss(tau)(t32(z[:, 0]), t32(z[:, 1]))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), want, **TOL)


@pytest.mark.parametrize("v", (1, 2, 3))
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", BATCHES)
def test_supcon_matches_eq2(n: int, d: int, tau: float, v: int) -> None:
    z = views(n, d, seed=n * 100 + d + 2, v=v)
    labels = np.random.default_rng(n + v).integers(0, 3, size=n)  # shared labels: several positives
    want = ref_supcon(z, labels, tau)
    got = SupConLoss(tau)(t32(z), torch.from_numpy(labels))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), want, **TOL)


@pytest.mark.parametrize("v", (2, 3))
@pytest.mark.parametrize("n", BATCHES)
def test_supcon_without_labels_matches_eq2_with_one_class_per_image(n: int, v: int) -> None:
    z = views(n, 8, seed=n + 7 * v, v=v)
    want = ref_supcon(z, np.arange(n), 0.3)
    np.testing.assert_allclose(supcon_loss(t32(z), None, 0.3).item(), want, **TOL)


# --------------------------------------------------------------- closed forms


def test_contrastive_pair_loss_hand_values() -> None:
    d = torch.tensor([0.0, 1.0, 3.0, 0.0, 0.5, 2.0, 2.5])
    similar = torch.tensor([True, True, True, False, False, False, False])
    # similar: D^2/2; dissimilar with m = 2: (2 - D)^2 / 2 below the margin, else 0
    want = torch.tensor([0.0, 0.5, 4.5, 2.0, 1.125, 0.0, 0.0])
    assert torch.equal(contrastive_pair_loss(d, similar, margin=2.0), want)
    assert torch.equal(contrastive_pair_loss(d, similar.int(), margin=2.0), want)


def test_pairwise_hand_values() -> None:
    # N = 1: one positive at distance 5, no negatives.
    assert pairwise_margin_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])).item() == 12.5
    # N = 2, both views equal: positives cost 0; the 4 cross-image pairs are at
    # distance 1 and cost (2 - 1)^2 / 2 = 0.5 each with margin 2.
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert pairwise_margin_loss(z, z.clone(), margin=2.0).item() == 0.5
    # Cosine: images (0, 1) and (1, 1) are at 1 - cos 45deg = 1 - 1/sqrt(2) < 1.5.
    w = z + torch.tensor([0.0, 1.0])
    want = 0.5 * (1.5 - (1 - 1 / math.sqrt(2))) ** 2
    assert pairwise_margin_loss(w, w.clone(), 1.5, "cosine").item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("distance", ("euclidean", "cosine"))
def test_pairwise_zero_when_positives_coincide_and_negatives_beyond_margin(distance: str) -> None:
    n, margin = 5, 0.9
    z = 3.0 * torch.eye(n, 6)  # euclidean distance 3*sqrt(2) > 0.9, cosine distance 1 > 0.9
    assert pairwise_margin_loss(z, z.clone(), margin, distance).item() == pytest.approx(0.0, abs=1e-7)
    # ... and not 0 once the margin exceeds the negatives' distance.
    assert pairwise_margin_loss(z, z.clone(), 10.0, distance).item() > 1.0


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("n", (1, 2, 5, 16))
def test_nt_xent_closed_form_identical_orthogonal_views(n: int, tau: float) -> None:
    # Every anchor: positive sim 1, the 2N - 2 negatives sim 0, so
    # l = -log(e^{1/t} / (e^{1/t} + 2N - 2)) = log(1 + (2N - 2) e^{-1/t}) for all 2N anchors.
    scale = torch.linspace(0.5, 3.0, n)[:, None]
    z = torch.eye(n, 16) * scale
    want = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert nt_xent_loss(z, z.clone(), tau).item() == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_nt_xent_batch_of_one_is_zero() -> None:
    z1 = torch.randn(1, 4, requires_grad=True)
    loss = nt_xent_loss(z1, torch.randn(1, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z1.grad).all()


# ------------------------------------------------------------------ symmetry


def test_swapping_views_gives_same_loss() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent_loss(z1, z2).item() == pytest.approx(nt_xent_loss(z2, z1).item(), rel=1e-6)
    for distance in ("euclidean", "cosine"):
        a, b = pairwise_margin_loss(z1, z2, 2.0, distance), pairwise_margin_loss(z2, z1, 2.0, distance)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    z = torch.stack([z1, z2], dim=1)
    assert supcon_loss(z, None).item() == pytest.approx(supcon_loss(z.flip(1), None).item(), rel=1e-6)


def test_permuting_the_batch_gives_same_loss() -> None:
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 0])
    p = torch.randperm(7, generator=g)
    assert nt_xent_loss(z1[p], z2[p]).item() == pytest.approx(nt_xent_loss(z1, z2).item(), rel=1e-6)
    for distance in ("euclidean", "cosine"):
        a, b = pairwise_margin_loss(z1[p], z2[p], 2.0, distance), pairwise_margin_loss(z1, z2, 2.0, distance)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    z = torch.stack([z1, z2], dim=1)
    assert supcon_loss(z[p], labels[p]).item() == pytest.approx(supcon_loss(z, labels).item(), rel=1e-6)
    # A permutation that breaks the pairing does change the loss.
    assert nt_xent_loss(z1[p], z2).item() != pytest.approx(nt_xent_loss(z1, z2).item(), rel=1e-3)


def test_scaling_embeddings_does_not_change_nt_xent_or_supcon() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    s1, s2 = torch.rand(5, 1, generator=g) * 10 + 0.1, torch.rand(5, 1, generator=g) * 10 + 0.1
    assert nt_xent_loss(z1 * s1, z2 * s2).item() == pytest.approx(nt_xent_loss(z1, z2).item(), rel=1e-5)
    z, labels = torch.stack([z1, z2], 1), torch.tensor([0, 1, 1, 0, 2])
    scaled = torch.stack([z1 * s1, z2 * s2], 1)
    assert supcon_loss(scaled, labels).item() == pytest.approx(supcon_loss(z, labels).item(), rel=1e-5)


# --------------------------------------------------- SupCon reduces to NT-Xent


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("n", BATCHES)
def test_supcon_without_labels_or_with_distinct_labels_is_nt_xent(n: int, tau: float) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    want = nt_xent_loss(z1, z2, tau).item()
    z = torch.stack([z1, z2], dim=1)  # (N, 2, D)
    assert supcon_loss(z, None, tau).item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    distinct = torch.randperm(100, generator=g)[:n] + 50
    assert supcon_loss(z, distinct, tau).item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    # Shared labels add positives and change the loss.
    if n >= 2:
        assert supcon_loss(z, torch.zeros(n, dtype=torch.long), tau).item() != pytest.approx(want, rel=1e-3)


def test_supcon_without_any_positive_is_zero_with_grad() -> None:
    z = torch.randn(4, 1, 3, requires_grad=True)  # one view each, four different labels
    loss = supcon_loss(z, torch.arange(4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    single = torch.randn(1, 1, 3, requires_grad=True)
    SupConLoss()(single).backward()
    assert torch.equal(single.grad, torch.zeros_like(single))


def test_supcon_anchors_without_positives_contribute_nothing() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 1, 5, generator=g)  # images 0 and 2 share a class, image 1 is alone
    labels = torch.tensor([7, 8, 7])
    zz = torch.nn.functional.normalize(z[:, 0], dim=1)
    logits = zz @ zz.T / 0.1
    # anchor 0: positive 2, candidates {1, 2}; anchor 2: positive 0, candidates {0, 1}
    l0 = -(logits[0, 2] - torch.logsumexp(logits[0, [1, 2]], 0))
    l2 = -(logits[2, 0] - torch.logsumexp(logits[2, [0, 1]], 0))
    assert supcon_loss(z, labels, 0.1).item() == pytest.approx(((l0 + l2) / 2).item(), rel=1e-6)


# ------------------------------------------------------ gradients and dtypes


@pytest.mark.parametrize(
    "loss_fn",
    (
        lambda a, b: nt_xent_loss(a, b),
        lambda a, b: pairwise_margin_loss(a, b, 1.0, "euclidean"),
        lambda a, b: pairwise_margin_loss(a, b, 1.0, "cosine"),
        lambda a, b: supcon_loss(torch.stack([a, b], 1), None),
        lambda a, b: supcon_loss(torch.stack([a, b], 1), torch.tensor([0, 0, 1])),
    ),
    ids=("nt_xent", "pairwise_euclidean", "pairwise_cosine", "supcon", "supcon_labels"),
)
@pytest.mark.parametrize("case", ("random", "views_equal", "all_equal"))
def test_gradients_are_finite(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], case: str) -> None:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(3, 4, generator=g)
    other = {"random": torch.randn(3, 4, generator=g), "views_equal": base, "all_equal": base[:1].expand(3, 4)}[case]
    if case == "all_equal":
        base = other
    z1, z2 = base.clone().requires_grad_(), other.clone().requires_grad_()
    loss = loss_fn(z1, z2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


def test_euclidean_pairwise_gradient_at_coinciding_positives() -> None:
    # Only the positive term is active (negatives far beyond the margin) and it is
    # 0 with gradient 0 where the views coincide: d(D^2/2) = D dD -> 0, not NaN.
    z1 = (5.0 * torch.eye(3, 4)).requires_grad_()
    loss = pairwise_margin_loss(z1, z1.detach().clone(), margin=1.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z1.grad, torch.zeros_like(z1))


def test_bf16_inputs_give_float32_loss() -> None:
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    cases = (
        lambda a, b: nt_xent_loss(a, b, 0.1),
        lambda a, b: pairwise_margin_loss(a, b, 4.0, "euclidean"),
        lambda a, b: pairwise_margin_loss(a, b, 1.0, "cosine"),
        lambda a, b: supcon_loss(torch.stack([a, b], 1), labels, 0.1),
    )
    for fn in cases:
        b1, b2 = z1.bfloat16().requires_grad_(), z2.bfloat16().requires_grad_()
        loss = fn(b1, b2)
        assert loss.dtype == torch.float32
        # Exactly the float32 computation on the bf16-rounded values ...
        assert loss.item() == fn(b1.detach().float(), b2.detach().float()).item()
        # ... and close to the float32 inputs' loss.
        assert loss.item() == pytest.approx(fn(z1, z2).item(), rel=2e-2)
        loss.backward()
        assert b1.grad.dtype == torch.bfloat16 and torch.isfinite(b1.grad.float()).all()


def test_loss_stays_float32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    plain = (nt_xent_loss(z1, z2, 0.05), pairwise_margin_loss(z1, z2, 9.0), supcon_loss(torch.stack([z1, z2], 1), None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (nt_xent_loss(z1, z2, 0.05), pairwise_margin_loss(z1, z2, 9.0), supcon_loss(torch.stack([z1, z2], 1), None))
    for p, a in zip(plain, auto):
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(p.item(), rel=1e-6)  # a bf16 matmul would be off by ~1e-3


def test_float64_inputs_give_float32_loss() -> None:
    z = torch.randn(4, 3, dtype=torch.float64)
    assert nt_xent_loss(z, z + 0.1).dtype == torch.float32


# ------------------------------------------------------ validation and shapes


@pytest.mark.parametrize("bad", (0, 0.0, -0.5, float("nan"), float("inf"), "0.1", True))
def test_temperature_validation_names_valid_range(bad: object) -> None:
    for make in (NTXentLoss, SupConLoss):
        with pytest.raises(ConfigError, match=r"temperature must be a finite number > 0"):
            make(temperature=bad)
    with pytest.raises(ConfigError, match="temperature"):
        nt_xent_loss(torch.ones(2, 2), torch.ones(2, 2), temperature=bad)
    with pytest.raises(ConfigError, match="temperature"):
        supcon_loss(torch.ones(2, 2, 2), None, temperature=bad)


@pytest.mark.parametrize("bad", (0, -1.0, float("nan")))
def test_margin_validation_names_valid_range(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"margin must be a finite number > 0"):
        PairwiseMarginLoss(margin=bad)
    with pytest.raises(ConfigError, match="margin"):
        pairwise_margin_loss(torch.ones(2, 2), torch.ones(2, 2), margin=bad)
    with pytest.raises(ConfigError, match="margin"):
        contrastive_pair_loss(torch.ones(2), torch.ones(2, dtype=torch.bool), margin=bad)


def test_unknown_distance_names_valid_values() -> None:
    with pytest.raises(ConfigError, match=r"distance must be one of 'euclidean', 'cosine', got 'manhattan'"):
        PairwiseMarginLoss(distance="manhattan")
    with pytest.raises(ConfigError, match="'euclidean', 'cosine'"):
        pairwise_margin_loss(torch.ones(2, 2), torch.ones(2, 2), distance="l1")


def test_valid_hyper_parameters_are_kept() -> None:
    assert "margin=2, distance='cosine'" in repr(PairwiseMarginLoss(2, "cosine"))
    assert NTXentLoss().temperature == 0.2 and SupConLoss().temperature == 0.1


def test_wrong_shapes_raise_value_error_naming_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(4, 7\)"):
        nt_xent_loss(torch.ones(4, 8), torch.ones(4, 7))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        PairwiseMarginLoss()(torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        nt_xent_loss(torch.ones(0, 3), torch.ones(0, 3))
    with pytest.raises(ValueError, match=r"\(N, V, D\).*\(4, 8\)"):
        supcon_loss(torch.ones(4, 8), None)
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        supcon_loss(torch.ones(4, 2, 8), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        contrastive_pair_loss(torch.ones(3), torch.ones(2, dtype=torch.bool), 1.0)


def test_losses_run_on_meta_device_without_autocast() -> None:
    # No hard-coded device: tensors stay where they are (meta has no autocast).
    z = torch.empty(3, 4, device="meta")
    assert nt_xent_loss(z, z).device.type == "meta"
    assert pairwise_margin_loss(z, z).device.type == "meta"
    assert supcon_loss(torch.empty(3, 2, 4, device="meta"), torch.empty(3, device="meta")).device.type == "meta"
