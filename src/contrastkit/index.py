"""The FAISS index of a run's embeddings: its kinds, and how each is built and tuned.

``contrastkit index RUN`` builds the index; ``contrastkit search RUN QUERY ...``
finds the items nearest each query (building the index first when it is
missing or out of date). Searching an index and measuring its recall:
:mod:`contrastkit.index_search`; its files and the run-level build:
:mod:`contrastkit.index_files`.

Vectors are L2-normalised and compared by inner product, so scores are cosine
similarities in [-1, 1] (FAISS ``METRIC_INNER_PRODUCT``). The kind of index:

- ``flat``: ``IndexFlatIP``, exact brute force; the choice of ``auto`` up to
  :data:`EXACT_MAX_ITEMS` items.
- ``ivf``: ``IndexIVFFlat`` (inverted lists, Jegou et al., TPAMI 2011) with
  ``nlist`` about ``4 * sqrt(N)`` cells (at most N / 39, FAISS's minimum of
  training points per centroid), k-means trained on a seeded sample of up to
  ``256 * nlist`` vectors (at most :data:`IVF_TRAIN_MAX_ROWS`, but never
  fewer than 39 per cell); the choice of ``auto`` above the threshold while
  the float32 vectors take at most :data:`FLOAT_INDEX_MAX_BYTES`.
- ``ivfpq``: ``IndexIVFPQ`` (product quantization, Jegou et al., TPAMI 2011):
  the same cells, each vector stored as one 8-bit code per 8 dimensions
  (64 bytes for 512-d instead of 2 KiB); the choice of ``auto`` when the
  float32 vectors would take more than :data:`FLOAT_INDEX_MAX_BYTES`
  (2 GiB: above about 1M x 512). Its scores are approximate, so the
  ``max(k, 10) * RERANK_FACTOR`` best candidates are re-scored exactly with the
  embeddings (read from the memory-mapped ``embeddings.npy``, only those rows)
  and the ``k`` best returned, with exact cosine similarities.
- ``hnsw``: ``IndexHNSWFlat`` (Malkov and Yashunin, arXiv 1603.09320).

With more than :data:`HNSW_QUANTIZER_MIN_CELLS` cells (above about 4M items)
an IVF index finds the cells of a vector through an HNSW graph of the
centroids instead of comparing it with every centroid (FAISS's
``IVF..._HNSW32``): adding 10M vectors to 12 649 cells then costs a few
hundred distance computations per vector instead of 12 649.

An approximate index is tuned, not guessed: its search-time knob (``nprobe``
for IVF, ``efSearch`` for HNSW) is doubled from small values until recall@10
against exact search, measured on a seeded sample of the items as queries,
reaches ``target_recall`` (for IVF-PQ also when one more doubling gains less
than :data:`RECALL_PLATEAU`: without re-ranking its codes cap the recall).
The knob and the recall it reached are stored in ``index.json`` and inside
the index itself.

Memory: the embeddings are read in chunks of :data:`~contrastkit.vectors.CHUNK_BYTES`, normalised
and added chunk by chunk, so a memory-mapped ``embeddings.npy`` is never
copied whole (the index itself holds N x D float32 for flat / IVF / HNSW, and
N x (D / 8 + 8) bytes for IVF-PQ). Exact search, the reference of recall, is
brute force over the same chunks.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from contrastkit.errors import ConfigError, DataError
from contrastkit.index_search import RECALL_K, RECALL_QUERIES, _recall, _sample_rows, search
from contrastkit.vectors import SCORE, _faiss, _finite_rows, exact_search, normalised_chunks

KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
EXACT_MAX_ITEMS = 100_000  # `auto` builds an exact flat index up to this many items, IVF above
FLOAT_INDEX_MAX_BYTES = 2 * 2**30  # `auto` keeps float32 vectors (flat / IVF) up to 2 GiB (1M x 512), IVF-PQ above
TARGET_RECALL = 0.95  # recall@10 against exact search an approximate index is tuned to reach
RECALL_PLATEAU = 0.005  # IVF-PQ stops doubling nprobe when recall@10 gains less than this
IVF_CELLS_PER_SQRT_N = 4  # nlist = 4 * sqrt(N), the usual rule of thumb (FAISS wiki)
IVF_MIN_POINTS_PER_CELL = 39  # FAISS warns when k-means has fewer training points per centroid
IVF_TRAIN_PER_CELL = 256  # k-means trains on at most 256 * nlist vectors (FAISS's own cap) ...
IVF_TRAIN_MAX_ROWS = 500_000  # ... and at most this many (1 GiB at 512-d), unless 39 per cell needs more
HNSW_QUANTIZER_MIN_CELLS = 8192  # more IVF cells than this: find them with an HNSW graph of the centroids
HNSW_QUANTIZER_EF = 64  # search list of that graph (raised to 2 * nprobe when nprobe is larger)
PQ_DIMS_PER_CODE = 8  # IVF-PQ: one sub-quantizer (one byte of code) per 8 dimensions: 32x smaller than float32
PQ_BITS = 8  # bits per sub-quantizer code: 256 centroids each
IVFPQ_MIN_ITEMS = (1 << PQ_BITS) * IVF_MIN_POINTS_PER_CELL  # 9984: PQ k-means needs 39 points per centroid
RERANK_FACTOR = 10  # IVF-PQ: the k * 10 best candidates are re-scored exactly from the embeddings
HNSW_M = 32  # neighbours per node of the HNSW graph (memory ~ 2 * M ints per item)
HNSW_EF_CONSTRUCTION = 80  # candidate list while building the graph


def ivf_cells(n: int) -> int:
    """``nlist`` for ``n`` items: about 4 * sqrt(n), but at least 39 training points per cell and >= 1 cell."""
    return max(1, min(int(round(IVF_CELLS_PER_SQRT_N * math.sqrt(n))), n // IVF_MIN_POINTS_PER_CELL))


def ivf_train_rows(n: int, cells: int) -> int:
    """Size of the k-means training sample of ``cells`` IVF cells among ``n`` items.

    ``256 * cells`` (FAISS's cap), at most :data:`IVF_TRAIN_MAX_ROWS` so that
    memory stays bounded, but at least 39 per cell (FAISS's minimum), and at
    most ``n``.
    """
    bounded = min(IVF_TRAIN_PER_CELL * cells, IVF_TRAIN_MAX_ROWS)
    return int(min(n, max(IVF_MIN_POINTS_PER_CELL * cells, bounded)))


def pq_subquantizers(dim: int) -> int:
    """Sub-quantizers of IVF-PQ for ``dim`` dimensions: the largest divisor of ``dim`` up to ``dim / 8`` (>= 1)."""
    target = max(1, dim // PQ_DIMS_PER_CODE)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def auto_kind(
    n: int, dim: int, exact_max_items: int = EXACT_MAX_ITEMS, float_max_bytes: int = FLOAT_INDEX_MAX_BYTES
) -> str:
    """The kind ``auto`` builds for ``n`` x ``dim`` embeddings.

    ``ivfpq`` when the float32 vectors (``n * dim * 4`` bytes) exceed
    ``float_max_bytes`` and there are enough items to train PQ
    (:data:`IVFPQ_MIN_ITEMS`); else ``flat`` up to ``exact_max_items`` items
    and ``ivf`` above.
    """
    if n * dim * 4 > float_max_bytes and n >= IVFPQ_MIN_ITEMS:
        return "ivfpq"
    return "flat" if n <= exact_max_items else "ivf"


def _check_options(kind: str, target_recall: float, recall_queries: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    if not 0 < target_recall <= 1:
        raise ConfigError(f"--target-recall must be in (0, 1], got {target_recall}")
    if recall_queries < 1:
        raise ConfigError(f"--recall-queries must be >= 1, got {recall_queries}")


def _ivf_index(
    kind: str, n: int, d: int, nlist: int | None, pq_m: int | None, quantizer: str, seed: int
) -> tuple[Any, dict[str, Any]]:
    """An untrained IVF-flat or IVF-PQ index and its parameters for index.json."""
    faiss = _faiss()
    cells = ivf_cells(n) if nlist is None else int(nlist)
    if not 1 <= cells <= n:
        raise ConfigError(f"--nlist must be in [1, {n}] for {n} items, got {cells}")
    if quantizer not in ("auto", "flat", "hnsw"):
        raise ConfigError(f"the IVF quantizer must be auto, flat or hnsw, got {quantizer!r}")
    if quantizer == "auto":
        quantizer = "hnsw" if cells > HNSW_QUANTIZER_MIN_CELLS else "flat"
    if quantizer == "hnsw":  # centroids trained by k-means on a flat index, then put in an HNSW graph
        coarse = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        coarse.hnsw.efSearch = HNSW_QUANTIZER_EF  # also while adding: each vector goes to its nearest cell
    else:
        coarse = faiss.IndexFlatIP(d)
    params: dict[str, Any] = {"nlist": cells, "quantizer": quantizer}
    if kind == "ivf":
        index = faiss.IndexIVFFlat(coarse, d, cells, faiss.METRIC_INNER_PRODUCT)
    else:
        if n < IVFPQ_MIN_ITEMS:
            raise ConfigError(
                f"--kind ivfpq needs at least {IVFPQ_MIN_ITEMS} items (product quantization trains "
                f"{1 << PQ_BITS} centroids per sub-quantizer), got {n}; use flat, ivf or hnsw"
            )
        m = pq_subquantizers(d) if pq_m is None else int(pq_m)
        if m < 1 or d % m:
            raise ConfigError(f"the PQ sub-quantizers must divide the {d} dimensions, got {m}")
        index = faiss.IndexIVFPQ(coarse, d, cells, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = seed
        params.update({"pq_m": m, "pq_bits": PQ_BITS, "code_bytes": m * PQ_BITS // 8})
    if quantizer == "hnsw":
        index.quantizer_trains_alone = 2
    index.cp.seed = seed
    return index, params


def build_index(
    features: np.ndarray,
    kind: str = "auto",
    *,
    exact_max_items: int = EXACT_MAX_ITEMS,
    float_max_bytes: int = FLOAT_INDEX_MAX_BYTES,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    rerank_factor: int | None = None,
    quantizer: str = "auto",
    hnsw_m: int = HNSW_M,
    ef_search: int | None = None,
    target_recall: float = TARGET_RECALL,
    recall_queries: int = RECALL_QUERIES,
    chunk: int | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index of the L2-normalised ``features``; item ids are row indices.

    ``features`` may be a memory map (``np.load(..., mmap_mode="r")``): it is
    read in chunks, normalised and added chunk by chunk, so it is never held
    in memory twice; the training sample and the recall queries are read as
    rows.

    Args:
        features: (N, D) embeddings, N >= 1.
        kind: ``flat`` (exact), ``ivf``, ``ivfpq``, ``hnsw``, or ``auto``
            (:func:`auto_kind`).
        exact_max_items: ``auto`` builds flat up to this many items.
        float_max_bytes: ``auto`` builds IVF-PQ when N * D * 4 exceeds it.
        nlist: IVF cells (default :func:`ivf_cells`).
        nprobe: IVF cells visited per query (default: the smallest power of
            two reaching ``target_recall``, up to nlist).
        pq_m: IVF-PQ sub-quantizers, dividing D (default :func:`pq_subquantizers`).
        rerank_factor: IVF-PQ re-scores ``max(k, 10) * rerank_factor`` candidates
            exactly (default :data:`RERANK_FACTOR`; 1 turns it off).
        quantizer: how IVF finds cells: ``flat`` (all centroids), ``hnsw``
            (a graph of the centroids), ``auto`` (hnsw above
            :data:`HNSW_QUANTIZER_MIN_CELLS` cells).
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW search list (default: tuned like nprobe, from 16).
        target_recall: recall@10 the default nprobe / ef_search is tuned to reach.
        recall_queries: items used as queries to measure recall.
        chunk: rows read and added at a time (default :func:`~contrastkit.vectors.chunk_rows`).
        seed: seeds the training sample, the k-means and the recall queries.

    Returns:
        (index, info): info has ``kind``, ``count``, ``dim``, the parameters,
        ``recall_at_10`` (1.0 for flat, by construction), ``recall_queries``,
        ``rerank`` (the factor :func:`search` must be given), and
        ``build_seconds`` = ``train_seconds`` + ``add_seconds`` + ``tune_seconds``.
    """
    faiss = _faiss()
    _check_options(kind, target_recall, recall_queries)
    if np.ndim(features) != 2:
        raise DataError(f"embeddings must be a 2-D array (items x dimensions), got shape {np.shape(features)}")
    n, d = features.shape
    if n == 0 or d == 0:
        raise DataError(f"cannot index {n} x {d} embeddings: need at least one item and one dimension")
    if kind == "auto":
        kind = auto_kind(n, d, exact_max_items, float_max_bytes)
    factor = (RERANK_FACTOR if kind == "ivfpq" else 1) if rerank_factor is None else int(rerank_factor)
    if factor < 1:
        raise ConfigError(f"the re-ranking factor must be >= 1, got {factor}")
    start = time.perf_counter()
    info: dict[str, Any] = {"kind": kind, "count": int(n), "dim": int(d), "score": SCORE}
    if kind in ("ivf", "ivfpq"):
        index, params = _ivf_index(kind, n, d, nlist, pq_m, quantizer, seed)
        train_rows = _sample_rows(n, ivf_train_rows(n, params["nlist"]), seed + 1)
        index.train(_finite_rows(features, train_rows))
        info.update({**params, "train_sample": int(len(train_rows))})
    elif kind == "hnsw":
        if hnsw_m < 2:
            raise ConfigError(f"--hnsw-m must be >= 2, got {hnsw_m}")
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        info.update({"hnsw_m": hnsw_m, "ef_construction": HNSW_EF_CONSTRUCTION})
    else:
        index = faiss.IndexFlatIP(d)
    trained = time.perf_counter()
    for _, x in normalised_chunks(features, chunk):
        index.add(x)
    added = time.perf_counter()
    info.update({"train_seconds": round(trained - start, 3), "add_seconds": round(added - trained, 3)})
    if kind == "flat":
        info.update({"recall_at_10": 1.0, "recall_queries": 0, "rerank": 1, "note": "exact search",
                     "tune_seconds": 0.0, "build_seconds": round(added - start, 3)})
        return index, info

    rows = _sample_rows(n, recall_queries, seed)
    queries = _finite_rows(features, rows)  # (Q, D), rows are sorted
    k = min(RECALL_K, n)
    exact = exact_search(features, queries, k, chunk)[1]  # (Q, k) the reference every setting is measured against
    if kind in ("ivf", "ivfpq"):
        cells = info["nlist"]
        knob, values = "nprobe", _doubling(1, cells) if nprobe is None else [int(nprobe)]
    else:
        knob, values = "ef_search", _doubling(max(16, k), max(4096, k)) if ef_search is None else [int(ef_search)]
    if values[0] < 1:
        raise ConfigError(f"--{knob.replace('_', '-')} must be >= 1, got {values[0]}")
    recall, value, previous = 0.0, values[0], None
    for value in values:
        _set_knob(index, kind, value)
        _, found = search(index, queries, k, features, factor)
        recall = _recall(found, exact)
        if recall >= target_recall:
            break
        if kind == "ivfpq" and previous is not None and recall - previous[1] < RECALL_PLATEAU:
            value, recall = previous  # the codes cap the recall: more cells cost time and gain nothing
            _set_knob(index, kind, value)
            break
        previous = (value, recall)
    how = "given" if len(values) == 1 else "tuned by doubling" + (
        "" if recall >= target_recall else ", stopped where recall stopped rising" if kind == "ivfpq" else "")
    info.update({
        knob: int(value), "recall_at_10": round(recall, 4), "recall_queries": int(len(rows)),
        "target_recall": target_recall, "rerank": factor,
        "note": f"recall@{k} against exact search, items as queries; {knob} {how}"
                + (f"; the {k * factor} best IVF-PQ candidates re-scored exactly" if factor > 1 else ""),
    })
    done = time.perf_counter()
    info.update({"tune_seconds": round(done - added, 3), "build_seconds": round(done - start, 3)})
    return index, info


def _doubling(first: int, last: int) -> list[int]:
    out = [first]
    while out[-1] < last:
        out.append(min(out[-1] * 2, last))
    return out


def _set_knob(index: Any, kind: str, value: int) -> None:
    if kind in ("ivf", "ivfpq"):
        ivf = _faiss().extract_index_ivf(index)
        ivf.nprobe = value
        hnsw = getattr(_faiss().downcast_index(ivf.quantizer), "hnsw", None)
        if hnsw is not None:  # the HNSW graph of the centroids must look at least nprobe deep
            hnsw.efSearch = max(HNSW_QUANTIZER_EF, 2 * value)
    else:
        index.hnsw.efSearch = value
