"""Training methods: each composes a backbone, a head and a loss in one short class.

Every method has the same contract (MoCo's ``builder.py``, timm's
``forward_features``):
- ``forward(views, labels=None) -> (loss, logs)``: ``views`` is a list of
  augmented batches (B, C, H, W) of the same images; ``logs`` holds detached
  floats worth logging;
- ``embed(x) -> (B, embed_dim)``: backbone features, never the projector's
  output, for evaluation and downstream use;
- ``num_views``, ``num_local_views`` and ``needs_labels`` tell the training
  loop what to feed it (``views`` holds the global views, then the local ones);
- ``after_step(step, total_steps)`` runs after every optimiser step (EMA
  targets, queues).
The training loop knows nothing else about a method.

Data parallelism (torchrun, see :mod:`contrastkit.distributed`): ``views``
hold this process's share of the global batch. Methods whose loss couples
the batch pass their embeddings through
:func:`~contrastkit.distributed.gather_batch` before the loss, so negatives
and batch statistics are those of the global batch (SimCLR, arXiv
2002.05709, Sec. 2 and Appendix B); the gather's backward makes DDP's
averaged gradient equal the single-process one. Per-sample losses (BYOL,
SimSiam, MoCo against its queue, DINO, supervised) need no gather. Queues
enqueue the gathered keys and DINO's centre moves with the all-reduced
batch mean, so these buffers stay identical on every rank. In a single
process all of this is the identity.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.distributed import all_gather_tensor, all_reduce_mean, gather_batch
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
)
from contrastkit.models.backbones import build_backbone
from contrastkit.models.heads import DINOHead, PredictionHead, ProjectionHead


class Method(nn.Module):
    """A backbone plus whatever the method trains on top of it."""

    num_views: int = 2  # global views of each image, at the full view size
    num_local_views: int = 0  # multi-crop: small local views appended after the global ones
    needs_labels: bool = False

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.embed_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, embed_dim) of a normalised batch."""
        return self.backbone(x)

    def forward(
        self, views: list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Called by the training loop after each optimiser step (``step`` counts from 1).

        Methods with a momentum (EMA) encoder or a queue update them here; the
        default does nothing. Anything updated here must live in the state dict
        (parameters or buffers) so that checkpoints and resume cover it.
        """


def _projector(backbone: nn.Module, config: TrainConfig) -> ProjectionHead:
    return ProjectionHead(backbone.embed_dim, config.proj_hidden_dim, config.proj_dim)


def _project_views(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """One backbone pass over all views concatenated (BN sees both views, as in SimCLR)."""
    b = views[0].shape[0]
    z = head(backbone(torch.cat(views)))  # (V*B, proj_dim)
    return list(z.split(b))


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


# --------------------------------------------------------------------------
# Non-contrastive, momentum and queue methods
# --------------------------------------------------------------------------


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's EMA rate after ``step`` of ``total_steps``: ``1 - (1 - base)(cos(pi k/K) + 1)/2``.

    Grill et al. 2020, arXiv 2006.07733, Sec. 3.2: tau rises from ``base`` at
    k = 0 to 1 at k = K.
    """
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def warmed_up(step: int, warmup_steps: int, start: float, end: float) -> float:
    """A linear warm-up from ``start`` (step 0) to ``end`` (step ``warmup_steps`` and after).

    DINO's teacher temperature (Caron et al. 2021, arXiv 2104.14294, Sec. 4
    and Appendix: 0.04 to 0.07 over the first 30 epochs); the paper's code
    steps it once per epoch, this once per optimiser step.
    """
    if warmup_steps <= 0:
        return end
    return start + (end - start) * min(max(step, 0), warmup_steps) / warmup_steps


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target = tau * target + (1 - tau) * online`` for every parameter (buffers are left alone).

    As in BYOL and MoCo's code, only parameters are averaged; the target's
    BatchNorm statistics follow from its own forward passes.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.copy_(tau * t + (1.0 - tau) * o.detach())


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that never receives gradients (an EMA target / key encoder)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class FeatureQueue(nn.Module):
    """A FIFO ring buffer of L2-normalised vectors: MoCo's queue, NNCLR's support set.

    Both live in buffers (``vectors`` (K, D) float32 and ``ptr``), so
    checkpoints and resume cover them. It starts with random unit vectors,
    as MoCo's does. :meth:`push` overwrites the oldest entries in order and
    wraps around; a push of more than K vectors keeps the last K.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ConfigError(f"--queue-size must be > 0, got {size} (dimension {dim})")
        self.register_buffer("vectors", F.normalize(torch.randn(size, dim), dim=1))  # (K, D)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        """Enqueue the rows of ``x`` (N, D), normalised, in place of the oldest ones."""
        size = self.vectors.shape[0]
        x = F.normalize(x.detach().float(), dim=1)[-size:]  # (min(N, K), D)
        start = int(self.ptr)
        idx = (start + torch.arange(x.shape[0], device=x.device)) % size
        self.vectors[idx] = x.to(self.vectors.device)
        self.ptr.fill_((start + x.shape[0]) % size)


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


def _forward_by_size(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Head outputs (V, B, D) of all views, with one backbone pass per run of same-sized consecutive views.

    Multi-crop (DINO's ``MultiCropWrapper``): the global views go through the
    backbone together, then the local ones; the head sees all features at once.
    """
    b = views[0].shape[0]
    feats, start = [], 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        feats.append(backbone(torch.cat(views[start:end])))  # ((end - start) B, embed_dim)
        start = end
    out = head(torch.cat(feats))  # (V B, D)
    return out.reshape(len(views), b, -1)  # (V, B, D)


class DINO(Method):
    """DINO (Caron et al. 2021, arXiv 2104.14294): self-distillation with no labels.

    Student = backbone + :class:`DINOHead`; teacher (``teacher_backbone``,
    ``teacher_head``) = a copy that never receives gradients, lives in the
    state dict and follows the student by EMA in :meth:`after_step`, with
    tau following :func:`cosine_momentum` from ``--momentum`` to 1 (the
    paper's schedule, as BYOL's). The teacher sees the 2 global views, the
    student those and ``--local-views`` small local crops (multi-crop); the
    loss (:class:`DINOLoss`, Eq. 1 and 3) is the cross-entropy from the
    centred, sharpened teacher to the student over every pair of different
    views, and the centre (``loss.center``) moves after each training forward,
    towards the teacher's batch mean all-reduced over the ranks under data
    parallelism (Eq. 4; the loss itself is per image and needs no gather).

    The teacher temperature is the constant ``--dino-teacher-temp`` (the
    paper code's default, 0.04) or, with ``--dino-warmup-teacher-temp-epochs
    E > 0``, warms up linearly per step from ``--dino-warmup-teacher-temp``
    over the first E epochs (:func:`warmed_up`; the paper: 0.04 to 0.07 over
    30 epochs). The current value is the buffer ``teacher_temp``, set in
    :meth:`after_step`, so a resumed run continues from it exactly; it only
    exists when the warm-up is on, so other checkpoints keep their keys.

    Not taken from the paper: freezing the prototypes during the first epoch.
    """

    num_views = 2

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.num_local_views = 4 if config.local_views is None else config.local_views
        self.head = DINOHead(backbone.embed_dim, config.proj_hidden_dim, config.proj_dim, config.dino_out_dim)
        self.teacher_backbone = _frozen_copy(backbone)
        self.teacher_head = _frozen_copy(self.head)
        self.base_momentum = config.momentum
        self.loss = DINOLoss(config.dino_out_dim, config.dino_student_temp, config.dino_teacher_temp, config.dino_center_momentum)
        if config.dino_warmup_teacher_temp_epochs > 0 and config.epochs is None:
            raise ConfigError("--dino-warmup-teacher-temp-epochs needs the run's length in epochs: build the method from "
                              "contrastkit.train.resolve_epochs(config, data.train), as `contrastkit train` does, or give --epochs")
        self.warmup_epochs_fraction = config.dino_warmup_teacher_temp_epochs / config.epochs if config.epochs else 0.0
        self.temp_start, self.temp_end = config.dino_warmup_teacher_temp, config.dino_teacher_temp
        self.warms_up = self.warmup_epochs_fraction > 0
        if self.warms_up:
            self.register_buffer("teacher_temp", torch.tensor(self.temp_start, dtype=torch.float32))

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if len(views) < self.num_views:
            raise ConfigError(f"method 'dino' needs at least {self.num_views} global views, got {len(views)}")
        student = _forward_by_size(self.backbone, self.head, views)  # (V, B, K)
        with torch.no_grad():
            teacher = _forward_by_size(self.teacher_backbone, self.teacher_head, views[: self.num_views])  # (2, B, K)
            batch_mean = all_reduce_mean(teacher.float().reshape(-1, teacher.shape[-1]).mean(dim=0))  # (K,)
        if self.warms_up:
            self.loss.teacher_temp = float(self.teacher_temp)
        loss = self.loss(student, teacher, center_source=batch_mean[None])
        logs = {"loss": float(loss.detach())}
        if self.warms_up:
            logs["teacher_temp"] = self.loss.teacher_temp
        return loss, logs

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the student into the teacher (tau = :func:`cosine_momentum`); the teacher temperature of the next step."""
        tau = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.teacher_backbone, self.backbone, tau)
        ema_update(self.teacher_head, self.head, tau)
        if self.warms_up:
            warmup_steps = round(self.warmup_epochs_fraction * total_steps)
            self.teacher_temp.fill_(warmed_up(step, warmup_steps, self.temp_start, self.temp_end))


METHODS: dict[str, Callable[..., Method]] = {
    "simclr": SimCLR,
    "pairwise": PairwiseMargin,
    "supcon": SupCon,
    "supervised": Supervised,
    "barlowtwins": BarlowTwins,
    "vicreg": VICReg,
    "simsiam": SimSiam,
    "byol": BYOL,
    "moco": MoCo,
    "nnclr": NNCLR,
    "dino": DINO,
}


def build_method(config: TrainConfig, in_channels: int, num_classes: int = 0) -> Method:
    """The method ``config.method`` on a new ``config.backbone`` for ``in_channels``-channel images."""
    if config.method not in METHODS:
        raise ConfigError(f"--method {config.method!r} is not one of {', '.join(METHODS)}")
    torch.manual_seed(config.seed)  # same seed, same initial weights
    backbone = build_backbone(config.backbone, in_channels, config.backbone_width)
    if config.method == "supervised":
        return Supervised(backbone, config, num_classes)
    return METHODS[config.method](backbone, config)
