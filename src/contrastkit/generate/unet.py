"""The pixel generator's network: a small U-Net conditioned on time and on a representation.

The DDPM U-Net (Ho et al. 2020, arXiv 2006.11239) at small scale: residual
blocks (GroupNorm, SiLU, 3x3 conv) with the embedding added between the two
convolutions, a stride-2 convolution down and nearest-neighbour up-sampling
between levels, skip connections concatenated. The embedding is the
sinusoidal time embedding through an MLP **plus** the projected
representation of the image (RCG, arXiv 2312.03701, conditions its pixel
generator on the representation the same way, through the embedding). For
classifier-free guidance (arXiv 2207.12598) the projected condition is
replaced by a learned null embedding where ``keep`` is False: 10% of
training samples by default, and the unconditional half of a guided step.

Any image side >= 8 works: up-sampling goes to the size of the matching
skip, so odd sides (7 px at the bottom of a 28 px image) are fine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import ConfigError
from contrastkit.generate.flow import time_embedding


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the channels, else the largest divisor below 8."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))) + emb)))``, with a 1x1 convolution when the width changes."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as its skip path
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConditionalUNet(nn.Module):
    """v_theta(x_t, t, c): images (B, C, H, W) in [-1, 1] space, times (B,), conditions (B, cond_dim).

    Args:
        channels: image channels.
        cond_dim: the representation's dimension (0: no condition, an unconditional model).
        width: channels of the first level; level i has ``width * mults[i]``.
        mults: width multiplier per level (one down-sampling between levels).
    """

    def __init__(self, channels: int, cond_dim: int, width: int = 32, mults: tuple[int, ...] = (1, 2, 2)) -> None:
        super().__init__()
        if channels < 1 or width < 1 or not mults or min(mults) < 1 or cond_dim < 0:
            raise ConfigError(f"pixel generator: channels {channels}, width {width}, mults {mults}, cond_dim {cond_dim}: "
                              "each must be positive (cond_dim may be 0)")
        self.channels, self.cond_dim, self.width = channels, cond_dim, width
        emb = 4 * width
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        if cond_dim:
            self.cond = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
            self.null = nn.Parameter(torch.zeros(emb))  # the learned "no condition" embedding
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        widths = [width * m for m in mults]
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        c = width
        for i, w in enumerate(widths):
            self.down.append(ResBlock(c, w, emb))
            c = w
            if i < len(widths) - 1:
                self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(c, c, emb), ResBlock(c, c, emb)])
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(c + w, w, emb))  # concatenated with the skip of its level
            c = w
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def embedding(self, t: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
        """Time embedding plus the projected condition (or the null embedding where ``keep`` is False): (B, 4 width)."""
        e = self.time(time_embedding(t, self.width))
        if not self.cond_dim:
            return e
        null = self.null.to(e.dtype).expand_as(e)
        if cond is None:
            return e + null
        c = self.cond(cond)
        if keep is not None:
            c = torch.where(keep[:, None], c, null.to(c.dtype))
        return e + c

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, C, H, W) at ``x`` (B, C, H, W), time ``t`` (B,), condition ``cond`` (B, cond_dim) or None.

        ``keep`` (B,) bool: where False the condition is replaced by the null
        embedding; ``cond=None`` is the unconditional model for the whole batch.
        """
        emb = F.silu(self.embedding(t, cond, keep))  # (B, 4 width)
        h = self.inp(x)  # (B, width, H, W)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)  # (B, w, ceil(H / 2), ceil(W / 2))
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(h)
