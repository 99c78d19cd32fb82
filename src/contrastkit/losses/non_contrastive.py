"""Losses without negatives: Barlow Twins, VICReg, and the predictor losses of SimSiam and BYOL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.errors import ConfigError
from contrastkit.losses._checks import _check_positive, _check_views, _float32_region, _check_non_negative, _check_batch_of_two, _off_diagonal


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
