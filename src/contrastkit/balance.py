"""Cluster-balanced sampling for long-tailed training data, without labels (``train --balance clusters``).

Real image folders are rarely balanced: a few kinds of image make up most of
them, and a plain epoch shows the model each kind as often as it occurs.
Self-supervised methods for long-tailed data re-weight what the model sees
by a label-free estimate of how common an image is: BCL (Zhou et al. 2022,
"Contrastive Learning with Boosted Memorization", arXiv 2205.12693) by the
model's memorisation of each image, SDCLR (Jiang et al. 2021,
"Self-Damaging Contrastive Learning", arXiv 2106.02990) by where a pruned
copy of the model disagrees with it. Here the estimate is the simplest one:
the size of the image's k-means cluster in the current embedding.

Every ``every`` epochs (from the first), the backbone features of the
training images (unaugmented, in eval mode, as the kNN monitor embeds its
bank) are clustered by k-means into ``K`` groups (:func:`contrastkit.label.label_clusters`,
cosine), and item ``i`` of cluster ``c(i)`` gets the sampling weight
``w_i = 1 / |c(i)|``, normalised to sum to 1 (:func:`inverse_size_weights`):
each non-empty cluster then has the same total weight ``1 / K``. An epoch
draws as many items as the training split has, with replacement, from these
weights (:func:`contrastkit.train.epoch_order`), so the steps and the schedule
are those of an unbalanced run; images of a rare cluster are drawn several
times an epoch, images of a large one not every epoch.

Resume: the cluster assignments and the epoch they were computed at are the
batch source's extra state (:meth:`ClusterBalance.state`), kept in every
checkpoint; a resumed run reuses them inside their period and re-clusters
from the restored weights when the next refresh is due, so it draws exactly
the items an uninterrupted run draws. Under torchrun rank 0 embeds and
clusters, and every rank receives its assignments.

What was measured: BENCHMARKS.md, section "Imbalanced data" (``bench/imbalance.py``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from contrastkit import distributed
from contrastkit.engine_contract import epoch_seed
from contrastkit.errors import CheckpointError, ConfigError

KMEANS_RESTARTS = 3  # k-means restarts per refresh (label.py's 10 cost seconds more each refresh, for a weighting only)


def inverse_size_weights(clusters: torch.Tensor) -> torch.Tensor:
    """Per-item sampling weights ``1 / size of the item's cluster``, normalised to sum to 1.

    Args:
        clusters: (N,) int64 cluster of each item.

    Returns:
        (N,) float64 weights; every non-empty cluster's items sum to ``1 / (number of non-empty clusters)``.
    """
    sizes = torch.bincount(clusters)  # (K,)
    w = 1.0 / sizes[clusters].double()  # (N,)
    return w / w.sum()


def cluster_seed(seed: int, epoch: int) -> int:
    """The k-means seed of the refresh at epoch ``epoch``: :func:`contrastkit.engine_contract.epoch_seed`'s stream 5, below 2**31."""
    return epoch_seed(seed, epoch, 5) % (2**31)


def kmeans_clusters(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(N,) int64 k-means clusters (cosine: of L2-normalised rows) of (N, D) ``features``, seeded."""
    from contrastkit.label import label_clusters  # scikit-learn / FAISS load only when balancing

    result = label_clusters(features.float().numpy(), k, "kmeans", n_init=KMEANS_RESTARTS, seed=seed)
    return torch.from_numpy(np.asarray(result.clusters, dtype=np.int64))


class ClusterBalance:
    """The sampling weights of each epoch: inverse k-means cluster sizes of the embedding, refreshed every ``every`` epochs.

    Args:
        n: items trained on (the rows :func:`embed` returns, in that order).
        clusters: k-means clusters K, 2 <= K <= n.
        every: epochs between refreshes (>= 1); refreshes happen at the start of epochs 0, every, 2 every, ...
        seed: the run's seed (k-means seeds come from it and the epoch).
        embed: returns the (n, D) features of the items with the current weights (called on rank 0 only).
    """

    def __init__(self, n: int, clusters: int, every: int, seed: int, embed: Callable[[], torch.Tensor]) -> None:
        if not 2 <= clusters <= n:
            raise ConfigError(f"--balance-clusters {clusters} must be between 2 and the {n} training images")
        if every < 1:
            raise ConfigError(f"--balance-every must be >= 1 (epochs between refreshes), got {every}")
        self.n, self.k, self.every, self.seed, self.embed = n, clusters, every, seed, embed
        self.refreshed_at: int | None = None  # the epoch whose start computed ``clusters``
        self.clusters: torch.Tensor | None = None  # (n,) int64

    def refresh_epoch(self, epoch: int) -> int:
        """The epoch at whose start the weights of epoch ``epoch`` are computed."""
        return epoch - epoch % self.every

    def weights(self, epoch: int) -> torch.Tensor:
        """(n,) float64 sampling weights of epoch ``epoch`` (summing to 1), clustering anew when a refresh is due."""
        due = self.refresh_epoch(epoch)
        if self.refreshed_at != due or self.clusters is None:
            self.clusters = self._cluster(due)
            self.refreshed_at = due
        return inverse_size_weights(self.clusters)

    def _cluster(self, epoch: int) -> torch.Tensor:
        clusters = None
        if distributed.rank() == 0:
            t0 = time.perf_counter()
            features = self.embed()  # (n, D)
            if len(features) != self.n:
                raise ValueError(f"embed() gave {len(features)} rows for {self.n} items")
            clusters = kmeans_clusters(features, self.k, cluster_seed(self.seed, epoch))
            sizes = torch.bincount(clusters, minlength=self.k).sort(descending=True).values
            tqdm.write(f"balance: {self.k} k-means clusters of the {self.n} training images at epoch {epoch + 1} "
                       f"({time.perf_counter() - t0:.1f} s), sizes {int(sizes[0])} to {int(sizes[-1])}; each is drawn about "
                       f"{self.n / self.k:.0f} times an epoch", file=sys.stderr)
        return distributed.broadcast_object(clusters)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the clusters in use and the epoch they were computed at (empty before the first)."""
        if self.clusters is None:
            return {}
        return {"balance_epoch": self.refreshed_at, "balance_clusters": self.clusters}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (an empty dict: nothing computed yet)."""
        if not state:
            self.refreshed_at, self.clusters = None, None
            return
        clusters = torch.as_tensor(state["balance_clusters"], dtype=torch.int64)
        if clusters.shape != (self.n,):
            raise CheckpointError(f"the checkpoint's balance clusters cover {clusters.shape[0]} images, this run {self.n}")
        self.refreshed_at, self.clusters = int(state["balance_epoch"]), clusters
