"""The explorer's view of a run folder: files read once, arrays to page and filter a million items on the server.

Nothing here knows about HTTP (see :mod:`contrastkit.explorer.app`). Read at
start: ``embeddings.npy`` (memory-mapped), ``items.csv``, ``meta.json``,
``labels.csv`` and ``audit.csv`` when present, the FAISS index when it
matches the embeddings, the seed-label corrections; the run's images and
model are loaded on first use. Per item the state keeps small arrays (split
code, label code, confidence, cluster, map position, problem flags), so a
filtered, sorted page is a few vectorised passes over N values.

Files written into the run folder (each atomically):

- ``seed_labels.csv`` (:data:`~contrastkit.explorer.review.SEEDS_FILE`): ``item,label`` per corrected
  item (item: its source as in items.csv), the input of
  ``contrastkit label --seed-labels`` (and of re-spread);
- ``map.npy`` / ``map.json`` (:data:`MAP_FILE`): the 2-D map: t-SNE of a
  seeded sample of :data:`MAP_POINTS` items (as ``contrastkit visualize``),
  every other item placed at the similarity-weighted mean of its 3 nearest
  sampled items; recomputed when the embeddings change (fingerprint);
- ``labels.csv`` / ``label_metrics.json`` by re-spread, ``audit.csv`` /
  ``audit.json`` by the data problems check.

The per-item arrays are read by :mod:`contrastkit.explorer.loading`; the
corrections, review and re-spread are :mod:`contrastkit.explorer.review`'s.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contrastkit import index as ix
from contrastkit import index_files, index_search
from contrastkit.atomic import atomic_save_npy, atomic_write_text
from contrastkit.errors import ConfigError, DataError
from contrastkit.explorer.loading import MAP_FILE, MAP_INFO_FILE, MAP_POINTS, _read_audit_csv, _read_labels_csv, compute_map
from contrastkit.explorer.review import LabelReview
from contrastkit.runlock import run_lock
from contrastkit.sources import printable, source_to_text

PAGE_MAX = 500  # items per page at most
NEIGHBOURS_MAX = 100  # neighbours per query at most
SORTS = ("index", "confidence", "-confidence", "severity")  # severity: the filtered problem's worst first


class RunState(LabelReview):
    """One run folder as the explorer serves it (thread-safe for concurrent requests)."""

    def __init__(self, run_dir: str | Path, *, map_points: int = MAP_POINTS, seed: int = 0,
                 log: Callable[[str], None] = lambda s: None) -> None:
        """Read the run's files; compute (or read the cached) map; find or build the search index.

        Args:
            run_dir: a run folder (or any folder with embeddings.npy and items.csv).
            map_points: items in the t-SNE map.
            seed: seed of the map.
            log: where progress lines go (the command prints them).
        """
        from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise DataError(f"{self.run_dir}: no such folder")
        if not (self.run_dir / EMBEDDINGS_FILE).is_file() and (self.run_dir / "config.json").is_file():
            log(f"embedding the run's images first (as `contrastkit embed {self.run_dir}`)")
            embed_run(self.run_dir)
        self._lock = threading.RLock()
        emb = read_embeddings(self.run_dir)
        self.features = emb.features  # (N, D), memory-mapped
        self.n = len(self.features)
        if self.n < 5:
            raise DataError(f"{self.run_dir}: the explorer needs at least 5 items, got {self.n}")
        self.sources = emb.sources
        self.split_names = sorted(set(emb.splits))
        self.split = np.array([self.split_names.index(s) for s in emb.splits], dtype=np.uint8)
        self.class_names: list[str] | None = emb.meta.get("class_names") or None
        self.truth = emb.labels  # (N,) int64 or None
        self._by_source: dict[str, int] | None = None
        self.changed = np.zeros(self.n, dtype=bool)  # items whose label the last re-spread changed
        self._respread: dict[str, Any] = {"running": False, "stage": None, "started": 0.0, "last": None, "error": None}
        self.reload_labels()
        self.corrections = self._read_corrections()
        self.problems, self.problem_scores = _read_audit_csv(self.run_dir / "audit.csv", self.n)
        self.index, self.rerank = self._index(log)
        self.map_rows, self.xy = self._map(map_points, seed, log)
        self._images: Any = None
        self._images_note = ""
        self._model: Any = None

    # ------------------------------------------------------------------ files

    def reload_labels(self) -> None:
        """Read labels.csv again (after a re-spread); order the items by confidence once."""
        names, code, conf, cluster = _read_labels_csv(self.run_dir / "labels.csv", self.n)
        with self._lock:
            self.label_names, self.label, self.confidence, self.cluster = names, code, conf, cluster
            self.by_confidence = np.argsort(np.where(np.isnan(conf), np.inf, conf), kind="stable")

    # ------------------------------------------------------------------ index and map

    def _index(self, log: Callable[[str], None]) -> tuple[Any, int]:
        """The run's FAISS index when it matches the embeddings; else built (written above 100 000 items)."""
        if (self.run_dir / index_files.INDEX_FILE).is_file():
            try:
                index, info = index_files.read_index(self.run_dir, self.features)
                return index, int(info.get("rerank") or 1)
            except DataError as e:
                log(f"note: {e}")
        if self.n <= ix.EXACT_MAX_ITEMS:
            index, _ = ix.build_index(self.features, "flat")  # exact, in memory: a second at 100 000 items
            return index, 1
        log(f"building the search index of {self.n} items (once; as `contrastkit index`)")
        index_files.index_run(self.run_dir)
        index, info = index_files.read_index(self.run_dir, self.features)
        return index, int(info.get("rerank") or 1)

    def _map(self, points: int, seed: int, log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
        """The cached map when it belongs to these embeddings and settings, else computed and cached."""
        key = {"fingerprint": index_files.embeddings_fingerprint(self.features), "points": int(points), "seed": int(seed)}
        info_path, path = self.run_dir / MAP_INFO_FILE, self.run_dir / MAP_FILE
        try:
            info = json.loads(info_path.read_text())
            if {k: info.get(k) for k in key} == key:
                xy = np.load(path, allow_pickle=False)
                rows = np.asarray(info["rows"], dtype=np.int64)
                if xy.shape == (self.n, 2) and rows.ndim == 1 and len(rows) and rows.max() < self.n:
                    return rows, xy.astype(np.float32)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log(f"computing the 2-D map (t-SNE of {min(points, self.n)} items; once, cached in {path})")
        rows, xy = compute_map(self.features, points, seed)
        try:
            with run_lock(self.run_dir):
                atomic_save_npy(path, xy)
                atomic_write_text(info_path, json.dumps({**key, "rows": rows.tolist()}) + "\n")
        except Exception as e:  # a read-only run folder still gets its map, only not cached
            log(f"note: the map is not cached ({e})")
        return rows, xy

    # ------------------------------------------------------------------ queries

    def check_item(self, item: int) -> None:
        """Raise a DataError unless ``item`` is a row of the embeddings."""
        if not 0 <= item < self.n:
            raise DataError(f"item {item} is not a row of embeddings.npy (0..{self.n - 1})")

    def item(self, i: int) -> dict[str, Any]:
        """What the grid shows of one item."""
        c = int(self.label[i])
        conf = float(self.confidence[i])
        out: dict[str, Any] = {
            "item": i, "split": self.split_names[self.split[i]], "source": printable(source_to_text(self.sources[i])),
            "label": self.label_names[c] if c >= 0 else None, "confidence": None if np.isnan(conf) else round(conf, 4),
            "cluster": int(self.cluster[i]) if self.cluster[i] >= 0 else None,
            "truth": None, "correction": self.corrections.get(i), "changed": bool(self.changed[i]),
            "problems": [p for p, m in self.problems.items() if m[i]],
            "scores": {c: None if np.isnan(v[i]) else round(float(v[i]), 4) for c, v in self.problem_scores.items()},
            "x": round(float(self.xy[i, 0]), 3), "y": round(float(self.xy[i, 1]), 3),
        }
        if self.truth is not None and self.truth[i] >= 0:
            t = int(self.truth[i])
            out["truth"] = self.class_names[t] if self.class_names and t < len(self.class_names) else str(t)
        return out

    def select(self, *, split: str | None = None, label: str | None = None, cluster: int | None = None,
               conf_min: float | None = None, conf_max: float | None = None, problem: str | None = None,
               region: tuple[float, float, float, float] | None = None, corrected: bool | None = None,
               changed: bool = False, sort: str = "index") -> np.ndarray:
        """Rows matching every filter given, in ``sort`` order.

        "confidence": least confident first; "severity" (with ``problem``): the worst first by the score
        :data:`contrastkit.audit.SEVERITY` names for that problem, as ``contrastkit audit`` lists its examples
        (ties and items without the score last, by index).
        """
        if sort not in SORTS:
            raise ConfigError(f"sort {sort!r} is not one of {', '.join(SORTS)}")
        if sort == "severity" and problem is None:
            raise ConfigError("sort severity orders the items of one data problem: choose a problem too")
        mask = np.ones(self.n, dtype=bool)
        if split is not None:
            mask &= self.split == (self.split_names.index(split) if split in self.split_names else 255)
        if label is not None:
            mask &= self.label == (self.label_names.index(label) if label in self.label_names else -2)
        if cluster is not None:
            mask &= self.cluster == cluster
        if conf_min is not None:
            mask &= self.confidence >= conf_min  # NaN (no labels.csv) never passes a bound
        if conf_max is not None:
            mask &= self.confidence <= conf_max
        if problem is not None:
            if problem not in self.problems:
                raise ConfigError(f"problem {problem!r}: run the data problems check first, or use one of "
                                  f"{', '.join(self.problems) or '(none yet)'}")
            mask &= self.problems[problem]
        if region is not None:
            x0, y0, x1, y1 = region
            x, y = self.xy[:, 0], self.xy[:, 1]
            mask &= (x >= min(x0, x1)) & (x <= max(x0, x1)) & (y >= min(y0, y1)) & (y <= max(y0, y1))
        if corrected is not None:
            has = np.zeros(self.n, dtype=bool)
            has[list(self.corrections)] = True
            mask &= has if corrected else ~has
        if changed:
            mask &= self.changed
        if sort == "index":
            return np.flatnonzero(mask)
        if sort == "severity":
            rows = np.flatnonzero(mask)  # sorted here, after filtering: only the problem's items, not all N
            return rows[np.argsort(-self.severity(problem, rows), kind="stable")]  # type: ignore[arg-type]
        order = self.by_confidence if sort == "confidence" else self.by_confidence[::-1]
        return order[mask[order]]

    def severity(self, problem: str, rows: np.ndarray) -> np.ndarray:
        """How bad ``problem`` is at each of ``rows``: higher is worse (-inf where audit.csv has no score)."""
        from contrastkit.audit import SEVERITY

        column, worse = SEVERITY[problem]
        value = self.problem_scores[column][rows].astype(np.float64)
        value = value if worse == "higher" else -value
        return np.where(np.isnan(value), -np.inf, value)

    def page(self, rows: np.ndarray, offset: int, limit: int) -> dict[str, Any]:
        """``{"total", "offset", "items"}`` of one page of ``rows``."""
        if offset < 0 or not 1 <= limit <= PAGE_MAX:
            raise ConfigError(f"offset must be >= 0 and limit in 1..{PAGE_MAX}, got {offset}, {limit}")
        return {"total": int(len(rows)), "offset": offset,
                "items": [self.item(int(i)) for i in rows[offset : offset + limit]]}

    def neighbours_of_vector(self, query: np.ndarray, k: int, leave_out: int | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest items of a (D,) query by cosine similarity, best first, each with its score."""
        if not 1 <= k <= NEIGHBOURS_MAX:
            raise ConfigError(f"k must be in 1..{NEIGHBOURS_MAX}, got {k}")
        extra = 1 if leave_out is not None else 0
        scores, ids = index_search.search(self.index, query[None], k + extra, features=self.features, rerank_factor=self.rerank)
        out = []
        for s, i in zip(scores[0].tolist(), ids[0].tolist()):
            if i < 0 or i == leave_out or len(out) == k:
                continue
            out.append({**self.item(int(i)), "score": round(float(s), 4)})
        return out

    def neighbours(self, item: int, k: int) -> list[dict[str, Any]]:
        """The ``k`` nearest other items of ``item``."""
        self.check_item(item)
        return self.neighbours_of_vector(np.asarray(self.features[item], dtype=np.float32), k, leave_out=item)

    def map_points(self) -> dict[str, Any]:
        """The sampled items' positions and colour groups (cluster, else label, else split), for the canvas."""
        rows = self.map_rows
        if (self.cluster[rows] >= 0).any():
            group, names = self.cluster[rows], [str(c) for c in range(int(self.cluster.max()) + 1)]
        elif self.truth is not None:
            group = self.truth[rows]
            names = self.class_names or [str(c) for c in range(int(self.truth.max()) + 1)]
        else:
            group, names = self.split[rows].astype(np.int64), self.split_names
        xy = self.xy
        return {"item": rows.tolist(), "x": np.round(xy[rows, 0], 3).tolist(), "y": np.round(xy[rows, 1], 3).tolist(),
                "group": np.asarray(group).astype(int).tolist(), "group_names": list(names),
                "bounds": [float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())]}

    # ------------------------------------------------------------------ images and the model

    def image_png(self, item: int) -> bytes:
        """The item's image as PNG, from the run's own data set (never opened by a path from a file)."""
        from PIL import Image

        from contrastkit.audit import run_row_images

        self.check_item(item)
        with self._lock:
            if self._images is None:
                get, note = run_row_images(self.run_dir, self.sources)
                self._images, self._images_note = (get or False), note
        if not self._images:
            raise DataError(f"no images: {self._images_note}")
        img = np.asarray(self._images(item, item + 1))[0]  # (C, H, W) uint8
        pil = Image.fromarray(img[0] if img.shape[0] != 3 else img.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        return buf.getvalue()

    def embed_upload(self, data: bytes) -> np.ndarray:
        """(D,) embedding of uploaded image bytes by the run's model, decoded by the image folders' reader."""
        import torch

        from contrastkit.checkpoint import load_method
        from contrastkit.data.dataset import ImageDataset
        from contrastkit.embedding import compute_embeddings
        from contrastkit.montage import load_query_images
        from contrastkit.runtime import Runtime

        with self._lock:
            if self._model is None:
                method, config, info = load_method(self.run_dir)
                runtime = Runtime.create(config.device, config.precision, config.channels_last)
                method.to(runtime.device)
                self._model = (method, info, runtime)
        method, info, runtime = self._model
        side = int(info["image_size"])
        with tempfile.TemporaryDirectory(prefix="contrastkit-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                images = load_query_images([path], int(info["channels"]), (side, side))  # (1, C, H, W)
            except DataError:
                raise DataError("the upload is not an image the folder reader can decode "
                                "(PNG, JPEG, WebP, BMP within Pillow's pixel limit)") from None
        query = ImageDataset(images=images, labels=None, class_names=None, sources=["upload"], name="upload")
        with self._lock:  # one forward pass at a time through the shared model
            x = compute_embeddings(method, query, info, runtime, workers=0)
        return x.numpy().astype(np.float32)[0] if isinstance(x, torch.Tensor) else np.asarray(x)[0]

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls."""
        from contrastkit.audit import SEVERITY

        return {
            "run": printable(str(self.run_dir)), "items": self.n, "dim": int(self.features.shape[1]),
            "splits": self.split_names, "labels": sorted(self.label_names, key=lambda s: (len(s), s)),
            "choices": self.choices(), "clusters": int(self.cluster.max()) + 1 if (self.cluster >= 0).any() else 0,
            "has_labels": bool(self.label_names), "has_truth": self.truth is not None,
            "has_model": (self.run_dir / "checkpoints").is_dir(), "corrections": len(self.corrections),
            "problems": self.audit_summary(), "problem_names": list(self.problems),
            "severity": {p: list(v) for p, v in SEVERITY.items()},
            "page_max": PAGE_MAX, "sorts": list(SORTS),
        }
