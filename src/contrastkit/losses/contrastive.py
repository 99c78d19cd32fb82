"""Losses with negatives: the pairwise margin loss, NT-Xent (SimCLR), SupCon, MoCo's InfoNCE and NNCLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.losses._checks import _check_positive, _check_distance, _check_views, _float32_region, _safe_sqrt


def contrastive_pair_loss(distance: Tensor, similar: Tensor, margin: float) -> Tensor:
    """Per-pair contrastive loss of Hadsell, Chopra and LeCun (2006), Eq. 4.

    "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006,
    Eq. 4: ``L = (1 - Y) 1/2 D^2 + Y 1/2 max(0, m - D)^2``. Similar pairs
    (Y = 0 in the paper) cost ``1/2 D^2``; dissimilar pairs (Y = 1) cost
    ``1/2 max(0, m - D)^2``, so they stop costing once farther than the margin.

    Args:
        distance: Distances D between the two members of each pair, any shape.
        similar: Same shape as ``distance``; True (or 1) where the pair is
            similar, False (or 0) where it is dissimilar.
        margin: The margin m > 0.

    Returns:
        Per-pair losses in float32, same shape as ``distance``.

    Raises:
        ConfigError: If ``margin`` is not a finite number > 0.
        ValueError: If ``distance`` and ``similar`` differ in shape.
    """
    _check_positive("margin", margin)
    if distance.shape != similar.shape:
        raise ValueError(
            f"distance and similar must have the same shape, got {tuple(distance.shape)} and {tuple(similar.shape)}"
        )
    with _float32_region(distance.device):
        d = distance.float()
        pull = 0.5 * d.pow(2)
        push = 0.5 * F.relu(margin - d).pow(2)
        return torch.where(similar.bool(), pull, push)


def _pair_distances(z1: Tensor, z2: Tensor, distance: str) -> tuple[Tensor, Tensor]:
    """Distances of the positive pairs and of all 2N x 2N embedding pairs.

    Args:
        z1: First views, shape (N, D), float32.
        z2: Second views, shape (N, D), float32.
        distance: ``"euclidean"`` or ``"cosine"``.

    Returns:
        ``(positive, all_pairs)``: shape (N,) distances d(z1[i], z2[i]) and the
        (2N, 2N) matrix of distances between rows of ``cat([z1, z2])``.
    """
    z = torch.cat([z1, z2])  # (2N, D)
    if distance == "euclidean":
        positive = _safe_sqrt((z1 - z2).pow(2).sum(dim=1))  # (N,), exact: no Gram cancellation
        # Centre first: distances do not change and the Gram form below
        # loses less precision when the batch sits far from the origin.
        zc = z - z.mean(dim=0, keepdim=True)
        sq_norm = zc.pow(2).sum(dim=1)  # (2N,)
        squared = sq_norm[:, None] + sq_norm[None, :] - 2.0 * (zc @ zc.T)  # (2N, 2N)
        return positive, _safe_sqrt(squared)
    n1, n2, zn = F.normalize(z1, dim=1), F.normalize(z2, dim=1), F.normalize(z, dim=1)
    positive = 1.0 - (n1 * n2).sum(dim=1)  # (N,)
    return positive, 1.0 - zn @ zn.T  # (2N, 2N)


def pairwise_margin_loss(z1: Tensor, z2: Tensor, margin: float = 1.0, distance: str = "euclidean") -> Tensor:
    """Batch form of the Hadsell et al. (2006) Eq. 4 loss used by the ``pairwise`` method.

    ``z1[i]`` and ``z2[i]`` are two views of image i: the N pairs
    ``(z1[i], z2[i])`` are the similar pairs. The dissimilar pairs are every
    unordered pair of embeddings of different images among the 2N embeddings
    of both views: ``2N(N - 1)`` pairs. The loss is the mean over the similar
    pairs plus the mean over the dissimilar pairs: the two terms are averaged
    separately so that the N positives are not swamped by the ~2N^2
    negatives. With N = 1 there are no negatives and that term is 0.

    Distances: ``"euclidean"`` is ``||a - b||_2``, with a gradient of 0 (not
    NaN) where two embeddings coincide; ``"cosine"`` is ``1 - cos(a, b)``, in
    [0, 2] up to rounding.

    Args:
        z1: Embeddings of the first views, shape (N, D).
        z2: Embeddings of the second views, shape (N, D).
        margin: Margin m > 0 beyond which dissimilar pairs cost nothing.
        distance: ``"euclidean"`` or ``"cosine"``.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``margin`` is not > 0 or ``distance`` is unknown.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape.
    """
    _check_positive("margin", margin)
    _check_distance(distance)
    _check_views(z1, z2)
    n = z1.shape[0]
    with _float32_region(z1.device):
        positive, all_pairs = _pair_distances(z1.float(), z2.float(), distance)
        image = torch.arange(n, device=z1.device).repeat(2)  # (2N,) image index of each row
        upper = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=z1.device).triu(diagonal=1)
        negative = upper & (image[:, None] != image[None, :])  # (2N, 2N), 2N(N-1) True
        pull = contrastive_pair_loss(positive, torch.ones_like(positive, dtype=torch.bool), margin)  # (N,)
        push = contrastive_pair_loss(all_pairs, torch.zeros_like(negative), margin)  # (2N, 2N)
        # A masked sum, not boolean indexing: no data-dependent shapes.
        push_sum = torch.where(negative, push, 0.0).sum()
        return pull.mean() + push_sum / max(2 * n * (n - 1), 1)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent (InfoNCE) loss of SimCLR: Chen et al. (2020), arXiv 2002.05709, Eq. 1.

    The 2N embeddings are L2-normalised and compared by cosine similarity.
    For anchor i with positive j (the other view of the same image),
    ``l(i, j) = -log exp(sim(i, j)/t) / sum_{k != i} exp(sim(i, k)/t)``: the
    other 2N - 2 embeddings are the negatives. The loss is
    ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``, the mean over all 2N
    anchors. With N = 1 the only candidate of each anchor is its positive,
    so the loss is 0.

    Args:
        z1: Embeddings of the first views, shape (N, D).
        z2: Embeddings of the second views, shape (N, D).
        temperature: Temperature t > 0 dividing the similarities.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If z1 and z2 are not two (N, D) batches of one shape.
    """
    _check_positive("temperature", temperature)
    _check_views(z1, z2)
    n = z1.shape[0]
    with _float32_region(z1.device):
        z = F.normalize(torch.cat([z1.float(), z2.float()]), dim=1)  # (2N, D)
        logits = (z @ z.T) / temperature  # (2N, 2N)
        self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        # The most negative finite float: exp underflows to exactly 0, no inf - inf.
        logits = logits.masked_fill(self_pair, torch.finfo(logits.dtype).min)
        index = torch.arange(n, device=z.device)
        target = torch.cat([index + n, index])  # (2N,) row of the other view
        return F.cross_entropy(logits, target)


