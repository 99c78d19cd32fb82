"""Similar-image search: a FAISS index of a run's embeddings, queried by image file or item.

``contrastkit index RUN`` builds the index; ``contrastkit search RUN QUERY ...``
finds the items nearest each query (building the index first when it is
missing or out of date).

Vectors are L2-normalised and compared by inner product, so scores are cosine
similarities in [-1, 1] (FAISS ``METRIC_INNER_PRODUCT``). The kind of index:

- ``flat``: ``IndexFlatIP``, exact brute force; the choice of ``auto`` up to
  :data:`EXACT_MAX_ITEMS` items.
- ``ivf``: ``IndexIVFFlat`` (inverted lists, Jegou et al., TPAMI 2011) with
  ``nlist`` about ``4 * sqrt(N)`` cells (at most N / 39, FAISS's minimum of
  training points per centroid), k-means trained on a seeded sample of up to
  ``256 * nlist`` vectors; the choice of ``auto`` above the threshold.
- ``hnsw``: ``IndexHNSWFlat`` (Malkov and Yashunin, arXiv 1603.09320).

An approximate index is tuned, not guessed: its search-time knob (``nprobe``
for IVF, ``efSearch`` for HNSW) is doubled from small values until recall@10
against exact search, measured on a seeded sample of the items as queries,
reaches ``target_recall``. The knob and the recall it reached are stored in
``index.json`` and inside the index itself.

Files, beside ``embeddings.npy``:

- ``index.faiss``: ``faiss.serialize_index`` bytes, written atomically, read
  back with ``faiss.deserialize_index`` (no pickle);
- ``index.json``: kind, parameters, recall@10, build time, the SHA-256 of
  ``index.faiss`` and a fingerprint of the embeddings it was built from (a
  re-embedded run gets a new index).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contrastkit.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from contrastkit.errors import ConfigError, DataError

INDEX_FILE = "index.faiss"
INDEX_INFO_FILE = "index.json"
KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_ITEMS = 100_000  # `auto` builds an exact flat index up to this many items, IVF above
TARGET_RECALL = 0.95  # recall@10 against exact search an approximate index is tuned to reach
RECALL_K = 10  # recall is measured on the top-10
RECALL_QUERIES = 1000  # items used as queries when measuring recall (all of them when fewer)
IVF_CELLS_PER_SQRT_N = 4  # nlist = 4 * sqrt(N), the usual rule of thumb (FAISS wiki)
IVF_MIN_POINTS_PER_CELL = 39  # FAISS warns when k-means has fewer training points per centroid
IVF_TRAIN_PER_CELL = 256  # k-means trains on at most 256 * nlist vectors (FAISS's own cap)
HNSW_M = 32  # neighbours per node of the HNSW graph (memory ~ 2 * M ints per item)
HNSW_EF_CONSTRUCTION = 80  # candidate list while building the graph
SCORE = "cosine similarity (inner product of L2-normalised embeddings)"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # a dependency, but say what to do if it is missing
        raise ConfigError(f"similar-image search needs FAISS: pip install faiss-cpu ({e})") from None
    return faiss


def normalise(features: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit length as contiguous float32 (zero rows stay zero)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (items x dimensions), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items of each query (L2-normalised here), best first.

    Args:
        index: a FAISS index from :func:`build_index` or :func:`read_index`.
        queries: (Q, D) query embeddings.
        k: neighbours per query, >= 1; more than the index holds gives all of them.

    Returns:
        (scores, ids): (Q, min(k, N)) float32 cosine similarities and int64 row indices.
    """
    if k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {k}")
    q = normalise(queries)
    if q.shape[1] != index.d:
        raise DataError(f"queries have {q.shape[1]} dimensions but the index has {index.d}")
    k = min(int(k), int(index.ntotal))
    if k == 0 or len(q) == 0:
        return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
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


