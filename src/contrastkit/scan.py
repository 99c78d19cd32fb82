"""SCAN: clustering by neighbour consistency on frozen embeddings, then self-labelling.

Van Gansbeke, Vandenhende, Georgoulis, Proesmans, Van Gool, "SCAN: Learning
to Classify Images without Labels", ECCV 2020 (arXiv 2005.12320).

1. Mine the ``k`` nearest neighbours of every item in the L2-normalised
   embedding (exact FAISS search, :func:`contrastkit.vectors.exact_search`).
2. Train clustering heads (softmax over K clusters) with the SCAN loss
   (:func:`scan_loss`, the paper's Eq. 2): an item and its neighbours should
   get the same cluster, and the mean prediction should spread over all
   clusters. Several heads train side by side from different starts; the
   one with the lowest SCAN loss over all items is kept (no label is used).
3. Self-labelling (:func:`self_label_loss`, the paper's Section 3.3): items
   whose cluster probability exceeds :data:`SELFLABEL_THRESHOLD` become
   pseudo-labels for a class-balanced cross-entropy on an augmented view.

Here the heads train on the FROZEN embeddings that a run folder holds, not on
images, so the paper's image augmentations are unavailable. The SCAN step
uses the features as they are (the paper augments both the item and its
neighbour); the self-labelling step's strong augmentation is replaced by
dropout on the input features (:data:`SELFLABEL_FEATURE_DROPOUT`), the weak
view by the clean features, as the paper takes its targets from the weak view.

The trainables (:class:`ScanTrainable`, :class:`SelfLabelTrainable`) turn a
batch into a loss and know nothing of the loop: both phases train on the
training engine (:func:`contrastkit.engine.run`, through :func:`train_heads`),
with :class:`FeatureBatches` as their batch source, a pure function of
(seed, epoch, step). They write no file: SCAN is one step of
``contrastkit label``, which never resumes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit import engine
from contrastkit.engine_contract import Plan, epoch_seed
from contrastkit.errors import ConfigError
from contrastkit.vectors import exact_search, normalise
from contrastkit.runtime import Runtime, torch_threads

EPS = 1e-8  # probabilities are clamped to this before a log (the official SCAN code's value)
SELFLABEL_THRESHOLD = 0.99  # pseudo-label only items whose max cluster probability exceeds this (paper: 0.99)
SELFLABEL_FEATURE_DROPOUT = 0.5  # the "strong augmentation" on frozen features: dropout of input features


@dataclass(frozen=True)
class ScanConfig:
    """Every SCAN default, in one place. Chosen without the test split (see each comment)."""

    neighbours: int = 20  # k of the mined neighbours (paper: 20)
    entropy_weight: float = 5.0  # lambda of Eq. 2 (paper: 5)
    heads: int = 50  # heads trained side by side; the lowest SCAN loss is kept (paper: 10; see README)
    hidden: int = 0  # 0: a linear head (the paper's); > 0: an MLP with one hidden layer of this width
    epochs: int = 50  # SCAN epochs over all items (paper: 50 on CIFAR) ...
    min_steps: int = 2000  # ... or more, until this many Adam steps: small data sets get as many (240 items: 2000 epochs)
    batch_size: int = 128  # items per SCAN step (paper: 128)
    lr: float = 1e-3  # Adam learning rate (paper: 1e-4 with the backbone; 1e-3 for a head alone, see README)
    weight_decay: float = 1e-4  # Adam L2 on weight matrices (paper: 1e-4)
    selflabel_epochs: int = 10  # self-labelling epochs (paper: 200 through a backbone; see README)
    selflabel_lr: float = 1e-4  # Adam learning rate of self-labelling (paper: 1e-4)
    selflabel_batch_size: int = 1000  # items per self-labelling step (paper: 1000)
    threshold: float = SELFLABEL_THRESHOLD
    feature_dropout: float = SELFLABEL_FEATURE_DROPOUT

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first field out of range."""
        for name in ("neighbours", "heads", "epochs", "batch_size", "selflabel_batch_size"):  # min_steps may be 0
            if getattr(self, name) < 1:
                raise ConfigError(f"SCAN {name} must be >= 1, got {getattr(self, name)}")
        if self.selflabel_epochs < 0 or self.hidden < 0:
            raise ConfigError("SCAN selflabel_epochs and hidden must be >= 0")
        if self.entropy_weight < 0:
            raise ConfigError(f"SCAN entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.lr <= 0 or self.selflabel_lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"SCAN lr and selflabel_lr must be > 0 and weight_decay >= 0, got {self.lr}, "
                              f"{self.selflabel_lr} and {self.weight_decay}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"the self-labelling threshold must be in (0, 1), got {self.threshold}")
        if not 0 <= self.feature_dropout < 1:
            raise ConfigError(f"the self-labelling feature dropout must be in [0, 1), got {self.feature_dropout}")


# ----------------------------------------------------------------------------- losses


def scan_loss(anchor_logits: torch.Tensor, neighbour_logits: torch.Tensor,
              entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SCAN loss, Eq. 2 of Van Gansbeke et al. 2020 (arXiv 2005.12320), on one batch.

    ``L = -mean_i mean_{j in N_i} log <p_i, p_j> + lambda * sum_c pbar_c log pbar_c``
    with ``p = softmax(logits)`` and ``pbar`` the mean of the anchors' ``p``.
    Eq. 2 sums over the neighbours; the official code (and this one) averages
    over them (one neighbour sampled per item per epoch), which is what its
    ``lambda = 5`` goes with. ``pbar`` is over the batch, as in the official
    code; probabilities are clamped to :data:`EPS` before the logs.

    Args:
        anchor_logits: (*, B, K) logits of the items (``*``: e.g. heads).
        neighbour_logits: (*, B, K) logits of one neighbour of each item, or
            (*, B, M, K) of M neighbours each.
        entropy_weight: lambda >= 0.

    Returns:
        (total, consistency, entropy), each of shape ``*``: the loss, its
        first term, and the entropy ``-sum_c pbar_c log pbar_c`` of the mean
        prediction (the second term is ``-lambda * entropy``).
    """
    p = F.softmax(anchor_logits, dim=-1)  # (*, B, K)
    q = F.softmax(neighbour_logits, dim=-1)  # (*, B, K) or (*, B, M, K)
    if q.dim() == p.dim():
        q = q.unsqueeze(-2)  # (*, B, 1, K)
    dot = (p.unsqueeze(-2) * q).sum(-1)  # (*, B, M) <p_i, p_j>
    consistency = -torch.log(dot.clamp_min(EPS)).mean((-2, -1))
    pbar = p.mean(-2)  # (*, K)
    entropy = -(pbar * torch.log(pbar.clamp_min(EPS))).sum(-1)
    return consistency - entropy_weight * entropy, consistency, entropy


class SCANLoss(nn.Module):
    """:func:`scan_loss` as a module; checks the entropy weight."""

    def __init__(self, entropy_weight: float = 5.0) -> None:
        super().__init__()
        if entropy_weight < 0:
            raise ConfigError(f"the SCAN entropy weight must be >= 0, got {entropy_weight}")
        self.entropy_weight = entropy_weight

    def forward(self, anchor_logits: torch.Tensor, neighbour_logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return scan_loss(anchor_logits, neighbour_logits, self.entropy_weight)


def self_label_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = SELFLABEL_THRESHOLD,
                    balance: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence-based cross-entropy of SCAN's self-labelling step (Section 3.3 of arXiv 2005.12320).

    Items whose weak-view probability ``max_c softmax(weak)_c`` exceeds
    ``threshold`` are pseudo-labelled with their argmax; the loss is the
    cross-entropy of the strong view's logits against those labels, only
    over those items. With ``balance`` each class is weighted by the inverse
    of its share among the confident items of the batch, ``n / n_c``, and
    the mean is weighted (``sum w_y l / sum w_y``, torch's weighted mean), as
    in the official code. No gradient flows through the weak view.

    Args:
        weak_logits: (B, K) logits of the clean (weak) view.
        strong_logits: (B, K) logits of the augmented (strong) view.
        threshold: confidence above which an item counts, in (0, 1).
        balance: weight the classes as above.

    Returns:
        (loss, mask): the loss (a constant 0 without gradient when no item
        is confident) and the (B,) bool mask of confident items.
    """
    with torch.no_grad():
        prob = F.softmax(weak_logits, dim=-1)
        conf, target = prob.max(-1)
        mask = conf > threshold
    if not mask.any():
        return torch.zeros((), device=strong_logits.device), mask
    t = target[mask]
    weight = None
    if balance:
        classes, counts = torch.unique(t, return_counts=True)
        weight = torch.ones(strong_logits.shape[-1], device=strong_logits.device, dtype=strong_logits.dtype)
        weight[classes] = len(t) / counts.to(strong_logits.dtype)
    return F.cross_entropy(strong_logits[mask], t, weight=weight), mask


class SelfLabelLoss(nn.Module):
    """:func:`self_label_loss` as a module; checks the threshold."""

    def __init__(self, threshold: float = SELFLABEL_THRESHOLD, balance: bool = True) -> None:
        super().__init__()
        if not 0 < threshold < 1:
            raise ConfigError(f"the self-labelling threshold must be in (0, 1), got {threshold}")
        self.threshold, self.balance = threshold, balance

    def forward(self, weak_logits: torch.Tensor, strong_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self_label_loss(weak_logits, strong_logits, self.threshold, self.balance)


# ----------------------------------------------------------------------------- heads and trainables


class ClusterHeads(nn.Module):
    """``heads`` independent clustering heads from D features to K logits: linear, or an MLP with ``hidden`` units.

    Linear heads are one ``nn.Linear(D, heads * K)`` (each head's rows are
    its own, so their gradients stay independent under a summed loss), which
    is one matrix product per batch instead of ``heads``.
    """

    def __init__(self, dim: int, k: int, heads: int = 1, hidden: int = 0) -> None:
        super().__init__()
        self.k, self.n_heads = k, heads
        if hidden == 0:
            self.layers: nn.Module = nn.Linear(dim, heads * k)
        else:
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, k))
                                        for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layers, nn.Linear):
            return self.layers(x).reshape(len(x), self.n_heads, self.k).transpose(0, 1)  # (H, B, K)
        return torch.stack([h(x) for h in self.layers])  # (H, B, K)

    def head(self, i: int) -> nn.Module:
        """A standalone copy of head ``i`` (D features to K logits)."""
        import copy

        if isinstance(self.layers, nn.ModuleList):
            return copy.deepcopy(self.layers[i])
        out = nn.Linear(self.layers.in_features, self.k).to(self.layers.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.layers.weight[i * self.k : (i + 1) * self.k])
            out.bias.copy_(self.layers.bias[i * self.k : (i + 1) * self.k])
        return out