def supcon_loss(z: Tensor, labels: Tensor | None, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss L^sup_out of Khosla et al. (2020), arXiv 2004.11362, Eq. 2.

    The N * V embeddings are L2-normalised. For anchor i, A(i) is every other
    embedding and P(i) those in A(i) with the same label (the other views of
    the same image and every view of other images of its class):
    ``L_i = -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t)``.
    Eq. 2 sums L_i over anchors; like the authors' code this returns the mean
    over anchors, here over the anchors that have at least one positive (an
    anchor without positives contributes nothing; if no anchor has one, the
    loss is 0 and still has a grad). With ``labels=None`` every image is its
    own class, and with V = 2 this is exactly NT-Xent (:func:`nt_xent_loss`).

    Args:
        z: Embeddings, shape (N, V, D): V views of each of N images.
        labels: Class of each image, shape (N,), or None (each image its own class).
        temperature: Temperature t > 0 dividing the similarities.

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If z is not (N, V, D) with N, V, D >= 1 or labels is not (N,).
    """
    _check_positive("temperature", temperature)
    if z.ndim != 3 or 0 in z.shape:
        raise ValueError(f"z must have shape (N, V, D) with N, V, D >= 1, got {tuple(z.shape)}")
    n, views, dim = z.shape
    if labels is None:
        labels = torch.arange(n, device=z.device)
    elif labels.shape != (n,):
        raise ValueError(f"labels must have shape (N,) = ({n},) to match z {tuple(z.shape)}, got {tuple(labels.shape)}")
    with _float32_region(z.device):
        zz = F.normalize(z.float().reshape(n * views, dim), dim=1)  # (M, D), M = N*V, row = image*V + view
        row_label = labels.to(z.device).repeat_interleave(views)  # (M,)
        logits = (zz @ zz.T) / temperature  # (M, M)
        self_pair = torch.eye(n * views, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_pair, torch.finfo(logits.dtype).min)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (M, M), log over A(i)
        positive = (row_label[:, None] == row_label[None, :]) & ~self_pair  # (M, M), P(i)
        n_positive = positive.sum(dim=1)  # (M,)
        # where, not multiply: the masked self entries must not reach the sum.
        pos_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1)  # (M,)
        per_anchor = -pos_log_prob / n_positive.clamp(min=1)  # (M,), 0 where P(i) is empty
        return per_anchor.sum() / (n_positive > 0).sum().clamp(min=1)


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo InfoNCE with a queue of negatives: He et al. (2019), arXiv 1911.05722, Eq. 1 and Algorithm 1.

    As in MoCo v2 (Chen, Fan, Girshick, He 2020, arXiv 2003.04297), queries
    and keys are L2-normalised; for query q with its positive key k+ and
    the K queued keys k_i,
    ``L_q = -log exp(q.k+/t) / (exp(q.k+/t) + sum_i exp(q.k_i/t))``, mean over
    the batch. Keys and queue are detached.

    Args:
        q: Queries (online projections), shape (N, D).
        k: Positive keys (key-encoder projections of the other view), shape (N, D).
        queue: Negative keys, shape (K, D), K >= 1 (normalised here too).
        temperature: Temperature t > 0 (MoCo v2: 0.2).

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If the shapes do not fit.
    """
    _check_positive("temperature", temperature)
    _check_views(q, k)
    if queue.ndim != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] == 0:
        raise ValueError(f"queue must have shape (K, {q.shape[1]}) with K >= 1, got {tuple(queue.shape)}")
    with _float32_region(q.device):
        qn = F.normalize(q.float(), dim=1)
        kn = F.normalize(k.detach().float(), dim=1)
        neg = F.normalize(queue.detach().float(), dim=1)
        l_pos = (qn * kn).sum(dim=1, keepdim=True)  # (N, 1)
        l_neg = qn @ neg.T  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """NN(z, Q) of NNCLR (arXiv 2104.14548, Eq. 1): the support row of highest cosine similarity to each z.

    Args:
        z: Queries, shape (N, D).
        support: Support set Q, shape (K, D), K >= 1.

    Returns:
        The L2-normalised nearest support rows, shape (N, D), float32, no grad.
    """
    if support.ndim != 2 or support.shape[1] != z.shape[1] or support.shape[0] == 0:
        raise ValueError(f"support must have shape (K, {z.shape[1]}) with K >= 1, got {tuple(support.shape)}")
    with torch.no_grad(), _float32_region(z.device):
        s = F.normalize(support.float(), dim=1)
        idx = (F.normalize(z.float(), dim=1) @ s.T).argmax(dim=1)  # (N,)
        return s[idx]


