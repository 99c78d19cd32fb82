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
    BarlowTwinsLoss,
    BYOLLoss,
    DINOLoss,
    MoCoLoss,
    NNCLRLoss,
    NTXentLoss,
    PairwiseMarginLoss,
    SimSiamLoss,
    SupConLoss,
    VICRegLoss,
    barlow_twins_loss,
    byol_loss,
    contrastive_pair_loss,
    dino_center_update,
    dino_loss,
    moco_loss,
    nearest_neighbours,
    negative_cosine,
    nnclr_loss,
    nt_xent_loss,
    pairwise_margin_loss,
    simsiam_loss,
    supcon_loss,
    vicreg_loss,
    vicreg_terms,
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


def _gradient_case_views(case: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (3, 4) views that require grad: random, equal to each other, or all rows equal (degenerate cases)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(3, 4, generator=g)
    other = {"random": torch.randn(3, 4, generator=g), "views_equal": base, "all_equal": base[:1].expand(3, 4)}[case]
    if case == "all_equal":
        base = other
    return base.clone().requires_grad_(), other.clone().requires_grad_()


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
    z1, z2 = _gradient_case_views(case, seed=5)
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


# ============================================ non-contrastive and queue losses
# References from: Barlow Twins (arXiv 2103.03230) Eqs. 1-2; VICReg (arXiv
# 2105.04906) Eqs. 1-6 / Algorithm 1; SimSiam (arXiv 2011.10566) Eqs. 1, 4;
# BYOL (arXiv 2006.07733) Eq. 2 + symmetric term; MoCo (arXiv 1911.05722)
# Eq. 1; NNCLR (arXiv 2104.14548) Eqs. 1-2.

TWO_PLUS = (2, 3, 8)


def ref_barlow(z1: np.ndarray, z2: np.ndarray, lam: float) -> float:
    """Eq. 2 cross-correlation of batch-centred outputs, Eq. 1 loss, by loops."""
    n, d = z1.shape
    a, b = z1 - z1.mean(axis=0), z2 - z2.mean(axis=0)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            num = sum(a[k, i] * b[k, j] for k in range(n))
            c = num / (math.sqrt(sum(a[k, i] ** 2 for k in range(n))) * math.sqrt(sum(b[k, j] ** 2 for k in range(n))))
            loss += (1 - c) ** 2 if i == j else lam * c**2
    return loss


def ref_vicreg(z1: np.ndarray, z2: np.ndarray, lam: float, mu: float, nu: float, gamma: float = 1.0, eps: float = 1e-4) -> tuple[float, float, float, float]:
    """Algorithm 1 of VICReg by loops: (loss, invariance, variance, covariance)."""
    n, d = z1.shape
    inv = sum((z1[k, j] - z2[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        mean = [sum(z[k, j] for k in range(n)) / n for j in range(d)]
        c = [[sum((z[k, i] - mean[i]) * (z[k, j] - mean[j]) for k in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
        var += sum(max(0.0, gamma - math.sqrt(c[j][j] + eps)) for j in range(d)) / d
        cov += sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return lam * inv + mu * var + nu * cov, inv, var, cov


def ref_simsiam(p1: np.ndarray, p2: np.ndarray, z1: np.ndarray, z2: np.ndarray) -> float:
    """Eq. 4: 1/2 D(p1, z2) + 1/2 D(p2, z1), D = -cos, averaged over the batch."""
    n = len(p1)
    d12 = sum(-ref_cos(p1[i], z2[i]) for i in range(n)) / n
    d21 = sum(-ref_cos(p2[i], z1[i]) for i in range(n)) / n
    return 0.5 * d12 + 0.5 * d21


def ref_byol(p1: np.ndarray, p2: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> float:
    """Eq. 2 ||q/|q| - z'/|z'| ||^2 averaged over the batch, plus the swapped term."""
    n = len(p1)

    def l(q: np.ndarray, z: np.ndarray) -> float:
        return sum(float(np.sum((q[i] / np.linalg.norm(q[i]) - z[i] / np.linalg.norm(z[i])) ** 2)) for i in range(n)) / n

    return l(p1, t2) + l(p2, t1)


def ref_moco(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float) -> float:
    """MoCo Eq. 1 for each query with its key and the K queued negatives, mean over queries."""
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(float(np.dot(unit(q[i]), unit(k[i]))) / tau)
        neg = sum(math.exp(float(np.dot(unit(q[i]), unit(kn))) / tau) for kn in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def ref_nnclr(z1: np.ndarray, z2: np.ndarray, p1: np.ndarray, p2: np.ndarray, support: np.ndarray, tau: float) -> float:
    """NNCLR Eq. 1 (NN by cosine) and Eq. 2 with predictions, averaged over both directions."""
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731

    def nn(v: np.ndarray) -> np.ndarray:
        return unit(max(support, key=lambda s: ref_cos(v, s)))

    def one_way(z: np.ndarray, p: np.ndarray) -> float:
        n = len(z)
        total = 0.0
        for i in range(n):
            q = nn(z[i])
            num = math.exp(float(np.dot(q, unit(p[i]))) / tau)
            den = sum(math.exp(float(np.dot(q, unit(p[k]))) / tau) for k in range(n))
            total += -math.log(num / den)
        return total / n

    return 0.5 * (one_way(z1, p2) + one_way(z2, p1))


@pytest.mark.parametrize("lam", (0.0, 5e-3, 0.1))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", TWO_PLUS)
def test_barlow_twins_matches_eqs_1_2(n: int, d: int, lam: float) -> None:
    z = views(n, d, seed=n * 100 + d + 20)
    got = BarlowTwinsLoss(lam)(t32(z[:, 0]), t32(z[:, 1]))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), ref_barlow(z[:, 0], z[:, 1], lam), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights", ((25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", TWO_PLUS)
def test_vicreg_matches_algorithm_1(n: int, d: int, weights: tuple[float, float, float]) -> None:
    z = views(n, d, seed=n * 100 + d + 21) * 0.7  # std below gamma = 1: the hinge is active
    want, *want_terms = ref_vicreg(z[:, 0], z[:, 1], *weights)
    got = VICRegLoss(*weights)(t32(z[:, 0]), t32(z[:, 1]))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), want, rtol=1e-5, atol=1e-5)
    terms = vicreg_terms(t32(z[:, 0]), t32(z[:, 1]))
    np.testing.assert_allclose([t.item() for t in terms], want_terms, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", BATCHES)
def test_simsiam_and_byol_match_the_papers(n: int, d: int) -> None:
    rng = np.random.default_rng(n * 100 + d + 22)
    p1, p2, z1, z2 = (rng.normal(size=(n, d)) for _ in range(4))
    got = SimSiamLoss()(t32(p1), t32(p2), t32(z1), t32(z2))
    np.testing.assert_allclose(got.item(), ref_simsiam(p1, p2, z1, z2), **TOL)
    got = BYOLLoss()(t32(p1), t32(p2), t32(z1), t32(z2))
    np.testing.assert_allclose(got.item(), ref_byol(p1, p2, z1, z2), **TOL)


@pytest.mark.parametrize("k", (1, 5, 32))
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", BATCHES)
def test_moco_matches_eq1(n: int, d: int, tau: float, k: int) -> None:
    rng = np.random.default_rng(n * 1000 + d * 10 + k)
    q, key, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(k, d))
    got = MoCoLoss(tau)(t32(q), t32(key), t32(queue))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), ref_moco(q, key, queue, tau), **TOL)


@pytest.mark.parametrize("k", (1, 7, 32))
@pytest.mark.parametrize("tau", (0.1, 0.5))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", BATCHES)
def test_nnclr_matches_eq2(n: int, d: int, tau: float, k: int) -> None:
    rng = np.random.default_rng(n * 1000 + d * 10 + k + 1)
    z1, z2, p1, p2 = (rng.normal(size=(n, d)) for _ in range(4))
    support = rng.normal(size=(k, d))
    got = NNCLRLoss(tau)(t32(z1), t32(z2), t32(p1), t32(p2), t32(support))
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), ref_nnclr(z1, z2, p1, p2, support, tau), **TOL)


# ------------------------------------------------------------ closed forms


@pytest.mark.parametrize("lam", (5e-3, 1.0))
def test_barlow_twins_is_zero_when_cross_correlation_is_identity(lam: float) -> None:
    # Columns of a scaled Hadamard matrix: zero mean over the batch (the all-ones
    # column is dropped), mutually orthogonal, so C = I for identical views, and
    # for views that differ by a per-dimension positive scale and shift.
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])  # (8, 8) Sylvester Hadamard
    z = h[:, 1:]  # (8, 7)
    assert barlow_twins_loss(z, z.clone(), lam).item() == pytest.approx(0.0, abs=1e-6)
    scaled = z * torch.linspace(0.5, 4.0, 7) + 3.0
    assert barlow_twins_loss(z, scaled, lam).item() == pytest.approx(0.0, abs=1e-6)
    # Swapping two dimensions of one view: C_00 = C_11 = 0, C_01 = C_10 = 1.
    swapped = z[:, [1, 0, 2, 3, 4, 5, 6]]
    assert barlow_twins_loss(z, swapped, lam).item() == pytest.approx(2.0 + 2.0 * lam, rel=1e-5)
    # Anti-correlated views: C = -I, every diagonal entry costs (1 - (-1))^2 = 4.
    assert barlow_twins_loss(z, -z, lam).item() == pytest.approx(4.0 * 7, rel=1e-5)


