"""``contrastkit generate``: images from a run's trained generator (``RUN/generator/``).

Three ways to choose the representations the pixel generator is conditioned on:

- **unconditional** (RCG's sampling): representations sampled from the
  representation generator, then pixels from each;
- **--like QUERY**: variations of an image file (decoded and embedded as the
  run embeds its training images, :func:`contrastkit.montage.embed_query_images`)
  or of an item index (its row of ``embeddings.npy``): that embedding, the
  same for every variation, with fresh pixel noise each;
- **--cluster K**: representations sampled from the representation
  generator and *kept when their nearest cluster centroid of labels.csv is
  K* (cosine, on L2-normalised embeddings, as ``contrastkit label``
  clusters). Rejection rather than conditioning on the members' own
  embeddings: the kept representations are new draws from the learned
  distribution restricted to the cluster's cell, so the images are not
  variations of a few members (which copy detection would flag), and the
  cluster's spread is the model's, not a noise level to choose.

Sampling is Euler integration of the flow's ODE in ``--steps`` steps
(:func:`contrastkit.generate.flow.euler_sample`), with classifier-free
guidance ``v = v_uncond + W (v_cond - v_uncond)`` in the pixel generator
(``--guidance W``; 1 = the conditional model alone). Everything is drawn
from one seeded CPU generator, so a seed gives the same images.

Writes into ``DIR``: ``samples/0000.png ...`` (one PNG per image),
``samples.npz`` (``images``: uint8 N x C x H x W, readable by every
contrastkit command, e.g. ``contrastkit fidelity RUN DIR/samples.npz``),
``grid.png`` (a montage; with ``--like`` each row starts with its query)
and ``generate.json`` (the settings and what conditioned each image).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contrastkit.errors import CheckpointError, ConfigError, DataError
from contrastkit.generate.config import GeneratorConfig
from contrastkit.generate.flow import Velocity, euler_sample, guided_velocity
from contrastkit.generate.training import GENERATOR_DIR, build_net, load_generator_state, to_uint8

SAMPLES_DIR = "samples"
NPZ_FILE = "samples.npz"
GRID_FILE = "grid.png"
INFO_FILE = "generate.json"
BATCH = 256  # images sampled per forward pass
CLUSTER_DRAWS = 200  # --cluster: at most this many representations drawn per image wanted


@dataclass
class Generator:
    """The two trained generators of a run (EMA weights, eval mode) and the standardisation between them."""

    rep: torch.nn.Module
    pixel: torch.nn.Module
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    config: GeneratorConfig
    image_shape: tuple[int, int, int]

    @property
    def conditional(self) -> bool:
        return self.config.conditional


def load_generator(run_dir: str | Path) -> Generator:
    """Both models from ``RUN/generator/{rep,pixel}/checkpoints/last.pt``.

    Raises:
        CheckpointError: no generator (the message says to run ``contrastkit train-generator``), or a broken one.
    """
    run_dir = Path(run_dir)
    nets, state = {}, {}
    for model in ("rep", "pixel"):
        path = run_dir / GENERATOR_DIR / model / "checkpoints" / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; run `contrastkit train-generator {run_dir}` first")
        state = load_generator_state(path)
        try:
            config = GeneratorConfig.from_dict(state["generator"])
            shape = tuple(int(s) for s in state["image_shape"])
            net = build_net(model, config, int(state["dim"]), shape)  # type: ignore[arg-type]
            weights = {k[len("ema."):]: v for k, v in state["model"].items() if k.startswith("ema.")}
            net.load_state_dict(weights)
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as e:
            raise CheckpointError(f"{path}: not a usable generator checkpoint ({type(e).__name__}: {e})") from None
        nets[model] = net.eval()
    return Generator(nets["rep"], nets["pixel"], state["mean"].float(), state["std"].float(), config,
                     shape)  # type: ignore[arg-type]


def sample_representations(gen: Generator, n: int, steps: int, noise: torch.Generator) -> torch.Tensor:
    """n standardised representations (n, D) from the representation generator."""
    out = []
    for i in range(0, n, BATCH * 16):  # the MLP is cheap: large batches
        x0 = torch.randn(min(BATCH * 16, n - i), gen.mean.shape[0], generator=noise)
        out.append(euler_sample(lambda x, t: gen.rep(x, t), x0, steps))
    return torch.cat(out) if out else torch.zeros(0, gen.mean.shape[0])


def pixel_velocity(gen: Generator, cond: torch.Tensor | None, guidance: float) -> Velocity:
    """The pixel generator's guided velocity ``v_uncond + W (v_cond - v_uncond)`` for conditions (B, D) or None."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if cond is None or guidance == 0:
            return gen.pixel(x, t)  # the null embedding (or an unconditional model)
        if guidance == 1:
            return gen.pixel(x, t, cond)
        b = len(x)
        both = gen.pixel(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]),
                         torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]))
        return guided_velocity(both[b:], both[:b], guidance)

    return velocity