def nnclr_loss(z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor, support: Tensor, temperature: float = 0.1) -> Tensor:
    """NNCLR loss of Dwibedi et al. (2021), arXiv 2104.14548, Eq. 2 with the prediction head, symmetrised.

    For image i, ``L_i = -log exp(NN(z1_i, Q) . p2_i / t) / sum_k exp(NN(z1_i, Q) . p2_k / t)``
    with all vectors L2-normalised, NN the nearest support-set neighbour
    (:func:`nearest_neighbours`, no gradient) and p2 the predictions of the
    other views; the other N - 1 predictions are the negatives. Mean over
    the batch, averaged with the same term for the views swapped (Sec. 3.2).

    Args:
        z1: Projections of the first views, shape (N, D) (only looked up).
        z2: Projections of the second views, shape (N, D).
        p1: Predictions from the first views, shape (N, D).
        p2: Predictions from the second views, shape (N, D).
        support: Support set Q, shape (K, D).
        temperature: Temperature t > 0 (paper: 0.1).

    Returns:
        Scalar float32 loss.

    Raises:
        ConfigError: If ``temperature`` is not a finite number > 0.
        ValueError: If the shapes do not fit.
    """
    _check_positive("temperature", temperature)
    _check_views(z1, z2)
    _check_views(p1, p2)
    _check_views(z1, p1)
    target = torch.arange(z1.shape[0], device=z1.device)
    with _float32_region(z1.device):
        total = z1.new_zeros((), dtype=torch.float32)
        for z, p in ((z1, p2), (z2, p1)):
            nn_z = nearest_neighbours(z, support)  # (N, D)
            logits = nn_z @ F.normalize(p.float(), dim=1).T / temperature  # (N, N)
            total = total + F.cross_entropy(logits, target)
        return 0.5 * total


