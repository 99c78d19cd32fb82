"""Figures from a run folder: 2-D map, nearest-neighbour grids, saliency, training curves.

Each figure is a function that returns PNG bytes; :func:`visualize_run`
writes them (atomically) into ``RUN/figures/``. Everything but the saliency
reads saved files (embeddings, items.csv, labels.csv, log.jsonl); the
saliency needs the model, since it differentiates through it.

- Map (:func:`embedding_map`): PCA to 50 dimensions, then t-SNE (openTSNE,
  seeded) on a random sample of at most 5 000 items, coloured by class or by
  cluster (``labels.csv``).
- Neighbours (:func:`neighbour_grid`): a few sampled test queries, each
  followed by its 8 nearest training items by cosine similarity.
- Saliency (:func:`saliency_map`): which pixels make two images similar, the
  gradient of the cosine similarity of their backbone embeddings with respect
  to the input pixels, |grad| summed over channels and divided by its maximum
  (Simonyan et al. 2013, arXiv 1312.6034, applied to a similarity instead of a
  class score).
- Curves (:func:`training_curves`): loss, learning rate, kNN monitor and
  embedding spread / effective rank per epoch, from ``log.jsonl``.

Figures are drawn with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.atomic import atomic_write_bytes
from contrastkit.errors import ConfigError, DataError
from contrastkit.vectors import normalise
from contrastkit.runlock import run_lock

FIGURES_DIR = "figures"
FIGURES = ("map", "neighbours", "saliency", "curves")  # the --what choices, in drawing order
FIGURE_FILES = {"map": "map.png", "neighbours": "neighbours.png", "saliency": "saliency.png", "curves": "curves.png"}
MAP_MAX_POINTS = 5000  # t-SNE sample: enough to see the structure, ~1 min on 2 CPU cores
MAP_PCA_DIMS = 50  # PCA before t-SNE (denoises and speeds up the neighbour search)
NEIGHBOUR_QUERIES = 6  # test queries in the neighbour grid
NEIGHBOURS = 8  # nearest train items per query
SALIENCY_PAIRS = 4  # (image, nearest neighbour) pairs in the saliency figure
LOG_FILE = "log.jsonl"


def _png(fig: Any) -> bytes:
    """PNG bytes of a matplotlib Figure drawn on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


# ----------------------------------------------------------------------------- 2-D map