def _exact_ids(xn: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(len(rows), k) ids of the exact top-k inner products of ``xn[rows]`` against all of ``xn``."""
    _, ids = _faiss().knn(xn[rows], xn, k, metric=_faiss().METRIC_INNER_PRODUCT)
    return ids


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each exact top-k row found in the approximate top-k row."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f, e)) / k for f, e in zip(found, exact)]))


def recall_at_k(
    index: Any, features: np.ndarray, k: int = RECALL_K, sample: int | np.ndarray = RECALL_QUERIES, seed: int = 0
) -> float:
    """Recall@k of ``index`` against exact search, with items of ``features`` as queries.

    For each query, the share of its exact k nearest items (brute-force inner
    product of L2-normalised vectors) that the index returns among its k
    nearest; averaged over the queries. Queries are items of the data base,
    as with search by item index, so each query's own item is among its
    exact neighbours.

    Args:
        index: the index to measure (built on ``features``).
        features: (N, D) the embeddings the index holds, in the same order.
        k: neighbours compared per query (clipped to N).
        sample: the number of queries (a seeded sample of rows; all rows when
            it is >= N) or the row indices to use as queries.
        seed: seeds the sample.
    """
    xn = normalise(features)
    if len(xn) != index.ntotal:
        raise DataError(f"the index holds {index.ntotal} items but {len(xn)} embeddings were given")
    k = min(int(k), len(xn))
    rows = _sample_rows(len(xn), sample, seed)
    _, found = search(index, xn[rows], k)
    return _recall(found, _exact_ids(xn, rows, k))


def ivf_cells(n: int) -> int:
    """``nlist`` for ``n`` items: about 4 * sqrt(n), but at least 39 training points per cell and >= 1 cell."""
    return max(1, min(int(round(IVF_CELLS_PER_SQRT_N * math.sqrt(n))), n // IVF_MIN_POINTS_PER_CELL))


def _check_options(kind: str, target_recall: float, recall_queries: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    if not 0 < target_recall <= 1:
        raise ConfigError(f"--target-recall must be in (0, 1], got {target_recall}")
    if recall_queries < 1:
        raise ConfigError(f"--recall-queries must be >= 1, got {recall_queries}")


def build_index(
    features: np.ndarray,
    kind: str = "auto",
    *,
    exact_max_items: int = EXACT_MAX_ITEMS,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = HNSW_M,
    ef_search: int | None = None,
    target_recall: float = TARGET_RECALL,
    recall_queries: int = RECALL_QUERIES,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index of the L2-normalised ``features``; item ids are row indices.

    Args:
        features: (N, D) embeddings, N >= 1.
        kind: ``flat`` (exact), ``ivf``, ``hnsw``, or ``auto`` (flat up to
            ``exact_max_items`` items, IVF above).
        exact_max_items: the size threshold of ``auto``.
        nlist: IVF cells (default :func:`ivf_cells`).
        nprobe: IVF cells visited per query (default: the smallest power of
            two reaching ``target_recall``, up to nlist).
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW search list (default: tuned like nprobe, from 16).
        target_recall: recall@10 the default nprobe / ef_search is tuned to reach.
        recall_queries: items used as queries to measure recall.
        seed: seeds the training sample, the k-means and the recall queries.

    Returns:
        (index, info): info has ``kind``, ``count``, ``dim``, the parameters,
        ``recall_at_10`` (1.0 for flat, by construction), ``recall_queries``
        and ``build_seconds``.
    """
    faiss = _faiss()
    _check_options(kind, target_recall, recall_queries)
    xn = normalise(features)
    n, d = xn.shape
    if n == 0 or d == 0:
        raise DataError(f"cannot index {n} x {d} embeddings: need at least one item and one dimension")
    if not np.isfinite(xn).all():
        raise DataError("the embeddings hold NaN or infinite values; re-embed with a healthy checkpoint")
    if kind == "auto":
        kind = "flat" if n <= exact_max_items else "ivf"
    start = time.perf_counter()
    info: dict[str, Any] = {"kind": kind, "count": int(n), "dim": int(d), "score": SCORE}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(xn)
        info.update({"recall_at_10": 1.0, "recall_queries": 0, "note": "exact search"})
        info["build_seconds"] = round(time.perf_counter() - start, 3)
        return index, info

    rows = _sample_rows(n, recall_queries, seed)
    k = min(RECALL_K, n)
    exact = _exact_ids(xn, rows, k)  # (Q, k) the reference every setting is measured against
    if kind == "ivf":
        cells = ivf_cells(n) if nlist is None else int(nlist)
        if not 1 <= cells <= n:
            raise ConfigError(f"--nlist must be in [1, {n}] for {n} items, got {cells}")
        train_rows = _sample_rows(n, min(n, IVF_TRAIN_PER_CELL * cells), seed + 1)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(xn[train_rows])
        index.add(xn)
        knob, values = "nprobe", _doubling(1, cells) if nprobe is None else [int(nprobe)]
        info.update({"nlist": cells, "train_sample": int(len(train_rows))})
    elif kind == "hnsw":
        if hnsw_m < 2:
            raise ConfigError(f"--hnsw-m must be >= 2, got {hnsw_m}")
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(xn)
        knob, values = "ef_search", _doubling(max(16, k), max(4096, k)) if ef_search is None else [int(ef_search)]
        info.update({"hnsw_m": hnsw_m, "ef_construction": HNSW_EF_CONSTRUCTION})
    if values[0] < 1:
        raise ConfigError(f"--{knob.replace('_', '-')} must be >= 1, got {values[0]}")
    recall = 0.0
    for value in values:
        _set_knob(index, kind, value)
        _, found = search(index, xn[rows], k)
        recall = _recall(found, exact)
        if recall >= target_recall:
            break
    info.update({
        knob: int(value), "recall_at_10": round(recall, 4), "recall_queries": int(len(rows)),
        "target_recall": target_recall,
        "note": f"recall@{k} against exact search, items as queries; {knob} "
                + ("tuned by doubling" if len(values) > 1 else "given"),
    })
    info["build_seconds"] = round(time.perf_counter() - start, 3)
    return index, info


def _doubling(first: int, last: int) -> list[int]:
    out = [first]
    while out[-1] < last:
        out.append(min(out[-1] * 2, last))
    return out


def _set_knob(index: Any, kind: str, value: int) -> None:
    if kind == "ivf":
        _faiss().extract_index_ivf(index).nprobe = value
    else:
        index.hnsw.efSearch = value


# ----------------------------------------------------------------------------- files


def embeddings_fingerprint(features: np.ndarray) -> str:
    """SHA-256 of the shape and up to 1024 evenly spaced rows: changes when the run is re-embedded."""
    x = np.asarray(features, dtype=np.float32)
    rows = np.unique(np.linspace(0, max(len(x) - 1, 0), num=min(len(x), 1024)).astype(np.int64))
    h = hashlib.sha256(f"{x.shape}".encode())
    h.update(np.ascontiguousarray(x[rows]).tobytes() if len(x) else b"")
    return h.hexdigest()


def write_index(folder: str | Path, index: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``index.faiss`` (serialised bytes) and ``index.json``, each atomically; returns the info written."""
    folder = Path(folder)
    data = _faiss().serialize_index(index).tobytes()
    info = {**info, "index_file": INDEX_FILE, "index_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(folder / INDEX_FILE, data)
    atomic_write_text(folder / INDEX_INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info


def read_index(folder: str | Path, features: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """Read ``index.faiss`` and ``index.json`` from ``folder`` and check they belong together.

    Args:
        folder: where :func:`write_index` wrote them.
        features: when given, the embeddings the index must have been built from.

    Raises:
        DataError: a file is missing or unreadable, the index does not match
            its index.json, or it was built from other embeddings.
    """
    folder = Path(folder)
    path, info_path = folder / INDEX_FILE, folder / INDEX_INFO_FILE
    for p in (path, info_path):
        if not p.is_file():
            raise DataError(f"{p}: not found; run `contrastkit index {folder}`")
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, OSError) as e:
        raise DataError(f"{info_path}: not readable JSON ({e})") from None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != info.get("index_sha256"):
        raise DataError(f"{path}: does not match {info_path} (SHA-256 differs); rebuild with `contrastkit index {folder}`")
    try:
        index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as e:
        raise DataError(f"{path}: not a readable FAISS index ({str(e).splitlines()[0]})") from None
    if index.ntotal != info.get("count") or index.d != info.get("dim"):
        raise DataError(f"{path}: holds {index.ntotal} x {index.d} vectors but {info_path} says {info.get('count')} x {info.get('dim')}")
    if features is not None and embeddings_fingerprint(features) != info.get("embeddings_fingerprint"):
        raise DataError(f"{path}: built from other embeddings than the current ones; rebuild with `contrastkit index {folder}`")
    return index, info


def _ensure_embeddings(run_dir: Path) -> Any:
    """The run's saved embeddings, embedding first when a run folder has none yet (as `evaluate` does)."""
    from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder")
    if not (run_dir / EMBEDDINGS_FILE).is_file() and (run_dir / "config.json").is_file():
        embed_run(run_dir)
    return read_embeddings(run_dir)


def index_run(run_dir: str | Path, kind: str = "auto", **options: Any) -> dict[str, Any]:
    """Build the index of a run's embeddings (embedding first if needed) and write index.faiss / index.json.

    Works on any folder with embeddings.npy and items.csv. ``options`` go to
    :func:`build_index`. Returns the info written to index.json.
    """
    from contrastkit import __version__

    run_dir = Path(run_dir)
    _check_options(kind, options.get("target_recall", TARGET_RECALL), options.get("recall_queries", RECALL_QUERIES))
    emb = _ensure_embeddings(run_dir)
    index, info = build_index(emb.features, kind, **options)
    info.update({
        "embeddings": str(run_dir / "embeddings.npy"),
        "embeddings_fingerprint": embeddings_fingerprint(emb.features),
        "faiss": _faiss().__version__, "contrastkit": __version__,
    })
    return write_index(run_dir, index, info)


# ----------------------------------------------------------------------------- queries


def load_query_images(paths: Sequence[str | Path], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Decode image files as the folder reader decodes training images: uint8 (Q, C, H, W).

    Grayscale and RGB files are converted to the model's ``channels`` (1 or
    3; transparency composited on white, 16-bit scaled to 8) and resized to
    ``size`` = (H, W) (bilinear, antialiased), as ``--image-size`` resizes
    training data.

    Raises:
        DataError: a file is missing or cannot be decoded, or the model takes
            images of a channel count no image file has.
    """
    from contrastkit.data.folder import load_image_file

    if channels not in (1, 3):
        raise DataError(
            f"the model was trained on {channels}-channel images; image files give 1 (grayscale) or 3 (RGB) "
            "channels, so query by item index instead"
        )
    if not paths:
        return torch.zeros((0, channels, *size), dtype=torch.uint8)
    return torch.stack([load_image_file(Path(p), channels, size) for p in paths])  # (Q, C, H, W)


def embed_query_images(run_dir: str | Path, paths: Sequence[str | Path]) -> np.ndarray:
    """Backbone features (Q, D) float32 of image files, with the run's model and evaluation transform.

    The files are decoded to the channels of the training data and resized to
    its side (``image_size`` of the checkpoint), then normalised and embedded
    exactly as ``contrastkit embed`` embeds the data set
    (:func:`contrastkit.embedding.compute_embeddings`).
    """
    from contrastkit.checkpoint import load_method
    from contrastkit.data.dataset import ImageDataset
    from contrastkit.embedding import compute_embeddings
    from contrastkit.runtime import Runtime

    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: query image file does not exist")
    method, config, info = load_method(Path(run_dir))
    side = int(info["image_size"])
    images = load_query_images(paths, int(info["channels"]), (side, side))
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    method.to(runtime.device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    queries = ImageDataset(images=images, labels=None, class_names=None, sources=[str(p) for p in paths],
                           name="query images")
    return compute_embeddings(method, queries, info, runtime).numpy().astype(np.float32)


_INT = re.compile(r"^[+-]?\d+$")


def parse_queries(queries: Sequence[str | int]) -> list[tuple[str, str | int]]:
    """``("item", index)`` for integers, ``("file", path)`` for anything else; files must exist.

    Raises:
        DataError: a query file does not exist.
    """
    out: list[tuple[str, str | int]] = []
    for q in queries:
        if isinstance(q, (int, np.integer)) or _INT.match(str(q).strip()):
            out.append(("item", int(q)))
        elif not Path(q).is_file():
            raise DataError(f"{q}: query image file does not exist (a query is an image file or an item index)")
        else:
            out.append(("file", str(q)))
    return out


def load_or_build_index(run_dir: Path, features: np.ndarray, kind: str = "auto") -> tuple[Any, dict[str, Any], str]:
    """The run's index, built (and written) when missing or out of date; the third value says which and why.

    An out-of-date index is rebuilt with the kind it had (``kind`` applies when there is none).
    """
    run_dir = Path(run_dir)
    if (run_dir / INDEX_FILE).is_file() or (run_dir / INDEX_INFO_FILE).is_file():
        try:
            index, info = read_index(run_dir, features)
            return index, info, ""
        except DataError as e:
            why = f"rebuilt the index: {e}"
        try:  # keep the kind the user chose when the index was built
            kind = json.loads((run_dir / INDEX_INFO_FILE).read_text()).get("kind", kind)
        except (OSError, ValueError, AttributeError):
            pass
        kind = kind if kind in KINDS else "auto"
    else:
        why = f"built the index ({run_dir / INDEX_FILE} was missing)"
    index_run(run_dir, kind)
    index, info = read_index(run_dir, features)
    return index, info, why


def search_run(
    run_dir: str | Path, queries: Sequence[str | int], k: int = 10, *, kind: str = "auto",
    montage: str | Path | None = None,
) -> dict[str, Any]:
    """Nearest items of each query: an image file (embedded with the run's model) or an item index.

    Args:
        run_dir: a run folder (or any folder with embeddings.npy and items.csv;
            image queries need the run's checkpoint).
        queries: image file paths and/or item indices (ints or integer strings).
        k: results per query (>= 1; clipped to the number of items).
        kind: the kind of index to build when there is none yet.
        montage: write a PNG with one row per query: the query, then its results.

    Returns:
        ``{"run", "k", "index": index.json's content, "index_note", "queries":
        [{"query", "type", "results": [{"rank", "index", "score", "split",
        "source", "label", "class_name"}]}]}``; with ``montage``, ``"montage"``.

    Raises:
        ConfigError: k < 1. DataError: a missing query file, an item index
        out of range, an image that cannot be read.
    """
    run_dir = Path(run_dir)
    if k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {k}")
    if not queries:
        raise ConfigError("give at least one QUERY (an image file or an item index)")
    parsed = parse_queries(queries)
    emb = _ensure_embeddings(run_dir)
    n = len(emb.features)
    for t, q in parsed:
        if t == "item" and not 0 <= int(q) < n:
            raise DataError(f"query {q}: item index out of range 0..{n - 1} ({n} items in {run_dir / 'items.csv'})")
    get_images = None
    if montage is not None:
        from contrastkit.label import run_images

        get_images, why = run_images(run_dir, emb.sources)
        if get_images is None:
            raise DataError(f"--montage {montage}: cannot draw it: {why}")
    index, info, note = load_or_build_index(run_dir, emb.features, kind)
    vectors = np.zeros((len(parsed), emb.features.shape[1]), dtype=np.float32)  # (Q, D)
    files = [i for i, (t, _) in enumerate(parsed) if t == "file"]
    if files:
        vectors[files] = embed_query_images(run_dir, [str(parsed[i][1]) for i in files])
    for i, (t, q) in enumerate(parsed):
        if t == "item":
            vectors[i] = emb.features[int(q)]
    scores, ids = search(index, vectors, k)  # (Q, k')
    names = emb.meta.get("class_names")
    labels = emb.labels
    results = []
    for (t, q), row_scores, row_ids in zip(parsed, scores, ids):
        items = []
        for rank, (s, i) in enumerate(zip(row_scores.tolist(), row_ids.tolist()), start=1):
            label = None if labels is None or labels[i] < 0 else int(labels[i])
            items.append({
                "rank": rank, "index": int(i), "score": round(float(s), 6), "split": emb.splits[i],
                "source": emb.sources[i], "label": label,
                "class_name": names[label] if names and label is not None and label < len(names) else None,
            })
        results.append({"query": q, "type": t, "results": items})
    out: dict[str, Any] = {"run": str(run_dir), "k": int(ids.shape[1]), "index": info, "index_note": note,
                           "queries": results}
    if montage is not None:
        out["montage"] = str(write_search_montage(montage, get_images, parsed, ids))
    return out


def write_search_montage(path: str | Path, get_images: Any, parsed: list[tuple[str, str | int]], ids: np.ndarray) -> Path:
    """A PNG with one row per query: the query image, then its results in rank order (written atomically).

    Args:
        path: the PNG to write.
        get_images: ``indices (LongTensor) -> uint8 (B, C, H, W)`` images of the embedding rows.
        parsed: the queries, from :func:`parse_queries`.
        ids: (Q, k) result rows from :func:`search`.
    """
    from contrastkit.label import montage_image

    rows = []
    for (t, q), row in zip(parsed, ids):
        found = np.asarray(get_images(torch.from_numpy(row)))  # (k, C, H, W)
        if t == "item":
            query = np.asarray(get_images(torch.tensor([int(q)])))
        else:
            c, h, w = found.shape[1:]
            query = load_query_images([str(q)], c, (h, w)).numpy()  # (1, C, H, W) like the data set's images
        rows.append(np.concatenate([query, found]))
    sheet = montage_image(np.concatenate(rows), columns=ids.shape[1] + 1)
    path = Path(path)
    with atomic_open(path) as f:
        sheet.save(f, format="PNG")
    return path


def format_results(result: dict[str, Any]) -> str:
    """The search results as text: one block per query, one line per item."""
    lines = []
    info = result["index"]
    for q in result["queries"]:
        what = f"item {q['query']}" if q["type"] == "item" else str(q["query"])
        lines.append(f"query {what}: {len(q['results'])} nearest ({info['kind']} index, cosine similarity)")
        lines.append(f"{'rank':>4}  {'index':>7}  {'score':>7}  {'split':<5}  {'label':<16} source")
        for r in q["results"]:
            label = "" if r["label"] is None else (r["class_name"] or str(r["label"]))
            lines.append(f"{r['rank']:>4}  {r['index']:>7}  {r['score']:>7.4f}  {r['split']:<5}  {label:<16} {r['source']}")
    return "\n".join(lines)