class ScanTrainable(nn.Module):
    """Turns a batch ``(items (B, D), one neighbour of each (B, D))`` into the SCAN loss summed over the heads."""

    def __init__(self, heads: ClusterHeads, entropy_weight: float) -> None:
        super().__init__()
        self.heads = heads
        self.loss = SCANLoss(entropy_weight)

    def forward(self, anchors: torch.Tensor, neighbours: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, consistency, entropy = self.loss(self.heads(anchors), self.heads(neighbours))  # (H,) each
        # the heads train independently: the gradients of the sum are each head's own
        return total.sum(), {"loss": float(total.detach().mean()), "consistency": float(consistency.detach().mean()),
                             "entropy": float(entropy.detach().mean())}


class SelfLabelTrainable(nn.Module):
    """Turns a batch ``(items (B, D),)`` into the self-labelling loss of one head (weak: clean, strong: dropout).

    With no confident item the loss has no gradient, and the engine takes no step on that batch.
    """

    def __init__(self, head: nn.Module, threshold: float, feature_dropout: float) -> None:
        super().__init__()
        self.head = head
        self.loss = SelfLabelLoss(threshold)
        self.feature_dropout = feature_dropout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            weak = self.head(x)  # (B, K)
        strong = self.head(F.dropout(x, self.feature_dropout, training=True))  # (B, K)
        loss, mask = self.loss(weak, strong)
        return loss, {"loss": float(loss.detach()), "confident": float(mask.float().mean())}


# ----------------------------------------------------------------------------- on the engine


class _FeatureEpoch:
    """One epoch of :class:`FeatureBatches`; every draw is made at its start, so it has no state to keep."""

    def __init__(self, source: "FeatureBatches", order: torch.Tensor, pick: torch.Tensor | None, start: int) -> None:
        self.source, self.order, self.pick, self.start = source, order, pick, start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        s, b = self.source, self.source.items_per_step
        for step in range(self.start, s.steps_per_epoch):
            idx = self.order[step * b : (step + 1) * b]  # (B,)
            yield (s.x[idx], s.x[self.pick[idx]]) if self.pick is not None else (s.x[idx],)  # (B, D) each

    def state(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.uint8)

    def close(self) -> None:
        pass


class FeatureBatches:
    """The engine's batch source of both phases: ``(items, one neighbour of each)`` or ``(items,)`` per step.

    A pure function of (seed, epoch, step): each epoch draws, from a CPU
    generator seeded by :func:`contrastkit.engine_contract.epoch_seed` (stream 0:
    SCAN, 1: self-labelling), one of its mined neighbours for every item
    (with ``neighbours``; the official code samples one per item) and then
    the order of the items. Batches hold ``min(batch_size, N)``
    items; a last partial batch is dropped (never the only one).

    Args:
        x: (N, D) features, on the device the heads train on.
        neighbours: (N, k) neighbour ids on the same device, or None.
        batch_size: items per step.
        seed: the run's seed.
        stream: 0 for SCAN, 1 for self-labelling (their epochs draw differently).
    """

    state_key = "feature_rng"  # empty: nothing is drawn inside an epoch

    def __init__(self, x: torch.Tensor, neighbours: torch.Tensor | None, batch_size: int, seed: int,
                 stream: int) -> None:
        self.x, self.neighbours, self.seed, self.stream = x, neighbours, seed, stream
        self.items_per_step = min(batch_size, len(x))
        self.steps_per_epoch = len(x) // self.items_per_step

    def epoch(self, epoch: int, start_step: int, state: torch.Tensor | None) -> _FeatureEpoch:
        n, dev = len(self.x), self.x.device
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.stream))
        pick = None
        if self.neighbours is not None:
            column = torch.randint(self.neighbours.shape[1], (n,), generator=g).to(dev)
            pick = self.neighbours[torch.arange(n, device=dev), column]  # (N,) one neighbour of each item
        return _FeatureEpoch(self, torch.randperm(n, generator=g).to(dev), pick, start_step)


