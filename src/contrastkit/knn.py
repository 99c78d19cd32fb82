"""k-nearest-neighbour classification on frozen features (cosine similarity).

Two standard variants (both on L2-normalised features):
- majority vote of the k nearest neighbours (k = 20 by default), ties broken
  by the summed similarity;
- the weighted vote of Wu et al. 2018 (arXiv 1805.01978, Eq. 9-10), used by
  DINO and solo-learn with k = 200: each neighbour votes for its class with
  weight exp(s / T), T = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError


@torch.no_grad()
def knn_votes(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float | None = None,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Each query's votes per class from its k nearest bank items.

    Args:
        bank: (N, D) features of labelled items.
        bank_labels: (N,) int64 labels of the bank.
        queries: (M, D) features to classify.
        k: neighbours; clipped to N.
        temperature: None for the majority vote, else the weighted vote with
            weights exp(similarity / temperature).
        num_classes: number of classes (default: max label + 1).
        chunk_size: queries per matrix product (bounds memory to chunk x N).

    Returns:
        (M, C) float votes; their argmax is the prediction, and divided by
        their row sum they are class probabilities. Weighted votes are
        scaled per query by exp(-s_max / T) (s_max its highest similarity),
        which changes neither.
    """
    if len(bank) == 0:
        raise ConfigError("kNN needs at least one labelled item in the bank")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if temperature is not None and temperature <= 0:
        raise ConfigError(f"kNN temperature must be > 0, got {temperature}")
    k = min(k, len(bank))
    c = int(num_classes if num_classes is not None else int(bank_labels.max()) + 1)
    bank = F.normalize(bank.float(), dim=1)
    labels = bank_labels.to(bank.device, torch.int64)
    out = []
    for start in range(0, len(queries), chunk_size):
        q = F.normalize(queries[start : start + chunk_size].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k)
        neighbour_labels = labels[idx]  # (m, k)
        if temperature is None:
            # one vote each; adding sim / (2k + 1) (|sum| < 1/2 per class) only breaks ties
            weights = 1.0 + sim / (2 * k + 1)
        else:
            # exp((s - s_max) / T): the same ratios as exp(s / T), scaled per query so small temperatures do
            # not overflow float32 (exp(1 / 0.01) would be inf)
            weights = ((sim - sim[:, :1]) / temperature).exp()
        out.append(torch.zeros(len(q), c, device=bank.device).scatter_add_(1, neighbour_labels, weights))
    return torch.cat(out) if out else torch.zeros(0, c)


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float | None = None,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(M,) int64 predicted class of each query: the argmax of :func:`knn_votes` (same arguments)."""
    return knn_votes(bank, bank_labels, queries, k, temperature, num_classes, chunk_size).argmax(dim=1)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 20,
    temperature: float | None = None,
    num_classes: int | None = None,
) -> float:
    """Fraction of queries whose kNN prediction equals their label."""
    pred = knn_predict(bank, bank_labels, queries, k, temperature, num_classes)
    return float((pred.cpu() == query_labels.cpu()).float().mean()) if len(pred) else float("nan")
