"""``fit``: the method-agnostic training loop.

The loop knows only the method contract (``forward(views, labels)`` returns a
loss; ``embed(x)`` gives features). Around it: batched on-device views,
warm-up + cosine schedule, mixed precision, channels_last, a kNN monitor on
a validation slice of the training split each epoch (never the test split),
early stopping, and atomic checkpoints.

Reproducibility and resume: the shuffling order of epoch ``e`` and the
augmentation generator's starting state are pure functions of ``(seed, e)``,
and the learning rate a pure function of the step. A checkpoint inside an
epoch stores the step reached and the augmentation generator's state, so a
run killed at any moment and resumed from ``last.pt`` takes exactly the steps
an uninterrupted run would have taken and ends with the same weights.

Distributed data parallel (``torchrun --nproc-per-node N -m contrastkit
train ...``, see :mod:`contrastkit.distributed`): ``--batch-size`` is the
global batch. Every rank walks the same epoch permutation and takes its
contiguous block of ``batch_size / N`` items of each global batch, so the
steps, the schedule and the union of the ranks' batches are those of a
single process; methods gather embeddings so their losses see the global
batch, and DistributedDataParallel averages the gradients. Augmentations
differ per rank (generator seeded from seed, epoch and rank; rank 0's stream
is the single-process one) and stay deterministic; a checkpoint inside an
epoch stores every rank's generator state, so a resume with the same number
of processes is exact too. Rank 0 alone shows progress, runs the kNN monitor
and writes the run folder; every rank reads ``last.pt`` on resume (multi-node
runs need ``--out`` on a shared file system to resume).

Run folder::

    config.json          the TrainConfig
    log.jsonl            one JSON object per completed epoch
    checkpoints/last.pt  full training state (atomic)
    checkpoints/best.pt  weights of the epoch best on the validation slice (atomic)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from contrastkit import distributed
from contrastkit.atomic import atomic_write_text
from contrastkit.augment import AugmentConfig, ViewAugment, channel_stats, default_recipe
from contrastkit.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.config import RESUMABLE_FIELDS, TrainConfig
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.data.streaming import IndexBatches, prefetch, resolve_workers
from contrastkit.embedding import compute_embeddings
from contrastkit.errors import CheckpointError, ConfigError, TrainingError
from contrastkit.knn import knn_accuracy
from contrastkit.methods import Method
from contrastkit.optim import build_optimizer, lr_at
from contrastkit.runtime import Runtime

STATS_SAMPLE = 10000  # images used to estimate the normalisation mean/std


@dataclass
class FitResult:
    """What a training run produced."""

    run_dir: Path
    history: list[dict[str, Any]]  # one dict per epoch, as in log.jsonl
    best_knn: float | None  # best kNN monitor accuracy, None without labels
    stopped_early: bool


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled item order of one epoch: a pure function of (seed, epoch), the same on every rank."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch, 1)))


def augment_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of rank ``rank``'s augmentation generator at the start of epoch ``epoch``.

    Rank 0's is the single-process seed; other ranks get other streams (the
    rank term, a multiple of a prime coprime to the epoch's, never collides
    with another epoch of the same run below 7919 ranks).
    """
    return _epoch_seed(seed, epoch, 2 + 104_729 * rank)


def data_info(train: ImageDataset, config: TrainConfig) -> dict[str, Any]:
    """Image geometry, normalisation statistics and classes, saved in every checkpoint."""
    channels, height, _ = train.shape
    n = len(train)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:STATS_SAMPLE]
    mean, std = channel_stats(train.get_batch(sample.sort().values))
    return {
        "channels": channels,
        "image_size": config.image_size or height,
        "mean": [float(m) for m in mean],
        "std": [max(float(s), 1e-3) for s in std],
        "num_classes": train.num_classes,
        "class_names": train.class_names,
    }


def augment_recipe(info: dict[str, Any], config: TrainConfig) -> AugmentConfig:
    """The view recipe for these images: the default for their size and channels, with the config's overrides."""
    recipe = default_recipe(info["channels"], info["image_size"])
    if config.crop_min_scale is not None:
        recipe = dataclasses.replace(recipe, crop_scale=(config.crop_min_scale, 1.0))
    return recipe


LOCAL_SIZE_RATIO = 96 / 224  # side of local crops relative to global ones (DINO, arXiv 2104.14294)
LOCAL_CROP_SCALE = (0.05, 0.4)  # area fraction of local crops (DINO's default)


