"""Fidelity of generated images, measured in a run's own embedding space (``contrastkit fidelity``).

A set of generated images (from any generator) is compared with real images
through the run's frozen encoder, the way Stein et al. (arXiv 2306.04675)
measure generators in a self-supervised feature space, but with the run's
own encoder instead of downloaded weights, so it works offline on any data:

- Fréchet distance (Heusel et al. 2017, arXiv 1706.08500, Eq. 6):
  ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``;
- kernel distance, KID (Bińkowski et al. 2018, arXiv 1801.01401): the
  unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``,
  averaged over random subsets;
- precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991, Eq. 1-2,
  k = 3): the share of generated samples inside the real manifold (balls to
  each real sample's k-th neighbour), and of real samples inside the
  generated one;
- density and coverage (Naeem et al. 2020, arXiv 2002.09797, Eq. 3-4, k = 5);
- authenticity (Alaa et al. 2022, arXiv 2102.08921, Sec. 3): a generated
  sample is not authentic when it is closer to its nearest real sample than
  that sample is to its own nearest real neighbour; the share authentic;
- copy detection (Somepalli et al. 2023, arXiv 2212.03860): each generated
  image's highest cosine similarity to a training image, and the share above
  the level that training images reach with their nearest *other* training
  image (its 99th percentile): memorised copies land above it.

Every figure comes with its real-vs-real floor: the same measure between the
reference sample and a disjoint real sample of the generated set's size
(held-out images for copy detection), so a number can be read against what
real images of the same count give. Every figure is also computed in a
second feature space that is not the encoder being served (raw pixels, or
another run's encoder), so a generator cannot win by gaming one encoder.

Distances between features are Euclidean on the backbone features as they
are (as the papers use Inception / DINOv2 features); copy detection uses
cosine similarity of L2-normalised features, like the search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from contrastkit.errors import ConfigError, DataError
from contrastkit.vectors import exact_search

FIDELITY_FILE = "fidelity.json"
PR_K = 3  # neighbours of precision / recall (Kynkäänniemi et al.)
DC_K = 5  # neighbours of density / coverage (Naeem et al.)
KID_SUBSET = 1000  # samples per KID subset (Bińkowski et al.; as in the common implementations)
KID_SUBSETS = 20
COPY_QUANTILE = 0.99  # copy level: this quantile of the training images' similarity to their nearest other one
MIN_ITEMS = 10  # fewest images on each side that the figures need


# ----------------------------------------------------------------------------- the measures


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (Heusel et al. 2017, Eq. 6).

    ``Tr((S_r S_g)^(1/2))`` is the sum of the square roots of the
    eigenvalues of ``S_r^(1/2) S_g S_r^(1/2)``, a symmetric positive
    semi-definite matrix, so no complex matrix square root is needed.
    """
    r, g = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_r, mu_g = r.mean(0), g.mean(0)
    s_r, s_g = np.atleast_2d(np.cov(r, rowvar=False)), np.atleast_2d(np.cov(g, rowvar=False))
    w, v = np.linalg.eigh(s_r)
    root_r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_r^(1/2)
    inner = np.linalg.eigvalsh(root_r @ s_g @ root_r)
    trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r) + np.trace(s_g) - 2 * trace_sqrt)


