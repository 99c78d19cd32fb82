"""Contrastive losses: pure functions plus thin ``nn.Module`` wrappers.

Each loss is a function of whole batches with no global state, so that a
distributed caller can gather embeddings from every rank first and pass the
gathered batch in. Every loss computes in float32 whatever the input dtype
and with autocast disabled inside, so a model run under bf16 autocast still
gets a stable float32 loss; the tensors stay on the device they arrive on.

The modules check their hyper-parameters in ``__init__`` and raise
:class:`~contrastkit.errors.ConfigError` naming the valid range; the functions
check them too, so a direct call with ``temperature=0`` fails the same way.
Wrong input shapes raise ``ValueError`` naming the shapes.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.errors import ConfigError

DISTANCES = ("euclidean", "cosine")
"""Valid values of the ``distance`` option of the pairwise margin loss."""


def _check_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a finite real number > 0.

    Args:
        name: Option name, used in the message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _check_distance(distance: str) -> None:
    """Raise ConfigError unless ``distance`` is one of :data:`DISTANCES`.

    Args:
        distance: The distance name to check.
    """
    if distance not in DISTANCES:
        valid = ", ".join(repr(d) for d in DISTANCES)
        raise ConfigError(f"distance must be one of {valid}, got {distance!r}")


def _check_views(z1: Tensor, z2: Tensor) -> None:
    """Raise ValueError unless z1 and z2 are two (N, D) batches of one shape, N, D >= 1.

    Args:
        z1: Embeddings of the first views.
        z2: Embeddings of the second views.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both have shape (N, D), got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}"
        )
    if z1.shape[0] == 0 or z1.shape[1] == 0:
        raise ValueError(f"z1 and z2 must hold at least one embedding of dimension >= 1, got {tuple(z1.shape)}")


