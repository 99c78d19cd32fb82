"""What momentum and queue methods share: EMA rates and updates, frozen target copies, the feature queue.

BYOL's and DINO's cosine momentum, DINO's temperature warm-up, the
parameter EMA of BYOL / MoCo / DINO targets, and the FIFO queue of MoCo's
negatives and NNCLR's support set.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import ConfigError


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
