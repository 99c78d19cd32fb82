"""``fit``: train a method on images, on the training engine (:mod:`contrastkit.engine`).

``fit`` knows only the method contract (``forward(views, labels)`` returns a
loss; ``embed(x)`` gives features) and supplies what is particular to images:
batched on-device views (:class:`ViewBatches`, the engine's batch source),
the warm-up + cosine schedule, and a kNN monitor on a validation slice of the
training split each epoch (never the test split) that picks ``best.pt`` and
stops early. The engine runs the loop: mixed precision, progress, atomic
checkpoints, exact resume, the ``--minutes`` budget and DDP.

Reproducibility and resume: the shuffling order of epoch ``e`` and the
augmentation generator's starting state are pure functions of ``(seed, e)``
(with ``--balance clusters`` the order also of the epoch's sampling weights,
which every checkpoint keeps; see :mod:`contrastkit.balance`), and the
learning rate a pure function of the step. A checkpoint inside an
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

One command at a time: rank 0 holds the run folder's lock
(:func:`contrastkit.runlock.rank0_lock`, ``RUN/.lock``) from just before the
first write to the end, so a second ``train`` (or ``embed``, ...) on the same
folder stops with an error naming the process that holds it; the other
ranks learn the outcome from rank 0 and never lock each other out.

Run folder::

    .lock                the lock of the command writing the folder (contrastkit.runlock)
    config.json          the TrainConfig
    log.jsonl            one JSON object per completed epoch
    checkpoints/last.pt  full training state (atomic)
    checkpoints/best.pt  weights of the epoch best on the validation slice (atomic)
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from contrastkit import distributed, engine
from contrastkit.augment import AugmentConfig, ViewAugment, channel_stats, default_recipe
from contrastkit.balance import ClusterBalance
from contrastkit.checkpoint import SCHEMA, load_checkpoint
from contrastkit.config import RESUMABLE_FIELDS, TrainConfig
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.data.streaming import IndexBatches, prefetch, resolve_workers
from contrastkit.embedding import compute_embeddings
from contrastkit.engine_contract import Plan, Selection, epoch_seed
from contrastkit.errors import ConfigError
from contrastkit.knn import knn_accuracy
from contrastkit.methods import METHODS
from contrastkit.methods.base import Method
from contrastkit.optim import build_optimizer, lr_at
from contrastkit.runlock import rank0_lock
from contrastkit.runtime import Runtime

STATS_SAMPLE = 10000  # images used to estimate the normalisation mean/std


@dataclass
class FitResult:
    """What a training run produced."""

    run_dir: Path
    history: list[dict[str, Any]]  # one dict per epoch, as in log.jsonl
    best_knn: float | None  # best kNN monitor accuracy, None without labels
    stopped_early: bool
    stopped_on_time: bool = False  # the --minutes budget ran out before the last epoch (see contrastkit.engine)
    raw_pixel_knn: float | None = None  # kNN of raw pixels on the monitor's bank and validation slice (rank 0, labels)

    def verdict(self) -> str | None:
        """One line: the best kNN monitor against raw pixels on the same images; None without both."""
        if self.best_knn is None or self.raw_pixel_knn is None:
            return None
        gap = 100 * (self.best_knn - self.raw_pixel_knn)
        head = (f"verdict: kNN {self.best_knn:.2%} on the validation slice against {self.raw_pixel_knn:.2%} for raw "
                f"pixels on the same images ({gap:+.1f} points): ")
        if gap > 0:
            return head + "the encoder beats raw pixels"
        return head + ("no better than raw pixels yet; train longer (--epochs, --minutes) or try another recipe "
                       "(BENCHMARKS.md lists what was measured)")


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The item order of one epoch: a pure function of (seed, epoch, weights), the same on every rank.

    Without ``weights``: a permutation of the ``n`` items. With (N,) sampling
    ``weights`` (``--balance``, :mod:`contrastkit.balance`): ``n`` items drawn
    with replacement in proportion to them, from the same seeded generator.
    """
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch, 1))
    if weights is None:
        return torch.randperm(n, generator=g)
    if weights.shape != (n,):
        raise ValueError(f"epoch_order: {tuple(weights.shape)} weights for {n} items")
    return torch.multinomial(weights, n, replacement=True, generator=g)