def test_barlow_twins_constant_dimension_costs_one_not_nan() -> None:
    z = torch.randn(6, 4)
    z[:, 2] = 5.0  # collapsed dimension
    zz = z.clone().requires_grad_()
    loss = barlow_twins_loss(zz, z.clone(), 0.0)
    loss.backward()
    # the three live dimensions are perfectly correlated with themselves
    assert loss.item() == pytest.approx(1.0, abs=1e-5)
    assert torch.isfinite(zz.grad).all()


def test_vicreg_closed_forms() -> None:
    g = torch.Generator().manual_seed(8)
    z = torch.randn(16, 6, generator=g) * 3.0
    inv, _, _ = vicreg_terms(z, z.clone())
    assert inv.item() == 0.0  # identical views: no invariance cost
    # Hadamard columns scaled by 2: std 2 * sqrt(8/7) > 1 (no variance cost), covariance 0.
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    w = 2.0 * h[:, 1:]
    inv, var, cov = vicreg_terms(w, w.clone())
    assert (inv.item(), var.item()) == (0.0, 0.0)
    assert cov.item() == pytest.approx(0.0, abs=1e-10)
    # Collapsed batch: every std is sqrt(eps) = 0.01, so v = 1 - 0.01 per view.
    c = torch.ones(8, 5)
    inv, var, cov = vicreg_terms(c, c.clone())
    assert var.item() == pytest.approx(2 * 0.99, rel=1e-6) and cov.item() == 0.0
    assert vicreg_loss(c, c.clone()).item() == pytest.approx(25 * 2 * 0.99, rel=1e-6)