def _float32_region(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """A context in which autocast is off on ``device``, so matmuls stay float32.

    Args:
        device: Device the loss runs on.

    Returns:
        ``torch.autocast(..., enabled=False)``, or a no-op context for device
        types autocast does not know (for example ``meta``).
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def _safe_sqrt(squared: Tensor) -> Tensor:
    """Square root whose gradient at 0 is 0 instead of inf/NaN.

    Args:
        squared: Non-negative values (tiny negatives from rounding count as 0).

    Returns:
        ``sqrt(max(squared, 0))`` with a finite gradient everywhere.
    """
    positive = squared > 0
    # sqrt only ever sees positive numbers, so its backward never divides by 0.
    return torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), 0.0)


def contrastive_pair_loss(distance: Tensor, similar: Tensor, margin: float) -> Tensor:
    """Per-pair contrastive loss of Hadsell, Chopra and LeCun (2006), Eq. 4.

    "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006,
    Eq. 4: ``L = (1 - Y) 1/2 D^2 + Y 1/2 max(0, m - D)^2``. Similar pairs
    (Y = 0 in the paper) cost ``1/2 D^2``; dissimilar pairs (Y = 1) cost
    ``1/2 max(0, m - D)^2``, so they stop costing once farther than the margin.

    Args:
        distance: Distances D between the two members of each pair, any shape.
        similar: Same shape as ``distance``; True (or 1) where the pair is
            similar, False (or 0) where it is dissimilar.
        margin: The margin m > 0.

    Returns:
        Per-pair losses in float32, same shape as ``distance``.

    Raises:
        ConfigError: If ``margin`` is not a finite number > 0.
        ValueError: If ``distance`` and ``similar`` differ in shape.
    """
    _check_positive("margin", margin)
    if distance.shape != similar.shape:
        raise ValueError(
            f"distance and similar must have the same shape, got {tuple(distance.shape)} and {tuple(similar.shape)}"
        )
    with _float32_region(distance.device):
        d = distance.float()
        pull = 0.5 * d.pow(2)
        push = 0.5 * F.relu(margin - d).pow(2)
        return torch.where(similar.bool(), pull, push)


def _pair_distances(z1: Tensor, z2: Tensor, distance: str) -> tuple[Tensor, Tensor]:
    """Distances of the positive pairs and of all 2N x 2N embedding pairs.

    Args:
        z1: First views, shape (N, D), float32.
        z2: Second views, shape (N, D), float32.
        distance: ``"euclidean"`` or ``"cosine"``.

    Returns:
        ``(positive, all_pairs)``: shape (N,) distances d(z1[i], z2[i]) and the
        (2N, 2N) matrix of distances between rows of ``cat([z1, z2])``.
    """
    z = torch.cat([z1, z2])  # (2N, D)
    if distance == "euclidean":
        positive = _safe_sqrt((z1 - z2).pow(2).sum(dim=1))  # (N,), exact: no Gram cancellation
        # Centre first: distances do not change and the Gram form below
        # loses less precision when the batch sits far from the origin.
        zc = z - z.mean(dim=0, keepdim=True)
        sq_norm = zc.pow(2).sum(dim=1)  # (2N,)
        squared = sq_norm[:, None] + sq_norm[None, :] - 2.0 * (zc @ zc.T)  # (2N, 2N)
        return positive, _safe_sqrt(squared)
    n1, n2, zn = F.normalize(z1, dim=1), F.normalize(z2, dim=1), F.normalize(z, dim=1)
    positive = 1.0 - (n1 * n2).sum(dim=1)  # (N,)
    return positive, 1.0 - zn @ zn.T  # (2N, 2N)


def pairwise_margin_loss(z1: Tensor, z2: Tensor, margin: float = 1.0, distance: str = "euclidean") -> Tensor:
    """Batch form of the Hadsell et al. (2006) Eq. 4 loss used by the ``pairwise`` method.

    ``z1[i]`` and ``z2[i]`` are two views of image i: the N pairs
    ``(z1[i], z2[i])`` are the similar pairs. The dissimilar pairs are every
    unordered pair of embeddings of different images among the 2N embeddings
    of both views: ``2N(N - 1)`` pairs. The loss is the mean over the similar
    pairs plus the mean over the dissimilar pairs: the two terms are averaged
    separately so that the N positives are not swamped by the ~2N^2
    negatives. With N = 1 there are no negatives and that term is 0.

    Distances: ``"euclidean"`` is ``||a - b||_2``, with a gradient of 0 (not
    NaN) where two embeddings coincide; ``"cosine"`` is ``1 - cos(a, b)``, in
    [0, 2] up to rounding.

    Args:
        z1: Embeddings of the first views, shape (N, D).
        z2: Embeddings of the second views, shape (N, D).
        margin: Margin m > 0 beyond which dissimilar pairs cost nothing.
        distance: ``"euclidean"`` or ``"cosine"``.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``margin`` is not > 0 or ``distance`` is unknown.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape.
    """
    _check_positive("margin", margin)
    _check_distance(distance)
    _check_views(z1, z2)
    n = z1.shape[0]
    with _float32_region(z1.device):
        positive, all_pairs = _pair_distances(z1.float(), z2.float(), distance)
        image = torch.arange(n, device=z1.device).repeat(2)  # (2N,) image index of each row
        upper = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=z1.device).triu(diagonal=1)
        negative = upper & (image[:, None] != image[None, :])  # (2N, 2N), 2N(N-1) True
        pull = contrastive_pair_loss(positive, torch.ones_like(positive, dtype=torch.bool), margin)  # (N,)
        push = contrastive_pair_loss(all_pairs, torch.zeros_like(negative), margin)  # (2N, 2N)
        # A masked sum, not boolean indexing: no data-dependent shapes.
        push_sum = torch.where(negative, push, 0.0).sum()
        return pull.mean() + push_sum / max(2 * n * (n - 1), 1)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent (InfoNCE) loss of SimCLR: Chen et al. (2020), arXiv 2002.05709, Eq. 1.

    The 2N embeddings are L2-normalised and compared by cosine similarity.
    For anchor i with positive j (the other view of the same image),
    ``l(i, j) = -log exp(sim(i, j)/t) / sum_{k != i} exp(sim(i, k)/t)``: the
    other 2N - 2 embeddings are the negatives. The loss is
    ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``, the mean over all 2N
    anchors. With N = 1 the only candidate of each anchor is its positive,
    so the loss is 0.

    Args:
        z1: Embeddings of the first views, shape (N, D).
        z2: Embeddings of the second views, shape (N, D).
        temperature: Temperature t > 0 dividing the similarities.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape.
    """
    _check_positive("temperature", temperature)
    _check_views(z1, z2)
    n = z1.shape[0]
    with _float32_region(z1.device):
        z = F.normalize(torch.cat([z1.float(), z2.float()]), dim=1)  # (2N, D)
        logits = (z @ z.T) / temperature  # (2N, 2N)
        self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        # The most negative finite float: exp underflows to exactly 0, no inf - inf.
        logits = logits.masked_fill(self_pair, torch.finfo(logits.dtype).min)
        index = torch.arange(n, device=z.device)
        target = torch.cat([index + n, index])  # (2N,) row of the other view
        return F.cross_entropy(logits, target)


def supcon_loss(z: Tensor, labels: Tensor | None, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss L^sup_out of Khosla et al. (2020), arXiv 2004.11362, Eq. 2.

    The N * V embeddings are L2-normalised. For anchor i, A(i) is every other
    embedding and P(i) those in A(i) with the same label (the other views of
    the same image and every view of other images of its class):
    ``L_i = -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t)``.
    Eq. 2 sums L_i over anchors; like the authors' code this returns the mean
    over anchors, here over the anchors that have at least one positive (an
    anchor without positives contributes nothing; if no anchor has one, the
    loss is 0 and still has a grad). With ``labels=None`` every image is its
    own class, and with V = 2 this is exactly NT-Xent (:func:`nt_xent_loss`).

    Args:
        z: Embeddings, shape (N, V, D): V views of each of N images.
        labels: Class of each image, shape (N,), or None (each image its own class).
        temperature: Temperature t > 0 dividing the similarities.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If z is not (N, V, D) with N, V, D >= 1 or labels is not (N,).
    """
    _check_positive("temperature", temperature)
    if z.ndim != 3 or 0 in z.shape:
        raise ValueError(f"z must have shape (N, V, D) with N, V, D >= 1, got {tuple(z.shape)}")
    n, views, dim = z.shape
    if labels is None:
        labels = torch.arange(n, device=z.device)
    elif labels.shape != (n,):
        raise ValueError(f"labels must have shape (N,) = ({n},) to match z {tuple(z.shape)}, got {tuple(labels.shape)}")
    with _float32_region(z.device):
        zz = F.normalize(z.float().reshape(n * views, dim), dim=1)  # (M, D), M = N*V, row = image*V + view
        row_label = labels.to(z.device).repeat_interleave(views)  # (M,)
        logits = (zz @ zz.T) / temperature  # (M, M)
        self_pair = torch.eye(n * views, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_pair, torch.finfo(logits.dtype).min)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (M, M), log over A(i)
        positive = (row_label[:, None] == row_label[None, :]) & ~self_pair  # (M, M), P(i)
        n_positive = positive.sum(dim=1)  # (M,)
        # where, not multiply: the masked self entries must not reach the sum.
        pos_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1)  # (M,)
        per_anchor = -pos_log_prob / n_positive.clamp(min=1)  # (M,), 0 where P(i) is empty
        return per_anchor.sum() / (n_positive > 0).sum().clamp(min=1)


class PairwiseMarginLoss(nn.Module):
    """Pairwise margin loss of Hadsell, Chopra and LeCun (2006), Eq. 4, over a batch.

    "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
    Positives are the two views of one image, negatives every pair of
    embeddings of different images; see :func:`pairwise_margin_loss`.
    Inputs: z1, z2 of shape (N, D). Output: scalar float32 loss.
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean") -> None:
        """Check and store the hyper-parameters.

        Args:
            margin: Margin m > 0 beyond which dissimilar pairs cost nothing.
            distance: ``"euclidean"`` or ``"cosine"``.

        Raises:
            ConfigError: If margin is not > 0 or distance is unknown.
        """
        super().__init__()
        _check_positive("margin", margin)
        _check_distance(distance)
        self.margin = margin
        self.distance = distance

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of two views, each of shape (N, D)."""
        return pairwise_margin_loss(z1, z2, self.margin, self.distance)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"margin={self.margin}, distance={self.distance!r}"


class NTXentLoss(nn.Module):
    """NT-Xent loss of SimCLR: Chen, Kornblith, Norouzi, Hinton (2020), arXiv 2002.05709, Eq. 1.

    Averaged over all 2N anchors; see :func:`nt_xent_loss`.
    Inputs: z1, z2 of shape (N, D). Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 dividing the cosine similarities.

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of two views, each of shape (N, D)."""
        return nt_xent_loss(z1, z2, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


class SupConLoss(nn.Module):
    """Supervised contrastive loss L^sup_out: Khosla et al. (2020), arXiv 2004.11362, Eq. 2.

    Mean over anchors with at least one positive; see :func:`supcon_loss`.
    Inputs: z of shape (N, V, D), labels of shape (N,) or None (then it is
    NT-Xent over the V views). Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 dividing the cosine similarities.

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Loss of V views of N images, z of shape (N, V, D), labels (N,) or None."""
        return supcon_loss(z, labels, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


# --------------------------------------------------------------------------
# Non-contrastive and momentum methods
# --------------------------------------------------------------------------


def _check_non_negative(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a finite real number >= 0.

    Args:
        name: Option name, used in the message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_batch_of_two(z1: Tensor, z2: Tensor, what: str) -> None:
    """Raise ValueError unless z1, z2 are (N, D) batches of one shape with N >= 2.

    Args:
        z1: Embeddings of the first views.
        z2: Embeddings of the second views.
        what: Loss name, used in the message.
    """
    _check_views(z1, z2)
    if z1.shape[0] < 2:
        raise ValueError(f"{what} standardises over the batch and needs N >= 2 embeddings, got {tuple(z1.shape)}")


def _off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square (D, D) matrix as a flat (D * (D - 1),) tensor."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_: float = 5e-3) -> Tensor:
    """Barlow Twins loss: Zbontar, Jing, Misra, LeCun, Deny (2021), arXiv 2103.03230, Eqs. 1-2.

    Each dimension is centred over the batch and the cross-correlation matrix
    of Eq. 2 is ``C_ij = sum_b a_bi b_bj / (sqrt(sum_b a_bi^2) sqrt(sum_b b_bj^2))``
    (the Pearson correlation between dimension i of the first views and
    dimension j of the second, in [-1, 1]). Eq. 1:
    ``L = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2``. This is the
    official code's ``bn(z1).T @ bn(z2) / N`` with a biased variance; a
    dimension that is constant over the batch has C = 0 there (it costs 1 on
    the diagonal) instead of dividing by zero.

    Args:
        z1: Projections of the first views, shape (N, D), N >= 2.
        z2: Projections of the second views, shape (N, D).
        lambda_: Weight lambda >= 0 of the off-diagonal (redundancy reduction)
            term; the paper uses 5e-3 with D = 8192.

    Returns:
        Scalar float32 loss, 0 exactly when C is the identity.

    Raises:
        ConfigError: If ``lambda_`` is not a finite number >= 0.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape with N >= 2.
    """
    _check_non_negative("barlow lambda", lambda_)
    _check_batch_of_two(z1, z2, "the Barlow Twins loss")
    with _float32_region(z1.device):
        a = z1.float() - z1.float().mean(dim=0)  # (N, D)
        b = z2.float() - z2.float().mean(dim=0)
        a = F.normalize(a, dim=0, eps=1e-12)  # unit columns: Eq. 2's denominators
        b = F.normalize(b, dim=0, eps=1e-12)
        c = a.T @ b  # (D, D)
        on_diag = (1.0 - torch.diagonal(c)).pow(2).sum()
        off_diag = _off_diagonal(c).pow(2).sum()
        return on_diag + lambda_ * off_diag


def vicreg_terms(z1: Tensor, z2: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """The three VICReg terms of Bardes, Ponce, LeCun (2021), arXiv 2105.04906, Eqs. 1-5 and Algorithm 1.

    - invariance ``s(Z, Z') = mean over N and D of (z - z')^2``: Algorithm 1's
      ``F.mse_loss`` (Eq. 5 without the 1/D, the scale the weights 25/25/1
      were tuned for);
    - variance ``v(Z) + v(Z')`` with ``v(Z) = 1/D sum_j max(0, gamma - sqrt(Var(z^j) + eps))``
      (Eqs. 1-2, unbiased variance as in Algorithm 1);
    - covariance ``c(Z) + c(Z')`` with ``c(Z) = 1/D sum_{i != j} C(Z)_ij^2`` and
      ``C(Z) = 1/(N - 1) sum_b (z_b - zbar)(z_b - zbar)^T`` (Eqs. 3-4).

    Args:
        z1: Expander outputs of the first views, shape (N, D), N >= 2.
        z2: Expander outputs of the second views, shape (N, D).
        gamma: Target standard deviation gamma > 0 (paper: 1).
        eps: eps > 0 inside the square root (paper: 1e-4).

    Returns:
        ``(invariance, variance, covariance)``, three scalar float32 tensors.

    Raises:
        ConfigError: If ``gamma`` or ``eps`` is not a finite number > 0.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape with N >= 2.
    """
    _check_positive("gamma", gamma)
    _check_positive("eps", eps)
    _check_batch_of_two(z1, z2, "the VICReg loss")
    n, d = z1.shape
    with _float32_region(z1.device):
        a, b = z1.float(), z2.float()
        invariance = F.mse_loss(a, b)
        variance = z1.new_zeros((), dtype=torch.float32)
        covariance = z1.new_zeros((), dtype=torch.float32)
        for z in (a, b):
            std = torch.sqrt(z.var(dim=0) + eps)  # (D,), unbiased
            variance = variance + F.relu(gamma - std).mean()
            zc = z - z.mean(dim=0)
            cov = (zc.T @ zc) / (n - 1)  # (D, D)
            covariance = covariance + _off_diagonal(cov).pow(2).sum() / d
        return invariance, variance, covariance


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg loss of Bardes et al. (2021), arXiv 2105.04906, Eq. 6: weighted sum of :func:`vicreg_terms`.

    ``L = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]``, paper
    weights lambda = mu = 25, nu = 1.

    Args:
        z1: Expander outputs of the first views, shape (N, D), N >= 2.
        z2: Expander outputs of the second views, shape (N, D).
        sim_weight: lambda >= 0, weight of the invariance term.
        var_weight: mu >= 0, weight of the variance term.
        cov_weight: nu >= 0, weight of the covariance term.
        gamma: Target standard deviation gamma > 0.
        eps: eps > 0 inside the square root of the variance.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If a weight is negative or not finite, or gamma / eps not > 0.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape with N >= 2.
    """
    for name, w in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        _check_non_negative(name, w)
    inv, var, cov = vicreg_terms(z1, z2, gamma, eps)
    return sim_weight * inv + var_weight * var + cov_weight * cov


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's ``D(p, z) = -p/||p|| . z/||z||`` (Chen & He 2020, arXiv 2011.10566, Eq. 1), mean over the batch.

    ``z`` is detached here: this is ``D(p, stopgrad(z))`` of Eq. 3.

    Args:
        p: Predictor outputs, shape (N, D).
        z: Projections (targets), shape (N, D).

    Returns:
        Scalar float32 in [-1, 1]; -1 when every p is a positive multiple of its z.
    """
    _check_views(p, z)
    with _float32_region(p.device):
        return -(F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(dim=1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam loss of Chen & He (2020), arXiv 2011.10566, Eq. 4 and Algorithm 1.

    ``L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1))`` with D the
    negative cosine similarity (:func:`negative_cosine`); no negatives.

    Args:
        p1: Predictions from the first views, shape (N, D).
        p2: Predictions from the second views, shape (N, D).
        z1: Projections of the first views, shape (N, D) (gradient stopped).
        z2: Projections of the second views, shape (N, D) (gradient stopped).

    Returns:
        Scalar float32 loss in [-1, 1].
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def byol_loss(p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
    """BYOL loss of Grill et al. (2020), arXiv 2006.07733, Eq. 2 and its symmetrisation.

    ``L = ||q1/||q1|| - z'2/||z'2|| ||^2 = 2 - 2 cos(q1, z'2)`` for the online
    prediction q1 of view 1 and the target projection z'2 of view 2, mean over
    the batch; the total is ``L + L~`` with the views swapped (Sec. 3.1), so it
    lies in [0, 8]. Targets are detached (the target network gets no
    gradient).

    Args:
        p1: Online predictions of the first views, shape (N, D).
        p2: Online predictions of the second views, shape (N, D).
        t1: Target projections of the first views, shape (N, D).
        t2: Target projections of the second views, shape (N, D).

    Returns:
        Scalar float32 loss.
    """
    return (2.0 + 2.0 * negative_cosine(p1, t2)) + (2.0 + 2.0 * negative_cosine(p2, t1))


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo InfoNCE with a queue of negatives: He et al. (2019), arXiv 1911.05722, Eq. 1 and Algorithm 1.

    As in MoCo v2 (Chen, Fan, Girshick, He 2020, arXiv 2003.04297), queries
    and keys are L2-normalised; for query q with its positive key k+ and
    the K queued keys k_i,
    ``L_q = -log exp(q.k+/t) / (exp(q.k+/t) + sum_i exp(q.k_i/t))``, mean over
    the batch. Keys and queue are detached.

    Args:
        q: Queries (online projections), shape (N, D).
        k: Positive keys (key-encoder projections of the other view), shape (N, D).
        queue: Negative keys, shape (K, D), K >= 1 (normalised here too).
        temperature: Temperature t > 0 (MoCo v2: 0.2).

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If the shapes do not fit.
    """
    _check_positive("temperature", temperature)
    _check_views(q, k)
    if queue.ndim != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] == 0:
        raise ValueError(f"queue must have shape (K, {q.shape[1]}) with K >= 1, got {tuple(queue.shape)}")
    with _float32_region(q.device):
        qn = F.normalize(q.float(), dim=1)
        kn = F.normalize(k.detach().float(), dim=1)
        neg = F.normalize(queue.detach().float(), dim=1)
        l_pos = (qn * kn).sum(dim=1, keepdim=True)  # (N, 1)
        l_neg = qn @ neg.T  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """NN(z, Q) of NNCLR (arXiv 2104.14548, Eq. 1): the support row of highest cosine similarity to each z.

    Args:
        z: Queries, shape (N, D).
        support: Support set Q, shape (K, D), K >= 1.

    Returns:
        The L2-normalised nearest support rows, shape (N, D), float32, no grad.
    """
    if support.ndim != 2 or support.shape[1] != z.shape[1] or support.shape[0] == 0:
        raise ValueError(f"support must have shape (K, {z.shape[1]}) with K >= 1, got {tuple(support.shape)}")
    with torch.no_grad(), _float32_region(z.device):
        s = F.normalize(support.float(), dim=1)
        idx = (F.normalize(z.float(), dim=1) @ s.T).argmax(dim=1)  # (N,)
        return s[idx]


def nnclr_loss(z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor, support: Tensor, temperature: float = 0.1) -> Tensor:
    """NNCLR loss of Dwibedi et al. (2021), arXiv 2104.14548, Eq. 2 with the prediction head, symmetrised.

    For image i, ``L_i = -log exp(NN(z1_i, Q) . p2_i / t) / sum_k exp(NN(z1_i, Q) . p2_k / t)``
    with all vectors L2-normalised, NN the nearest support-set neighbour
    (:func:`nearest_neighbours`, no gradient) and p2 the predictions of the
    other views; the other N - 1 predictions are the negatives. Mean over
    the batch, averaged with the same term for the views swapped (Sec. 3.2).

    Args:
        z1: Projections of the first views, shape (N, D) (only looked up).
        z2: Projections of the second views, shape (N, D).
        p1: Predictions from the first views, shape (N, D).
        p2: Predictions from the second views, shape (N, D).
        support: Support set Q, shape (K, D).
        temperature: Temperature t > 0 (paper: 0.1).

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If the shapes do not fit.
    """
    _check_positive("temperature", temperature)
    _check_views(z1, z2)
    _check_views(p1, p2)
    _check_views(z1, p1)
    target = torch.arange(z1.shape[0], device=z1.device)
    with _float32_region(z1.device):
        total = z1.new_zeros((), dtype=torch.float32)
        for z, p in ((z1, p2), (z2, p1)):
            nn_z = nearest_neighbours(z, support)  # (N, D)
            logits = nn_z @ F.normalize(p.float(), dim=1).T / temperature  # (N, N)
            total = total + F.cross_entropy(logits, target)
        return 0.5 * total


def _check_dino_outputs(student: Tensor, teacher: Tensor) -> None:
    """Raise ValueError unless student is (V, N, K) and teacher (G, N, K) with 1 <= G <= V, V >= 2.

    Args:
        student: Student logits of every view.
        teacher: Teacher logits of the global views.
    """
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
        raise ValueError(
            f"student must have shape (V, N, K) and teacher (G, N, K), got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    v, n, k = student.shape
    if not 1 <= teacher.shape[0] <= v or v < 2 or n == 0 or k == 0:
        raise ValueError(
            f"need V >= 2 student views, 1 <= G <= V teacher views and N, K >= 1, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )


def dino_loss(
    student: Tensor, teacher: Tensor, center: Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04
) -> Tensor:
    """DINO self-distillation loss: Caron et al. (2021), arXiv 2104.14294, Eq. 1 / Algorithm 1, with multi-crop (Eq. 3).

    The teacher's distribution of global view g is centred and sharpened,
    ``P_t = softmax((t_g - c) / tau_t)`` (Algorithm 1), the student's of view
    v is ``P_s = softmax(s_v / tau_s)``, and the loss is the cross-entropy
    ``H(P_t, P_s) = -sum_k P_t log P_s`` averaged over the batch and over every
    pair (g, v) with g != v (Eq. 3: the teacher sees only the G global views,
    the student all V views, and no view is compared with itself), i.e. a mean
    over ``G (V - 1)`` pairs as in the paper's code. Student view g (g < G) and
    teacher view g must be the same crop. The teacher side is detached.

    Args:
        student: Student logits of all views, global ones first, shape (V, N, K), V >= 2.
        teacher: Teacher logits of the global views, shape (G, N, K), 1 <= G <= V.
        center: The centre c, shape (K,) (see :func:`dino_center_update`).
        student_temp: Student temperature tau_s > 0 (paper: 0.1).
        teacher_temp: Teacher temperature tau_t > 0 (paper: 0.04 to 0.07; below tau_s it sharpens).

    Returns:
        Scalar float32 loss, >= the mean entropy of the teacher's distributions.

    Raises:
        ConfigError: If a temperature is not a finite number > 0.
        ValueError: If the shapes do not fit.
    """
    _check_positive("student_temp", student_temp)
    _check_positive("teacher_temp", teacher_temp)
    _check_dino_outputs(student, teacher)
    g, v, n, k = teacher.shape[0], student.shape[0], student.shape[1], student.shape[2]
    if center.shape != (k,):
        raise ValueError(f"center must have shape ({k},), got {tuple(center.shape)}")
    with _float32_region(student.device):
        p_t = F.softmax((teacher.detach().float() - center.detach().float()) / teacher_temp, dim=-1)  # (G, N, K)
        log_p_s = F.log_softmax(student.float() / student_temp, dim=-1)  # (V, N, K)
        ce = -torch.einsum("gnk,vnk->gv", p_t, log_p_s) / n  # (G, V): H(P_t of g, P_s of v), batch mean
        pairs = ~torch.eye(g, v, dtype=torch.bool, device=ce.device)  # (G, V), no view with itself
        return ce[pairs].mean()


def dino_center_update(center: Tensor, teacher: Tensor, momentum: float = 0.9) -> Tensor:
    """The new DINO centre: ``c <- m c + (1 - m) mean(t)`` (Caron et al. 2021, arXiv 2104.14294, Eq. 4).

    ``mean(t)`` is the mean teacher logit vector over the batch and the global
    views. The result is detached. Under data parallelism the caller gathers
    the teacher logits of every rank first (the paper all-reduces the batch
    mean), like every other loss here.

    Args:
        center: Current centre, shape (K,).
        teacher: Teacher logits, shape (G, N, K) or (N, K).
        momentum: Centre momentum m in [0, 1) (paper: 0.9).

    Returns:
        The updated centre, shape (K,), float32.

    Raises:
        ConfigError: If ``momentum`` is not in [0, 1).
        ValueError: If the shapes do not fit.
    """
    _check_unit_interval("center momentum", momentum)
    k = center.shape[-1] if center.ndim == 1 else -1
    if center.ndim != 1 or teacher.shape[-1] != k or teacher.numel() == 0:
        raise ValueError(f"center must be (K,) and teacher (..., K) with K matching, got center "
                         f"{tuple(center.shape)} and teacher {tuple(teacher.shape)}")
    with _float32_region(center.device):
        batch_center = teacher.detach().float().reshape(-1, k).mean(dim=0)  # (K,)
        return momentum * center.detach().float() + (1.0 - momentum) * batch_center


def _check_unit_interval(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a real number in [0, 1).

    Args:
        name: Option name, used in the message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins: Zbontar, Jing, Misra, LeCun, Deny (2021), arXiv 2103.03230, Eqs. 1-2.

    Cross-correlation of batch-standardised projections pushed to the
    identity; see :func:`barlow_twins_loss`. Inputs: z1, z2 of shape (N, D),
    N >= 2. Output: scalar float32 loss.
    """

    def __init__(self, lambda_: float = 5e-3) -> None:
        """Check and store lambda.

        Args:
            lambda_: Off-diagonal weight >= 0 (paper: 5e-3 for D = 8192).

        Raises:
            ConfigError: If lambda_ is not a finite number >= 0.
        """
        super().__init__()
        _check_non_negative("barlow lambda", lambda_)
        self.lambda_ = lambda_

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of two views, each of shape (N, D)."""
        return barlow_twins_loss(z1, z2, self.lambda_)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"lambda_={self.lambda_}"


class VICRegLoss(nn.Module):
    """VICReg: Bardes, Ponce, LeCun (2021), arXiv 2105.04906, Eq. 6 and Algorithm 1.

    Weighted invariance + variance + covariance; see :func:`vicreg_terms`.
    Inputs: z1, z2 of shape (N, D), N >= 2. Output: scalar float32 loss.
    """

    def __init__(
        self, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
        gamma: float = 1.0, eps: float = 1e-4,
    ) -> None:
        """Check and store the weights.

        Args:
            sim_weight: lambda >= 0 (paper 25).
            var_weight: mu >= 0 (paper 25).
            cov_weight: nu >= 0 (paper 1).
            gamma: Target standard deviation > 0 (paper 1).
            eps: > 0, added to the variance under the square root (paper 1e-4).

        Raises:
            ConfigError: If a weight is negative or all are 0, or gamma / eps not > 0.
        """
        super().__init__()
        for name, w in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            _check_non_negative(name, w)
        if sim_weight + var_weight + cov_weight == 0:
            raise ConfigError("sim_weight, var_weight and cov_weight must not all be 0")
        _check_positive("gamma", gamma)
        _check_positive("eps", eps)
        self.sim_weight, self.var_weight, self.cov_weight = sim_weight, var_weight, cov_weight
        self.gamma, self.eps = gamma, eps

    def terms(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unweighted (invariance, variance, covariance) of two views (N, D)."""
        return vicreg_terms(z1, z2, self.gamma, self.eps)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of two views, each of shape (N, D)."""
        return vicreg_loss(z1, z2, self.sim_weight, self.var_weight, self.cov_weight, self.gamma, self.eps)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (f"sim_weight={self.sim_weight}, var_weight={self.var_weight}, cov_weight={self.cov_weight}, "
                f"gamma={self.gamma}, eps={self.eps}")


class SimSiamLoss(nn.Module):
    """SimSiam: Chen & He (2020), arXiv 2011.10566, Eq. 4 / Algorithm 1.

    Symmetric negative cosine between predictions and stop-gradient
    projections; see :func:`simsiam_loss`. Inputs: p1, p2, z1, z2 of shape
    (N, D). Output: scalar float32 loss in [-1, 1].
    """

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of the predictions p1, p2 against the projections z2, z1."""
        return simsiam_loss(p1, p2, z1, z2)


class BYOLLoss(nn.Module):
    """BYOL: Grill et al. (2020), arXiv 2006.07733, Eq. 2 plus the symmetric term (Sec. 3.1).

    Normalised MSE between online predictions and target projections of the
    other view; see :func:`byol_loss`. Inputs: p1, p2, t1, t2 of shape (N, D).
    Output: scalar float32 loss in [0, 8].
    """

    def forward(self, p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
        """Loss of the online predictions p1, p2 against the target projections t2, t1."""
        return byol_loss(p1, p2, t1, t2)


class MoCoLoss(nn.Module):
    """MoCo v2 InfoNCE against a queue: He et al. (2019), arXiv 1911.05722, Eq. 1; Chen et al. (2020), arXiv 2003.04297.

    See :func:`moco_loss`. Inputs: q, k of shape (N, D), queue (K, D).
    Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 (MoCo v2: 0.2).

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        """Loss of queries q against positive keys k and the queued negatives."""
        return moco_loss(q, k, queue, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


class NNCLRLoss(nn.Module):
    """NNCLR: Dwibedi, Aytar, Tompson, Sermanet, Zisserman (2021), arXiv 2104.14548, Eq. 2, symmetrised.

    Nearest support-set neighbours as positives for the other view's
    predictions; see :func:`nnclr_loss`. Inputs: z1, z2, p1, p2 of shape
    (N, D), support (K, D). Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 (paper: 0.1).

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor, support: Tensor) -> Tensor:
        """Symmetric loss of two views' projections z and predictions p against the support set."""
        return nnclr_loss(z1, z2, p1, p2, support, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


class DINOLoss(nn.Module):
    """DINO: Caron et al. (2021), arXiv 2104.14294, Eq. 1 and 3 with centring and sharpening (Algorithm 1).

    Owns the centre c, a (K,) float32 buffer (zeros at first, as in the
    paper's code), so checkpoints and resume cover it. ``forward`` returns
    :func:`dino_loss` with the current centre and then, in training mode
    only, moves the centre with :func:`dino_center_update` (the update
    follows the loss, as in Algorithm 1). Inputs: student logits (V, N, K),
    teacher logits (G, N, K). Output: scalar float32 loss.
    """

    center: Tensor

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9
    ) -> None:
        """Check and store the hyper-parameters; the centre starts at zero.

        Args:
            out_dim: Number of prototypes K >= 1.
            student_temp: Student temperature tau_s > 0 (paper: 0.1).
            teacher_temp: Teacher temperature tau_t > 0 (paper: 0.04 to 0.07).
            center_momentum: Centre momentum m in [0, 1) (paper: 0.9).

        Raises:
            ConfigError: If a hyper-parameter is out of range.
        """
        super().__init__()
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ConfigError(f"out_dim must be a positive integer, got {out_dim!r}")
        _check_positive("student_temp", student_temp)
        _check_positive("teacher_temp", teacher_temp)
        _check_unit_interval("center momentum", center_momentum)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))  # (K,)

    def forward(self, student: Tensor, teacher: Tensor, center_source: Tensor | None = None) -> Tensor:
        """Loss of the student's views against the teacher's global views; then the centre update (training only).

        Args:
            student: Student logits (V, N, K).
            teacher: Teacher logits (G, N, K).
            center_source: Teacher logits (..., K) the centre moves towards the
                mean of; default ``teacher``. Under data parallelism the
                caller passes the batch mean all-reduced over the ranks, shape
                (1, K), as the paper's code does.
        """
        loss = dino_loss(student, teacher, self.center.clone(), self.student_temp, self.teacher_temp)
        if self.training:
            with torch.no_grad():
                source = teacher if center_source is None else center_source
                self.center.copy_(dino_center_update(self.center, source, self.center_momentum))
        return loss

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (f"out_dim={self.center.shape[0]}, student_temp={self.student_temp}, "
                f"teacher_temp={self.teacher_temp}, center_momentum={self.center_momentum}")
