"""The representation generator's network: a residual MLP that predicts a flow-matching velocity.

RCG (Li, Katabi, He 2023, arXiv 2312.03701, Sec. 3.2) models the frozen
encoder's representations with a small diffusion model of residual MLP
blocks (LayerNorm, Linear, SiLU, Linear), the time embedding added to every
block. This is that network at small scale, trained with flow matching
(:mod:`contrastkit.generate.flow`) instead of DDPM on per-dimension
standardised embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.errors import ConfigError
from contrastkit.generate.flow import time_embedding


class _Block(nn.Module):
    """``h + MLP(LayerNorm(h) + time)``: one residual block of RCG's representation model."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.time = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.norm(h) + self.time(temb))


class VelocityMLP(nn.Module):
    """v_theta(z_t, t) for representations z (B, dim).

    Args:
        dim: the representation's dimension.
        hidden: width of every block.
        blocks: number of residual blocks.
    """

    def __init__(self, dim: int, hidden: int = 512, blocks: int = 4) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("blocks", blocks)):
            if value < 1:
                raise ConfigError(f"representation generator: {name} must be >= 1, got {value}")
        self.dim, self.hidden = dim, hidden
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[1].weight)  # starts as the zero velocity
        nn.init.zeros_(self.out[1].bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t (B, dim), t (B,) in [0, 1] -> velocity (B, dim)."""
        temb = nn.functional.silu(self.time(time_embedding(t, self.hidden)))  # (B, hidden)
        h = self.inp(z)  # (B, hidden)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h)