def test_simsiam_of_identical_directions_is_minus_one_and_byol_zero() -> None:
    g = torch.Generator().manual_seed(9)
    z = torch.randn(5, 8, generator=g)
    scale = torch.rand(5, 1, generator=g) + 0.5
    assert negative_cosine(z * scale, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(z, z * scale, z * scale, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert byol_loss(z, z * scale, z * scale, z).item() == pytest.approx(0.0, abs=1e-6)
    # Opposite directions: D = 1, and BYOL's 2 - 2cos = 4 per term.
    assert simsiam_loss(z, z, -z, -z).item() == pytest.approx(1.0, abs=1e-6)
    assert byol_loss(z, z, -z, -z).item() == pytest.approx(8.0, abs=1e-5)


def test_moco_closed_form_orthogonal_queue() -> None:
    # q = k (similarity 1) and K queued keys orthogonal to q (similarity 0):
    # L = -log(e^{1/t} / (e^{1/t} + K)) = log(1 + K e^{-1/t}).
    q = torch.eye(3, 10)
    queue = torch.eye(10)[3:]  # 7 keys orthogonal to every query
    for tau in TEMPERATURES:
        want = math.log(1 + 7 * math.exp(-1 / tau))
        assert moco_loss(q, q.clone(), queue, tau).item() == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_nearest_neighbours_picks_the_most_similar_support_row() -> None:
    support = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.1]])
    z = torch.tensor([[5.0, 1.0], [0.1, 1.0], [-1.0, 0.0]])
    got = nearest_neighbours(z, support)
    want = torch.nn.functional.normalize(support[[0, 1, 2]], dim=1)
    assert torch.equal(got, want)
    # NNCLR with a support set holding each z and predictions equal to z: the
    # closed form of an orthogonal batch is log(1 + (N - 1) e^{-1/t}).
    e = torch.eye(4, 6)
    want_loss = math.log(1 + 3 * math.exp(-1 / 0.1))
    assert nnclr_loss(e, e, e, e, e, 0.1).item() == pytest.approx(want_loss, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------ symmetry and grads


def test_new_symmetric_losses_do_not_depend_on_view_order() -> None:
    g = torch.Generator().manual_seed(10)
    z1, z2, p1, p2 = (torch.randn(6, 5, generator=g) for _ in range(4))
    support = torch.randn(9, 5, generator=g)
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(barlow_twins_loss(z2, z1).item(), rel=1e-5)
    assert vicreg_loss(z1, z2).item() == pytest.approx(vicreg_loss(z2, z1).item(), rel=1e-6)
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(simsiam_loss(p2, p1, z2, z1).item(), rel=1e-6)
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(byol_loss(p2, p1, z2, z1).item(), rel=1e-6)
    a, b = nnclr_loss(z1, z2, p1, p2, support), nnclr_loss(z2, z1, p2, p1, support)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # ... while pairing matters.
    assert barlow_twins_loss(z1, z2).item() != pytest.approx(barlow_twins_loss(z1, z2[torch.randperm(6, generator=g)]).item(), rel=1e-3)


def test_stop_gradient_targets_get_no_gradient() -> None:
    g = torch.Generator().manual_seed(11)
    p1, p2, z1, z2 = (torch.randn(4, 3, generator=g).requires_grad_() for _ in range(4))
    for fn in (simsiam_loss, byol_loss):
        for t in (p1, p2, z1, z2):
            t.grad = None
        fn(p1, p2, z1, z2).backward()
        assert z1.grad is None and z2.grad is None
        assert p1.grad is not None and p2.grad is not None
    q, k, queue = (torch.randn(4, 3, generator=g).requires_grad_() for _ in range(3))
    moco_loss(q, k, queue).backward()
    assert k.grad is None and queue.grad is None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize(
    "loss_fn",
    (
        lambda a, b: barlow_twins_loss(a, b),
        lambda a, b: vicreg_loss(a, b),
        lambda a, b: simsiam_loss(a, b, b, a),
        lambda a, b: byol_loss(a, b, b, a),
        lambda a, b: moco_loss(a, b, torch.randn(5, 4)),
        lambda a, b: nnclr_loss(a, b, b, a, torch.randn(5, 4)),
    ),
    ids=("barlow", "vicreg", "simsiam", "byol", "moco", "nnclr"),
)
@pytest.mark.parametrize("case", ("random", "views_equal", "all_equal"))
def test_new_loss_gradients_are_finite(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], case: str) -> None:
    z1, z2 = _gradient_case_views(case, seed=12)
    loss = loss_fn(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()


def test_new_losses_stay_float32_under_bf16() -> None:
    g = torch.Generator().manual_seed(13)
    z1, z2, queue = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g), torch.randn(40, 32, generator=g)
    fns = (
        lambda a, b: barlow_twins_loss(a, b, 0.01),
        lambda a, b: vicreg_loss(a, b),
        lambda a, b: simsiam_loss(a, b, b, a),
        lambda a, b: byol_loss(a, b, b, a),
        lambda a, b: moco_loss(a, b, queue, 0.2),
        lambda a, b: nnclr_loss(a, b, b, a, queue, 0.1),
    )
    for fn in fns:
        plain = fn(z1, z2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = fn(z1, z2)
        assert auto.dtype == torch.float32
        assert auto.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
        b1, b2 = z1.bfloat16(), z2.bfloat16()
        got = fn(b1, b2)
        assert got.dtype == torch.float32 and got.item() == fn(b1.float(), b2.float()).item()


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", (-1e-3, float("nan"), float("inf"), "0.1", True))
def test_new_hyper_parameters_are_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"barlow lambda must be a finite number >= 0"):
        BarlowTwinsLoss(bad)
    for name in ("sim_weight", "var_weight", "cov_weight"):
        with pytest.raises(ConfigError, match=rf"{name} must be a finite number >= 0"):
            VICRegLoss(**{name: bad})
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        MoCoLoss(bad)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        NNCLRLoss(bad)
    with pytest.raises(ConfigError, match="must not all be 0"):
        VICRegLoss(0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="gamma must be a finite number > 0"):
        VICRegLoss(gamma=0.0)


