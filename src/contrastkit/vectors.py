"""Rows of embeddings as unit vectors: normalising, chunked iteration and exact cosine search.

The one place these live: the FAISS index (:mod:`contrastkit.index`), the
seed models, SCAN, the montages, the audit and the explorer all use them.
Vectors are compared by inner product of L2-normalised rows (cosine
similarity). Memory: an array or a memory map is read :data:`CHUNK_BYTES`
at a time, never copied whole.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from contrastkit.errors import ConfigError, DataError


CHUNK_BYTES = 64 * 2**20  # embeddings are normalised, checked and added 64 MiB of float32 at a time
SCORE = "cosine similarity (inner product of L2-normalised embeddings)"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # a dependency, but say what to do if it is missing
        raise ConfigError(f"similar-image search needs FAISS: pip install faiss-cpu ({e})") from None
    return faiss


def normalise(features: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """(N, D) rows scaled to unit length as a contiguous ``dtype`` array (zero rows stay zero).

    Float32 for search (FAISS takes float32); auto-labelling asks for float64,
    whose probabilities it derives from these rows.
    """
    x = np.asarray(features, dtype=dtype)
    if x.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (items x dimensions), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=dtype)


def chunk_rows(dim: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of ``dim`` float32 values in one chunk of ``chunk_bytes`` (at least 1)."""
    return max(1, chunk_bytes // (4 * max(int(dim), 1)))


def normalised_chunks(features: np.ndarray, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, normalised float32 chunk)`` over ``features`` (an array or a memory map), in order.

    Only one chunk of ``rows`` rows (default :func:`chunk_rows`) is held at a
    time, so a memory-mapped array is never copied whole.

    Raises:
        DataError: a chunk holds NaN or infinite values (naming its rows).
    """
    if np.ndim(features) != 2:
        raise DataError(f"embeddings must be a 2-D array (items x dimensions), got shape {np.shape(features)}")
    n, d = features.shape
    step = chunk_rows(d) if rows is None else int(rows)
    if step < 1:
        raise ConfigError(f"chunk rows must be >= 1, got {step}")
    for start in range(0, n, step):
        x = normalise(features[start : start + step])  # (<= step, D)
        if not np.isfinite(x).all():
            raise DataError(
                f"the embeddings hold NaN or infinite values (rows {start}..{start + len(x) - 1}); "
                "re-embed with a healthy checkpoint"
            )
        yield start, x


def _finite_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]`` normalised (sorted rows: a memory map reads only those), checked finite."""
    x = normalise(features[np.asarray(rows)])
    if not np.isfinite(x).all():
        raise DataError("the embeddings hold NaN or infinite values; re-embed with a healthy checkpoint")
    return x


def exact_search(
    features: np.ndarray, queries: np.ndarray, k: int, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine similarities of ``queries`` against all of ``features``, by brute force in chunks.

    The reference of every recall figure: the database is streamed chunk by
    chunk (see :func:`normalised_chunks`), each chunk's top-k merged into
    the running top-k, so memory is one chunk plus (Q, 2k).

    Args:
        features: (N, D) database (an array or a memory map).
        queries: (Q, D) queries (L2-normalised here).
        k: neighbours per query (clipped to N).
        rows: rows per chunk (default :func:`chunk_rows`).

    Returns:
        (scores, ids): (Q, min(k, N)) float32 and int64, best first (ties to the lower id).
    """
    faiss = _faiss()
    q = normalise(queries)
    k = min(int(k), len(features))
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start, x in normalised_chunks(features, rows):
        s, i = faiss.knn(q, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)  # (Q, <= k) each
        s = np.concatenate([best_s, s.astype(np.float32)], axis=1)
        i = np.concatenate([best_i, i.astype(np.int64) + start], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # earlier chunks (lower ids) win ties
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return best_s, best_i


def rerank(features: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's candidates ``ids`` by exact cosine similarity with ``features``.

    Only the candidate rows are read (a memory-mapped ``features`` stays on
    disk otherwise). Missing candidates (id -1) stay last with id -1 and
    score ``-FLT_MAX``, as FAISS returns them.

    Args:
        features: (N, D) the embeddings the index holds.
        queries: (Q, D) L2-normalised queries.
        ids: (Q, K) candidate ids, K >= k.
        k: results per query.
    """
    lowest = -np.finfo(np.float32).max
    out_s = np.full((len(ids), k), lowest, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    block = 256  # queries at a time: at most 256 * K rows of features in memory
    for b in range(0, len(ids), block):
        cand, q = ids[b : b + block], queries[b : b + block]  # (B, K), (B, D)
        valid = cand >= 0
        rows, where = np.unique(cand[valid], return_inverse=True)
        vectors = normalise(features[rows])  # (U, D), rows sorted
        scores = np.full(cand.shape, lowest, dtype=np.float32)  # (B, K)
        scores[valid] = np.einsum("bd,bd->b", np.repeat(q, valid.sum(1), axis=0), vectors[where])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out_s[b : b + block] = np.take_along_axis(scores, order, 1)
        out_i[b : b + block] = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(cand, order, 1), -1)
    return out_s, out_i
