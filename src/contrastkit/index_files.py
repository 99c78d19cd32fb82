"""A run's index files and the run-level build (``contrastkit index``): ``index.faiss`` and ``index.json``.

Files, beside ``embeddings.npy``:

- ``index.faiss``: written by ``faiss.write_index`` (streamed, no copy in
  memory) atomically, read back with ``faiss.read_index`` (no pickle);
- ``index.json``: kind, parameters, recall@10, build time, the SHA-256 of
  ``index.faiss`` and a fingerprint of the embeddings it was built from (a
  re-embedded run gets a new index).

The index is built by :func:`contrastkit.index.build_index`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.atomic import atomic_open, atomic_write_text
from contrastkit.errors import DataError
from contrastkit.index import TARGET_RECALL, _check_options, build_index
from contrastkit.index_search import RECALL_QUERIES
from contrastkit.runlock import run_lock
from contrastkit.vectors import _faiss

INDEX_FILE = "index.faiss"
INDEX_INFO_FILE = "index.json"


def embeddings_fingerprint(features: np.ndarray) -> str:
    """SHA-256 of the shape and up to 1024 evenly spaced rows: changes when the run is re-embedded."""
    x = np.asarray(features, dtype=np.float32)
    rows = np.unique(np.linspace(0, max(len(x) - 1, 0), num=min(len(x), 1024)).astype(np.int64))
    h = hashlib.sha256(f"{x.shape}".encode())
    h.update(np.ascontiguousarray(x[rows]).tobytes() if len(x) else b"")
    return h.hexdigest()


def write_index(folder: str | Path, index: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``index.faiss`` and ``index.json``, each atomically; returns the info written.

    The index is streamed to the file by ``faiss.write_index`` (hashed on the
    way), never serialised whole in memory: a multi-GiB index needs no second copy.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    with atomic_open(folder / INDEX_FILE) as f:

        def write(block: bytes) -> int:
            digest.update(block)
            return f.write(block)

        _faiss().write_index(index, _faiss().PyCallbackIOWriter(write))
    info = {**info, "index_file": INDEX_FILE, "index_sha256": digest.hexdigest()}
    atomic_write_text(folder / INDEX_INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if _file_sha256(path) != info.get("index_sha256"):
        raise DataError(f"{path}: does not match {info_path} (SHA-256 differs); rebuild with `contrastkit index {folder}`")
    try:
        with open(path, "rb") as f:  # streamed: the file is not held in memory beside the index
            index = _faiss().read_index(_faiss().PyCallbackIOReader(f.read))
    except RuntimeError as e:
        raise DataError(f"{path}: not a readable FAISS index ({str(e).splitlines()[0]})") from None
    if index.ntotal != info.get("count") or index.d != info.get("dim"):
        raise DataError(f"{path}: holds {index.ntotal} x {index.d} vectors but {info_path} says {info.get('count')} x {info.get('dim')}")
    if features is not None and embeddings_fingerprint(features) != info.get("embeddings_fingerprint"):
        raise DataError(f"{path}: built from other embeddings than the current ones; rebuild with `contrastkit index {folder}`")
    return index, info


def ensure_embeddings(run_dir: Path) -> Any:
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
    :func:`build_index`. Returns the info written to index.json. Holds the
    folder's lock (:mod:`contrastkit.runlock`) while it works.
    """
    from contrastkit import __version__

    run_dir = Path(run_dir)
    _check_options(kind, options.get("target_recall", TARGET_RECALL), options.get("recall_queries", RECALL_QUERIES))
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder")
    with run_lock(run_dir):  # one command at a time writes the folder (contrastkit.runlock)
        emb = ensure_embeddings(run_dir)
        index, info = build_index(emb.features, kind, **options)
        info.update({
            "embeddings": str(run_dir / "embeddings.npy"),
            "embeddings_fingerprint": embeddings_fingerprint(emb.features),
            "faiss": _faiss().__version__, "contrastkit": __version__,
        })
        return write_index(run_dir, index, info)