def local_recipe(recipe: AugmentConfig) -> AugmentConfig:
    """Multi-crop's small local views: the same recipe, smaller crops at a smaller size (at least 8 px)."""
    size = max(8, round(recipe.size * LOCAL_SIZE_RATIO))
    return dataclasses.replace(recipe, size=size, crop_scale=LOCAL_CROP_SCALE)


class ViewMaker:
    """The views a method trains on: ``num_views`` global views, then ``num_local_views`` local ones (multi-crop)."""

    def __init__(self, method: Method, recipe: AugmentConfig, info: dict[str, Any], runtime: Runtime) -> None:
        self.num_views, self.num_local_views = method.num_views, method.num_local_views
        self.runtime = runtime
        self.augment = ViewAugment(recipe, info["mean"], info["std"])
        self.local = ViewAugment(local_recipe(recipe), info["mean"], info["std"]) if self.num_local_views else None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """uint8 (B, C, H, W) -> list of float views, each in the model's memory format."""
        views = [self.runtime.prepare(self.augment(images, generator)) for _ in range(self.num_views)]
        if self.local is not None:
            views += [self.runtime.prepare(self.local(images, generator)) for _ in range(self.num_local_views)]
        return views


def _check_data(data: DataSplits, method: Method, config: TrainConfig) -> None:
    n = len(data.train)
    if n == 0:
        raise ConfigError(f"{data.train.name}: the training split is empty")
    if n < config.batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {n} training images of {data.train.name}; "
            f"use --batch-size {max(2, n)} or less"
        )
    if method.needs_labels and data.train.labels is None:
        raise ConfigError(f"--method {config.method} needs labels, and {data.train.name} has none; use --method simclr")


COLLAPSE_SPREAD = 0.1  # embedding_std below this: the representation is collapsing


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of a feature matrix (Roy & Vetterli 2007): exp of the entropy of its normalised singular values.

    Between 1 (all features on a line: collapse) and min(N, D) (all directions used);
    computed on mean-centred features.
    """
    x = features.float() - features.float().mean(0)
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


VALIDATION_MAX_FRACTION = 0.1  # the validation slice takes at most this share of the training split


def validation_split(train: ImageDataset, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(rest, validation) row indices of the training split: the slice every choice is made on.

    A deterministic (``config.seed``), stratified slice of ``config.monitor_queries``
    training images, at most a tenth of them, held out of the kNN monitor's
    bank. The monitor scores it each epoch, ``best.pt`` is its best epoch,
    ``--patience`` stops on it, and sweeps choose defaults by it, so the test
    split is never looked at to choose anything: it only reports. Methods that
    learn from labels do not train on the slice either. Without labels the
    slice is empty (there is nothing to score).
    """
    from contrastkit.data.dataset import held_out_indices

    n = len(train)
    if train.labels is None or n < 2:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    fraction = min(VALIDATION_MAX_FRACTION, config.monitor_queries / n)
    rest, val = held_out_indices(n, train.labels, fraction=fraction, seed=config.seed)
    return torch.from_numpy(rest), torch.from_numpy(val)