def test_new_losses_refuse_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"N >= 2.*\(1, 4\)"):
        barlow_twins_loss(torch.ones(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"N >= 2.*\(1, 4\)"):
        vicreg_loss(torch.ones(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"queue must have shape \(K, 4\).*\(3, 5\)"):
        moco_loss(torch.ones(2, 4), torch.ones(2, 4), torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"support must have shape \(K, 4\).*\(0, 4\)"):
        nnclr_loss(torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4), torch.ones(0, 4))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        simsiam_loss(torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 5), torch.ones(3, 5))


# ------------------------------------------------------------------- DINO


def ref_dino(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, tau_s: float, tau_t: float) -> float:
    """DINO (arXiv 2104.14294) Algorithm 1 with multi-crop (Eq. 3), by loops over view pairs, samples and prototypes.

    H(t, s) = -sum_k t_k log s_k with t = softmax((t_g - c) / tau_t) of a
    global view g, s = softmax(s_v / tau_s) of any other view v; mean over
    the batch, then over the pairs g != v.
    """
    n_teacher, n_views = len(teacher), len(student)
    n, k = student.shape[1], student.shape[2]

    def log_softmax(x: np.ndarray) -> list[float]:
        top = max(x)
        log_z = top + math.log(sum(math.exp(xi - top) for xi in x))
        return [xi - log_z for xi in x]

    total, terms = 0.0, 0
    for g in range(n_teacher):
        for v in range(n_views):
            if v == g:
                continue  # Algorithm 1: H(t1, s2)/2 + H(t2, s1)/2, never a view against itself
            h = 0.0
            for i in range(n):
                t = [math.exp(x) for x in log_softmax((teacher[g, i] - center) / tau_t)]
                log_s = log_softmax(student[v, i] / tau_s)
                h += -sum(t[j] * log_s[j] for j in range(k))
            total += h / n
            terms += 1
    return total / terms


