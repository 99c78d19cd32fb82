"""``contrastkit train-generator``: RCG's two models trained on the training engine.

RCG (Li, Katabi, He 2023, arXiv 2312.03701) at small scale, on a run's frozen
encoder:

1. the **representation generator** (:class:`~contrastkit.generate.mlp.VelocityMLP`)
   learns the distribution of the run's embeddings of its training images
   (``RUN/embeddings.npy``, standardised per dimension) with flow matching;
2. the **pixel generator** (:class:`~contrastkit.generate.unet.ConditionalUNet`)
   learns the training images with flow matching, conditioned on each
   image's own (standardised) embedding, replaced by a learned null
   embedding for ``p_uncond`` of the samples so that classifier-free guidance
   works.

Both are trainables of :func:`contrastkit.engine.run`, so they get the
progress bar, bf16, atomic checkpoints, exact resume and the ``--minutes``
budget of ``train``. Their batch source :class:`FlowBatches` is a pure
function of (seed, epoch, step): the epoch's order and a noise generator
(x0, t and the condition-drop mask of each step) seeded from (seed, epoch),
whose state a checkpoint inside an epoch keeps. The conditions are the rows
of ``embeddings.npy``: the encoder's embeddings of the unaugmented training
images, which is what the encoder gives a query at generation time. Images
are not augmented.

Folder::

    RUN/generator/config.json   GeneratorConfig, embedding dimension, image shape, encoder checkpoint
    RUN/generator/rep/          engine run folder: log.jsonl, checkpoints/{last,best}.pt
    RUN/generator/pixel/        engine run folder of the pixel generator
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from contrastkit import engine
from contrastkit.engine_contract import Plan, RunResult
from contrastkit.engine_state import load_state
from contrastkit.errors import CheckpointError, ConfigError, DataError
from contrastkit.generate.config import RESUMABLE_FIELDS, GeneratorConfig, write_config
from contrastkit.generate.flow import flow_matching_loss, interpolate
from contrastkit.generate.mlp import VelocityMLP
from contrastkit.generate.unet import ConditionalUNet
from contrastkit.runtime import Runtime

GENERATOR_DIR = "generator"
CONFIG_FILE = "config.json"
SCHEMA = "contrastkit.generator/1"
MODELS = ("rep", "pixel")
WARMUP_FRACTION = 0.05  # share of each model's planned steps spent warming the learning rate up
STD_FLOOR = 1e-6  # per-dimension std below this is treated as this (a constant feature)
MAX_IMAGE_BYTES = 4 * 2**30  # the pixel generator holds the training images in memory as uint8: at most this


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], the pixel generator's data space."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The pixel generator's [-1, 1] floats -> uint8 images (clamped, rounded)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class FlowTrainable(nn.Module):
    """A velocity network trained with the flow-matching loss, and an EMA copy of it that sampling uses.

    ``forward(x1, cond, x0, t, keep)`` returns ``(loss, logs)``: ``x1`` the
    data (uint8 images when ``pixels``, else float rows), ``cond`` the
    conditions or None, ``x0`` the noise, ``t`` the times (B,), ``keep``
    (B,) bool: where the condition is kept.
    """

    def __init__(self, net: nn.Module, pixels: bool, ema_decay: float) -> None:
        super().__init__()
        self.net, self.pixels, self.ema_decay = net, pixels, ema_decay
        self.ema = copy.deepcopy(net).requires_grad_(False)

    def forward(self, x1: torch.Tensor, cond: torch.Tensor | None, x0: torch.Tensor, t: torch.Tensor,
                keep: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.pixels:
            x1 = to_unit(x1)
        xt = interpolate(x0, x1, t)
        v = self.net(xt, t, cond, keep) if cond is not None else self.net(xt, t)
        loss = flow_matching_loss(v, x0, x1)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p.detach(), 1 - decay)


class _FlowEpoch:
    def __init__(self, source: "FlowBatches", order: torch.Tensor, start: int, gen: torch.Generator) -> None:
        self.source, self.order, self.start, self.gen = source, order, start, gen

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        s, b, dev = self.source, self.source.items_per_step, self.source.device
        for step in range(self.start, s.steps_per_epoch):
            idx = self.order[step * b : (step + 1) * b]
            x0 = torch.randn(b, *s.data.shape[1:], generator=self.gen)  # (B, ...) noise
            t = torch.rand(b, generator=self.gen)  # (B,)
            keep = torch.rand(b, generator=self.gen) >= s.p_uncond  # (B,)
            cond = s.cond[idx].to(dev) if s.cond is not None else None
            yield s.data[idx].to(dev), cond, x0.to(dev), t.to(dev), keep.to(dev)

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def close(self) -> None:
        pass


class FlowBatches:
    """The engine's batch source of both generators: ``(x1, cond, x0, t, keep)`` per step.

    A pure function of (seed, epoch, step): the epoch's order and the noise
    generator's start are seeded from (seed, epoch); draws are made on the CPU
    (the same on any device) and moved to ``device``.

    Args:
        data: (N, ...) rows or uint8 images, on the CPU.
        cond: (N, D) conditions or None.
        batch_size: items per step.
        seed: the run's seed.
        p_uncond: probability that an item's condition is dropped.
        device: where batches go.
    """

    state_key = "noise_rng"

    def __init__(self, data: torch.Tensor, cond: torch.Tensor | None, batch_size: int, seed: int, p_uncond: float,
                 device: torch.device) -> None:
        self.data, self.cond, self.seed, self.p_uncond, self.device = data, cond, seed, p_uncond, device
        self.items_per_step, self.steps_per_epoch = batch_size, len(data) // batch_size

    def epoch(self, epoch: int, start_step: int, state: torch.Tensor | None) -> _FlowEpoch:
        base = (self.seed * 1_000_003 + epoch * 7919) % (2**62)
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(base + 1))
        gen = torch.Generator()
        if state is not None:
            gen.set_state(state)
        else:
            gen.manual_seed(base + 2)
        return _FlowEpoch(self, order, start_step, gen)


def build_net(model: str, config: GeneratorConfig, dim: int, image_shape: tuple[int, int, int]) -> nn.Module:
    """The velocity network of ``model`` (``rep`` or ``pixel``)."""
    if model == "rep":
        return VelocityMLP(dim, config.rep_hidden, config.rep_blocks)
    return ConditionalUNet(image_shape[0], dim if config.conditional else 0, config.width)


def build_trainable(model: str, config: GeneratorConfig, dim: int, image_shape: tuple[int, int, int]) -> FlowTrainable:
    return FlowTrainable(build_net(model, config, dim, image_shape), pixels=model == "pixel", ema_decay=config.ema)


def load_generator_state(path: Path) -> dict[str, Any]:
    """A generator checkpoint (``torch.load(weights_only=True)``), with its schema checked."""
    state = load_state(path)
    if state.get("schema") != SCHEMA:
        raise CheckpointError(f"{path}: not a contrastkit generator checkpoint (schema {state.get('schema')!r}, "
                              f"expected {SCHEMA!r})")
    return state


@dataclass
class TrainingData:
    """What both generators train on: the standardised training embeddings and the training images."""

    z: torch.Tensor  # (N, D) float32 standardised embeddings of the training images
    mean: torch.Tensor  # (D,) per-dimension mean of the raw embeddings
    std: torch.Tensor  # (D,) per-dimension std (floored)
    images: torch.Tensor  # (N, C, H, W) uint8
    info: dict[str, Any]  # what config.json records about them


def load_training_data(run_dir: Path) -> TrainingData:
    """The run's training images and its encoder's embeddings of them (embedding the run first if needed).

    Raises:
        DataError: embeddings.npy is not of this run's training images (another data set, or stale).
    """
    from contrastkit.checkpoint import load_method, run_checkpoint
    from contrastkit.data import load_dataset
    from contrastkit.embedding import EMBEDDINGS_FILE, embed_run, read_embeddings

    _, tconfig, info = load_method(run_dir)
    if not (run_dir / EMBEDDINGS_FILE).is_file():
        print(f"no {run_dir / EMBEDDINGS_FILE}: embedding the run first", file=sys.stderr)
        embed_run(run_dir)
    emb = read_embeddings(run_dir)
    data = load_dataset(tconfig.data, image_size=tconfig.image_size, skip_bad=tconfig.skip_bad)
    train_rows = np.flatnonzero(np.array([s == "train" for s in emb.splits], dtype=bool))
    sources = [emb.sources[i] for i in train_rows]
    if sources != list(data.train.sources):
        raise DataError(f"{run_dir / EMBEDDINGS_FILE}: its train rows are not the run's {len(data.train)} training "
                        f"images ({data.train.name}); run `contrastkit embed {run_dir}` again")
    c, h, w = data.train.shape
    if len(data.train) * c * h * w > MAX_IMAGE_BYTES:
        raise ConfigError(f"{data.train.name}: {len(data.train)} training images of {c}x{h}x{w} need "
                          f"{len(data.train) * c * h * w / 2**30:.1f} GiB in memory, above the pixel generator's "
                          f"{MAX_IMAGE_BYTES / 2**30:g} GiB; it is sized for small images (28-64 px): train the "
                          "run with a smaller --image-size")
    raw = torch.from_numpy(np.asarray(emb.features[train_rows], dtype=np.float32))  # (N, D)
    mean, std = raw.mean(0), raw.std(0).clamp_min(STD_FLOOR)
    images = data.train.get_batch(torch.arange(len(data.train)))  # (N, C, H, W) uint8
    info = {"dim": int(raw.shape[1]), "image_shape": list(images.shape[1:]), "train_images": len(images),
            "data": tconfig.data, "encoder_checkpoint": str(run_checkpoint(run_dir)),
            "image_size": int(info["image_size"])}
    return TrainingData((raw - mean) / std, mean, std, images, info)


def train_generator(run_dir: str | Path, config: GeneratorConfig = GeneratorConfig(), *, resume: bool = False,
                    progress: bool = True, changed: tuple[str, ...] = ()) -> dict[str, RunResult]:
    """Train the representation generator, then the pixel generator, into ``RUN/generator/``.

    Args:
        run_dir: a run folder written by ``contrastkit train``.
        config: the options (on resume only its resumable fields count; the saved config is kept).
        resume: continue both models from their last checkpoints.
        progress: progress bars on stderr.
        changed: option names given on the command line, checked on resume against the saved config.

    Returns:
        The engine's result per model (``rep``, ``pixel``).

    Raises:
        ConfigError: a generator exists and ``resume`` is off, or a resumed one would change its options.
    """
    from contrastkit.checkpoint import run_checkpoint
    from contrastkit.runlock import run_lock

    run_dir = Path(run_dir)
    folder = run_dir / GENERATOR_DIR
    run_checkpoint(run_dir)  # a trained run, before the lock would create the folder
    with run_lock(run_dir):
        if resume:
            if not (folder / CONFIG_FILE).is_file():
                raise CheckpointError(f"{folder}: no generator to resume; run `contrastkit train-generator {run_dir}` "
                                      "without --resume")
            saved = GeneratorConfig.load(folder / CONFIG_FILE)
            differ = [n for n in changed if n not in RESUMABLE_FIELDS and getattr(saved, n) != getattr(config, n)]
            if differ:
                opts = ", ".join("--" + n.replace("_", "-") for n in sorted(differ))
                raise ConfigError(f"{folder / CONFIG_FILE}: a resumed generator keeps its options; drop {opts}")
            config = dataclasses.replace(saved, **{f: getattr(config, f) for f in RESUMABLE_FIELDS})
        elif any((folder / m / "checkpoints" / "last.pt").exists() for m in MODELS):
            raise ConfigError(f"{folder} already holds a generator; pass --resume to continue it, or remove the "
                              "folder to train a new one")
        data = load_training_data(run_dir)
        if len(data.images) < max(config.batch_size, config.rep_batch_size):
            n = len(data.images)
            raise ConfigError(f"{run_dir}: {n} training images, fewer than --batch-size {config.batch_size} / "
                              f"--rep-batch-size {config.rep_batch_size}; use at most {n}")
        runtime = Runtime.create(config.device, config.precision, channels_last=False)
        shares = f"{config.budget('rep'):.2f} + {config.budget('pixel'):.2f} minutes" if config.minutes else "no budget"
        info = {**data.info, "budget": shares}
        if not resume:
            folder.mkdir(parents=True, exist_ok=True)
            write_config(folder / CONFIG_FILE, config, info)
        results = {}
        for model in MODELS:
            results[model] = _train_one(model, config, data, runtime, folder / model, resume, progress)
    return results


def _train_one(model: str, config: GeneratorConfig, data: TrainingData, runtime: Runtime, out: Path, resume: bool,
               progress: bool) -> RunResult:
    """One generator on the engine."""
    torch.manual_seed(config.seed + (0 if model == "rep" else 1))
    image_shape = tuple(data.images.shape[1:])
    trainable = engine.place(build_trainable(model, config, data.z.shape[1], image_shape), runtime)
    if model == "rep":
        source = FlowBatches(data.z, None, config.rep_batch_size, config.seed, 0.0, runtime.device)
        epochs, peak = config.rep_epochs, config.rep_lr
    else:
        cond = data.z if config.conditional else None
        source = FlowBatches(data.images, cond, config.batch_size, config.seed + 1, config.p_uncond, runtime.device)
        epochs, peak = config.epochs, config.lr
    from contrastkit.optim import lr_at

    total = epochs * source.steps_per_epoch
    warmup = max(1, int(WARMUP_FRACTION * total))
    optimizer = torch.optim.AdamW(trainable.net.parameters(), lr=peak, weight_decay=0.0)
    plan = Plan(epochs=epochs, lr=lambda step: lr_at(step, peak, warmup, total),
                checkpoint_minutes=config.checkpoint_minutes, minutes=config.budget(model))
    what = ("representation generator (MLP flow matching over the standardised embeddings)" if model == "rep"
            else "pixel generator (conditional U-Net, flow matching)" if config.conditional
            else "pixel generator (unconditional U-Net baseline, flow matching)")
    budget = f", at most {config.budget(model):.2f} minutes" if config.minutes is not None else ""
    banner = (f"training the {what} on {len(source.data)} items, {runtime.describe()}, {epochs} epochs x "
              f"{source.steps_per_epoch} steps{budget}")
    meta = {"generator": config.to_dict(), "model_kind": model, "dim": int(data.z.shape[1]),
            "image_shape": list(image_shape), "mean": data.mean, "std": data.std}
    return engine.run(trainable, source, optimizer, plan, runtime, out, resume=resume and (out / "checkpoints" / "last.pt").exists(),
                      progress=progress, meta=meta, schema=SCHEMA, load=load_generator_state, banner=banner)
