"""What the explorer reads from a run folder as per-item arrays: labels.csv, audit.csv, and the 2-D map of the embeddings.

The map is computed here (:func:`compute_map`) and cached in the run folder
by :class:`~contrastkit.explorer.state.RunState` (``map.npy`` /
``map.json``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from contrastkit.errors import DataError
from contrastkit.vectors import _faiss, chunk_rows, normalise, normalised_chunks

MAP_FILE, MAP_INFO_FILE = "map.npy", "map.json"
MAP_POINTS = 5000  # items in the t-SNE (and at most this many drawn on the canvas)
MAP_PLACE_NEIGHBOURS = 3  # other items are placed among their 3 nearest sampled items
MAP_PLACE_TEMPERATURE = 0.05  # weights exp(cos / T) of those 3


def _read_labels_csv(path: Path, n: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(label vocabulary, label code per row, confidence, cluster) from labels.csv (codes -1 / NaN when absent)."""
    code = np.full(n, -1, dtype=np.int32)
    conf = np.full(n, np.nan, dtype=np.float32)
    cluster = np.full(n, -1, dtype=np.int32)
    vocab: dict[str, int] = {}
    if not path.is_file():
        return [], code, conf, cluster
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            col = {name: j for j, name in enumerate(header)}
            if not {"item", "label", "confidence", "cluster"} <= set(col):
                raise DataError(f"{path}: expected columns item,source,label,confidence,cluster, got {header}")
            rows = 0
            for line, r in enumerate(reader, 2):
                i = int(r[col["item"]])
                if not 0 <= i < n:
                    raise DataError(f"{path}, line {line}: item {i} is not a row of embeddings.npy (0..{n - 1})")
                code[i] = vocab.setdefault(r[col["label"]], len(vocab))
                conf[i] = float(r[col["confidence"]])
                cluster[i] = int(r[col["cluster"]])
                rows += 1
    except (ValueError, IndexError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a labels.csv of contrastkit label ({e})") from None
    if rows != n:
        raise DataError(f"{path}: {rows} rows but embeddings.npy has {n}; label the run again")
    return list(vocab), code, conf, cluster


def _read_audit_csv(path: Path, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per problem of audit.csv a bool mask over the rows, and per score column of
    :data:`contrastkit.audit.SEVERITY` a float32 array (NaN where blank); ({}, {}) without the file or when it
    is out of date."""
    from contrastkit.audit import PROBLEMS, SEVERITY

    if not path.is_file():
        return {}, {}
    masks = {p: np.zeros(n, dtype=bool) for p in PROBLEMS}
    scores = {c: np.full(n, np.nan, dtype=np.float32) for c, _ in SEVERITY.values()}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        count = 0
        for r in reader:
            i = int(r["item"])
            if not 0 <= i < n:
                return {}, {}
            for p in r["problems"].split():
                if p in masks:
                    masks[p][i] = True
            for c, column in scores.items():
                text = r.get(c) or ""
                if text:
                    column[i] = float(text)
            count += 1
    return (masks, scores) if count == n else ({}, {})


def compute_map(features: np.ndarray, points: int = MAP_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sampled rows, (N, 2) float32 positions of every item): t-SNE of a sample, the rest placed among it."""
    from contrastkit.visualize import tsne_2d  # the same seeded PCA + openTSNE as the map figure

    faiss = _faiss()
    rows, xy_s = tsne_2d(features, points, seed)  # (M,), (M, 2)
    xy_s = xy_s.astype(np.float32)
    sample = normalise(features[rows])
    k = min(MAP_PLACE_NEIGHBOURS, len(rows))
    xy = np.empty((len(features), 2), dtype=np.float32)
    for start, q in normalised_chunks(features, chunk_rows(features.shape[1], 16 * 2**20)):
        s, i = faiss.knn(q, sample, k, metric=faiss.METRIC_INNER_PRODUCT)  # (B, k)
        w = np.exp((s - s[:, :1]) / MAP_PLACE_TEMPERATURE)  # (B, k), nearest weight 1
        xy[start : start + len(q)] = (w[:, :, None] * xy_s[i]).sum(1) / w.sum(1, keepdims=True)
    xy[rows] = xy_s  # the sampled items sit exactly where t-SNE put them
    return rows, xy
