"""``contrastkit complete``: fill the masked part of an image with the run's pixel generator.

Method: replacement on the flow's straight paths, the flow-matching form of
RePaint (Lugmayr et al. 2022, arXiv 2201.09865) without its resampling jumps.
One noise image ``x0`` starts the ODE; before every Euler step the visible
pixels are set to the point of their own straight path,
``(1 - t) x0 + t y`` (``y`` the query), so the model sees a state that lies
on the path its training interpolated, and only the masked pixels follow
the model's velocity; at ``t = 1`` the visible pixels are ``y`` exactly. The
condition is the encoder's embedding of **what is visible** (the masked
pixels filled with the visible pixels' mean per channel), with
classifier-free guidance ``--guidance``: the representation tells the
generator what object to complete, the replacement where it is.
Why no resampling: RePaint's jumps multiply the steps by about 10, which
this CPU tool spends instead on conditioning (one pass per step), the
embedding already carrying the global content that resampling harmonises.

Baselines on the masked region (mean squared error in [0, 1] intensities):
- **mean fill**: the visible pixels' mean per channel;
- **nearest neighbour**: the masked region of the training image whose
  embedding is nearest (cosine) the masked query's embedding (the query
  itself left out when it is an item of the training split).

Squared error rewards averages: the pixel-wise mean of many plausible fills
scores better than any one of them. So the errors come in two matched pairs:
one completion (``generator_mean``, the mean error over the ``n``
completions; ``generator_best``, the best of them) against one neighbour
(``nearest_neighbour``), and the average of the ``n`` completions
(``generator_average``) against the average of the ``n`` nearest neighbours
(``nearest_average``).

Writes into DIR: ``completion.png`` (per query a row: original, masked input,
mean fill, nearest neighbour, then the completions), ``completions.npz``
(``images``: uint8, every completion) and ``complete.json`` (masked-region
errors of each method per query, their means, the settings).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contrastkit.errors import ConfigError, DataError
from contrastkit.generate.flow import euler_sample
from contrastkit.generate.sampling import Generator, load_generator, pixel_velocity
from contrastkit.generate.training import to_uint8, to_unit

MASKS = ("center", "top", "bottom", "left", "right", "random")
RANDOM_CELLS = 4  # --mask random: a 4 x 4 grid of cells, each hidden with probability 1/2 (at least one)


def make_mask(kind: str, h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool (H, W), True where pixels are hidden: the centre square of half the side, a half, or random cells."""
    m = torch.zeros(h, w, dtype=torch.bool)
    if kind == "center":
        m[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    elif kind == "top":
        m[: h // 2] = True
    elif kind == "bottom":
        m[h // 2 :] = True
    elif kind == "left":
        m[:, : w // 2] = True
    elif kind == "right":
        m[:, w // 2 :] = True
    elif kind == "random":
        cells = torch.rand(RANDOM_CELLS, RANDOM_CELLS, generator=generator) < 0.5
        if not cells.any():
            cells[RANDOM_CELLS // 2, RANDOM_CELLS // 2] = True
        rows = torch.arange(h) * RANDOM_CELLS // h
        cols = torch.arange(w) * RANDOM_CELLS // w
        m = cells[rows][:, cols]
    else:
        raise ConfigError(f"--mask {kind!r}: choose from {', '.join(MASKS)}")
    return m


def mean_fill(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) with the hidden pixels set to the visible pixels' mean per image and channel."""
    x = images.float()
    visible = (~mask).float()
    mean = (x * visible).sum((2, 3), keepdim=True) / visible.sum().clamp_min(1)  # (B, C, 1, 1)
    return torch.where(mask, mean.round(), x).to(torch.uint8)


def masked_error(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image (B,): mean squared error of uint8 images over the hidden pixels, intensities in [0, 1]."""
    d = (a.float() - b.float()) / 255.0
    m = mask.expand_as(d[0]).float()
    return (d.square() * m).sum((1, 2, 3)) / m.sum().clamp_min(1)


@torch.no_grad()
def inpaint(gen: Generator, known: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None, steps: int,
            guidance: float, noise: torch.Generator) -> torch.Tensor:
    """Completions uint8 (B, C, H, W) of ``known`` uint8 (B, C, H, W) where ``mask`` (H, W) is True.

    Replacement on straight paths (see the module docstring): before each
    Euler step the visible pixels are set to ``(1 - t) x0 + t y``.
    """
    y = to_unit(known)
    x0 = torch.randn(y.shape, generator=noise)
    hidden = mask.expand_as(y[0])  # (C, H, W)
    v = pixel_velocity(gen, cond if gen.conditional else None, guidance)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t[:, None, None, None]
        on_path = (1 - tt) * x0 + tt * y
        return v(torch.where(hidden, x, on_path), t)

    # the Euler state's visible pixels are replaced before every evaluation; their velocity is the path's own
    x = euler_sample(lambda x, t: torch.where(hidden, velocity(x, t), y - x0), x0, steps)
    return to_uint8(torch.where(hidden, x, y))


def _average(images: torch.Tensor) -> torch.Tensor:
    """The pixel-wise mean uint8 (C, H, W) of uint8 images (K, C, H, W), rounded."""
    return images.float().mean(0).round().to(torch.uint8)


def _embed(run_dir: Path, images: torch.Tensor) -> np.ndarray:
    """The run encoder's features (B, D) of uint8 images, as ``embed`` computes them."""
    from contrastkit.checkpoint import load_method
    from contrastkit.data.dataset import ImageDataset
    from contrastkit.embedding import compute_embeddings
    from contrastkit.runtime import Runtime

    method, config, info = load_method(run_dir)
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    method.to(runtime.device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    ds = ImageDataset(images=images, labels=None, class_names=None, sources=[""] * len(images), name="masked queries")
    return compute_embeddings(method, ds, info, runtime).numpy().astype(np.float32)


def _queries(run_dir: Path, queries: Sequence[str], shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[int]]:
    """uint8 (Q, C, H, W) query images and each one's item index (-1 for a file)."""
    from contrastkit.embedding import read_embeddings
    from contrastkit.montage import load_query_images, run_images

    emb, get, images, items = None, None, [], []
    for q in queries:
        if Path(q).is_file():
            images.append(load_query_images([q], shape[0], shape[1:])[0])
            items.append(-1)
            continue
        try:
            i = int(q)
        except ValueError:
            raise DataError(f"{q}: neither an image file nor an item index") from None
        if emb is None:
            emb = read_embeddings(run_dir)
            get, why = run_images(run_dir, emb.sources)
            if get is None:
                raise DataError(f"{run_dir}: item queries need the run's images: {why}")
        if not 0 <= i < len(emb.features):
            raise DataError(f"{q}: item index out of range (embeddings.npy has {len(emb.features)} items)")
        images.append(torch.from_numpy(get(torch.tensor([i]))[0]))
        items.append(i)
    return torch.stack(images), items


def complete_run(run_dir: str | Path, queries: Sequence[str], out_dir: str | Path, *, mask: str = "center", n: int = 4,
                 steps: int = 50, guidance: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Complete the masked part of each query ``n`` times; write the figure, the npz and complete.json.

    Returns:
        What ``complete.json`` holds (errors per query and method, their means), with ``files``.
    """
    from contrastkit.embedding import read_embeddings
    from contrastkit.vectors import exact_search, normalise

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not queries:
        raise ConfigError("give at least one QUERY (an image file or an item index)")
    if n < 1 or steps < 1:
        raise ConfigError(f"--n and --steps must be >= 1, got {n} and {steps}")
    if not 0 <= guidance < float("inf"):
        raise ConfigError(f"--guidance must be a finite number >= 0, got {guidance}")
    if mask not in MASKS:
        raise ConfigError(f"--mask {mask!r}: choose from {', '.join(MASKS)}")
    gen = load_generator(run_dir)
    noise = torch.Generator().manual_seed(seed)
    c, h, w = gen.image_shape
    m = make_mask(mask, h, w, noise)
    originals, items = _queries(run_dir, queries, gen.image_shape)  # (Q, C, H, W)
    filled = mean_fill(originals, m)
    visible_emb = _embed(run_dir, filled)  # (Q, D): what the visible part shows
    emb = read_embeddings(run_dir)
    train_rows = np.flatnonzero(np.array([s == "train" for s in emb.splits], dtype=bool))
    _, nn_idx = exact_search(normalise(np.asarray(emb.features[train_rows], np.float32)), normalise(visible_emb),
                             min(n + 1, len(train_rows)))
    from contrastkit.montage import run_images

    get, why = run_images(run_dir, emb.sources)
    if get is None:
        raise DataError(f"{run_dir}: the nearest-neighbour baseline needs the run's images: {why}")
    nearest = []  # per query its n nearest training images (uint8 (n, C, H, W)), the query itself left out
    for j, item in enumerate(items):
        rows = [int(train_rows[r]) for r in nn_idx[j] if int(train_rows[r]) != item][:n]
        nearest.append(torch.from_numpy(get(torch.tensor(rows))))
    nn_fill = torch.where(m, torch.stack([x[0] for x in nearest]), originals)
    nn_average = torch.where(m, torch.stack([_average(x) for x in nearest]), originals)
    cond = (torch.from_numpy(visible_emb) - gen.mean) / gen.std
    completions = inpaint(gen, originals.repeat_interleave(n, 0), m, cond.repeat_interleave(n, 0), steps, guidance,
                          noise)  # (Q * n, C, H, W)
    gen_err = masked_error(completions, originals.repeat_interleave(n, 0), m).view(len(queries), n)
    gen_average = torch.stack([_average(completions[j * n:(j + 1) * n]) for j in range(len(queries))])
    per_query = [{"query": q, "item": it if it >= 0 else None,
                  "mean_fill": float(masked_error(filled[j:j + 1], originals[j:j + 1], m)[0]),
                  "nearest_neighbour": float(masked_error(nn_fill[j:j + 1], originals[j:j + 1], m)[0]),
                  "nearest_average": float(masked_error(nn_average[j:j + 1], originals[j:j + 1], m)[0]),
                  "generator_mean": float(gen_err[j].mean()), "generator_best": float(gen_err[j].min()),
                  "generator_average": float(masked_error(gen_average[j:j + 1], originals[j:j + 1], m)[0])}
                 for j, (q, it) in enumerate(zip(queries, items))]
    keys = ("mean_fill", "nearest_neighbour", "nearest_average", "generator_mean", "generator_best",
            "generator_average")
    info: dict[str, Any] = {"run": str(run_dir), "mask": mask, "hidden_fraction": float(m.float().mean()), "n": n,
                            "steps": steps, "guidance": guidance, "seed": seed,
                            "method": "replacement on straight flow paths (RePaint without resampling), conditioned "
                                      "on the embedding of the visible part",
                            "error": "mean squared error over the hidden pixels, intensities in [0, 1]",
                            "queries": per_query, "means": {k: float(np.mean([r[k] for r in per_query])) for k in keys}}
    masked_view = torch.where(m, torch.full_like(originals, 128), originals)
    rows = [torch.cat([originals[j:j + 1], masked_view[j:j + 1], filled[j:j + 1], nn_fill[j:j + 1],
                       completions[j * n:(j + 1) * n]]) for j in range(len(queries))]
    info["files"] = [str(p) for p in _write(out_dir, torch.cat(rows).numpy(), completions.numpy(), info, n + 4)]
    return info


def _write(out_dir: Path, grid: np.ndarray, completions: np.ndarray, info: dict[str, Any], columns: int) -> list[Path]:
    from contrastkit.atomic import atomic_open, atomic_write_bytes, atomic_write_text
    from contrastkit.montage import montage_image
    from contrastkit.runlock import run_lock

    with run_lock(out_dir):
        with atomic_open(out_dir / "completion.png") as f:
            montage_image(grid, columns=columns).save(f, format="PNG")
        buf = io.BytesIO()
        np.savez_compressed(buf, images=completions)
        atomic_write_bytes(out_dir / "completions.npz", buf.getvalue())
        atomic_write_text(out_dir / "complete.json", json.dumps(info, indent=2) + "\n")
    return [out_dir / "completion.png", out_dir / "completions.npz", out_dir / "complete.json"]