@pytest.mark.parametrize("temps", ((0.1, 0.04), (0.2, 0.07), (1.0, 1.0)))
@pytest.mark.parametrize("local", (0, 1, 4))
@pytest.mark.parametrize("k", (3, 64))
@pytest.mark.parametrize("n", (1, 3, 8))
def test_dino_matches_algorithm_1(n: int, k: int, local: int, temps: tuple[float, float]) -> None:
    rng = np.random.default_rng(n * 1000 + k * 10 + local)
    student = rng.uniform(-1, 1, size=(2 + local, n, k))  # the head's logits are cosines
    teacher = rng.uniform(-1, 1, size=(2, n, k))
    center = rng.normal(scale=0.3, size=k)
    got = dino_loss(t32(student), t32(teacher), t32(center), *temps)
    assert got.dtype == torch.float32 and got.ndim == 0
    np.testing.assert_allclose(got.item(), ref_dino(student, teacher, center, *temps), rtol=1e-5, atol=1e-5)
    module = DINOLoss(k, *temps)
    with torch.no_grad():
        module.center.copy_(t32(center))
    np.testing.assert_allclose(module(t32(student), t32(teacher)).item(), got.item(), rtol=1e-6)


def test_dino_one_teacher_view_and_more_teacher_than_global_pairs() -> None:
    # G = 1: only the pairs (0, v), v >= 1, as in the reference.
    rng = np.random.default_rng(30)
    student, teacher, center = rng.uniform(-1, 1, (3, 4, 5)), rng.uniform(-1, 1, (1, 4, 5)), np.zeros(5)
    got = dino_loss(t32(student), t32(teacher), t32(center), 0.1, 0.05)
    np.testing.assert_allclose(got.item(), ref_dino(student, teacher, center, 0.1, 0.05), rtol=1e-5)


