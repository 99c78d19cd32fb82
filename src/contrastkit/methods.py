"""Training methods: each composes a backbone, a head and a loss in one short class.

Every method has the same contract (MoCo's ``builder.py``, timm's
``forward_features``):
- ``forward(views, labels=None) -> (loss, logs)``: ``views`` is a list of
  augmented batches (B, C, H, W) of the same images; ``logs`` holds detached
  floats worth logging;
- ``embed(x) -> (B, embed_dim)``: backbone features, never the projector's
  output, for evaluation and downstream use;
- ``num_views`` and ``needs_labels`` tell the training loop what to feed it;
- ``after_step(step, total_steps)`` runs after every optimiser step (EMA
  targets, queues).
The training loop knows nothing else about a method.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.errors import ConfigError
from contrastkit.losses import NTXentLoss, PairwiseMarginLoss, SupConLoss
from contrastkit.models.backbones import build_backbone
from contrastkit.models.heads import ProjectionHead


class Method(nn.Module):
    """A backbone plus whatever the method trains on top of it."""

    num_views: int = 2
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
    """SimCLR (Chen et al. 2020, arXiv 2002.05709): projection MLP + NT-Xent over two views."""

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.head = _projector(backbone, config)
        self.loss = NTXentLoss(config.temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = _project_views(self.backbone, self.head, views)
        loss = self.loss(z1, z2)
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
        z1, z2 = (F.normalize(z.float(), dim=1) for z in _project_views(self.backbone, self.head, views))
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
        loss = self.loss(z, labels)
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


METHODS: dict[str, Callable[..., Method]] = {
    "simclr": SimCLR,
    "pairwise": PairwiseMargin,
    "supcon": SupCon,
    "supervised": Supervised,
}


def build_method(config: TrainConfig, in_channels: int, num_classes: int = 0) -> Method:
    """The method ``config.method`` on a new ``config.backbone`` for ``in_channels``-channel images."""
    if config.method not in METHODS:
        raise ConfigError(f"--method {config.method!r} is not one of {', '.join(METHODS)}")
    torch.manual_seed(config.seed)  # same seed, same initial weights
    backbone = build_backbone(config.backbone, in_channels)
    if config.method == "supervised":
        return Supervised(backbone, config, num_classes)
    return METHODS[config.method](backbone, config)
