"""Embed once, evaluate many times: backbone features of every image, saved as files.

``contrastkit embed RUN`` writes into the run folder (or ``--out``):
- ``embeddings.npy``: float32 (N, D), train split first, then test split;
- ``items.csv``: ``index,split,source,label`` (label empty when unknown; a
  source that is not valid UTF-8, a file name in another encoding, is
  written with the reversible escaping of :mod:`contrastkit.sources`, e.g.
  ``caf\\xe9.png``, and read back to the same item);
- ``meta.json``: model, checkpoint, data set, dimensions, split sizes, class names.
Everything downstream (evaluate, label, search, visualize, report) reads
these files and needs no model.

Memory stays constant whatever the number of images: features are computed
batch by batch (image folders too large for memory stream through
:func:`contrastkit.data.streaming.prefetch`) and each batch goes straight to
``embeddings.npy``'s temporary file, train rows then test rows; items.csv is
streamed the same way, and :func:`read_embeddings` memory-maps the array.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from contrastkit.atomic import AtomicFiles
from contrastkit.augment import to_float
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.data.streaming import IndexBatches, prefetch, resolve_workers
from contrastkit.errors import ConfigError, DataError
from contrastkit.methods.base import Method
from contrastkit.runlock import run_lock
from contrastkit.runtime import Runtime
from contrastkit.sources import source_from_text, source_to_text

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.csv"
META_FILE = "meta.json"
MAX_LABEL = 999_999  # without class names, labels above this are refused (a label array sized max+1 would not fit)
ITEM_ROWS = 1024  # items.csv rows formatted at a time
FINITE_CHECK_VALUES = 1 << 22  # embedding values checked for NaN / inf at a time when reading (16 MiB of float32)


@torch.no_grad()
def iter_embeddings(
    method: Method,
    images: ImageDataset,
    data_info: dict[str, Any],
    runtime: Runtime,
    batch_size: int = 512,
    indices: torch.Tensor | None = None,
    workers: int | None = None,
) -> Generator[torch.Tensor, None, None]:
    """Backbone features batch by batch, in eval mode: float32 (B, embed_dim) on the CPU per batch, in item order.

    Args are those of :func:`compute_embeddings`. The method is in eval mode
    from the first batch until the generator ends or is closed.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    was_training = method.training
    method.eval()
    batches = IndexBatches(len(images) if indices is None else indices, batch_size)
    loader = prefetch(images, batches, resolve_workers(workers, images), pin_memory=runtime.device.type == "cuda")
    try:
        for x in loader:  # (B, C, H, W) uint8
            x = runtime.prepare(to_float(x.to(runtime.device, non_blocking=True), data_info["mean"], data_info["std"],
                                         data_info["image_size"]))
            with runtime.autocast():
                features = method.embed(x).float().cpu()  # (B, embed_dim)
            yield features
    finally:
        loader.close()
        method.train(was_training)


