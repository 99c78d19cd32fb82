"""Methods without negatives: Barlow Twins and VICReg (batch statistics), SimSiam (stop-gradient), BYOL (an EMA target).

The losses are those of :mod:`contrastkit.losses.non_contrastive`.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.distributed import gather_batch
from contrastkit.losses import BarlowTwinsLoss, BYOLLoss, SimSiamLoss, VICRegLoss
from contrastkit.methods.base import Method, _project_views, _projector
from contrastkit.methods.targets import _frozen_copy, cosine_momentum, ema_update
from contrastkit.models.heads import PredictionHead


class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al. 2021, arXiv 2103.03230): projector + cross-correlation to identity.

    lambda defaults to 1 / proj_dim (``--barlow-lambda``).
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        lam = config.barlow_lambda if config.barlow_lambda is not None else 1.0 / config.proj_dim
        self.loss = BarlowTwinsLoss(lam)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = gather_batch(*_project_views(self.backbone, self.head, views[:2]))  # batch statistics of the global batch
        loss = self.loss(z1, z2)
        return loss, {"loss": float(loss.detach())}


class VICReg(Method):
    """VICReg (Bardes et al. 2021, arXiv 2105.04906): projector (expander) + variance/invariance/covariance."""

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.loss = VICRegLoss(config.vicreg_sim_weight, config.vicreg_var_weight, config.vicreg_cov_weight)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = gather_batch(*_project_views(self.backbone, self.head, views[:2]))  # batch statistics of the global batch
        inv, var, cov = self.loss.terms(z1, z2)
        loss = self.loss.sim_weight * inv + self.loss.var_weight * var + self.loss.cov_weight * cov
        return loss, {"loss": float(loss.detach()), "invariance": float(inv.detach()), "variance": float(var.detach()), "covariance": float(cov.detach())}


class SimSiam(Method):
    """SimSiam (Chen & He 2020, arXiv 2011.10566): projector + predictor, stop-gradient, symmetric negative cosine.

    The loss is a mean of per-image terms: under data parallelism each rank's
    mean over its share, averaged by DDP, is the global one; no gather.
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.predictor = PredictionHead(config.proj_dim, config.pred_hidden_dim)
        self.loss = SimSiamLoss()

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = _project_views(self.backbone, self.head, views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).split(z1.shape[0])  # (B, proj_dim) each
        loss = self.loss(p1, p2, z1, z2)
        return loss, {"loss": float(loss.detach())}


class BYOL(Method):
    """BYOL (Grill et al. 2020, arXiv 2006.07733): online network + predictor against an EMA target.

    The target (``target_backbone``, ``target_head``) starts as a copy of the
    online backbone and projector, never receives gradients, lives in the
    state dict, and is updated in :meth:`after_step` with tau following
    :func:`cosine_momentum` from ``--momentum`` to 1. The loss is a mean of
    per-image terms, so under data parallelism it needs no gather.
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.predictor = PredictionHead(config.proj_dim, config.pred_hidden_dim)
        self.target_backbone = _frozen_copy(backbone)
        self.target_head = _frozen_copy(self.head)
        self.base_momentum = config.momentum
        self.loss = BYOLLoss()

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = _project_views(self.backbone, self.head, views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).split(z1.shape[0])  # (B, proj_dim) each
        with torch.no_grad():
            t1, t2 = _project_views(self.target_backbone, self.target_head, views[:2])
        loss = self.loss(p1, p2, t1, t2)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the online backbone and projector into the target, tau = :func:`cosine_momentum`."""
        tau = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_head, self.head, tau)
