"""Searching a FAISS index of L2-normalised embeddings (exact re-ranking of IVF-PQ candidates), and its recall@k against exact search.

The index itself is built in :mod:`contrastkit.index`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.errors import ConfigError, DataError
from contrastkit.vectors import _finite_rows, exact_search, normalise, rerank

RECALL_K = 10  # recall is measured on the top-10
RECALL_QUERIES = 1000  # items used as queries when measuring recall (all of them when fewer)


def search(
    index: Any, queries: np.ndarray, k: int, features: np.ndarray | None = None, rerank_factor: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items of each query (L2-normalised here), best first.

    Args:
        index: a FAISS index from :func:`contrastkit.index.build_index` or
            :func:`contrastkit.index_files.read_index`.
        queries: (Q, D) query embeddings.
        k: neighbours per query, >= 1; more than the index holds gives all of them.
        features: (N, D) the embeddings the index was built from (may be a
            memory map); needed when ``rerank_factor`` > 1.
        rerank_factor: > 1: take ``max(k, 10) * rerank_factor`` candidates
            from the index and return the ``k`` best by exact cosine
            similarity (the ``rerank`` of index.json; IVF-PQ scores are
            approximate). At least as many candidates as for k = 10, where
            recall was measured, so a smaller k is never searched worse.

    Returns:
        (scores, ids): (Q, min(k, N)) float32 cosine similarities and int64 row indices.
    """
    if k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {k}")
    if rerank_factor < 1:
        raise ConfigError(f"the re-ranking factor must be >= 1, got {rerank_factor}")
    q = normalise(queries)
    if q.shape[1] != index.d:
        raise DataError(f"queries have {q.shape[1]} dimensions but the index has {index.d}")
    k = min(int(k), int(index.ntotal))
    if k == 0 or len(q) == 0:
        return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
    if rerank_factor > 1:
        if features is None or len(features) != index.ntotal:
            raise DataError(f"re-ranking needs the {index.ntotal} embeddings the index was built from")
        pool = min(max(k, RECALL_K) * int(rerank_factor), int(index.ntotal))
        _, candidates = index.search(q, pool)  # (Q, pool)
        return rerank(features, q, candidates.astype(np.int64), k)
    scores, ids = index.search(q, k)  # (Q, k) each
    return scores.astype(np.float32), ids.astype(np.int64)


def _sample_rows(n: int, sample: int | np.ndarray, seed: int) -> np.ndarray:
    if isinstance(sample, (int, np.integer)):
        if sample < 1:
            raise ConfigError(f"the recall sample must hold >= 1 queries, got {sample}")
        if sample >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False))
    rows = np.asarray(sample, dtype=np.int64).reshape(-1)
    if len(rows) == 0 or rows.min() < 0 or rows.max() >= n:
        raise ConfigError(f"recall sample rows must be a non-empty set of indices in [0, {n})")
    return rows


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each exact top-k row found in the approximate top-k row."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f, e)) / k for f, e in zip(found, exact)]))


def recall_at_k(
    index: Any, features: np.ndarray, k: int = RECALL_K, sample: int | np.ndarray = RECALL_QUERIES, seed: int = 0,
    rerank_factor: int = 1,
) -> float:
    """Recall@k of ``index`` against exact search, with items of ``features`` as queries.

    For each query, the share of its exact k nearest items (brute-force inner
    product of L2-normalised vectors, :func:`exact_search`) that the index
    returns among its k nearest; averaged over the queries. Queries are items
    of the data base, as with search by item index, so each query's own item
    is among its exact neighbours.

    Args:
        index: the index to measure (built on ``features``).
        features: (N, D) the embeddings the index holds, in the same order (may be a memory map).
        k: neighbours compared per query (clipped to N).
        sample: the number of queries (a seeded sample of rows; all rows when
            it is >= N) or the row indices to use as queries.
        seed: seeds the sample.
        rerank_factor: search as :func:`search` does with it (index.json's ``rerank``).
    """
    if np.ndim(features) != 2 or len(features) != index.ntotal:
        raise DataError(f"the index holds {index.ntotal} items but {len(features)} embeddings were given")
    k = min(int(k), len(features))
    rows = _sample_rows(len(features), sample, seed)
    queries = _finite_rows(features, np.sort(rows))[np.argsort(np.argsort(rows))]  # in the order of rows
    _, found = search(index, queries, k, features, rerank_factor)
    return _recall(found, exact_search(features, queries, k)[1])
