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

The losses live in three modules by family (:mod:`.contrastive`,
:mod:`.non_contrastive`, :mod:`.dino`) over shared checks (:mod:`._checks`);
this package re-exports them all.
"""

from contrastkit.losses._checks import DISTANCES
from contrastkit.losses.contrastive import (
    MoCoLoss, NNCLRLoss, NTXentLoss, PairwiseMarginLoss, SupConLoss, contrastive_pair_loss, moco_loss,
    nearest_neighbours, nnclr_loss, nt_xent_loss, pairwise_margin_loss, supcon_loss,
)
from contrastkit.losses.dino import DINOLoss, dino_center_update, dino_loss
from contrastkit.losses.non_contrastive import (
    BarlowTwinsLoss, BYOLLoss, SimSiamLoss, VICRegLoss, barlow_twins_loss, byol_loss, negative_cosine, simsiam_loss,
    vicreg_loss, vicreg_terms,
)

__all__ = [
    "DISTANCES", "BarlowTwinsLoss", "BYOLLoss", "DINOLoss", "MoCoLoss", "NNCLRLoss", "NTXentLoss",
    "PairwiseMarginLoss", "SimSiamLoss", "SupConLoss", "VICRegLoss", "barlow_twins_loss", "byol_loss",
    "contrastive_pair_loss", "dino_center_update", "dino_loss", "moco_loss", "nearest_neighbours",
    "negative_cosine", "nnclr_loss", "nt_xent_loss", "pairwise_margin_loss", "simsiam_loss", "supcon_loss",
    "vicreg_loss", "vicreg_terms",
]