def sample_pixels(gen: Generator, cond: torch.Tensor | None, n: int, steps: int, guidance: float,
                  noise: torch.Generator) -> torch.Tensor:
    """n uint8 images (n, C, H, W) from the pixel generator, conditioned on standardised ``cond`` (n, D) or None."""
    out = []
    for i in range(0, n, BATCH):
        b = min(BATCH, n - i)
        x0 = torch.randn(b, *gen.image_shape, generator=noise)
        c = cond[i : i + b] if cond is not None and gen.conditional else None
        out.append(to_uint8(euler_sample(pixel_velocity(gen, c, guidance), x0, steps)))
    return torch.cat(out) if out else torch.zeros((0, *gen.image_shape), dtype=torch.uint8)


def sample_unconditional(gen: Generator, n: int, steps: int, guidance: float, noise: torch.Generator) -> torch.Tensor:
    """n uint8 images (n, C, H, W) by RCG's sampling: representations from the representation generator
    (none for an unconditional pixel generator), then pixels conditioned on them; call under inference mode."""
    cond = sample_representations(gen, n, steps, noise) if gen.conditional else None
    return sample_pixels(gen, cond, n, steps, guidance, noise)


def read_clusters(path: Path, n: int) -> np.ndarray:
    """The ``cluster`` column of labels.csv, one int per embedding row.

    Raises:
        DataError: missing file (the message says to run ``contrastkit label``), bad columns or values, wrong row count.
    """
    if not path.is_file():
        raise DataError(f"{path}: not found; run `contrastkit label {path.parent} --clusters K` first")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        clusters = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise DataError(f"{path}: not a readable labels.csv ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: expected an integer 'cluster' column on every row ({type(e).__name__}: {e})") from None
    if len(clusters) != n:
        raise DataError(f"{path}: {len(clusters)} rows but embeddings.npy has {n}; run `contrastkit label` again")
    return clusters


def cluster_representations(gen: Generator, features: np.ndarray, clusters: np.ndarray, k: int, n: int, steps: int,
                            noise: torch.Generator, path: Path) -> tuple[torch.Tensor, float]:
    """n standardised representations whose nearest cluster centroid (cosine) is ``k``, and the share accepted."""
    from contrastkit.vectors import normalise

    present = np.unique(clusters[clusters >= 0])
    if k not in present:
        raise ConfigError(f"--cluster {k}: {path} has clusters {', '.join(str(c) for c in present[:20])}"
                          f"{' ...' if len(present) > 20 else ''}")
    xn = normalise(np.asarray(features, np.float32))
    centroids = normalise(np.stack([xn[clusters == c].mean(0) for c in present]))  # (K, D)
    kept, drawn = [], 0
    while sum(len(x) for x in kept) < n and drawn < CLUSTER_DRAWS * n:
        z = sample_representations(gen, max(4 * n, 1024), steps, noise)
        drawn += len(z)
        raw = normalise((z * gen.std + gen.mean).numpy())
        nearest = present[np.argmax(raw @ centroids.T, axis=1)]
        kept.append(z[torch.from_numpy(nearest == k)])
    got = torch.cat(kept)
    if len(got) < n:
        raise DataError(f"--cluster {k}: only {len(got)} of {drawn} sampled representations fall in cluster {k} of "
                        f"{path}, fewer than --n {n}; train the generator longer or ask for fewer images")
    return got[:n], len(got) / drawn


