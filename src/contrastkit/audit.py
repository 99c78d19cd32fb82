"""Data problems of a run: duplicates (also across train and test), outliers, labels that disagree with neighbours.

``contrastkit audit RUN`` reads the run's files (``embeddings.npy``
memory-mapped, ``items.csv``, the FAISS index when one matches) and the
run's own images (by row, never by path), and writes ``audit.csv`` (one row
per item) and ``audit.json`` (the summary and the thresholds used).

- **Exact duplicates**: items whose decoded pixels are identical (a BLAKE2b
  digest of the uint8 image); when the run's images cannot be loaded, items
  whose embeddings are bit-identical. Image folders already merge one file
  under several names (:mod:`contrastkit.data.duplicates`); this finds the
  same picture saved twice, in IDX / npz / CIFAR data too.
- **Near duplicates**: cleanlab Datalab's rule (``NearDuplicateIssueManager``):
  an item whose cosine distance to a neighbour is below
  :data:`NEAR_DUPLICATE_FACTOR` (0.13) times the median distance of all
  items to their nearest neighbour. The threshold follows the encoder's own
  scale, so it needs no tuning per run.
- **Leaks**: an exact or near duplicate in the other split (a test image
  whose twin is in train inflates every evaluation).
- **Outliers**: cleanlab Datalab's rule (``OutlierIssueManager`` on
  features): the mean cosine distance to the k nearest neighbours above
  ``Q3 + (1 / 0.37037 - 1) * IQR`` of those means.
- **Label issues** (items with a label in items.csv): out-of-sample class
  probabilities from a similarity-weighted vote of each item's neighbours
  (the item itself left out; weights ``exp(cos / 0.07)`` as in
  :mod:`contrastkit.knn`), then cleanlab's confident learning
  (``cleanlab.filter.find_label_issues``, prune by noise rate) flags the
  items and ``cleanlab.rank.get_label_quality_scores`` (self-confidence)
  scores every label; the suggested label is the vote's argmax.

What is written by hand, and why: the kNN graph (FAISS, exact up to
100 000 items and a tuned IVF index above, the same as ``contrastkit
index``), because cleanlab's Datalab builds its own scikit-learn graph
(brute force, no FAISS) and needs the Hugging Face ``datasets`` package;
the two Datalab rules above are a few lines each on that graph. Confident
learning is cleanlab's own code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from contrastkit import index as ix
from contrastkit import index_files, index_search
from contrastkit.atomic import AtomicFiles
from contrastkit.errors import ConfigError, DataError
from contrastkit.runlock import run_lock
from contrastkit.sources import source_to_text
from contrastkit.vectors import chunk_rows, normalised_chunks

AUDIT_FILE = "audit.csv"
AUDIT_SUMMARY_FILE = "audit.json"
NEIGHBOURS = 10  # k of the kNN graph (cleanlab Datalab's default k)
NEAR_DUPLICATE_FACTOR = 0.13  # near duplicate: distance < 0.13 x median nearest-neighbour distance (cleanlab's default)
OUTLIER_THRESHOLD = 0.37037  # outlier: mean kNN distance > Q3 + (1 / 0.37037 - 1) x IQR (cleanlab's default)
VOTE_TEMPERATURE = 0.07  # neighbour vote weights exp(cos / T), as the kNN evaluation (Wu et al. 2018)
IMAGE_BATCH = 1024  # images decoded and hashed at a time
PROBLEMS = ("exact_duplicate", "near_duplicate", "leak", "outlier", "label_issue")
# how bad an item with each problem is: (audit.csv column, direction), the order examples() prints, worst first:
# duplicates and leaks by the similarity to the nearest other item, outliers by the mean distance to the
# neighbours, label issues by cleanlab's label quality (lowest first)
SEVERITY = {"exact_duplicate": ("similarity", "higher"), "near_duplicate": ("similarity", "higher"),
            "leak": ("similarity", "higher"), "outlier": ("mean_distance", "higher"),
            "label_issue": ("label_quality", "lower")}
COLUMNS = ("item", "split", "source", "label", "problems", "duplicate_of", "nearest", "similarity",
           "mean_distance", "label_quality", "suggested_label")


@dataclass
class Graph:
    """The k nearest other items of every item, best first: ``ids`` (N, k) int64 and ``scores`` (N, k) cosines."""

    ids: np.ndarray
    scores: np.ndarray


@dataclass
class AuditResult:
    """Per-item findings (arrays of length N) and the thresholds they came from."""

    exact_group: np.ndarray  # int64, the lowest row of the item's group of identical items, -1 when unique
    near_duplicate: np.ndarray  # bool
    leak: np.ndarray  # bool: an exact or near duplicate in another split
    duplicate_of: np.ndarray  # int64, the duplicate shown (another split's first), -1 when none
    outlier: np.ndarray  # bool
    mean_distance: np.ndarray  # float32, mean cosine distance to the k neighbours
    graph: Graph
    label_issue: np.ndarray | None = None  # bool, None without labels
    label_quality: np.ndarray | None = None  # float, NaN for unlabelled items
    suggested: np.ndarray | None = None  # int64, the neighbour vote's class
    labels: np.ndarray | None = None  # the labels checked (int64, -1 unknown)
    info: dict[str, Any] = field(default_factory=dict)

    def problems(self, i: int) -> list[str]:
        """The problems of item ``i``, in :data:`PROBLEMS` order."""
        out = []
        if self.exact_group[i] >= 0:
            out.append("exact_duplicate")
        if self.near_duplicate[i] and self.exact_group[i] < 0:
            out.append("near_duplicate")
        if self.leak[i]:
            out.append("leak")
        if self.outlier[i]:
            out.append("outlier")
        if self.label_issue is not None and self.label_issue[i]:
            out.append("label_issue")
        return out


# ----------------------------------------------------------------------------- the kNN graph


def neighbour_graph(features: np.ndarray, k: int = NEIGHBOURS, index: Any = None, rerank: int = 1) -> Graph:
    """The ``k`` nearest other items of every row of ``features`` by cosine similarity.

    Args:
        features: (N, D) embeddings (a memory map is read in chunks).
        k: neighbours per item (clipped to N - 1).
        index: a FAISS index of ``features`` (e.g. the run's); default: one
            built in memory as ``contrastkit index`` would (exact up to
            100 000 items, a tuned IVF above).
        rerank: the index's re-ranking factor (IVF-PQ).
    """
    n = len(features)
    if n < 2:
        raise DataError(f"an audit needs at least 2 items, got {n}")
    k = min(int(k), n - 1)
    if k < 1:
        raise ConfigError(f"--neighbours must be >= 1, got {k}")
    if index is None:
        index, _ = ix.build_index(features, "auto")
    ids = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    for start, q in normalised_chunks(features, chunk_rows(features.shape[1], 16 * 2**20)):
        s, i = index_search.search(index, q, k + 1, features=features, rerank_factor=rerank)  # (B, k + 1)
        rows = np.arange(start, start + len(q))[:, None]
        own = i == rows
        # drop the item itself; when identical items pushed it out of the top k + 1, drop the last one
        drop = np.where(own.any(1), own.argmax(1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(q)), drop] = False
        ids[start : start + len(q)] = i[keep].reshape(len(q), k)
        scores[start : start + len(q)] = s[keep].reshape(len(q), k)
    return Graph(ids=ids, scores=scores)


# ----------------------------------------------------------------------------- exact duplicates


def image_digests(get_batch: Callable[[int, int], np.ndarray], n: int, batch: int = IMAGE_BATCH) -> list[bytes]:
    """BLAKE2b digests of the uint8 images of rows ``0..n-1``; ``get_batch(start, stop)`` gives (B, C, H, W)."""
    out: list[bytes] = []
    for start in range(0, n, batch):
        images = np.ascontiguousarray(get_batch(start, min(n, start + batch)))
        out.extend(hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images)
    return out


def embedding_digests(features: np.ndarray) -> list[bytes]:
    """Digests of the embedding rows (bit-identical rows get the same digest)."""
    rows = chunk_rows(features.shape[1])
    out: list[bytes] = []
    for start in range(0, len(features), rows):
        x = np.ascontiguousarray(features[start : start + rows], dtype="<f4")
        out.extend(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in x)
    return out


def exact_groups(digests: list[bytes]) -> np.ndarray:
    """Per item the lowest row with the same digest when another item shares it, else -1."""
    first: dict[bytes, int] = {}
    count: dict[bytes, int] = {}
    for i, d in enumerate(digests):
        first.setdefault(d, i)
        count[d] = count.get(d, 0) + 1
    return np.array([first[d] if count[d] > 1 else -1 for d in digests], dtype=np.int64)


# ----------------------------------------------------------------------------- the findings


def near_duplicates(graph: Graph, factor: float = NEAR_DUPLICATE_FACTOR) -> tuple[np.ndarray, float]:
    """(N, k) bool: neighbour j of i is a near duplicate, and the distance cut-off (cleanlab Datalab's rule)."""
    if factor < 0:
        raise ConfigError(f"--near-factor must be >= 0, got {factor}")
    distance = 1.0 - graph.scores.astype(np.float64)  # (N, k) cosine distances, nearest first
    cutoff = float(factor * max(np.median(distance[:, 0]), 1e-12))
    return distance < cutoff, cutoff


def outliers(graph: Graph, threshold: float = OUTLIER_THRESHOLD) -> tuple[np.ndarray, np.ndarray, float]:
    """(outlier mask, mean kNN cosine distance, cut-off): cleanlab Datalab's IQR rule on the mean distances."""
    mean = (1.0 - graph.scores.astype(np.float64)).mean(1)  # (N,)
    q1, q3 = np.percentile(mean, [25, 75])
    cutoff = float(q3 + (1.0 / threshold - 1.0) * (q3 - q1))
    return mean > cutoff, mean.astype(np.float32), cutoff


def neighbour_probs(graph: Graph, labels: np.ndarray, num_classes: int, temperature: float = VOTE_TEMPERATURE) -> np.ndarray:
    """(N, C) class probabilities of each item from its labelled neighbours (itself left out: out of sample).

    Weights ``exp((cos - 1) / T)``; a small uniform floor keeps every class
    possible; items with no labelled neighbour get the uniform distribution.
    """
    y = labels[graph.ids]  # (N, k), -1 where the neighbour is unlabelled
    w = np.exp((graph.scores.astype(np.float64) - 1.0) / temperature) * (y >= 0)  # (N, k)
    probs = np.zeros((len(y), num_classes))
    for c in range(num_classes):
        probs[:, c] = (w * (y == c)).sum(1)
    total = probs.sum(1, keepdims=True)
    probs = np.where(total > 0, probs / np.maximum(total, 1e-300), 1.0 / num_classes)
    probs = 0.99 * probs + 0.01 / num_classes
    return probs / probs.sum(1, keepdims=True)


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(issue mask, label quality) of the labelled items (label >= 0) by cleanlab's confident learning."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    mask = np.zeros(len(labels), dtype=bool)
    quality = np.full(len(labels), np.nan)
    known = np.flatnonzero(labels >= 0)
    if len(known) == 0:
        return mask, quality
    y, p = labels[known], probs[known]
    quality[known] = get_label_quality_scores(y, p)
    if len(np.unique(y)) > 1:  # confident learning needs two classes
        mask[known] = find_label_issues(y, p, filter_by="prune_by_noise_rate", n_jobs=1)
    return mask, quality


def audit(
    features: np.ndarray,
    splits: list[str],
    labels: np.ndarray | None = None,
    digests: list[bytes] | None = None,
    *,
    k: int = NEIGHBOURS,
    near_factor: float = NEAR_DUPLICATE_FACTOR,
    num_classes: int | None = None,
    index: Any = None,
    rerank: int = 1,
) -> AuditResult:
    """Every finding of the module docstring on arrays.

    Args:
        features: (N, D) embeddings.
        splits: "train" / "test" per row.
        labels: (N,) int64, -1 where unknown; None: no label check.
        digests: per row, a digest of its image (:func:`image_digests`);
            default: of its embedding.
        k: neighbours per item.
        near_factor: the near-duplicate factor of the median distance.
        num_classes: classes of ``labels`` (default: max + 1).
        index, rerank: a FAISS index of ``features`` to search (see :func:`neighbour_graph`).
    """
    n = len(features)
    if len(splits) != n or (labels is not None and len(labels) != n) or (digests is not None and len(digests) != n):
        raise DataError(f"{n} embeddings but per-item lists of other lengths")
    graph = neighbour_graph(features, k, index, rerank)
    group = exact_groups(digests if digests is not None else embedding_digests(features))
    near, cutoff = near_duplicates(graph, near_factor)
    split = np.asarray(splits)
    other = split[graph.ids] != split[:, None]  # (N, k) neighbour in another split
    leak = (near & other).any(1)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    first_near = np.where(near.any(1), graph.ids[np.arange(n), near.argmax(1)], -1)
    first_leak = np.where(leak, graph.ids[np.arange(n), (near & other).argmax(1)], -1)
    duplicate_of[:] = np.where(leak, first_leak, first_near)
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(group >= 0).tolist():
        members.setdefault(int(group[i]), []).append(i)
    for rows in members.values():  # exact groups: every split is seen, not only the k nearest
        for i in rows:
            others = [j for j in rows if split[j] != split[i]]
            if others:
                leak[i] = True
                duplicate_of[i] = others[0]
            elif duplicate_of[i] < 0 or group[duplicate_of[i]] != group[i]:
                duplicate_of[i] = next(j for j in rows if j != i)
    near_any = near.any(1) | (group >= 0)
    out_mask, mean_distance, out_cutoff = outliers(graph)
    result = AuditResult(exact_group=group, near_duplicate=near_any, leak=leak, duplicate_of=duplicate_of,
                         outlier=out_mask, mean_distance=mean_distance, graph=graph)
    result.info = {"neighbours": int(graph.ids.shape[1]), "near_duplicate_factor": near_factor,
                   "near_duplicate_max_distance": cutoff, "outlier_threshold": OUTLIER_THRESHOLD,
                   "outlier_min_mean_distance": out_cutoff}
    if labels is not None and (labels >= 0).any():
        c = int(num_classes if num_classes is not None else labels.max() + 1)
        probs = neighbour_probs(graph, labels, c)
        result.label_issue, result.label_quality = label_issues(labels, probs)
        result.suggested = probs.argmax(1).astype(np.int64)
        result.labels = labels
        result.info["vote_temperature"] = VOTE_TEMPERATURE
    return result


def summarise(result: AuditResult, splits: list[str]) -> dict[str, Any]:
    """Counts of every problem (items, groups, leaks by split) as a JSON-able dict."""
    split = np.asarray(splits)
    group = result.exact_group
    groups = np.unique(group[group >= 0])
    near_only = result.near_duplicate & (group < 0)
    out: dict[str, Any] = {
        "items": int(len(group)),
        "exact_duplicates": {"items": int((group >= 0).sum()), "groups": int(len(groups)),
                             "extra_copies": int((group >= 0).sum() - len(groups))},
        "near_duplicates": {"items": int(near_only.sum())},
        "leaks": {"items": int(result.leak.sum()),
                  "test_items_with_a_train_duplicate": int((result.leak & (split == "test")).sum())},
        "outliers": {"items": int(result.outlier.sum())},
    }
    if result.label_issue is not None:
        known = ~np.isnan(result.label_quality)
        out["label_issues"] = {"items": int(result.label_issue.sum()), "labelled_items": int(known.sum())}
    return {**out, **result.info}


def run_row_images(run_dir: Path, sources: list[str]) -> tuple[Callable[[int, int], np.ndarray] | None, str]:
    """``get(start, stop)`` of the run's images in row order, or (None, why not)."""
    from contrastkit.montage import run_images

    rows, why = run_images(run_dir, sources)
    if rows is None:
        return None, why
    data, n_train = rows.data, rows.n_train

    def get(start: int, stop: int) -> np.ndarray:
        parts = []
        if start < n_train:
            parts.append(data.train.get_batch(torch.arange(start, min(stop, n_train))).numpy())
        if stop > n_train:
            parts.append(data.test.get_batch(torch.arange(max(start, n_train) - n_train, stop - n_train)).numpy())
        return np.concatenate(parts)

    return get, ""


def write_audit_csv(path: Path, result: AuditResult, splits: list[str], sources: list[str],
                    labels: np.ndarray | None, names: list[str] | None, out: AtomicFiles) -> None:
    """``audit.csv``: one row per item with the :data:`COLUMNS` (labels as class names when known)."""
    def name(v: int) -> str:
        return "" if v < 0 else (names[v] if names and v < len(names) else str(v))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    g = result.graph
    for i in range(len(splits)):
        q = result.label_quality[i] if result.label_quality is not None else np.nan
        w.writerow([
            i, splits[i], source_to_text(sources[i]), name(int(labels[i])) if labels is not None else "",
            " ".join(result.problems(i)), int(result.duplicate_of[i]) if result.duplicate_of[i] >= 0 else "",
            int(g.ids[i, 0]), f"{g.scores[i, 0]:.4f}", f"{result.mean_distance[i]:.4f}",
            "" if np.isnan(q) else f"{q:.4f}",
            name(int(result.suggested[i])) if result.suggested is not None else "",
        ])
    out.write_text(path, buf.getvalue())


def audit_run(run_dir: str | Path, *, k: int = NEIGHBOURS, near_factor: float = NEAR_DUPLICATE_FACTOR,
              images: bool = True) -> dict[str, Any]:
    """Audit a run folder and write ``audit.csv`` and ``audit.json`` (together, atomically).

    Args:
        run_dir: a run folder (or any folder with embeddings.npy and items.csv).
        k: neighbours per item.
        near_factor: near duplicates lie within this factor of the median nearest-neighbour distance.
        images: compare decoded pixels for exact duplicates (False, or when the
            run's images cannot be loaded: bit-identical embeddings).

    Returns:
        The summary written to audit.json, plus ``"result"`` (the :class:`AuditResult`).
    """
    from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder")
    with run_lock(run_dir):  # one command at a time writes the folder (contrastkit.runlock)
        if not (run_dir / EMBEDDINGS_FILE).is_file() and (run_dir / "config.json").is_file():
            embed_run(run_dir)  # as label and index do
        emb = read_embeddings(run_dir)
        digests, basis = None, "embeddings (bit-identical rows)"
        note = "turned off (--no-images)"
        if images:
            get, note = run_row_images(run_dir, emb.sources)
            if get is not None:
                digests, basis = image_digests(get, len(emb.features)), "decoded pixels (BLAKE2b of the uint8 image)"
        index, rerank = None, 1
        if (run_dir / index_files.INDEX_FILE).is_file():
            try:
                index, info = index_files.read_index(run_dir, emb.features)
                rerank = int(info.get("rerank") or 1)
            except DataError:
                index = None  # out of date: an index is built in memory instead
        names = emb.meta.get("class_names") or None
        result = audit(emb.features, emb.splits, emb.labels, digests, k=k, near_factor=near_factor,
                       num_classes=len(names) if names else None, index=index, rerank=rerank)
        summary = {**summarise(result, emb.splits), "exact_duplicates_by": basis,
                   "images_note": note if digests is None else ""}
        with AtomicFiles() as out:
            write_audit_csv(run_dir / AUDIT_FILE, result, emb.splits, emb.sources, emb.labels, names, out)
            out.write_text(run_dir / AUDIT_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return {**summary, "result": result, "splits": emb.splits, "class_names": names}


def format_summary(summary: dict[str, Any], run_dir: Path) -> str:
    """The summary ``contrastkit audit`` prints."""
    ex, le = summary["exact_duplicates"], summary["leaks"]
    lines = [
        f"audited {summary['items']} items ({summary['neighbours']} neighbours each)",
        f"exact duplicates: {ex['items']} items in {ex['groups']} groups ({ex['extra_copies']} extra copies; "
        f"by {summary['exact_duplicates_by']})",
        f"near duplicates:  {summary['near_duplicates']['items']} more items (cosine distance < "
        f"{summary['near_duplicate_max_distance']:.4g}, {summary['near_duplicate_factor']} x the median "
        "nearest-neighbour distance)",
        f"train/test leaks: {le['items']} items with an exact or near duplicate in the other split "
        f"({le['test_items_with_a_train_duplicate']} test items)",
        f"outliers:         {summary['outliers']['items']} items (mean distance to their neighbours > "
        f"{summary['outlier_min_mean_distance']:.4g})",
    ]
    if "label_issues" in summary:
        li = summary["label_issues"]
        lines.append(f"label issues:     {li['items']} of {li['labelled_items']} labelled items disagree with their "
                     "neighbours (cleanlab confident learning)")
    else:
        lines.append("label issues:     not checked (items.csv has no labels)")
    if summary.get("images_note"):
        lines.append(f"note: exact duplicates compared by embeddings: {summary['images_note']}")
    lines.append(f"wrote {run_dir / AUDIT_FILE}, {run_dir / AUDIT_SUMMARY_FILE}")
    return "\n".join(lines)



def _similarity(g: Graph, i: int, j: int) -> str:
    """", cos" of items i and j when j is among i's neighbours, else ""."""
    hit = np.flatnonzero(g.ids[i] == j)
    return f", {g.scores[i, hit[0]]:.4f}" if len(hit) else ""


def examples(result: AuditResult, splits: list[str], n: int, names: list[str] | None = None) -> list[str]:
    """Up to ``n`` examples of each problem found, worst first, as lines to print."""
    def label(v: int) -> str:
        return names[v] if names and 0 <= v < len(names) else str(v)

    g, lines = result.graph, []
    exact = result.exact_group >= 0
    for title, mask in (("leaks", result.leak), ("exact duplicates", exact & ~result.leak),
                        ("near duplicates", result.near_duplicate & ~exact & ~result.leak)):
        rows = np.flatnonzero(mask)
        if len(rows):
            lines.append(f"{title} (item ~ duplicate, similarity):")
            for i in rows[np.argsort(-g.scores[rows, 0], kind="stable")][:n].tolist():
                j = int(result.duplicate_of[i])
                lines.append(f"  {i} ({splits[i]}) ~ {j} ({splits[j]}){_similarity(g, i, j)}")
    rows = np.flatnonzero(result.outlier)
    if len(rows):
        lines.append("outliers (item, mean distance to its neighbours):")
        for i in rows[np.argsort(-result.mean_distance[rows], kind="stable")][:n].tolist():
            lines.append(f"  {i} ({splits[i]}), {result.mean_distance[i]:.4f}")
    if result.label_issue is not None and result.labels is not None and result.label_issue.any():
        rows = np.flatnonzero(result.label_issue)
        lines.append("label issues (item: label -> neighbours' vote, label quality):")
        for i in rows[np.argsort(result.label_quality[rows], kind="stable")][:n].tolist():
            lines.append(f"  {i} ({splits[i]}): {label(int(result.labels[i]))} -> {label(int(result.suggested[i]))}, "
                         f"{result.label_quality[i]:.4f}")
    return lines
