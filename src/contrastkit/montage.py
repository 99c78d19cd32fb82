"""Montages of labelled groups: the images nearest each cluster's (or class's) centroid, in a grid.

Drawn from the run's own data set (images are never opened by path), written
atomically as ``montages/cluster_<k>.png`` by ``contrastkit label``; the
grid is also used by ``contrastkit search``, ``visualize`` and ``report``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contrastkit.atomic import atomic_open
from contrastkit.errors import ContrastkitError, DataError
from contrastkit.vectors import normalise

MONTAGE_DIR = "montages"
MONTAGE_SIZE = 36  # images per montage: the 36 nearest the centroid, 6 x 6
MONTAGE_MIN_TILE = 48  # px; smaller images are enlarged (nearest neighbour) to at least this side


def montage_members(features: np.ndarray, assign: np.ndarray, k: int, per: int = MONTAGE_SIZE) -> dict[int, np.ndarray]:
    """Per group, up to ``per`` item indices nearest the group's centroid (L2-normalised features), nearest first."""
    out = {}
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        xn = normalise(features[members], dtype=np.float64)  # one group at a time: no float64 copy of all the features
        d = ((xn - xn.mean(0)) ** 2).sum(1)
        out[c] = members[np.argsort(d, kind="stable")[:per]]
    return out


def montage_image(images: np.ndarray, columns: int = 6, pad: int = 2) -> Any:
    """A Pillow image of uint8 (B, C, H, W) images in a grid (``columns`` wide), on a white background.

    Images smaller than MONTAGE_MIN_TILE px are enlarged by a whole factor
    (nearest neighbour). One channel is drawn grey, three as RGB; other
    channel counts show their first channel.
    """
    from PIL import Image

    b, ch, h, w = images.shape
    scale = max(1, math.ceil(MONTAGE_MIN_TILE / max(h, w)))
    th, tw = h * scale, w * scale
    cols = min(columns, b)
    rows = math.ceil(b / cols)
    mode = "RGB" if ch == 3 else "L"
    sheet = Image.new(mode, (cols * (tw + pad) + pad, rows * (th + pad) + pad), color=255 if mode == "L" else (255,) * 3)
    for j, img in enumerate(images):
        arr = img.transpose(1, 2, 0) if ch == 3 else img[0]  # (H, W, 3) or (H, W)
        tile = Image.fromarray(np.ascontiguousarray(arr), mode=mode).resize((tw, th), Image.NEAREST)
        sheet.paste(tile, (pad + (j % cols) * (tw + pad), pad + (j // cols) * (th + pad)))
    return sheet


def write_montages(out_dir: Path, get_batch: Any, members: dict[int, np.ndarray]) -> list[Path]:
    """Write ``out_dir/montages/cluster_<k>.png`` per group; remove cluster PNGs of earlier runs that no group has now.

    Args:
        out_dir: output folder.
        get_batch: ``indices (LongTensor) -> uint8 (B, C, H, W)`` images of the embedding rows.
        members: item indices per group (from :func:`montage_members`).
    """
    folder = Path(out_dir) / MONTAGE_DIR
    written = []
    for c, idx in members.items():
        images = np.asarray(get_batch(torch.from_numpy(idx)))
        sheet = montage_image(images)
        path = folder / f"cluster_{c}.png"
        with atomic_open(path) as f:
            sheet.save(f, format="PNG")
        written.append(path)
    for old in folder.glob("cluster_*.png"):
        if old not in written:
            old.unlink()
    return written


class _RowImages:
    """Images of embedding rows (train rows then test rows) from a loaded data set."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.n_train = len(data.train)

    def __call__(self, indices: torch.Tensor) -> np.ndarray:
        out = []
        for i in indices.tolist():  # montages are small: one image at a time keeps the order simple
            ds, j = (self.data.train, i) if i < self.n_train else (self.data.test, i - self.n_train)
            out.append(ds.get_batch(torch.tensor([j])).numpy())
        return np.concatenate(out)


def run_images(run_dir: Path, sources: list[str]) -> tuple[_RowImages | None, str]:
    """The run's images in embedding-row order, or (None, why not) when they cannot be loaded or do not match."""
    from contrastkit.config import TrainConfig
    from contrastkit.data import load_dataset

    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        return None, f"{run_dir} has no config.json, so its images are unknown"
    try:
        config = TrainConfig.load(config_path)
        data = load_dataset(config.data, image_size=config.image_size, skip_bad=config.skip_bad)
    except ContrastkitError as e:
        return None, f"the run's data set could not be loaded ({e})"
    if list(data.train.sources) + list(data.test.sources) != list(sources):
        return None, "the embeddings are not of the run's own data set (items.csv sources differ)"
    return _RowImages(data), ""


# ----------------------------------------------------------------------------- query images


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
    from contrastkit.data.decode import load_image_file

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