def compute_embeddings(
    method: Method,
    images: ImageDataset,
    data_info: dict[str, Any],
    runtime: Runtime,
    batch_size: int = 512,
    indices: torch.Tensor | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Backbone features (N, embed_dim) float32 on the CPU, in eval mode.

    Holds all N rows in memory; :func:`iter_embeddings` gives them batch by
    batch, and :func:`embed_run` writes them to disk that way.

    Args:
        method: the trained method (its mode is restored afterwards).
        images: the data set to embed.
        data_info: the checkpoint's data dict (mean, std, image_size).
        runtime: device, precision and memory format to run with.
        batch_size: images per forward pass.
        indices: embed only these items (default: all).
        workers: processes decoding image files ahead (see
            :func:`contrastkit.data.streaming.resolve_workers`); None = 0 for
            data in memory, a few for a streamed image folder.
    """
    out = list(iter_embeddings(method, images, data_info, runtime, batch_size, indices, workers))
    if not out:
        return torch.zeros(0, method.embed_dim)
    return torch.cat(out)


@dataclass
class Embeddings:
    """Saved embeddings and what each row is."""

    features: np.ndarray  # (N, D) float32
    splits: list[str]  # "train" / "test" per row
    sources: list[str]  # as the data set names them (os.fsdecode'd, see contrastkit.sources)
    labels: np.ndarray | None  # (N,) int64, -1 where unknown; None when no row has a label
    meta: dict[str, Any]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(features, labels) of the rows of one split."""
        mask = np.array([s == name for s in self.splits], dtype=bool)
        return self.features[mask], None if self.labels is None else self.labels[mask]


class _Utf8:
    """A text sink for :mod:`csv` that encodes to UTF-8 into a binary file (the file is left open)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, text: str) -> int:
        return self._f.write(text.encode("utf-8"))


def _write_npy_rows(f: BinaryIO, path: Path, chunks: Iterable[torch.Tensor | np.ndarray], count: int, dim: int) -> None:
    """Write a float32 (count, dim) .npy, header then ``chunks`` of rows in order, as ``np.save`` would."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (count, dim)}
    np.lib.format.write_array_header_1_0(f, header)  # np.save's own header for this shape
    rows = 0
    for chunk in chunks:
        x = chunk.detach().to("cpu", torch.float32).numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        x = np.ascontiguousarray(x, dtype="<f4")  # (B, dim)
        if x.ndim != 2 or x.shape[1] != dim or rows + len(x) > count:
            raise DataError(f"{path}: embeddings of shape {x.shape} after {rows} rows do not fit a {count} x {dim} array")
        if x.size:
            f.write(memoryview(x).cast("B"))
        rows += len(x)
    if rows != count:
        raise DataError(f"{path}: {rows} embeddings were computed for {count} items")


def _write_items(f: BinaryIO, data: DataSplits) -> None:
    """items.csv rows, a block of :data:`ITEM_ROWS` at a time."""
    writer = csv.writer(_Utf8(f), lineterminator="\n")
    writer.writerow(["index", "split", "source", "label"])
    i = 0
    for split_name, ds in (("train", data.train), ("test", data.test)):
        for start in range(0, len(ds), ITEM_ROWS):
            sources = ds.sources[start : start + ITEM_ROWS]
            labels = ds.labels[start : start + ITEM_ROWS].tolist() if ds.labels is not None else [""] * len(sources)
            for source, label in zip(sources, labels):
                writer.writerow([i, split_name, source_to_text(source), label])
                i += 1


def write_embedding_chunks(
    out_dir: Path,
    data: DataSplits,
    chunks: Iterable[torch.Tensor | np.ndarray],
    dim: int,
    meta: dict[str, Any],
) -> None:
    """Write embeddings.npy, items.csv and meta.json into ``out_dir`` together, the features streamed.

    ``chunks`` gives the rows of every train item, then every test item, in
    blocks of any size (each (B, ``dim``)); every block is written to the
    temporary embeddings.npy as it arrives, so memory does not grow with the
    number of items. The three files are renamed into place only when all
    are on disk (see :class:`contrastkit.atomic.AtomicFiles`): an error while
    computing or writing (a full disk, a failing model) leaves the previous
    three files as they were and no temporary file.
    """
    out_dir = Path(out_dir)
    count = len(data.train) + len(data.test)
    meta = {
        **meta,
        "count": count,
        "dim": int(dim),
        "splits": {"train": len(data.train), "test": len(data.test)},
        "class_names": data.train.class_names,
    }
    with AtomicFiles() as out:
        with out.open(out_dir / EMBEDDINGS_FILE) as f:
            _write_npy_rows(f, out_dir / EMBEDDINGS_FILE, chunks, count, int(dim))
        with out.open(out_dir / ITEMS_FILE) as f:
            _write_items(f, data)
        out.write_text(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")


def write_embeddings(
    out_dir: Path,
    data: DataSplits,
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    meta: dict[str, Any],
) -> None:
    """Write embeddings.npy, items.csv and meta.json into ``out_dir`` together, from features in memory.

    All three are written to temporary files first and renamed only when
    every one is on disk, so a full disk or a write error leaves the previous
    three files as they were (see :class:`contrastkit.atomic.AtomicFiles`).
    """
    dim = int(train_features.shape[1]) if train_features.ndim == 2 else int(test_features.shape[1])
    write_embedding_chunks(out_dir, data, [train_features, test_features], dim, meta)


def _read_items(items_path: Path) -> list[dict[str, str]]:
    """The rows of items.csv; a DataError naming the file and the row for anything malformed."""
    try:
        with open(items_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except UnicodeDecodeError as e:
        raise DataError(f"{items_path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise DataError(f"{items_path}: not a readable CSV file ({e})") from None
    except OSError as e:
        raise DataError(f"{items_path}: cannot read ({e.strerror or e})") from None
    if rows and not {"split", "source", "label"} <= set(columns):
        raise DataError(f"{items_path}: expected columns index,split,source,label, got {list(columns)}")
    for n, r in enumerate(rows, 2):  # line 1 is the header
        if None in r or any(r.get(k) is None for k in ("split", "source", "label")):
            raise DataError(f"{items_path}, line {n}: expected 4 fields (index,split,source,label), got a row of another length")
    return rows


def _item_labels(rows: list[dict[str, str]], items_path: Path, class_names: Any) -> np.ndarray:
    """int64 label per row, -1 where unknown; refuses values no class index can have."""
    limit = len(class_names) if isinstance(class_names, list) and class_names else MAX_LABEL + 1
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        text = r["label"].strip()
        if text == "":
            continue
        try:
            value = int(text)
        except ValueError:
            raise DataError(f"{items_path}, line {i + 2}: label {r['label']!r} is not an integer (or empty for unknown)") from None
        if not -1 <= value < limit:
            what = f"the {limit} class names in meta.json" if limit <= MAX_LABEL else f"labels 0..{MAX_LABEL}"
            raise DataError(f"{items_path}, line {i + 2}: label {value} is out of range for {what} (-1 or empty: unknown)")
        out[i] = value
    return out


def read_embeddings(folder: Path) -> Embeddings:
    """Read what :func:`write_embeddings` wrote (from any source of embeddings).

    Raises:
        DataError: a file is missing or malformed: embeddings.npy not a plain
            2-D numeric array or holding NaN / inf, items.csv not UTF-8 CSV
            with the columns index,split,source,label and one row per
            embedding, a label that is not a class index, meta.json not a
            JSON object. The message names the file (and the line).
    """
    folder = Path(folder)
    emb_path, items_path, meta_path = folder / EMBEDDINGS_FILE, folder / ITEMS_FILE, folder / META_FILE
    for p in (emb_path, items_path):
        if not p.is_file():
            raise DataError(f"{p}: not found; run `contrastkit embed {folder}` first")
    try:
        features = np.load(emb_path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{emb_path}: not a plain .npy array ({e})") from None
    if not isinstance(features, np.ndarray):
        raise DataError(f"{emb_path}: an .npz archive, not a plain .npy array")
    if features.ndim != 2:
        raise DataError(f"{emb_path}: expected a 2-D array (items x dimensions), got shape {features.shape}")
    if features.dtype.kind not in "fiu":
        raise DataError(f"{emb_path}: expected a numeric (float) array, got dtype {features.dtype}")
    features = np.asarray(features, dtype=np.float32)  # still the memory map when the file is float32
    rows = max(1, FINITE_CHECK_VALUES // max(1, features.shape[1]))  # a block at a time: no full-size temporary
    bad = sum(int((~np.isfinite(features[i : i + rows]).all(axis=1)).sum()) for i in range(0, len(features), rows))
    if bad:
        raise DataError(f"{emb_path}: {bad} rows hold NaN or inf values; embed again")
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise DataError(f"{meta_path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{meta_path}: expected a JSON object")
    rows = _read_items(items_path)
    if len(rows) != len(features):
        raise DataError(f"{items_path}: {len(rows)} rows but {emb_path} has {len(features)} embeddings")
    labels = _item_labels(rows, items_path, meta.get("class_names"))
    return Embeddings(
        features=features,
        splits=[r["split"] for r in rows],
        sources=[source_from_text(r["source"]) for r in rows],
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
    skip_bad: bool | None = None,
    workers: int | None = None,
    checkpoint: str = "best",
) -> Embeddings:
    """Embed a data set (default: the run's own) with a run's checkpoint and write the files.

    Args:
        run_dir: a folder written by ``contrastkit train``.
        data: an already loaded data set (takes precedence over ``data_spec``).
        data_spec: a data set name or path (default: the run's ``config.data``).
        out_dir: where to write (default: ``run_dir``).
        batch_size: images per forward pass.
        skip_bad: image folders: leave out files that cannot be decoded
            (default: the run's ``config.skip_bad``).
        workers: processes decoding image files ahead (default: the run's
            ``config.workers``; None there = automatic, see
            :func:`contrastkit.data.streaming.resolve_workers`).
        checkpoint: ``"best"`` (the epoch best on the validation slice of the
            training split; ``last.pt`` when there is none) or ``"last"``.
    """
    from contrastkit.checkpoint import load_method, run_checkpoint
    from contrastkit.data import load_dataset

    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r} is not one of best, last")
    method, config, info = load_method(run_dir, checkpoint)
    if data is None:
        data = load_dataset(
            data_spec if data_spec is not None else config.data,
            image_size=config.image_size,
            skip_bad=config.skip_bad if skip_bad is None else skip_bad,
        )
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
    workers = config.workers if workers is None else workers
    meta = {
        "run": str(run_dir),
        "checkpoint": str(run_checkpoint(run_dir, checkpoint)),
        "method": config.method,
        "backbone": config.backbone,
        "data": data_spec if data_spec is not None else config.data,
        "data_name": data.train.name,
    }
    chunks = (
        features
        for split in (data.train, data.test)
        for features in iter_embeddings(method, split, info, runtime, batch_size, workers=workers)
    )  # train rows, then test rows, one batch at a time
    folder = Path(out_dir) if out_dir is not None else run_dir
    with run_lock(folder):  # one command at a time writes the folder (contrastkit.runlock)
        write_embedding_chunks(folder, data, chunks, method.embed_dim, meta)
        return read_embeddings(folder)
