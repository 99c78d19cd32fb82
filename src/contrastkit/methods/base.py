"""The method contract (:class:`Method`) and the forward passes methods share.

One backbone pass over views of one size (:func:`_project_views`), or one
per run of same-sized views for multi-crop (:func:`_forward_by_size`), and
the projection head every method but the supervised baseline and DINO puts on
its backbone (:func:`_projector`). The contract itself is described in
:mod:`contrastkit.methods`.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.models.heads import ProjectionHead


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