@pytest.mark.parametrize("temps", ((0.1, 0.04), (0.5, 0.2)))
def test_dino_equals_teacher_entropy_when_the_student_matches_it(temps: tuple[float, float]) -> None:
    tau_s, tau_t = temps
    g = torch.Generator().manual_seed(31)
    t = torch.rand(5, 16, generator=g) * 2 - 1  # (N, K), the same for both global views
    center = torch.randn(16, generator=g) * 0.2
    teacher = torch.stack([t, t])  # (2, N, K)
    student = ((t - center) * tau_s / tau_t).expand(4, 5, 16)  # every view: s / tau_s = (t - c) / tau_t
    p = torch.softmax((t - center) / tau_t, dim=1)
    entropy = -(p * p.log()).sum(1).mean()
    assert dino_loss(student, teacher, center, tau_s, tau_t).item() == pytest.approx(entropy.item(), rel=1e-5)
    # Any other student costs more (Gibbs' inequality).
    other = student + torch.randn(4, 5, 16, generator=g)
    assert dino_loss(other, teacher, center, tau_s, tau_t).item() > entropy.item() + 1e-3


@pytest.mark.parametrize("k", (1, 7, 1024))
def test_dino_uniform_teacher_and_student_give_log_k(k: int) -> None:
    center = torch.full((k,), 0.3)
    teacher = torch.full((2, 3, k), 0.3)  # equal to the centre: uniform after centring
    student = torch.full((5, 3, k), -0.7)
    # rel 1e-4: the float32 matmul sums N K equal terms
    assert dino_loss(student, teacher, center).item() == pytest.approx(math.log(k), rel=1e-4, abs=1e-6)
    # A uniform teacher against a peaked student costs more than log K (for K > 1).
    peaked = student.clone()
    peaked[..., 0] = 1.0
    assert dino_loss(peaked, teacher, center).item() >= math.log(k) - 1e-6
    if k > 1:
        assert dino_loss(peaked, teacher, center).item() > math.log(k) + 1e-3


def test_dino_is_symmetric_in_the_global_views_and_in_the_local_views() -> None:
    g = torch.Generator().manual_seed(32)
    student, teacher, center = torch.randn(5, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g), torch.randn(8, generator=g)
    base = dino_loss(student, teacher, center).item()
    swapped = dino_loss(student[[1, 0, 2, 3, 4]], teacher[[1, 0]], center).item()
    shuffled = dino_loss(student[[0, 1, 4, 2, 3]], teacher, center).item()
    assert swapped == pytest.approx(base, rel=1e-6) and shuffled == pytest.approx(base, rel=1e-6)
    # ... while which student view goes with which teacher view matters.
    assert dino_loss(student[[1, 0, 2, 3, 4]], teacher, center).item() != pytest.approx(base, rel=1e-4)


