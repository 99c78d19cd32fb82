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

The methods live in modules by family, as the losses do:
:mod:`.contrastive` (SimCLR, pairwise margin, SupCon, MoCo, NNCLR, and the
supervised baseline), :mod:`.non_contrastive` (Barlow Twins, VICReg,
SimSiam, BYOL) and :mod:`.dino`, over :mod:`.base` (the :class:`Method`
contract and the shared forward passes) and :mod:`.targets` (EMA targets and
the feature queue). This package holds their registry, :data:`METHODS`, and
:func:`build_method`.
"""

from __future__ import annotations

from typing import Callable

import torch

from contrastkit.config import TrainConfig
from contrastkit.errors import ConfigError
from contrastkit.methods.base import Method
from contrastkit.methods.contrastive import NNCLR, MoCo, PairwiseMargin, SimCLR, SupCon, Supervised
from contrastkit.methods.dino import DINO
from contrastkit.methods.non_contrastive import BYOL, BarlowTwins, SimSiam, VICReg
from contrastkit.models.backbones import build_backbone


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
