"""Embed once, evaluate many times: backbone features of every image, saved as files.

``contrastkit embed RUN`` writes into the run folder (or ``--out``):
- ``embeddings.npy``: float32 (N, D), train split first, then test split;
- ``items.csv``: ``index,split,source,label`` (label empty when unknown);
- ``meta.json``: model, checkpoint, data set, dimensions, split sizes, class names.
Everything downstream (evaluate, label, search, visualize, report) reads
these files and needs no model.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.atomic import atomic_save_npy, atomic_write_text
from contrastkit.augment import to_float
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.errors import DataError
from contrastkit.methods import Method
from contrastkit.runtime import Runtime

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.csv"
META_FILE = "meta.json"


@torch.no_grad()
def compute_embeddings(
    method: Method,
    images: ImageDataset,
    data_info: dict[str, Any],
    runtime: Runtime,
    batch_size: int = 512,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backbone features (N, embed_dim) float32 on the CPU, in eval mode.

    Args:
        method: the trained method (its mode is restored afterwards).
        images: the data set to embed.
        data_info: the checkpoint's data dict (mean, std, image_size).
        runtime: device, precision and memory format to run with.
        batch_size: images per forward pass.
        indices: embed only these items (default: all).
    """
    was_training = method.training
    method.eval()
    idx = torch.arange(len(images)) if indices is None else indices
    out = []
    try:
        for start in range(0, len(idx), batch_size):
            x = images.get_batch(idx[start : start + batch_size]).to(runtime.device)
            x = runtime.prepare(to_float(x, data_info["mean"], data_info["std"], data_info["image_size"]))
            with runtime.autocast():
                out.append(method.embed(x).float().cpu())
    finally:
        method.train(was_training)
    if not out:
        return torch.zeros(0, method.embed_dim)
    return torch.cat(out)


@dataclass
class Embeddings:
    """Saved embeddings and what each row is."""

    features: np.ndarray  # (N, D) float32
    splits: list[str]  # "train" / "test" per row
    sources: list[str]
    labels: np.ndarray | None  # (N,) int64, -1 where unknown; None when no row has a label
    meta: dict[str, Any]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(features, labels) of the rows of one split."""
        mask = np.array([s == name for s in self.splits], dtype=bool)
        return self.features[mask], None if self.labels is None else self.labels[mask]


def write_embeddings(
    out_dir: Path,
    data: DataSplits,
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    meta: dict[str, Any],
) -> None:
    """Write embeddings.npy, items.csv and meta.json into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    features = torch.cat([train_features, test_features]).numpy().astype(np.float32)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "split", "source", "label"])
    i = 0
    for split_name, ds in (("train", data.train), ("test", data.test)):
        labels = ds.labels.tolist() if ds.labels is not None else [""] * len(ds)
        for source, label in zip(ds.sources, labels):
            writer.writerow([i, split_name, source, label])
            i += 1
    meta = {
        **meta,
        "count": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "splits": {"train": len(data.train), "test": len(data.test)},
        "class_names": data.train.class_names,
    }
    atomic_save_npy(out_dir / EMBEDDINGS_FILE, features)
    atomic_write_text(out_dir / ITEMS_FILE, buf.getvalue())
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")


def read_embeddings(folder: Path) -> Embeddings:
    """Read what :func:`write_embeddings` wrote (from any source of embeddings)."""
    folder = Path(folder)
    emb_path, items_path, meta_path = folder / EMBEDDINGS_FILE, folder / ITEMS_FILE, folder / META_FILE
    for p in (emb_path, items_path):
        if not p.is_file():
            raise DataError(f"{p}: not found; run `contrastkit embed {folder}` first")
    try:
        features = np.load(emb_path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise DataError(f"{emb_path}: not a plain .npy array ({e})") from None
    if features.ndim != 2:
        raise DataError(f"{emb_path}: expected a 2-D array (items x dimensions), got shape {features.shape}")
    with open(items_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"split", "source", "label"} <= set(rows[0]):
        raise DataError(f"{items_path}: expected columns index,split,source,label, got {list(rows[0])}")
    if len(rows) != len(features):
        raise DataError(f"{items_path}: {len(rows)} rows but {emb_path} has {len(features)} embeddings")
    try:
        labels = np.array([int(r["label"]) if r["label"] != "" else -1 for r in rows], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{items_path}: a label is not an integer ({e})") from None
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return Embeddings(
        features=np.asarray(features, dtype=np.float32),
        splits=[r["split"] for r in rows],
        sources=[r["source"] for r in rows],
        labels=labels if (labels >= 0).any() else None,
        meta=meta,
    )


def embed_run(
    run_dir: str | Path,
    *,
    data: DataSplits | None = None,
    data_spec: str | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 512,
) -> Embeddings:
    """Embed a data set (default: the run's own) with a run's best checkpoint and write the files.

    Args:
        run_dir: a folder written by ``contrastkit train``.
        data: an already loaded data set (takes precedence over ``data_spec``).
        data_spec: a data set name or path (default: the run's ``config.data``).
        out_dir: where to write (default: ``run_dir``).
        batch_size: images per forward pass.
    """
    from contrastkit.checkpoint import load_method, run_checkpoint
    from contrastkit.data import load_dataset

    run_dir = Path(run_dir)
    method, config, info = load_method(run_dir)
    if data is None:
        data = load_dataset(data_spec if data_spec is not None else config.data, image_size=config.image_size)
    channels = data.train.shape[0]
    if channels != info["channels"]:
        raise DataError(
            f"{data.train.name} has {channels}-channel images but the model of {run_dir} was trained on "
            f"{info['channels']}-channel images"
        )
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    method.to(runtime.device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    train_features = compute_embeddings(method, data.train, info, runtime, batch_size)
    test_features = compute_embeddings(method, data.test, info, runtime, batch_size)
    meta = {
        "run": str(run_dir),
        "checkpoint": str(run_checkpoint(run_dir)),
        "method": config.method,
        "backbone": config.backbone,
        "data": data_spec if data_spec is not None else config.data,
        "data_name": data.train.name,
    }
    write_embeddings(Path(out_dir) if out_dir is not None else run_dir, data, train_features, test_features, meta)
    return read_embeddings(Path(out_dir) if out_dir is not None else run_dir)