class PairwiseMarginLoss(nn.Module):
    """Pairwise margin loss of Hadsell, Chopra and LeCun (2006), Eq. 4, over a batch.

    "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
    Positives are the two views of one image, negatives every pair of
    embeddings of different images; see :func:`pairwise_margin_loss`.
    Inputs: z1, z2 of shape (N, D). Output: scalar float32 loss.
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean") -> None:
        """Check and store the hyper-parameters.

        Args:
            margin: Margin m > 0 beyond which dissimilar pairs cost nothing.
            distance: ``"euclidean"`` or ``"cosine"``.

        Raises:
            ConfigError: If margin is not > 0 or distance is unknown.
        """
        super().__init__()
        _check_positive("margin", margin)
        _check_distance(distance)
        self.margin = margin
        self.distance = distance

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of two views, each of shape (N, D)."""
        return pairwise_margin_loss(z1, z2, self.margin, self.distance)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"margin={self.margin}, distance={self.distance!r}"


class NTXentLoss(nn.Module):
    """NT-Xent loss of SimCLR: Chen, Kornblith, Norouzi, Hinton (2020), arXiv 2002.05709, Eq. 1.

    Averaged over all 2N anchors; see :func:`nt_xent_loss`.
    Inputs: z1, z2 of shape (N, D). Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 dividing the cosine similarities.

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Loss of two views, each of shape (N, D)."""
        return nt_xent_loss(z1, z2, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


class SupConLoss(nn.Module):
    """Supervised contrastive loss L^sup_out: Khosla et al. (2020), arXiv 2004.11362, Eq. 2.

    Mean over anchors with at least one positive; see :func:`supcon_loss`.
    Inputs: z of shape (N, V, D), labels of shape (N,) or None (then it is
    NT-Xent over the V views). Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 dividing the cosine similarities.

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Loss of V views of N images, z of shape (N, V, D), labels (N,) or None."""
        return supcon_loss(z, labels, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


class MoCoLoss(nn.Module):
    """MoCo v2 InfoNCE against a queue: He et al. (2019), arXiv 1911.05722, Eq. 1; Chen et al. (2020), arXiv 2003.04297.

    See :func:`moco_loss`. Inputs: q, k of shape (N, D), queue (K, D).
    Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 (MoCo v2: 0.2).

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        """Loss of queries q against positive keys k and the queued negatives."""
        return moco_loss(q, k, queue, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"


class NNCLRLoss(nn.Module):
    """NNCLR: Dwibedi, Aytar, Tompson, Sermanet, Zisserman (2021), arXiv 2104.14548, Eq. 2, symmetrised.

    Nearest support-set neighbours as positives for the other view's
    predictions; see :func:`nnclr_loss`. Inputs: z1, z2, p1, p2 of shape
    (N, D), support (K, D). Output: scalar float32 loss.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        """Check and store the temperature.

        Args:
            temperature: Temperature t > 0 (paper: 0.1).

        Raises:
            ConfigError: If temperature is not a finite number > 0.
        """
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor, support: Tensor) -> Tensor:
        """Symmetric loss of two views' projections z and predictions p against the support set."""
        return nnclr_loss(z1, z2, p1, p2, support, self.temperature)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"temperature={self.temperature}"
