"""Flow matching: the training loss, classifier-free guidance and the Euler sampler, as pure functions.

Conditional flow matching with the straight (rectified) path between a noise
sample ``x0 ~ N(0, I)`` and a data sample ``x1`` (Lipman et al. 2022,
arXiv 2210.02747, Eq. 20-23 with sigma_min = 0; Liu et al. 2022,
arXiv 2209.03003, Eq. 1):

    x_t = (1 - t) x0 + t x1,          t ~ U[0, 1]
    u_t = d x_t / dt = x1 - x0        (the target velocity)
    L   = E_{t, x0, x1} || v_theta(x_t, t) - (x1 - x0) ||^2

A model ``v_theta`` trained on this loss transports noise (t = 0) to data
(t = 1) along the ODE ``dx/dt = v_theta(x, t)``, integrated here with
Euler's method in ``S`` equal steps (:func:`euler_sample`).

Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598, Eq. 6,
written for velocities): ``v = v_uncond + w (v_cond - v_uncond)``; ``w = 1``
is the conditional model, ``w = 0`` the unconditional one, ``w > 1`` pushes
samples further toward the condition.

Time is the flow's own ``t`` in [0, 1] (0: noise, 1: data) throughout.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, ...), t (B,)) -> v (B, ...)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t (B,) as (B, 1, ..., 1), broadcastable against ``like`` (B, ...)."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The point of the straight path at time ``t``: ``x_t = (1 - t) x0 + t x1``.

    Args:
        x0: noise (B, ...).
        x1: data (B, ...), the shape of ``x0``.
        t: times (B,) in [0, 1].
    """
    tt = _expand(t, x0)
    return (1 - tt) * x0 + tt * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight path, ``u_t = x1 - x0`` (the same at every t)."""
    return x1 - x0


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Conditional flow-matching loss: the mean over the batch of ``||v_pred - (x1 - x0)||^2`` per sample.

    Lipman et al. 2022 (arXiv 2210.02747), Eq. 23 with the optimal-transport
    path (sigma_min = 0); Liu et al. 2022 (arXiv 2209.03003), Eq. 1. The
    squared norm is summed over every dimension of a sample and divided by
    their number (a per-element mean), so the scale does not grow with the
    image size.

    Args:
        v_pred: the model's velocity at ``x_t`` (B, ...).
        x0: the noise of each sample (B, ...).
        x1: the data of each sample (B, ...).

    Returns:
        A scalar: ``mean_b mean_j (v_pred[b, j] - (x1[b, j] - x0[b, j]))^2``, in float32.
    """
    if v_pred.shape != x0.shape or x0.shape != x1.shape:
        raise ValueError(f"flow_matching_loss: shapes differ: v {tuple(v_pred.shape)}, x0 {tuple(x0.shape)}, "
                         f"x1 {tuple(x1.shape)}")
    return (v_pred.float() - target_velocity(x0.float(), x1.float())).square().mean()


def guided_velocity(v_uncond: torch.Tensor, v_cond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_uncond + w (v_cond - v_uncond)`` (arXiv 2207.12598, Eq. 6)."""
    if weight == 1:
        return v_cond
    if weight == 0:
        return v_uncond
    return v_uncond + weight * (v_cond - v_uncond)


@torch.no_grad()
def euler_sample(velocity: Velocity, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from ``t = 0`` (``x0``) to ``t = 1`` with Euler's method.

    ``x_{k+1} = x_k + h * velocity(x_k, k h)`` with ``h = 1 / steps``, for
    ``k = 0 .. steps - 1``. Exact for a velocity constant along each path
    (the straight paths of flow matching to a single point are: with
    ``v(x, t) = (x1 - x) / (1 - t)`` every step lands on the path).

    Args:
        velocity: ``(x (B, ...), t (B,)) -> v (B, ...)``.
        x0: the starting noise (B, ...).
        steps: number of Euler steps (>= 1).

    Returns:
        ``x`` at ``t = 1``, the shape and dtype of ``x0``.
    """
    if steps < 1:
        raise ValueError(f"euler_sample: steps must be >= 1, got {steps}")
    x = x0.clone()
    h = 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * h, device=x.device, dtype=torch.float32)
        x = x + h * velocity(x, t).to(x.dtype)
    return x


def time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of ``t`` (B,) in [0, 1]: (B, dim), the Transformer's position code of ``scale * t``.

    As DDPM (arXiv 2006.11239) embeds its step index; ``scale`` spreads the
    flow's continuous time over the same range of frequencies.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = scale * t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim - 2 * half)) if dim % 2 else emb
