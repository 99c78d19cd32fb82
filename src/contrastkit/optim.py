"""Optimisers and the learning-rate schedule.

The schedule is a pure function of the step (:func:`lr_at`), so a resumed run
recomputes it instead of restoring scheduler state. Parameters with fewer
than two dimensions (biases, normalisation scales and shifts) get no weight
decay and, under LARS, no layer-wise adaptation, as in SimCLR and BYOL.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.errors import ConfigError


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0.

    Args:
        step: the optimiser step about to be taken, 0-based.
        peak_lr: learning rate at the end of warm-up.
        warmup_steps: number of warm-up steps (0 for none).
        total_steps: number of steps in the whole run.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/norms (neither)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017, arXiv 1708.03888).

    SGD with momentum where each parameter tensor's update is scaled by the
    trust ratio ``eta * ||w|| / ||g + wd * w||`` (Eq. 6 of the paper, as used
    by SimCLR). Groups with ``lars=False`` (biases, norms) take plain SGD
    steps with momentum and no weight decay.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 1e-3,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ConfigError(
                f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, eta > 0; "
                f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] > 0:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g = g.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config.optimizer`` over :func:`param_groups`."""
    groups = param_groups(model, config.decay)
    if config.optimizer == "lars":
        return LARS(groups, lr=config.peak_lr, weight_decay=config.decay)
    for g in groups:
        g.pop("lars")
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(0.9, 0.999))