def kernel_distance(real: np.ndarray, fake: np.ndarray, subset: int = KID_SUBSET, subsets: int = KID_SUBSETS,
                    seed: int = 0) -> float:
    """KID: the unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``, mean over random subsets (Bińkowski et al.)."""
    r, g = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    d = r.shape[1]
    m = min(subset, len(r), len(g))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = r[rng.choice(len(r), m, replace=False)], g[rng.choice(len(g), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values))


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances in float64 (scikit-learn's, as the prdc package uses)."""
    from sklearn.metrics.pairwise import euclidean_distances

    return euclidean_distances(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (its own distance 0 is the 0-th)."""
    d = _pairwise_distances(x, x)
    return np.partition(d, k, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, pr_k: int = PR_K, dc_k: int = DC_K) -> dict[str, float]:
    """Precision, recall (k = ``pr_k``), density and coverage (k = ``dc_k``) of ``fake`` against ``real``."""
    if min(len(real), len(fake)) <= max(pr_k, dc_k):
        raise ConfigError(f"precision/recall and density/coverage need more than {max(pr_k, dc_k)} images a side")
    d_rf = _pairwise_distances(real, fake)  # (R, F)
    r_radius_pr, f_radius_pr = _kth_neighbour_radius(real, pr_k), _kth_neighbour_radius(fake, pr_k)
    r_radius_dc = _kth_neighbour_radius(real, dc_k)
    precision = float((d_rf <= r_radius_pr[:, None]).any(0).mean())
    recall = float((d_rf <= f_radius_pr[None, :]).any(1).mean())
    inside = d_rf <= r_radius_dc[:, None]  # (R, F): fake j in the ball of real i
    density = float(inside.sum() / (dc_k * len(fake)))
    coverage = float((d_rf.min(1) <= r_radius_dc).mean())
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def authenticity(real: np.ndarray, fake: np.ndarray) -> float:
    """Share of ``fake`` samples that are authentic (Alaa et al. 2022): not closer to their nearest real sample
    than that real sample is to its own nearest real neighbour."""
    d_fr = _pairwise_distances(fake, real)  # (F, R)
    nearest = d_fr.argmin(1)
    real_nn = _kth_neighbour_radius(real, 1)  # (R,)
    return float((d_fr[np.arange(len(fake)), nearest] >= real_nn[nearest]).mean())


@dataclass
class CopyScores:
    """Each generated image's highest cosine similarity to a training image, and the copy level."""

    similarity: np.ndarray  # (F,) float32
    nearest: np.ndarray  # (F,) int64 row of the training sample
    level: float  # the COPY_QUANTILE quantile of train-to-nearest-other-train similarity

    @property
    def share_above(self) -> float:
        return float((self.similarity > self.level).mean())


def copy_level(train: np.ndarray, rows: np.ndarray | None = None, quantile: float = COPY_QUANTILE) -> float:
    """The ``quantile`` of training images' cosine similarity to their nearest *other* training image.

    ``rows``: the training rows used as queries (default: all), each searched against every training image.
    """
    rows = np.arange(len(train)) if rows is None else np.asarray(rows)
    own_s, own_i = exact_search(train, train[rows], 2)  # own row usually first; duplicates can displace it
    other = np.where(own_i[:, 0] == rows, own_s[:, 1], own_s[:, 0])
    return float(np.quantile(other, quantile))


def copy_scores(train: np.ndarray, fake: np.ndarray, level: float | None = None) -> CopyScores:
    """Copy detection by nearest-neighbour cosine similarity to every training image (Somepalli et al. 2023).

    ``level``: the copy level (default: :func:`copy_level` over all of ``train``).
    """
    s, i = exact_search(train, fake, 1)
    return CopyScores(similarity=s[:, 0], nearest=i[:, 0], level=copy_level(train) if level is None else level)


def measures(reference: np.ndarray, other: np.ndarray, train: np.ndarray, level: float | None = None,
             seed: int = 0) -> dict[str, float]:
    """Every figure of ``other`` against the ``reference`` features (copy detection against ``train``)."""
    copies = copy_scores(train, other, level)
    return {
        "frechet_distance": frechet_distance(reference, other),
        "kid": kernel_distance(reference, other, seed=seed),
        **prdc(reference, other),
        "authenticity": authenticity(reference, other),
        "copy_similarity_median": float(np.median(copies.similarity)),
        "copy_share": copies.share_above,
        "copy_level": copies.level,
    }


# ----------------------------------------------------------------------------- a run's images and features


def images_of(spec: str | Path, channels: int, what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) of every image of a data set spec (folder, .npz, IDX...; both splits), ``channels`` wide."""
    from contrastkit.augment import GRAY_WEIGHTS
    from contrastkit.data import load_dataset

    data = load_dataset(spec)
    parts = [d.get_batch(torch.arange(len(d))) for d in (data.train, data.test) if d is not None and len(d)]
    if not parts:
        raise DataError(f"{spec}: no {what} images")
    x = torch.cat(parts)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 3 and channels == 1:  # ITU-R BT.601 luma, as the folder reader converts
        w = torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    raise DataError(f"{spec}: {what} images have {x.shape[1]} channels and the run's model takes {channels}")


class FeatureSpace:
    """One feature space: a run's encoder (``embed``) or raw pixels, applied to uint8 images."""

    def __init__(self, name: str, embed: Callable[[torch.Tensor], np.ndarray], channels: int) -> None:
        self.name, self.embed, self.channels = name, embed, channels

    @classmethod
    def of_run(cls, run_dir: Path, name: str | None = None) -> "FeatureSpace":
        from contrastkit.checkpoint import load_method
        from contrastkit.data.dataset import ImageDataset
        from contrastkit.embedding import compute_embeddings
        from contrastkit.runtime import Runtime

        method, config, info = load_method(Path(run_dir))
        runtime = Runtime.create(config.device, config.precision, config.channels_last)
        method.to(runtime.device)
        if runtime.channels_last:
            method.to(memory_format=torch.channels_last)

        def embed(images: torch.Tensor) -> np.ndarray:
            ds = ImageDataset(images=images, labels=None, class_names=None, sources=[""] * len(images),
                              name="fidelity images")
            return compute_embeddings(method, ds, info, runtime).numpy().astype(np.float64)

        return cls(name or f"encoder of {run_dir}", embed, int(info["channels"]))

    @classmethod
    def raw_pixels(cls, channels: int, size: int) -> "FeatureSpace":
        from contrastkit.data.formats import resize_images
        from contrastkit.evaluation import raw_pixel_rows

        def embed(images: torch.Tensor) -> np.ndarray:
            if images.shape[-1] != size or images.shape[-2] != size:
                images = resize_images(images, size)
            return raw_pixel_rows(images).numpy().astype(np.float64) / 255.0

        return cls("raw pixels", embed, channels)


def _sample(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, min(count, n), replace=False))


def fidelity_run(run_dir: str | Path, generated: str | Path, real: str = "train", *, second_run: str | Path | None = None,
                 max_items: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Score ``generated`` images in the run's embedding space and a second space, with real-vs-real floors.

    Args:
        run_dir: the run whose encoder (``best.pt``) gives the first feature space.
        generated: images in any format contrastkit reads.
        real: ``train`` or ``test`` (that split of the run's data) or a path to real images.
        second_run: another run whose encoder is the second space (default: raw pixels).
        max_items: at most this many generated images, real ones in the reference, and training images whose
            nearest other training image sets the copy level (copies are searched among all training images).
        seed: seeds the samples and KID's subsets.

    Returns:
        ``{"spaces": {name: {"generated": figures, "real_floor": figures}}, "counts": ..., "closest": ...}``.
    """
    from contrastkit.checkpoint import load_method
    from contrastkit.data import load_dataset

    run_dir = Path(run_dir)
    _, config, info = load_method(run_dir)
    channels, size = int(info["channels"]), int(info["image_size"])
    data = load_dataset(config.data, image_size=config.image_size)
    rng = np.random.default_rng(seed)
    fake = images_of(generated, channels, "generated")
    fake = fake[torch.from_numpy(_sample(len(fake), max_items, rng))]
    m = len(fake)
    train_pool = data.train.get_batch(torch.arange(len(data.train)))
    test_pool = data.test.get_batch(torch.arange(len(data.test))) if len(data.test) else train_pool[:0]
    if real == "train":
        pool = train_pool
    elif real == "test":
        pool = test_pool
    else:
        pool = images_of(real, channels, "real")
    # reference and floor: disjoint samples of the real pool; the floor has the generated set's size
    order = rng.permutation(len(pool))
    n_floor = min(m, len(pool) // 2)
    floor_rows, ref_rows = np.sort(order[:n_floor]), np.sort(order[n_floor:n_floor + max_items])
    level_rows = _sample(len(train_pool), max_items, rng)  # training images whose nearest other one sets the copy level
    heldout = test_pool if real != "test" else pool[torch.from_numpy(floor_rows)]
    heldout = heldout[torch.from_numpy(_sample(len(heldout), m, rng))]
    if min(m, len(ref_rows), n_floor, len(heldout)) < MIN_ITEMS:
        raise DataError(f"fidelity needs at least {MIN_ITEMS} generated, {MIN_ITEMS} reference and {MIN_ITEMS} floor "
                        f"images; got {m} generated, {len(ref_rows)} reference, {n_floor} floor, {len(heldout)} held out")
    spaces = [FeatureSpace.of_run(run_dir, "run encoder")]
    spaces.append(FeatureSpace.of_run(Path(second_run), f"encoder of {second_run}") if second_run is not None
                  else FeatureSpace.raw_pixels(channels, size))
    out: dict[str, Any] = {"run": str(run_dir), "generated": str(generated), "real": str(real), "seed": seed,
                           "counts": {"generated": m, "reference": len(ref_rows), "floor": n_floor,
                                      "train_for_copies": len(train_pool), "held_out_for_copies": len(heldout)},
                           "spaces": {}}
    ref_images, floor_images = pool[torch.from_numpy(ref_rows)], pool[torch.from_numpy(floor_rows)]
    for space in spaces:
        feats = {k: space.embed(v) for k, v in (("ref", ref_images), ("floor", floor_images), ("fake", fake),
                                                  ("train", train_pool), ("heldout", heldout))}
        level = copy_level(feats["train"], level_rows)
        gen = measures(feats["ref"], feats["fake"], feats["train"], level, seed)
        floor = measures(feats["ref"], feats["floor"], feats["train"], level, seed)
        held = copy_scores(feats["train"], feats["heldout"], level)  # the copy floor: real images never trained on
        floor.update(copy_similarity_median=float(np.median(held.similarity)), copy_share=held.share_above)
        out["spaces"][space.name] = {"generated": gen, "real_floor": floor}
        if space is spaces[0]:
            copies = copy_scores(feats["train"], feats["fake"], level)
            top = np.argsort(-copies.similarity, kind="stable")[:8]
            out["closest"] = [{"generated_row": int(j), "train_row": int(copies.nearest[j]),
                               "similarity": float(copies.similarity[j])} for j in top]
            out["_closest_images"] = (fake[torch.from_numpy(top)], train_pool[torch.from_numpy(copies.nearest[top])])
    return out


def write_fidelity(run_dir: Path, result: dict[str, Any]) -> list[Path]:
    """``RUN/fidelity.json`` and ``RUN/fidelity_closest.png`` (closest generated / training pairs), atomically."""
    from contrastkit.atomic import atomic_open, atomic_write_text
    from contrastkit.montage import montage_image

    written = []
    pairs = result.pop("_closest_images", None)
    path = run_dir / FIDELITY_FILE
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    written.append(path)
    if pairs is not None:
        fake, train = pairs  # a row per pair: generated, then its nearest training image
        grid = torch.stack([fake, train], 1).flatten(0, 1).numpy()
        png = run_dir / "fidelity_closest.png"
        with atomic_open(png) as f:
            montage_image(grid, columns=2).save(f, format="PNG")
        written.append(png)
    return written


FIGURES = (("frechet_distance", "Fréchet distance", "{:.4g}", "lower"), ("kid", "KID", "{:.4g}", "lower"),
           ("precision", "precision (k=3)", "{:.3f}", "higher"), ("recall", "recall (k=3)", "{:.3f}", "higher"),
           ("density", "density (k=5)", "{:.3f}", "1 for real"), ("coverage", "coverage (k=5)", "{:.3f}", "higher"),
           ("authenticity", "authenticity", "{:.3f}", "higher"),
           ("copy_similarity_median", "median similarity to nearest training image", "{:.3f}", "lower"),
           ("copy_share", "share above the copy level", "{:.3f}", "lower"))


def format_fidelity(result: dict[str, Any]) -> str:
    """The table printed by ``contrastkit fidelity``: each figure beside its real-vs-real floor, per space."""
    c = result["counts"]
    lines = [f"{c['generated']} generated images against {c['reference']} real ({result['real']}); floor: "
             f"{c['floor']} other real images (copies: {c['held_out_for_copies']} held-out images against "
             f"{c['train_for_copies']} training images)"]
    for name, fig in result["spaces"].items():
        lines.append(f"\n{name}:")
        lines.append(f"  {'measure':<46} {'generated':>11} {'real floor':>11}  better")
        for key, label, fmt, better in FIGURES:
            lines.append(f"  {label:<46} {fmt.format(fig['generated'][key]):>11} "
                         f"{fmt.format(fig['real_floor'][key]):>11}  {better}")
        lines.append(f"  copy level (99th percentile of train-to-train similarity): {fig['generated']['copy_level']:.3f}")
    return "\n".join(lines)