def tsne_2d(features: np.ndarray, max_points: int = MAP_MAX_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 2-D t-SNE of L2-normalised features (PCA to 50 dimensions first).

    Args:
        features: (N, D) embeddings, N >= 5.
        max_points: embed a random sample of at most this many rows.
        seed: seeds the sample, the PCA and t-SNE.

    Returns:
        (rows, xy): the (M,) sampled row indices (sorted) and their (M, 2) coordinates.
    """
    from openTSNE import TSNE
    from sklearn.decomposition import PCA

    n = len(features)
    if n < 5:
        raise DataError(f"a 2-D map needs at least 5 items, got {n}")
    if max_points < 5:
        raise ConfigError(f"max_points must be >= 5, got {max_points}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    x = normalise(features[rows], dtype=np.float64)
    dims = min(MAP_PCA_DIMS, x.shape[1], len(rows))
    x = PCA(n_components=dims, random_state=seed).fit_transform(x)  # (M, dims)
    perplexity = float(min(30.0, (len(rows) - 1) / 3))
    xy = np.asarray(TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1, verbose=False).fit(x))
    return rows, xy  # (M,), (M, 2)


def embedding_map(
    xy: np.ndarray, groups: np.ndarray | None, names: Sequence[str] | None = None, title: str = "embeddings (t-SNE)"
) -> bytes:
    """PNG of 2-D points coloured by group, with a legend.

    Args:
        xy: (M, 2) coordinates.
        groups: (M,) int group per point (-1: unknown, drawn grey), or None for one colour.
        names: legend name of each group index (default: the index).
        title: the plot title.
    """
    fig = _figure(8, 7)
    ax = fig.add_subplot()
    if groups is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, c="tab:blue", linewidths=0)
    else:
        present = sorted(set(groups.tolist()))
        cmap = _colours(len([g for g in present if g >= 0]))
        for j, g in enumerate(g for g in present if g >= 0):
            m = groups == g
            name = names[g] if names is not None and g < len(names) else str(g)
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap[j], linewidths=0, label=name)
        if -1 in present:
            m = groups == -1
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color="0.7", linewidths=0, label="unknown")
        ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def read_label_groups(path: Path) -> tuple[np.ndarray, list[str]]:
    """Cluster (montage group) per item from labels.csv, and a name per group.

    A group's name is its label (the class name with ``--seed-labels``) or
    ``cluster <k>`` when the label is the cluster number.

    Raises:
        DataError: the file is not UTF-8 CSV with the columns label and
            cluster, or a cluster is not an integer in [0, rows) (the message
            names the file and line).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if rows and not {"label", "cluster"} <= set(columns):
        raise DataError(f"{path}: expected columns item,source,label,confidence,cluster, got {list(columns)}")
    groups = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        text = r.get("cluster")
        try:
            g = int(text) if text is not None else None
        except ValueError:
            g = None
        if g is None or not 0 <= g < len(rows):
            raise DataError(
                f"{path}, line {i + 2}: cluster {text!r} is not an integer in 0..{len(rows) - 1} (one per row at most)"
            )
        groups[i] = g
    names = [f"cluster {k}" for k in range(int(groups.max()) + 1 if len(groups) else 0)]
    for r, g in zip(rows, groups.tolist()):
        label = r.get("label") or ""
        if label != str(g):
            names[g] = label
    return groups, names


# ----------------------------------------------------------------------------- neighbour grids


def nearest_train(features: np.ndarray, splits: Sequence[str], queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) rows of the k train items nearest each query row by cosine similarity (the query itself excluded)."""
    train_rows = np.flatnonzero(np.array([s == "train" for s in splits]))
    if len(train_rows) == 0:
        raise DataError("nearest neighbours need items in the train split")
    bank = normalise(features[train_rows])
    q = normalise(features[queries])
    sim = q @ bank.T  # (Q, N_train)
    sim[train_rows[None, :] == queries[:, None]] = -np.inf  # a train query is not its own neighbour
    k = min(k, len(train_rows) - 1 if np.isin(queries, train_rows).any() else len(train_rows))
    if k < 1:
        raise DataError("nearest neighbours need at least two train items")
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return train_rows[order]


def sample_queries(splits: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` sorted rows sampled (seeded) from the test split, or from all rows when there is none."""
    test_rows = np.flatnonzero(np.array([s == "test" for s in splits]))
    pool = test_rows if len(test_rows) else np.arange(len(splits))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def neighbour_grid(get_images: Callable[[torch.Tensor], np.ndarray], queries: np.ndarray, neighbours: np.ndarray) -> bytes:
    """PNG with one row per query: the query image, then its neighbours nearest first.

    Args:
        get_images: ``indices (LongTensor) -> uint8 (B, C, H, W)`` images of the embedding rows.
        queries: (Q,) query rows.
        neighbours: (Q, k) neighbour rows.
    """
    from contrastkit.montage import montage_image

    rows = np.concatenate([queries[:, None], neighbours], axis=1)  # (Q, k + 1)
    images = np.asarray(get_images(torch.from_numpy(rows.reshape(-1).astype(np.int64))))
    sheet = montage_image(images, columns=rows.shape[1])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- saliency


def saliency_map(embed: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Which pixels make two images similar: |d cos(embed(a), embed(b)) / d pixels|, summed over channels.

    Args:
        embed: ``(B, C, H, W) float -> (B, D)`` embeddings (e.g. ``method.embed`` in eval mode).
        a, b: (C, H, W) float inputs, as ``embed`` expects them (normalised).

    Returns:
        Two (H, W) float32 maps in [0, 1], each divided by its own maximum
        (all zeros when the gradient is zero everywhere); exactly 0 where the
        gradient is 0.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ConfigError(f"saliency needs two (C, H, W) images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x = torch.stack([a, b]).detach().float().clone().requires_grad_(True)  # (2, C, H, W)
    z = embed(x).float()  # (2, D)
    sim = F.cosine_similarity(z[0:1], z[1:2]).sum()
    (grad,) = torch.autograd.grad(sim, x)
    maps = grad.abs().sum(dim=1).numpy()  # (2, H, W)
    peak = maps.reshape(2, -1).max(axis=1)
    out = [m / p if p > 0 else np.zeros_like(m) for m, p in zip(maps, peak)]
    return out[0].astype(np.float32), out[1].astype(np.float32)


def saliency_figure(pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]) -> bytes:
    """PNG: per pair a row of image a, its heat map, image b, its heat map.

    Args:
        pairs: (image a, map a, image b, map b, cosine similarity); images are
            float (C, H, W) in [0, 1], maps (H, W) in [0, 1].
    """
    if not pairs:
        raise DataError("no image pairs to draw")
    fig = _figure(9, 2.3 * len(pairs))
    for r, (ia, ma, ib, mb, sim) in enumerate(pairs):
        for c, (img, heat, what) in enumerate(((ia, ma, "image"), (ib, mb, "nearest neighbour"))):
            shown = img[0] if img.shape[0] != 3 else img.transpose(1, 2, 0)
            ax = fig.add_subplot(len(pairs), 4, 4 * r + 2 * c + 1)
            ax.imshow(shown, cmap="gray" if img.shape[0] != 3 else None, vmin=0, vmax=1)
            ax.set_title(what if c == 0 else f"{what} (cos {sim:.2f})", fontsize=8)
            ax.axis("off")
            ax = fig.add_subplot(len(pairs), 4, 4 * r + 2 * c + 2)
            ax.imshow(shown, cmap="gray" if img.shape[0] != 3 else None, vmin=0, vmax=1)
            ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            ax.set_title("saliency", fontsize=8)
            ax.axis("off")
    return _png(fig)


def run_saliency_pairs(
    run_dir: Path, get_images: Callable[[torch.Tensor], np.ndarray], rows_a: np.ndarray, rows_b: np.ndarray,
    features: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
    """Saliency of each pair (rows_a[i], rows_b[i]) with the run's best model, on the CPU in float32."""
    from contrastkit.augment import to_float
    from contrastkit.checkpoint import load_method

    method, _, info = load_method(run_dir)
    method.float().eval()
    mean = torch.tensor(info["mean"]).view(-1, 1, 1)
    std = torch.tensor(info["std"]).view(-1, 1, 1)
    out = []
    for ra, rb in zip(rows_a.tolist(), rows_b.tolist()):
        imgs = torch.from_numpy(np.asarray(get_images(torch.tensor([ra, rb]))))
        x = to_float(imgs, info["mean"], info["std"], info["image_size"])  # (2, C, S, S)
        ma, mb = saliency_map(method.embed, x[0], x[1])
        shown = (x * std + mean).clamp(0, 1).numpy()
        fa, fb = normalise(features[[ra, rb]])
        out.append((shown[0], ma, shown[1], mb, float(fa @ fb)))
    return out


# ----------------------------------------------------------------------------- training curves


def read_log(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a log.jsonl."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; training curves need the log of `contrastkit train`")
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no epochs logged")
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "epoch" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(records: list[dict[str, Any]]) -> bytes:
    """PNG with four panels per epoch: loss, learning rate, kNN monitor, embedding spread and effective rank."""
    fig = _figure(10, 7)
    panels = (("loss", "loss", None), ("lr", "learning rate", None), ("knn_top1", "kNN monitor top-1", None),
              ("embedding_std", "embedding spread", "effective_rank"))
    for i, (key, title, twin) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        ex, ey = _series(records, key)
        if ex:
            ax.plot(ex, ey, marker="o", markersize=3, color="tab:blue", label=key)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if twin is not None:
            tx, ty = _series(records, twin)
            if tx:
                ax2 = ax.twinx()
                ax2.plot(tx, ty, marker="s", markersize=3, color="tab:orange", label=twin)
                ax2.set_ylabel("effective rank", color="tab:orange")
            ax.set_ylabel("spread", color="tab:blue")
    fig.tight_layout()
    return _png(fig)


def confusion_matrix_figure(matrix: np.ndarray, names: Sequence[str], title: str = "confusion matrix") -> bytes:
    """PNG of a (C, C) confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    c = len(matrix)
    fig = _figure(1.2 + 0.55 * c, 1.0 + 0.5 * c)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(c), [str(n) for n in names], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c), [str(n) for n in names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() if matrix.size else 0
    for i in range(c):
        for j in range(c):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title(title)
    return _png(fig)


# ----------------------------------------------------------------------------- run folder


def parse_what(what: str | Sequence[str] | None) -> list[str]:
    """The figures asked for (comma-separated or a list), in FIGURES order; None: all."""
    if what is None:
        return list(FIGURES)
    names = [w.strip() for w in (what.split(",") if isinstance(what, str) else what) if w.strip()]
    bad = [w for w in names if w not in FIGURES]
    if bad or not names:
        raise ConfigError(f"--what {','.join(bad) or repr(what)}: choose from {','.join(FIGURES)}")
    return [f for f in FIGURES if f in names]


def ensure_embeddings(run_dir: Path) -> Any:
    """The run's embeddings, embedding first (as `evaluate` does) when embeddings.npy is missing."""
    from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

    if not Path(run_dir).is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    if not (run_dir / EMBEDDINGS_FILE).is_file() and (run_dir / "config.json").is_file():
        embed_run(run_dir)
    return read_embeddings(run_dir)


def render_figures(
    run_dir: str | Path,
    what: str | Sequence[str] | None = None,
    *,
    colour: str = "auto",
    seed: int = 0,
    max_points: int = MAP_MAX_POINTS,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Draw the figures of a run in memory.

    Args:
        run_dir: a run folder (embeds first when embeddings.npy is missing).
        what: figures to draw (see FIGURES; default all).
        colour: map colours: ``"label"`` (classes of items.csv), ``"cluster"``
            (labels.csv), or ``"auto"`` (labels.csv when present, else labels).
        seed: seeds the map sample, t-SNE and the sampled queries.
        max_points: t-SNE sample size.

    Returns:
        ({figure: PNG bytes}, {figure: why it was skipped}).
    """
    from contrastkit.label import LABELS_FILE
    from contrastkit.montage import run_images

    run_dir = Path(run_dir)
    names = parse_what(what)
    if colour not in ("auto", "label", "cluster"):
        raise ConfigError(f"--colour {colour!r}: choose from auto, label, cluster")
    pngs: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    if "curves" in names:
        pngs["curves"] = training_curves(read_log(run_dir / LOG_FILE))
    if not set(names) - {"curves"}:
        return pngs, skipped
    emb = ensure_embeddings(run_dir)
    if "map" in names:
        rows, xy = tsne_2d(emb.features, max_points=max_points, seed=seed)
        labels_csv = run_dir / LABELS_FILE
        if colour == "cluster" and not labels_csv.is_file():
            raise DataError(f"{labels_csv}: not found; run `contrastkit label {run_dir} --clusters K` first")
        if colour == "label" and emb.labels is None:
            raise DataError(f"{run_dir}: items.csv has no labels to colour by")
        if colour == "cluster" or (colour == "auto" and labels_csv.is_file()):
            groups, group_names = read_label_groups(labels_csv)
            if len(groups) != len(emb.features):
                raise DataError(f"{labels_csv}: {len(groups)} rows but {len(emb.features)} embeddings; label again")
            pngs["map"] = embedding_map(xy, groups[rows], group_names, "embeddings (t-SNE), by cluster (labels.csv)")
        elif emb.labels is not None:
            pngs["map"] = embedding_map(xy, emb.labels[rows], emb.meta.get("class_names"), "embeddings (t-SNE), by class")
        else:
            pngs["map"] = embedding_map(xy, None, None)
    if {"neighbours", "saliency"} & set(names):
        get_images, why = run_images(run_dir, emb.sources)
        if get_images is None:
            for n in ("neighbours", "saliency"):
                if n in names:
                    skipped[n] = why
            return pngs, skipped
        queries = sample_queries(emb.splits, NEIGHBOUR_QUERIES, seed)
        nbrs = nearest_train(emb.features, emb.splits, queries, NEIGHBOURS)
        if "neighbours" in names:
            pngs["neighbours"] = neighbour_grid(get_images, queries, nbrs)
        if "saliency" in names:
            a = queries[:SALIENCY_PAIRS]
            pairs = run_saliency_pairs(run_dir, get_images, a, nbrs[: len(a), 0], emb.features)
            pngs["saliency"] = saliency_figure(pairs)
    return pngs, skipped


def visualize_run(
    run_dir: str | Path,
    what: str | Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    **options: Any,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw the figures of a run and write them as PNGs into ``out_dir`` (default ``RUN/figures``).

    Takes the options of :func:`render_figures`. Returns ({figure: path}, {figure: why skipped}).
    Holds the run folder's lock (:mod:`contrastkit.runlock`) while it works.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / FIGURES_DIR
    parse_what(what)  # a bad --what fails before anything is locked or written
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    with run_lock(run_dir):  # it may embed into the run folder, and draws into RUN/figures (contrastkit.runlock)
        pngs, skipped = render_figures(run_dir, what, **options)
        written = {}
        for name, data in pngs.items():
            path = out / FIGURE_FILES[name]
            atomic_write_bytes(path, data)
            written[name] = path
    return written, skipped
