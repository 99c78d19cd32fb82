"""Similar-image search of a run: queries by item or image file, results, montage (``contrastkit search``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contrastkit.atomic import atomic_open
from contrastkit.errors import ConfigError, DataError
from contrastkit.index import KINDS
from contrastkit.index_files import INDEX_FILE, INDEX_INFO_FILE, ensure_embeddings, index_run, read_index
from contrastkit.index_search import search
from contrastkit.montage import embed_query_images, load_query_images
from contrastkit.sources import printable, source_to_text


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
        "source", "label", "class_name"}]}]}``, each source as written in
        items.csv (:func:`contrastkit.sources.source_to_text`: valid UTF-8,
        printable); with ``montage``, ``"montage"``.

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
    emb = ensure_embeddings(run_dir)
    n = len(emb.features)
    for t, q in parsed:
        if t == "item" and not 0 <= int(q) < n:
            raise DataError(f"query {q}: item index out of range 0..{n - 1} ({n} items in {run_dir / 'items.csv'})")
    get_images = None
    if montage is not None:
        from contrastkit.montage import run_images

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
    scores, ids = search(index, vectors, k, emb.features, int(info.get("rerank", 1)))  # (Q, k')
    names = emb.meta.get("class_names")
    labels = emb.labels
    results = []
    for (t, q), row_scores, row_ids in zip(parsed, scores, ids):
        items = []
        for rank, (s, i) in enumerate(zip(row_scores.tolist(), row_ids.tolist()), start=1):
            label = None if labels is None or labels[i] < 0 else int(labels[i])
            items.append({
                "rank": rank, "index": int(i), "score": round(float(s), 6), "split": emb.splits[i],
                "source": source_to_text(emb.sources[i]), "label": label,
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
    from contrastkit.montage import montage_image

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
        what = f"item {q['query']}" if q["type"] == "item" else printable(str(q["query"]))  # a path may not be UTF-8
        lines.append(f"query {what}: {len(q['results'])} nearest ({info['kind']} index, cosine similarity)")
        lines.append(f"{'rank':>4}  {'index':>7}  {'score':>7}  {'split':<5}  {'label':<16} source")
        for r in q["results"]:
            label = "" if r["label"] is None else (r["class_name"] or str(r["label"]))
            lines.append(f"{r['rank']:>4}  {r['index']:>7}  {r['score']:>7.4f}  {r['split']:<5}  {label:<16} {r['source']}")
    return "\n".join(lines)
