"""Methods that contrast each image with others: SimCLR, the pairwise margin loss, SupCon, MoCo (against a queue),
NNCLR (a support set's nearest neighbour as the positive), and the supervised baseline beside them.

The losses are those of :mod:`contrastkit.losses.contrastive`; under data
parallelism the batch-coupled ones gather the global batch first (see
:mod:`contrastkit.methods`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.distributed import all_gather_tensor, gather_batch
from contrastkit.errors import ConfigError
from contrastkit.losses import MoCoLoss, NNCLRLoss, NTXentLoss, PairwiseMarginLoss, SupConLoss
from contrastkit.methods.base import Method, _forward_by_size, _project_views, _projector
from contrastkit.methods.targets import FeatureQueue, _frozen_copy, ema_update
from contrastkit.models.heads import PredictionHead


class SimCLR(Method):
    """SimCLR (Chen et al. 2020, arXiv 2002.05709): projection MLP + NT-Xent over two views.

    Under data parallelism the projections of every rank are gathered first,
    so each image has the 2(N - 1) negatives of the global batch of N
    (Sec. 2 and Appendix B.1, "we aggregate ... over all devices").

    With ``--local-views L > 0`` (multi-crop, Caron et al. 2020, arXiv
    2006.09882, Sec. 3.2, as solo-learn offers it for SimCLR) each image
    also gives L small local crops, and the loss is SupCon's L^sup_out
    (arXiv 2004.11362, Eq. 2) with every image its own class: each of the
    2 + L views is an anchor whose positives are the other views of its
    image and whose negatives are all views of the other images. With L = 0
    that is exactly NT-Xent, which is what runs.
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.num_local_views = config.local_views or 0
        self.head = _projector(backbone, config)
        self.loss = NTXentLoss(config.temperature)
        self.multi_view_loss = SupConLoss(config.temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if len(views) == 2:
            z1, z2 = gather_batch(*_project_views(self.backbone, self.head, views))  # (W B, proj_dim) each
            loss = self.loss(z1, z2)
        else:
            z = _forward_by_size(self.backbone, self.head, views).transpose(0, 1)  # (B, V, proj_dim)
            (z,) = gather_batch(z.contiguous())  # (W B, V, proj_dim): the global batch
            loss = self.multi_view_loss(z, None)  # one class per image
        return loss, {"loss": float(loss.detach())}


class PairwiseMargin(Method):
    """The classic margin contrastive loss (Hadsell, Chopra, LeCun 2006) on two views.

    Positives are the two views of one image, negatives every other image of
    the batch; projections are L2-normalised so that ``margin`` is on the
    scale of distances in [0, 2].
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.loss = PairwiseMarginLoss(config.margin, config.distance)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = (F.normalize(z.float(), dim=1) for z in gather_batch(*_project_views(self.backbone, self.head, views)))
        loss = self.loss(z1, z2)
        return loss, {"loss": float(loss.detach())}


class SupCon(Method):
    """Supervised contrastive learning (Khosla et al. 2020, arXiv 2004.11362): views of same-class images are positives."""

    needs_labels = True

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.loss = SupConLoss(config.temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if labels is None:
            raise ConfigError("method 'supcon' needs labels; use a labelled data set or --method simclr")
        z = torch.stack(_project_views(self.backbone, self.head, views), dim=1)  # (B, V, proj_dim)
        (z,) = gather_batch(z)  # (W B, V, proj_dim): the global batch
        loss = self.loss(z, all_gather_tensor(labels))
        return loss, {"loss": float(loss.detach())}


class Supervised(Method):
    """The supervised baseline: the same backbone with a linear classifier and cross-entropy on one view."""

    num_views = 1
    needs_labels = True

    def __init__(self, backbone: nn.Module, config: TrainConfig, num_classes: int) -> None:
        super().__init__(backbone)
        if num_classes < 2:
            raise ConfigError(f"the supervised baseline needs at least 2 classes, got {num_classes}")
        self.classifier = nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if labels is None:
            raise ConfigError("the supervised baseline needs labels")
        logits = self.classifier(self.backbone(views[0])).float()
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"loss": float(loss.detach()), "train_acc": float(acc)}


class MoCo(Method):
    """MoCo v2 (Chen et al. 2020, arXiv 2003.04297): momentum key encoder, queue of negatives, InfoNCE.

    The key encoder (``key_backbone``, ``key_head``) is an EMA of the query
    encoder with the constant rate ``--momentum``, updated in
    :meth:`after_step` (the paper updates it at the start of the next
    forward: the same sequence of weights). The loss is symmetrised (each
    view is once the query and once the key, averaged); after the loss the
    keys of both views (2B per step) are enqueued, in training mode only.
    Under data parallelism the loss is per query and needs no gather, and
    the gathered keys of every rank are enqueued (first views, then second
    views, each in rank order, as one process with the global batch would).
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.key_backbone = _frozen_copy(backbone)
        self.key_head = _frozen_copy(self.head)
        self.queue = FeatureQueue(config.queue_size, config.proj_dim)
        self.momentum = config.momentum
        self.loss = MoCoLoss(config.temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        q1, q2 = _project_views(self.backbone, self.head, views[:2])
        with torch.no_grad():
            k1, k2 = _project_views(self.key_backbone, self.key_head, views[:2])
        negatives = self.queue.vectors.clone()  # the push below must not change what backward reads
        loss = 0.5 * (self.loss(q1, k2, negatives) + self.loss(q2, k1, negatives))
        if self.training:
            self.queue.push(torch.cat(gather_batch(k1, k2)))  # (2 W B, proj_dim)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the query encoder into the key encoder with the constant ``--momentum``."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_head, self.head, self.momentum)


class NNCLR(Method):
    """NNCLR (Dwibedi et al. 2021, arXiv 2104.14548): nearest support-set neighbour as the positive.

    Projector + predictor; the support set is a :class:`FeatureQueue` of
    ``--queue-size`` projections, and the first views' projections of each
    batch are enqueued after the loss (training mode only). Under data
    parallelism projections and predictions are gathered first: the other
    predictions of the global batch are the negatives, and the global batch
    is enqueued.
    """

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.predictor = PredictionHead(config.proj_dim, config.pred_hidden_dim)
        self.support = FeatureQueue(config.queue_size, config.proj_dim)
        self.loss = NNCLRLoss(config.temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = _project_views(self.backbone, self.head, views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).split(z1.shape[0])  # (B, proj_dim) each
        z1, z2, p1, p2 = gather_batch(z1, z2, p1, p2)  # (W B, proj_dim) each
        loss = self.loss(z1, z2, p1, p2, self.support.vectors.clone())
        if self.training:
            self.support.push(z1)
        return loss, {"loss": float(loss.detach())}
