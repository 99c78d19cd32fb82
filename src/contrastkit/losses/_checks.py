"""Shared argument checks and numerics of the losses: ranges, shapes, float32 regions."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from contrastkit.errors import ConfigError


DISTANCES = ("euclidean", "cosine")
"""Valid values of the ``distance`` option of the pairwise margin loss."""


def _check_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a finite real number > 0.

    Args:
        name: Option name, used in the message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _check_distance(distance: str) -> None:
    """Raise ConfigError unless ``distance`` is one of :data:`DISTANCES`.

    Args:
        distance: The distance name to check.
    """
    if distance not in DISTANCES:
        valid = ", ".join(repr(d) for d in DISTANCES)
        raise ConfigError(f"distance must be one of {valid}, got {distance!r}")


def _check_views(z1: Tensor, z2: Tensor) -> None:
    """Raise ValueError unless z1 and z2 are two (N, D) batches of one shape, N, D >= 1.

    Args:
        z1: Embeddings of the first views.
        z2: Embeddings of the second views.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both have shape (N, D), got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}"
        )
    if z1.shape[0] == 0 or z1.shape[1] == 0:
        raise ValueError(f"z1 and z2 must hold at least one embedding of dimension >= 1, got {tuple(z1.shape)}")


def _float32_region(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """A context in which autocast is off on ``device``, so matmuls stay float32.

    Args:
        device: Device the loss runs on.

    Returns:
        ``torch.autocast(..., enabled=False)``, or a no-op context for device
        types autocast does not know (for example ``meta``).
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def _safe_sqrt(squared: Tensor) -> Tensor:
    """Square root whose gradient at 0 is 0 instead of inf/NaN.

    Args:
        squared: Non-negative values (tiny negatives from rounding count as 0).

    Returns:
        ``sqrt(max(squared, 0))`` with a finite gradient everywhere.
    """
    positive = squared > 0
    # sqrt only ever sees positive numbers, so its backward never divides by 0.
    return torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), 0.0)


def _check_non_negative(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a finite real number >= 0.

    Args:
        name: Option name, used in the message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_batch_of_two(z1: Tensor, z2: Tensor, what: str) -> None:
    """Raise ValueError unless z1, z2 are (N, D) batches of one shape with N >= 2.

    Args:
        z1: Embeddings of the first views.
        z2: Embeddings of the second views.
        what: Loss name, used in the message.
    """
    _check_views(z1, z2)
    if z1.shape[0] < 2:
        raise ValueError(f"{what} standardises over the batch and needs N >= 2 embeddings, got {tuple(z1.shape)}")


def _off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square (D, D) matrix as a flat (D * (D - 1),) tensor."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _check_unit_interval(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a real number in [0, 1).

    Args:
        name: Option name, used in the message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