def augment_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of rank ``rank``'s augmentation generator at the start of epoch ``epoch``.

    Rank 0's is the single-process seed; other ranks get other streams (the
    rank term, a multiple of a prime coprime to the epoch's, never collides
    with another epoch of the same run below 7919 ranks).
    """
    return epoch_seed(seed, epoch, 2 + 104_729 * rank)


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
    if config.erase_p is not None:
        recipe = dataclasses.replace(recipe, erase_p=config.erase_p)
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


def resolve_epochs(config: TrainConfig, train: ImageDataset) -> TrainConfig:
    """``config`` with its length in epochs: ``config.epochs`` when given, else the fewest that make ``config.steps`` steps.

    The steps per epoch are those :func:`fit` takes: the rows trained on (all
    of them, or without the validation slice for methods that learn from
    labels) over the global batch, rounded down. The resolved epochs are what
    ``config.json`` and the checkpoints keep, so a resumed run plans the same
    schedule.
    """
    if config.epochs is not None:
        return config
    n = len(train)
    if getattr(METHODS.get(config.method), "needs_labels", False):
        n -= len(validation_split(train, config)[1])
    steps_per_epoch = max(1, n // config.batch_size)
    return dataclasses.replace(config, epochs=max(1, -(-config.steps // steps_per_epoch)))


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

    def raw_pixel_knn(self, data: DataSplits) -> float | None:
        """The same kNN on raw pixels (cosine, as :func:`contrastkit.evaluation.raw_pixel_knn`): the line to beat."""
        from contrastkit.evaluation import raw_pixel_features  # evaluation imports this module

        if not self.labelled:
            return None
        bank, queries = raw_pixel_features(data.train, self.bank_idx), raw_pixel_features(data.train, self.query_idx)
        return knn_accuracy(bank, data.train.labels[self.bank_idx], queries, data.train.labels[self.query_idx],
                            k=self.k, num_classes=self.num_classes)


_no_buffer_sync = engine.no_buffer_sync  # DistributedDataParallel's option, as fit wraps methods (tests use it)


class _MonitorHook:
    """The kNN monitor as an engine epoch-end hook, with the epoch line's kNN, spread and rank text."""

    def __init__(self, monitor: _Monitor, method: Method, data: DataSplits, info: dict[str, Any], runtime: Runtime) -> None:
        self.monitor, self.method, self.data, self.info, self.runtime = monitor, method, data, info, runtime

    def measure(self) -> dict[str, Any]:
        return self.monitor(self.method, self.data, self.info, self.runtime)

    def summary(self, record: dict[str, Any]) -> str:
        knn = record["knn_top1"]
        knn_text = f"kNN {knn:.2%}" if knn is not None else "kNN n/a (no labels)"
        if record["embedding_std"] < COLLAPSE_SPREAD:
            tqdm.write(f"warning: the embeddings are collapsing (spread {record['embedding_std']:.3f}, "
                       f"effective rank {record['effective_rank']:.1f}); try another --lr, --temperature or method",
                       file=sys.stderr)
        return f"{knn_text}  spread {record['embedding_std']:.2f}  rank {record['effective_rank']:.0f}"


class _ViewEpoch:
    """One epoch of views: this rank's block of each global batch in the epoch's order, views drawn from ``gen``."""

    def __init__(self, source: "ViewBatches", order: torch.Tensor, start_step: int, gen: torch.Generator) -> None:
        self.source, self.gen = source, gen
        rank, world = distributed.rank(), distributed.world_size()
        s = source
        self.batches = IndexBatches(order, s.items_per_step, start_step, s.steps_per_epoch, rank, world)  # each (batch / world,)
        self.loader = prefetch(s.images, self.batches, s.workers, pin_memory=s.runtime.device.type == "cuda")

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None]]:
        s = self.source
        for idx, images in zip(self.batches, self.loader):
            x = images.to(s.runtime.device, non_blocking=True)  # (batch / world, C, H, W) uint8
            labels = s.images.labels[idx].to(s.runtime.device) if s.images.labels is not None else None
            yield s.make_views(x, self.gen), labels

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def close(self) -> None:
        self.loader.close()


