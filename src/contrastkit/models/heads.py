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