def _query_embeddings(run_dir: Path, queries: Sequence[str], features: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(Q, D) embeddings of ``--like`` queries (an existing file is an image; else an integer is an item index)."""
    from contrastkit.montage import embed_query_images

    rows, kinds = [], []
    for q in queries:
        if Path(q).is_file():
            rows.append(embed_query_images(run_dir, [q])[0])
            kinds.append("file")
            continue
        try:
            i = int(q)
        except ValueError:
            raise DataError(f"--like {q}: neither an image file nor an item index") from None
        if not 0 <= i < len(features):
            raise DataError(f"--like {q}: item index out of range (embeddings.npy has {len(features)} items)")
        rows.append(np.asarray(features[i], np.float32))
        kinds.append("item")
    return np.stack(rows), kinds


def _query_images(run_dir: Path, queries: Sequence[str], kinds: list[str], shape: tuple[int, int, int],
                  sources: list[str]) -> np.ndarray | None:
    """The query images for the grid's first column, or None when the run's images cannot be loaded."""
    from contrastkit.montage import load_query_images, run_images

    get, _ = run_images(run_dir, sources) if "item" in kinds else (None, "")
    out = []
    for q, kind in zip(queries, kinds):
        if kind == "file":
            out.append(load_query_images([q], shape[0], shape[1:]).numpy()[0])
        elif get is None:
            return None
        else:
            out.append(get(torch.tensor([int(q)]))[0])
    return np.stack(out)


def generate_run(run_dir: str | Path, out_dir: str | Path, *, n: int = 16, like: Sequence[str] = (),
                 cluster: int | None = None, guidance: float = 1.0, steps: int = 50, seed: int = 0) -> dict[str, Any]:
    """Generate images with ``RUN/generator`` and write them into ``out_dir`` (see the module docstring).

    Args:
        run_dir: the run folder (trained, with ``contrastkit train-generator`` run on it).
        out_dir: where to write.
        n: images (with ``like``: per query).
        like: image files or item indices whose embeddings condition the images.
        cluster: a cluster of ``RUN/labels.csv`` whose representations condition the images.
        guidance: classifier-free guidance weight W (>= 0).
        steps: Euler steps of each ODE.
        seed: seeds every draw.

    Returns:
        What ``generate.json`` holds, with the files written under ``files``.
    """
    from contrastkit.embedding import read_embeddings
    from contrastkit.label import LABELS_FILE

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if not 0 <= guidance < float("inf"):
        raise ConfigError(f"--guidance must be a finite number >= 0, got {guidance}")
    if like and cluster is not None:
        raise ConfigError("--like and --cluster choose the condition two ways; give one of them")
    gen = load_generator(run_dir)
    noise = torch.Generator().manual_seed(seed)
    info: dict[str, Any] = {"run": str(run_dir), "mode": "unconditional", "n": n, "guidance": guidance,
                            "steps": steps, "seed": seed, "conditional_generator": gen.conditional}
    query_images = None
    if like or cluster is not None:
        if not gen.conditional:
            raise ConfigError(f"{run_dir / GENERATOR_DIR}: the pixel generator was trained unconditionally "
                              "(--p-uncond 1), so --like and --cluster cannot condition it")
        emb = read_embeddings(run_dir)
        if emb.features.shape[1] != gen.mean.shape[0]:
            raise DataError(f"{run_dir / 'embeddings.npy'}: {emb.features.shape[1]}-d embeddings, the generator was "
                            f"trained on {gen.mean.shape[0]}-d ones; run `contrastkit train-generator` again")
    with torch.inference_mode():
        if like:
            raw, kinds = _query_embeddings(run_dir, like, emb.features)
            z = (torch.from_numpy(raw) - gen.mean) / gen.std
            cond = z.repeat_interleave(n, dim=0)  # n variations per query, query by query
            info.update(mode="like", queries=[{"query": q, "kind": k} for q, k in zip(like, kinds)])
            query_images = _query_images(run_dir, like, kinds, gen.image_shape, emb.sources)
        elif cluster is not None:
            path = run_dir / LABELS_FILE
            clusters = read_clusters(path, len(emb.features))
            cond, share = cluster_representations(gen, emb.features, clusters, cluster, n, steps, noise, path)
            info.update(mode="cluster", cluster=cluster, accepted_share=share,
                        how="representations sampled and kept when their nearest centroid of labels.csv is the cluster")
        else:
            cond = None  # RCG's sampling: representations first, in sample_unconditional
        images = (sample_unconditional(gen, n, steps, guidance, noise) if cond is None
                  else sample_pixels(gen, cond, len(cond), steps, guidance, noise)).numpy()
    info["files"] = [str(p) for p in write_samples(out_dir, images, info, query_images, n)]
    return info


def write_samples(out_dir: Path, images: np.ndarray, info: dict[str, Any], queries: np.ndarray | None,
                  per_row: int) -> list[Path]:
    """PNGs, samples.npz, grid.png and generate.json in ``out_dir`` (atomically; stale sample PNGs removed)."""
    from PIL import Image

    from contrastkit.atomic import atomic_open, atomic_write_bytes, atomic_write_text
    from contrastkit.montage import montage_image
    from contrastkit.runlock import run_lock

    with run_lock(out_dir):
        folder = out_dir / SAMPLES_DIR
        written = []
        mode = "RGB" if images.shape[1] == 3 else "L"
        for i, img in enumerate(images):
            arr = img.transpose(1, 2, 0) if mode == "RGB" else img[0]
            path = folder / f"{i:04d}.png"
            with atomic_open(path) as f:
                Image.fromarray(np.ascontiguousarray(arr), mode=mode).save(f, format="PNG")
            written.append(path)
        for old in folder.glob("*.png"):
            if old not in written:
                old.unlink()
        buf = io.BytesIO()
        np.savez_compressed(buf, images=images)
        atomic_write_bytes(out_dir / NPZ_FILE, buf.getvalue())
        if queries is not None:  # each row: the query, then its variations
            rows = [np.concatenate([q[None], images[j * per_row : (j + 1) * per_row]]) for j, q in enumerate(queries)]
            grid, columns = np.concatenate(rows), per_row + 1
        else:
            grid, columns = images, min(len(images), max(4, int(np.ceil(np.sqrt(len(images))))))
        with atomic_open(out_dir / GRID_FILE) as f:
            montage_image(grid, columns=columns).save(f, format="PNG")
        atomic_write_text(out_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")
    return [folder, out_dir / NPZ_FILE, out_dir / GRID_FILE, out_dir / INFO_FILE]
