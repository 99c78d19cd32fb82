"""Linear probe: multinomial logistic regression on frozen features.

The standard protocol of SimCLR (arXiv 2002.05709, Sec. 4.2) fits a linear
classifier on frozen, standardised backbone features. Here the classifier is
fitted full-batch with L-BFGS on the cross-entropy plus an L2 penalty; the
penalty is chosen from a small grid on a held-out tenth of the training
features (fitted from the strongest penalty to the weakest, each fit
warm-started from the previous one), then the classifier is refitted on all
of them, warm-started from the chosen fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError
from contrastkit.runtime import torch_threads

SMALL_PROBLEM = 1 << 20  # feature values below which the probe runs on one thread (faster, and robust to a busy CPU)
L2_GRID = (1e-2, 1e-3, 1e-4, 1e-6)  # penalty on the summed squared weights; tried in this order


@dataclass
class LinearProbe:
    """A fitted linear classifier on standardised features."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    l2: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, C) logits."""
        return ((features.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) class probabilities."""
        return self.logits(features).softmax(dim=1)


def _fit(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if init is None:
        w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
        b = torch.zeros(num_classes, requires_grad=True)
    else:
        w, b = (t.clone().requires_grad_(True) for t in init)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    l2_grid: tuple[float, ...] = L2_GRID,
    max_iter: int = 100,
    seed: int = 0,
) -> LinearProbe:
    """Fit the probe, choosing the L2 penalty on a held-out tenth.

    Args:
        features: (N, D) frozen features.
        labels: (N,) int64 labels.
        num_classes: number of classes (default: max label + 1).
        l2_grid: candidate penalties.
        max_iter: L-BFGS iterations per fit (at most).
        seed: seeds the validation split.
    """
    if len(features) < 2:
        raise ConfigError(f"the linear probe needs at least 2 labelled items, got {len(features)}")
    x = features.float().cpu()
    y = labels.to(torch.int64).cpu()
    c = int(num_classes if num_classes is not None else int(y.max()) + 1)
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    # small problems run faster on one thread, and stay fast on a busy CPU
    with torch_threads(1 if x.numel() < SMALL_PROBLEM else torch.get_num_threads()):
        best_l2, best_fit = l2_grid[0], None
        if len(l2_grid) > 1 and len(x) >= 20:
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            n_val = max(1, len(x) // 10)
            val, tr = perm[:n_val], perm[n_val:]
            best_acc, fit = -1.0, None
            for l2 in l2_grid:
                fit = _fit(x[tr], y[tr], c, l2, max_iter, init=fit)
                acc = float(((x[val] @ fit[0].T + fit[1]).argmax(1) == y[val]).float().mean())
                if acc > best_acc:
                    best_acc, best_l2, best_fit = acc, l2, fit
        w, b = _fit(x, y, c, best_l2, max_iter, init=best_fit)
    return LinearProbe(mean=mean, std=std, weight=w, bias=b, l2=best_l2)