class ViewBatches:
    """The engine's batch source for methods: ``(views, labels)`` per step, a pure function of (seed, epoch, step, rank).

    The epoch's order is :func:`epoch_order` (over ``rows`` when given), with
    the sampling weights of ``balance`` (:class:`contrastkit.balance.ClusterBalance`,
    ``--balance clusters``) when given; the views come from rank ``rank``'s
    augmentation generator, seeded by :func:`augment_seed` at the start of
    each epoch; its state is what a checkpoint inside an epoch keeps
    (``aug_rng``), and the balance's clusters are what every checkpoint keeps
    (``source_state``).
    """

    state_key = "aug_rng"

    def __init__(self, images: ImageDataset, rows: torch.Tensor | None, make_views: ViewMaker, seed: int,
                 batch_size: int, workers: int, runtime: Runtime, balance: ClusterBalance | None = None) -> None:
        self.images, self.rows, self.make_views, self.seed = images, rows, make_views, seed
        self.n = len(images) if rows is None else len(rows)
        self.items_per_step, self.steps_per_epoch = batch_size, self.n // batch_size
        self.workers, self.runtime, self.balance = workers, runtime, balance

    def extra_state(self) -> dict[str, Any]:
        """The balance's clusters and their epoch (empty without ``--balance``)."""
        return self.balance.state() if self.balance is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.balance is not None:
            self.balance.load_state(state)

    def epoch(self, epoch: int, start_step: int, state: torch.Tensor | None) -> _ViewEpoch:
        weights = self.balance.weights(epoch) if self.balance is not None else None  # (n,), clustered when due
        order = epoch_order(self.n, self.seed, epoch, weights)
        if self.rows is not None:
            order = self.rows[order]
        gen = torch.Generator(device=self.runtime.device)
        if state is not None:
            gen.set_state(state)
        else:
            gen.manual_seed(augment_seed(self.seed, epoch, distributed.rank()))
        return _ViewEpoch(self, order, start_step, gen)


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
    returns the same history. The loop itself is :func:`contrastkit.engine.run`
    (``config.minutes``: its wall-clock budget).

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
        RunLockedError: another process is writing ``run_dir`` (its PID is named).
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
    world, main = distributed.world_size(), distributed.rank() == 0
    config = resolve_epochs(config, data.train)
    last_path = run_dir / "checkpoints" / "last.pt"
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
    engine.place(method, runtime)
    if config.sync_bn and world > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # in place: same parameters, same state-dict keys
    if config.compile:
        method.backbone.compile()  # nn.Module.compile: in place, so state-dict keys do not change
    optimizer = build_optimizer(method, config)
    rest, val = validation_split(data.train, config)
    monitor = _Monitor(data, config, rest, val) if main else None
    # Rows trained on: all of them without labels in the loss; label-using methods leave the validation slice out.
    rows = rest if method.needs_labels else None
    n, batch = len(data.train) if rows is None else len(rows), config.batch_size
    if n < batch:
        raise ConfigError(f"--batch-size {batch} is larger than the {n} training images of {data.train.name} left "
                          f"beside the {len(val)}-image validation slice; use --batch-size {max(2, n)} or less")
    workers = resolve_workers(config.workers, data.train)
    balance = None
    if config.balance == "clusters":  # the rows trained on, embedded as the monitor embeds its bank
        balance = ClusterBalance(n, config.balance_clusters, config.balance_every, config.seed,
                                 lambda: compute_embeddings(method, data.train, info, runtime, indices=rows,
                                                            workers=config.workers))
    source = ViewBatches(data.train, rows, make_views, config.seed, batch, workers, runtime, balance)
    steps_per_epoch = source.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    plan = Plan(epochs=config.epochs, checkpoint_minutes=config.checkpoint_minutes, minutes=config.minutes,
                lr=lambda step: lr_at(step, config.peak_lr, warmup_steps, total_steps))

    where = f", {world} processes x {local_batch} images ({distributed.backend_for(runtime.device)})" if world > 1 else ""
    where += f", {workers} loader workers" if workers else ""
    budget = f", at most {config.minutes:g} minutes" if config.minutes is not None else ""
    if balance is not None:
        budget += (f", balanced over {config.balance_clusters} k-means clusters refreshed every "
                   f"{config.balance_every} epoch{'s' * (config.balance_every != 1)}")
    banner = (f"training {config.method}/{config.backbone} on {n} images ({data.train.name}), "
              f"{runtime.describe()}{where}, {config.epochs} epochs x {steps_per_epoch} steps{budget}")

    def check_resume(state: dict[str, Any]) -> None:
        saved = TrainConfig.from_dict(state["config"])  # fields added since are filled with defaults
        if dataclasses.replace(saved, **{f: getattr(config, f) for f in RESUMABLE_FIELDS}) != config:
            raise ConfigError(f"{last_path}: the checkpoint's configuration differs from this one; resume with the run's own config.json")

    with rank0_lock(run_dir):  # a second command on this folder stops here (contrastkit.runlock)
        out = engine.run(
            method, source, optimizer, plan, runtime, run_dir, resume=resume, progress=progress,
            monitor=_MonitorHook(monitor, method, data, info, runtime) if monitor is not None else None,
            selection=Selection("knn_top1", "max", config.patience, label="kNN", fmt="{:.2%}"),
            meta={"config": config.to_dict(), "data": info, "augment": aug_cfg.__dict__}, schema=SCHEMA,
            load=load_checkpoint, check_resume=check_resume, on_new_run=lambda: config.save(run_dir / "config.json"),
            banner=banner,
        )
    return FitResult(run_dir=run_dir, history=out.history, best_knn=out.best, stopped_early=out.stopped_early,
                     stopped_on_time=out.stopped_on_time,
                     raw_pixel_knn=monitor.raw_pixel_knn(data) if monitor is not None else None)

