"""Heads that sit on top of a backbone's features during self-supervised training."""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.errors import ConfigError, DataError


def _check_positive_int(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"ProjectionHead: {what} must be a positive integer, got {value!r}")


class ProjectionHead(nn.Module):
    """The SimCLR projection MLP (Chen et al. 2020, arXiv:2002.05709, Sec. 2.1).

    ``num_layers - 1`` hidden blocks of Linear - [BatchNorm1d] - ReLU, then a
    final Linear without BN or ReLU. Linears followed by BN have no bias (the
    BN shift replaces it). With ``num_layers=1`` the head is one Linear
    ``in_dim -> out_dim`` and ``hidden_dim`` is unused.

    Args:
        in_dim: feature size of the backbone (its ``embed_dim``).
        hidden_dim: width of the hidden layers.
        out_dim: size of the projection the loss sees.
        num_layers: number of Linear layers, >= 1 (SimCLR v1 uses 2).
        batch_norm: put a BatchNorm1d after every hidden Linear.

    Raises:
        ConfigError: a size or ``num_layers`` is not a positive integer, or
            ``batch_norm`` is not a bool.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        for what, value in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
            ("num_layers", num_layers),
        ):
            _check_positive_int(what, value)
        if not isinstance(batch_norm, bool):
            raise ConfigError(
                f"ProjectionHead: batch_norm must be True or False, got {batch_norm!r}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project features.

        Args:
            x: backbone features (B, in_dim).

        Returns:
            Projections (B, out_dim), not normalised (the loss normalises).

        Raises:
            DataError: ``x`` is not (B, in_dim).
            ConfigError: a batch of one in training mode with batch norm.
        """
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise DataError(
                f"ProjectionHead: expected features of shape (B, {self.in_dim}), "
                f"got {tuple(x.shape)}"
            )
        if self.batch_norm and self.training and x.shape[0] < 2 and len(self.mlp) > 1:
            raise ConfigError(
                f"ProjectionHead: batch norm needs at least 2 items per batch in "
                f"training mode, got {x.shape[0]}; use batch_size >= 2 and drop "
                f"the last incomplete batch"
            )
        return self.mlp(x)  # (B, out_dim)


class PredictionHead(ProjectionHead):
    """The predictor MLP of BYOL, SimSiam and NNCLR: Linear - BN - ReLU - Linear, ``dim -> dim``.

    BYOL (Grill et al. 2020, arXiv:2006.07733, Sec. 3.3) and SimSiam (Chen &
    He 2020, arXiv:2011.10566, Sec. 4) put this MLP on the online branch
    only; it maps a projection to a prediction of the other view's
    projection. SimSiam uses a bottleneck (``hidden_dim`` = ``dim / 4``),
    BYOL a wide hidden layer (4096 for 256-d projections).

    Args:
        dim: size of the projections it reads and the predictions it writes.
        hidden_dim: width of the hidden layer.

    Raises:
        ConfigError: a size is not a positive integer.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__(dim, hidden_dim, dim, num_layers=2, batch_norm=True)


class DINOHead(nn.Module):
    """The DINO head (Caron et al. 2021, arXiv:2104.14294, Sec. 3.1 and App. C).

    A ``num_layers``-layer MLP (Linear - GELU between layers, no batch norm,
    as the paper's default) down to a ``bottleneck_dim`` code, L2-normalised,
    then a weight-normalised Linear without bias to ``out_dim`` prototypes
    (K). As in the paper's code with ``norm_last_layer=True``, the weight
    norm's gain is fixed to 1, so each logit is the cosine between the code
    and one prototype: the layer stores the unnormalised directions
    ``prototypes`` (K, bottleneck_dim) and normalises their rows in
    ``forward`` (the same function as ``weight_norm`` with ``g = 1`` frozen).
    Linear weights start as in the paper's code: truncated normal, std 0.02,
    zero biases.

    Args:
        in_dim: feature size of the backbone (its ``embed_dim``).
        hidden_dim: width of the hidden layers (paper: 2048).
        bottleneck_dim: size of the L2-normalised code (paper: 256).
        out_dim: number of prototypes K (paper: 65536).
        num_layers: Linear layers of the MLP, >= 1 (paper: 3).

    Raises:
        ConfigError: a size or ``num_layers`` is not a positive integer.
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        for what, value in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("out_dim", out_dim),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DINOHead: {what} must be a positive integer, got {value!r}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))  # (K, bottleneck)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features to prototype logits.

        Args:
            x: backbone features (B, in_dim).

        Returns:
            Logits (B, out_dim), cosines in [-1, 1] (the loss divides them by
            its temperatures).

        Raises:
            DataError: ``x`` is not (B, in_dim).
        """
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise DataError(f"DINOHead: expected features of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        code = nn.functional.normalize(self.mlp(x), dim=1)  # (B, bottleneck)
        return nn.functional.linear(code, nn.functional.normalize(self.prototypes, dim=1))  # (B, K)