class _EpochMeans(nn.Module):
    """A trainable that also keeps the epoch mean of each of its logs: the engine's monitor of it."""

    def __init__(self, trainable: nn.Module) -> None:
        super().__init__()
        self.trainable = trainable
        self.sums: dict[str, float] = {}
        self.steps = 0

    def forward(self, *batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = self.trainable(*batch)
        for key, v in logs.items():
            self.sums[key] = self.sums.get(key, 0.0) + v
        self.steps += 1
        return loss, logs

    def measure(self) -> dict[str, Any]:
        means = {key: v / max(self.steps, 1) for key, v in self.sums.items() if key != "loss"}  # the engine's own
        self.sums, self.steps = {}, 0
        return means

    def summary(self, record: dict[str, Any]) -> str:
        return ""


def train_heads(trainable: nn.Module, source: FeatureBatches, epochs: int, lr: float, weight_decay: float,
                progress: bool = False) -> list[dict[str, Any]]:
    """Adam at a constant ``lr`` over ``epochs`` epochs of ``source`` on the engine; its epoch records.

    Weight matrices get the L2 ``weight_decay`` (Adam's, as SCAN's code),
    biases none. A batch whose loss has no gradient (self-labelling with no
    confident item) takes no step. Nothing is written and no epoch line is
    printed (``progress``: the engine's bar). Each record holds the epoch
    mean of every value the trainable logs. Deterministic given the torch
    seed (the dropout) and the source.
    """
    logged = _EpochMeans(trainable)
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.Adam([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    runtime = Runtime(device=source.x.device, dtype=None, channels_last=False)
    plan = Plan(epochs=epochs, lr=lambda step: lr)
    result = engine.run(logged, source, opt, plan, runtime, None, progress=progress, report=False, monitor=logged)
    return result.history


# ----------------------------------------------------------------------------- SCAN end to end


def mine_neighbours(features: np.ndarray, k: int) -> np.ndarray:
    """(N, k) ids of each item's ``k`` nearest other items by cosine similarity (exact FAISS search), k < N."""
    n = len(features)
    _, ids = exact_search(features, features, k + 1)  # (N, k + 1), own row usually first
    own = ids == np.arange(n)[:, None]
    own[~own.any(1), -1] = True  # duplicates can push an item's own row out: drop the farthest instead
    return ids[~own].reshape(n, k)


def full_scan_losses(heads: ClusterHeads, x: torch.Tensor, neighbours: torch.Tensor, entropy_weight: float,
                     rows: int = 4096) -> list[float]:
    """SCAN loss (:func:`scan_loss`) of every head over all items: consistency with all k neighbours, entropy of
    the overall mean prediction. Computed ``rows`` items at a time: memory (H, rows, k) besides the (H, N, K)
    probabilities, where the whole (H, N, k, K) neighbour tensor would take 2.8 GB at 70 000 items."""
    with torch.no_grad():
        p = F.softmax(heads(x), dim=-1)  # (H, N, K)
        n = p.shape[1]
        consistency = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
        for start in range(0, n, rows):
            nb = neighbours[start : start + rows]  # (r, k)
            dot = (p[:, start : start + rows, None, :] * p[:, nb]).sum(-1)  # (H, r, k)
            consistency -= torch.log(dot.clamp_min(EPS)).double().mean(-1).sum(-1)
        pbar = p.mean(1)  # (H, K)
        entropy = -(pbar * torch.log(pbar.clamp_min(EPS))).sum(-1)
        return (consistency / n - entropy_weight * entropy.double()).tolist()


@dataclass
class ScanResult:
    """SCAN clusters of every item."""

    clusters: np.ndarray  # (N,) int64 in [0, k)
    proba: np.ndarray  # (N, k) the kept head's cluster probabilities
    confidence: np.ndarray  # (N,) its max probability
    head: int  # index of the kept head
    head_losses: list[float]  # full-data SCAN loss of each head after the SCAN step
    confident_before: float  # fraction of items above the threshold before self-labelling
    confident_after: float  # ... and after
    config: dict = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch logs, SCAN then self-labelling


def scan_cluster(features: np.ndarray, k: int, config: ScanConfig = ScanConfig(), seed: int = 0,
                 progress: bool = False, device: str | torch.device = "cpu") -> ScanResult:
    """Cluster ``features`` into ``k`` groups with SCAN and self-labelling (see the module docstring).

    The heads see the L2-normalised features standardised per dimension
    (zero mean, unit variance over all items), so a head's first steps do
    not depend on the embedding's scale. Seeded: the same inputs, seed and
    device give the same clusters; torch's global random state is left as
    it was.

    Args:
        features: (N, D) embeddings.
        k: clusters, 2 <= k <= N (k above the number of classes over-clusters).
        config: hyper-parameters (:class:`ScanConfig`).
        seed: seeds the heads, the neighbour sampling, the batches and the dropout.
        progress: show the engine's progress bar (no epoch lines).
        device: where the heads train.
    """
    config.check()
    n = len(features)
    if k < 2 or k > n:
        raise ConfigError(f"--clusters must be between 2 and the number of items ({n}), got {k}")
    xn = normalise(features)
    if not np.isfinite(xn).all():
        raise ConfigError("the embeddings hold NaN or infinite values; re-embed with a healthy checkpoint")
    neighbours_np = mine_neighbours(xn, min(config.neighbours, n - 1))  # (N, k')
    x = torch.from_numpy(xn).to(torch.float32)
    x = ((x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)).to(device)  # (N, D)
    nbr = torch.from_numpy(neighbours_np).to(device)
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(seed)
        heads = ClusterHeads(x.shape[1], k, config.heads, config.hidden).to(device)
        source = FeatureBatches(x, nbr, config.batch_size, seed, stream=0)
        epochs = max(config.epochs, -(-config.min_steps // source.steps_per_epoch))
        history = train_heads(ScanTrainable(heads, config.entropy_weight), source, epochs, config.lr,
                              config.weight_decay, progress)
        losses = full_scan_losses(heads, x, nbr, config.entropy_weight)
        best = int(np.argmin(losses))
        head = heads.head(best)
        with torch.no_grad():
            before = float((F.softmax(head(x), -1).max(-1).values > config.threshold).float().mean())
        if config.selflabel_epochs and before > 0:
            history += train_heads(SelfLabelTrainable(head, config.threshold, config.feature_dropout),
                                   FeatureBatches(x, None, config.selflabel_batch_size, seed, stream=1),
                                   config.selflabel_epochs, config.selflabel_lr, config.weight_decay, progress)
        with torch.no_grad():
            proba = F.softmax(head(x), -1).double().cpu().numpy()  # (N, k)
    conf = proba.max(1)
    return ScanResult(clusters=proba.argmax(1).astype(np.int64), proba=proba, confidence=conf, head=best,
                      head_losses=losses, confident_before=before,
                      confident_after=float((conf > config.threshold).mean()), config=asdict(config), history=history)