@pytest.mark.parametrize("momentum", (0.0, 0.5, 0.9))
def test_dino_center_update_is_the_ema_of_the_teacher_batch_mean(momentum: float) -> None:
    rng = np.random.default_rng(33)
    center, teacher = rng.normal(size=6), rng.normal(size=(2, 5, 6))
    want = momentum * center + (1 - momentum) * teacher.reshape(-1, 6).mean(0)
    got = dino_center_update(t32(center), t32(teacher), momentum)
    assert got.dtype == torch.float32 and got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # The module: the loss uses the old centre, then the centre moves (training mode only).
    module = DINOLoss(6, center_momentum=momentum)
    with torch.no_grad():
        module.center.copy_(t32(center))
    student = t32(rng.normal(size=(3, 5, 6)))
    loss = module(student, t32(teacher))
    assert loss.item() == pytest.approx(dino_loss(student, t32(teacher), t32(center)).item(), rel=1e-6)
    np.testing.assert_allclose(module.center.numpy(), want, rtol=1e-5, atol=1e-6)
    module.eval()
    module(student, t32(teacher))
    np.testing.assert_allclose(module.center.numpy(), want, rtol=1e-5, atol=1e-6)


def test_dino_center_is_a_buffer_starting_at_zero() -> None:
    module = DINOLoss(10)
    assert "center" in dict(module.named_buffers()) and "center" in module.state_dict()
    assert not list(module.parameters()) and torch.equal(module.center, torch.zeros(10))


def test_dino_gradients_reach_the_student_only() -> None:
    g = torch.Generator().manual_seed(34)
    student = torch.randn(4, 3, 8, generator=g).requires_grad_()
    teacher = torch.randn(2, 3, 8, generator=g).requires_grad_()
    center = torch.randn(8, generator=g).requires_grad_()
    dino_loss(student, teacher, center).backward()
    assert teacher.grad is None and center.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    module = DINOLoss(8)
    module(student, teacher)  # the in-place centre update must not break backward
    module(student, teacher).backward()
    assert teacher.grad is None


def test_dino_stays_float32_under_bf16() -> None:
    g = torch.Generator().manual_seed(35)
    student, teacher, center = torch.randn(6, 16, 32, generator=g), torch.randn(2, 16, 32, generator=g), torch.randn(32, generator=g)
    plain = dino_loss(student, teacher, center)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = dino_loss(student, teacher, center)
    assert auto.dtype == torch.float32 and auto.item() == pytest.approx(plain.item(), rel=1e-5)
    got = dino_loss(student.bfloat16(), teacher.bfloat16(), center)
    assert got.dtype == torch.float32
    assert got.item() == dino_loss(student.bfloat16().float(), teacher.bfloat16().float(), center).item()


@pytest.mark.parametrize("bad", (0.0, -1e-3, float("nan"), float("inf"), "0.1", True))
def test_dino_hyper_parameters_are_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match="student_temp must be a finite number > 0"):
        DINOLoss(4, student_temp=bad)
    with pytest.raises(ConfigError, match="teacher_temp must be a finite number > 0"):
        DINOLoss(4, teacher_temp=bad)
    with pytest.raises(ConfigError, match="teacher_temp must be a finite number > 0"):
        dino_loss(torch.ones(2, 1, 4), torch.ones(2, 1, 4), torch.zeros(4), 0.1, bad)
    with pytest.raises(ConfigError, match=r"center momentum must be a number in \[0, 1\)"):
        DINOLoss(4, center_momentum=1.0 if bad == 0.0 else bad)
    with pytest.raises(ConfigError, match="out_dim must be a positive integer"):
        DINOLoss(0)


def test_dino_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"student must have shape \(V, N, K\).*\(2, 3, 4\).*\(2, 3, 5\)"):
        dino_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 5), torch.zeros(4))
    with pytest.raises(ValueError, match=r"V >= 2.*\(1, 3, 4\)"):
        dino_loss(torch.ones(1, 3, 4), torch.ones(1, 3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"1 <= G <= V.*\(3, 3, 4\)"):
        dino_loss(torch.ones(2, 3, 4), torch.ones(3, 3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"center must have shape \(4,\)"):
        dino_loss(torch.ones(2, 3, 4), torch.ones(2, 3, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="center must be"):
        dino_center_update(torch.zeros(4), torch.ones(2, 3, 5))