class _Monitor:
    """kNN accuracy of the validation slice against unaugmented training images, and the collapse indicator."""

    def __init__(self, data: DataSplits, config: TrainConfig, rest: torch.Tensor, val: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(config.seed)
        self.bank_idx = rest[torch.randperm(len(rest), generator=g)[: config.monitor_bank]].sort().values
        self.query_idx = val
        self.labelled = data.train.labels is not None and len(val) > 0
        self.k = config.knn_k
        self.num_classes = data.train.num_classes
        self.workers = config.workers

    def __call__(self, method: Method, data: DataSplits, info: dict[str, Any], runtime: Runtime) -> dict[str, float | None]:
        bank = compute_embeddings(method, data.train, info, runtime, indices=self.bank_idx, workers=self.workers)
        z = F.normalize(bank, dim=1)
        # Std of L2-normalised embeddings per dimension, times sqrt(D): about 1 when spread, 0 when collapsed
        # (SimSiam, arXiv 2011.10566, Sec. 4.1).
        spread = float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))
        out: dict[str, float | None] = {"knn_top1": None, "embedding_std": spread, "effective_rank": effective_rank(bank)}
        if self.labelled:
            queries = compute_embeddings(method, data.train, info, runtime, indices=self.query_idx, workers=self.workers)
            out["knn_top1"] = knn_accuracy(
                bank, data.train.labels[self.bank_idx], queries, data.train.labels[self.query_idx],
                k=self.k, num_classes=self.num_classes,
            )
        return out


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _write_log(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def _agree(loss: torch.Tensor, logged: float, want_save: bool, world: int) -> tuple[float, bool]:
    """What every rank must agree on after a forward, in one all-reduce.

    Returns:
        The loss to log and check, averaged over ranks (the global-batch loss:
        equal on every rank for gathered losses, the mean of the ranks' means
        for per-image ones), so a NaN on any rank stops them all together; and
        whether rank 0, whose clock alone decides, wants a checkpoint now.
    """
    if world == 1:
        return (logged if bool(torch.isfinite(loss)) else float(loss.detach())), want_save
    stats = torch.stack([loss.detach().float(), torch.tensor(float(want_save), device=loss.device)])
    stats = distributed.all_reduce_sum(stats)
    return float(stats[0]) / world, bool(stats[1] > 0)


def _no_buffer_sync() -> dict[str, bool]:
    """DistributedDataParallel's option not to broadcast buffers before every forward, in this torch's spelling."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}  # torch >= 2.13 (buffers are still synced once, at wrapping)
    return {"broadcast_buffers": False}


def _resumed_augment_state(state: dict[str, Any], rank: int, world: int) -> torch.Tensor | None:
    """This rank's augmentation generator state from a mid-epoch checkpoint; None when its world size differs."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        if rank == 0:
            tqdm.write(f"note: the checkpoint was written inside an epoch by {saved_world} process(es) and this run has "
                       f"{world}: the rest of that epoch gets other augmentations than an uninterrupted run", file=sys.stderr)
        return None
    # A copy: Generator.set_state reads a row of the (world, bytes) tensor wrongly (a crash in torch 2.13).
    return state["aug_rng_ranks"][rank].clone() if world > 1 else state["aug_rng"]


def fit(
    method: Method,
    data: DataSplits,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``method`` on ``data.train`` as ``config`` says, writing the run folder.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) this process joins
    the process group (NCCL on CUDA, each rank on GPU ``LOCAL_RANK``; gloo on
    CPUs) and leaves it at the end; inside a process group the caller set up,
    it uses that one. Then ``config.batch_size`` is the global batch, split
    evenly over the ranks; the method runs wrapped in
    DistributedDataParallel (with SyncBatchNorm if ``config.sync_bn``); only
    rank 0 shows progress, runs the kNN monitor and writes files. Every rank
    returns the same history.

    Args:
        method: a freshly built method (see ``build_method``), the same on every rank.
        data: the train split, for training and (its validation slice, see
            :func:`validation_split`) the kNN monitor; the test split is not used.
        config: the run's configuration (saved as config.json).
        run_dir: output folder; must not hold a run unless ``resume``.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        progress: show a progress bar on stderr.

    Raises:
        TrainingError: the loss became NaN or inf (the last checkpoint is kept).
        ConfigError: among others, a global batch not divisible by the number
            of processes, or ``sync_bn`` with several processes on CPUs.
    """
    launched = distributed.env_world_size() > 1 and not distributed.is_initialized()
    runtime = Runtime.create(config.device, config.precision, config.channels_last,
                             local_rank=distributed.local_rank() if launched else None)
    owns_group = distributed.init(runtime.device)
    try:
        return _fit(method, data, config, Path(run_dir), runtime, resume, progress)
    finally:
        if owns_group:
            distributed.cleanup()


def _fit(
    method: Method, data: DataSplits, config: TrainConfig, run_dir: Path, runtime: Runtime, resume: bool, progress: bool
) -> FitResult:
    """:func:`fit` once the runtime is resolved and any process group joined."""
    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if not resume and last_path.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    _check_data(data, method, config)
    local_batch = distributed.local_batch_size(config.batch_size, world)
    if config.sync_bn and world > 1 and runtime.device.type != "cuda":
        raise ConfigError(f"--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on {runtime.device.type}; "
                          "drop --sync-bn (each process then normalises over its own share of the batch)")

    info = data_info(data.train, config)
    aug_cfg = augment_recipe(info, config)
    make_views = ViewMaker(method, aug_cfg, info, runtime)
    method.to(runtime.device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    if config.sync_bn and world > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # in place: same parameters, same state-dict keys
    if config.compile:
        method.backbone.compile()  # nn.Module.compile: in place, so state-dict keys do not change
    optimizer = build_optimizer(method, config)
    scaler = torch.amp.GradScaler(enabled=runtime.dtype == torch.float16)
    rest, val = validation_split(data.train, config)
    monitor = _Monitor(data, config, rest, val) if main else None
    # Rows trained on: all of them without labels in the loss; label-using methods leave the validation slice out.
    rows = rest if method.needs_labels else None
    n, batch = len(data.train) if rows is None else len(rows), config.batch_size
    if n < batch:
        raise ConfigError(f"--batch-size {batch} is larger than the {n} training images of {data.train.name} left "
                          f"beside the {len(val)}-image validation slice; use --batch-size {max(2, n)} or less")
    steps_per_epoch = n // batch
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    workers = resolve_workers(config.workers, data.train)

    start_epoch, step_in_epoch, aug_state = 0, 0, None
    history: list[dict[str, Any]] = []
    best_knn, bad_epochs, stopped_early = None, 0, False
    loss_sum, loss_count = 0.0, 0
    if resume:
        if not last_path.exists():
            raise CheckpointError(f"{run_dir}: nothing to resume, no {last_path}")
        state = load_checkpoint(last_path)  # on every rank: identical weights, optimiser and counters
        saved = TrainConfig.from_dict(state["config"])  # fields added since are filled with defaults
        if dataclasses.replace(saved, **{f: getattr(config, f) for f in RESUMABLE_FIELDS}) != config:
            raise ConfigError(f"{last_path}: the checkpoint's configuration differs from this one; resume with the run's own config.json")
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        aug_state = _resumed_augment_state(state, rank, world) if step_in_epoch else None
        history, best_knn = list(state["history"]), state["best_knn"]
        bad_epochs, stopped_early = int(state["bad_epochs"]), bool(state["stopped_early"])
        loss_sum, loss_count = float(state["loss_sum"]), int(state["loss_count"])
        _set_rng_state(state["rng"])
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")

    model: nn.Module = method
    if world > 1:
        # Every trainable parameter of every method takes part in its loss, so no search for unused ones.
        # Buffers are not broadcast each step: queues and DINO's centre are kept identical by gathering,
        # EMA targets follow identical weights, and BatchNorm running statistics (unused in training) are
        # rank 0's in the checkpoints.
        device_ids = None
        if runtime.device.type == "cuda":
            device_ids = [runtime.device.index if runtime.device.index is not None else torch.cuda.current_device()]
        model = DistributedDataParallel(method, device_ids=device_ids, **_no_buffer_sync())

    def checkpoint(epoch: int, step: int, gen: torch.Generator | None) -> None:
        """Write last.pt from rank 0; inside an epoch every rank must call it (its augmentation state is gathered)."""
        aug = gen.get_state() if gen is not None else torch.zeros(0, dtype=torch.uint8)
        per_rank: dict[str, torch.Tensor] = {}
        if world > 1 and gen is not None:
            per_rank["aug_rng_ranks"] = distributed.all_gather_tensor(aug[None])  # (world, state bytes)
        if not main:
            return
        save_checkpoint(last_path, {
            "config": config.to_dict(), "data": info, "model": method.state_dict(), "epoch": epoch,
            "step_in_epoch": step, "aug_rng": aug, "world_size": world, **per_rank,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "history": history,
            "best_knn": best_knn, "bad_epochs": bad_epochs, "stopped_early": stopped_early,
            "loss_sum": loss_sum, "loss_count": loss_count, "rng": _rng_state(), "augment": aug_cfg.__dict__,
        })

    done = start_epoch >= config.epochs or stopped_early
    bar = tqdm(
        total=total_steps, initial=start_epoch * steps_per_epoch + step_in_epoch, unit="step",
        desc="train", disable=not progress or done or not main, file=sys.stderr, dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not every step
    )
    if not done and main:
        where = f", {world} processes x {local_batch} images ({distributed.backend_for(runtime.device)})" if world > 1 else ""
        where += f", {workers} loader workers" if workers else ""
        tqdm.write(f"training {config.method}/{config.backbone} on {n} images ({data.train.name}), "
                   f"{runtime.describe()}{where}, {config.epochs} epochs x {steps_per_epoch} steps", file=sys.stderr)
    method.train()
    last_save = time.monotonic()
    epoch = start_epoch
    while epoch < config.epochs and not stopped_early:
        order = epoch_order(n, config.seed, epoch)
        if rows is not None:
            order = rows[order]
        gen = torch.Generator(device=runtime.device)
        if aug_state is not None:
            gen.set_state(aug_state)
            aug_state = None
        else:
            gen.manual_seed(augment_seed(config.seed, epoch, rank))
        t_epoch, images_seen = time.perf_counter(), 0
        # This rank's block of each global batch from the step reached on, decoded ahead by the workers.
        batches = IndexBatches(order, batch, step_in_epoch, steps_per_epoch, rank, world)  # each (batch / world,)
        loader = prefetch(data.train, batches, workers, pin_memory=runtime.device.type == "cuda")
        for step, idx, images in zip(range(step_in_epoch, steps_per_epoch), batches, loader):
            global_step = epoch * steps_per_epoch + step
            lr = lr_at(global_step, config.peak_lr, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = images.to(runtime.device, non_blocking=True)  # (batch / world, C, H, W) uint8
            labels = data.train.labels[idx].to(runtime.device) if data.train.labels is not None else None
            views = make_views(x, gen)
            with runtime.autocast():
                loss, logs = model(views, labels)
            want_save = main and time.monotonic() - last_save > config.checkpoint_minutes * 60 and step + 1 < steps_per_epoch
            step_loss, save_now = _agree(loss, logs["loss"], want_save, world)
            if not math.isfinite(step_loss):
                bar.close()
                raise TrainingError(
                    f"the loss became {step_loss} at epoch {epoch + 1}, step {step + 1}; stopped. "
                    f"The last good checkpoint ({last_path}) is intact. Try a lower --lr, or --precision fp32."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            method.after_step(global_step + 1, total_steps)  # momentum encoders, queues
            loss_sum += step_loss * batch
            loss_count += batch
            images_seen += batch
            rate = images_seen / max(time.perf_counter() - t_epoch, 1e-9)
            bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{step_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            if save_now:
                checkpoint(epoch, step + 1, gen)
                last_save = time.monotonic()
        loader.close()  # its workers stop before the monitor runs
        epoch_seconds = time.perf_counter() - t_epoch
        step_in_epoch = 0

        # Rank 0 runs the monitor while the others wait here; then every rank keeps the same history.
        monitor_out = monitor(method, data, info, runtime) if monitor is not None else None
        monitor_out, epoch_seconds = distributed.broadcast_object((monitor_out, epoch_seconds))
        record = {
            "epoch": epoch + 1, "loss": loss_sum / max(loss_count, 1), "lr": lr,
            **monitor_out, "images_per_s": images_seen / max(epoch_seconds, 1e-9), "epoch_seconds": epoch_seconds,
        }
        loss_sum, loss_count = 0.0, 0
        knn = monitor_out["knn_top1"]
        improved = knn is None or best_knn is None or knn > best_knn
        if knn is not None and improved:
            best_knn = knn
        bad_epochs = 0 if improved else bad_epochs + 1
        if config.patience and knn is not None and bad_epochs >= config.patience and epoch + 1 < config.epochs:
            stopped_early = True
            record["stopped_early"] = True
        history.append(record)
        epoch += 1
        if improved and main:
            save_checkpoint(best_path, {"config": config.to_dict(), "data": info, "model": method.state_dict(), "epoch": epoch, "knn_top1": knn})
        checkpoint(epoch, 0, None)
        last_save = time.monotonic()
        if not main:
            continue
        _write_log(run_dir, history)
        knn_text = f"kNN {knn:.2%}" if knn is not None else "kNN n/a (no labels)"
        if monitor_out["embedding_std"] < COLLAPSE_SPREAD:
            tqdm.write(f"warning: the embeddings are collapsing (spread {monitor_out['embedding_std']:.3f}, "
                       f"effective rank {monitor_out['effective_rank']:.1f}); try another --lr, --temperature or method",
                       file=sys.stderr)
        tqdm.write(f"epoch {epoch}/{config.epochs}: loss {record['loss']:.4f}  {knn_text}  "
                   f"spread {monitor_out['embedding_std']:.2f}  rank {monitor_out['effective_rank']:.0f}  {record['images_per_s']:.0f} img/s", file=sys.stderr)
        if stopped_early:
            tqdm.write(f"early stop: no kNN improvement for {config.patience} epochs (best {best_knn:.2%})", file=sys.stderr)
    bar.close()
    distributed.barrier()  # the other ranks return once rank 0 has written the run folder
    return FitResult(run_dir=run_dir, history=history, best_knn=best_knn, stopped_early=stopped_early)
