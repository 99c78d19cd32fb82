"""Few labels, fine-tuned: the run's encoder trained on the seed labels with FixMatch consistency on the rest.

FixMatch (Sohn et al. 2020, arXiv 2001.07685, Sec. 2.2, Eq. 2-4). Each step
draws ``B`` seed images (with replacement) and ``mu * B`` unlabelled
training images; ``alpha`` is a weak view (flip and a mild crop), ``A`` a
strong one (the run's own training views: crops, intensity or colour
jitter, random erasing). With ``p(y | x)`` the classifier's softmax:

    l_s = (1 / B) sum_b H(y_b, p(y | alpha(x_b)))
    q_b = p(y | alpha(u_b)), no gradient; q_hat_b = argmax q_b
    l_u = (1 / (mu B)) sum_b 1[max q_b >= tau] H(q_hat_b, p(y | A(u_b)))
    loss = l_s + lambda_u l_u

with FixMatch's ``tau = 0.95`` and ``lambda_u = 1``, plus a **teacher** term
``lambda_t l_t`` (noisy student, Xie et al. 2020, arXiv 1911.04252): the
frozen-embedding seed model that ``label --seed-labels`` chooses (Poisson
learning, mostly) labels the unlabelled images, and its most confident half
are trained on, strong views, with ``lambda_t = 1``. Chosen on the non-seed
training rows of the embedded Fashion-MNIST subset (3 minutes each, one
draw): at 1 seed per class plain FixMatch labelled 61.8%, below the frozen
Poisson learning's 67.7%, which the teacher term lifts to 68.5%; at 10 per
class 79.6% plain, 79.9% with the teacher (frozen: 77.7%); the threshold
0.8, ``lambda_u = 3``, lr 1e-3 and a teacher share of 0.8 all came within
0.5 points of these. The classifier is a
linear layer on the backbone features; the backbone starts from the run's
``best.pt`` (the self-supervised encoder), so the network begins from
features that already separate most classes and the few labels only have
to name and sharpen them. The three kinds of views go through the network in
one batch (BatchNorm sees them together, as FixMatch's interleaving does).
Prediction uses an exponential moving average of the weights (FixMatch
evaluates its EMA model; decay 0.999, warmed up as ``min(d, (1 + s) / (10 + s))``).

Training runs on the engine (:mod:`contrastkit.engine`): progress, bf16,
atomic checkpoints in ``RUN/finetune/``, exact resume (``--resume``), the
``--finetune-minutes`` wall-clock budget. The learning rate is constant
after a short warm-up (FixMatch's cosine ends at ``cos(7 pi / 16)``, about a
fifth of its peak, after a million steps; a budget of minutes stops far
before that), so a run cut by its budget has trained as a longer one would
have up to that step. No checkpoint is chosen by a metric (there are no
labels to spare for it): the last one labels.

Only training images are trained on (the test split, when the run has one,
is never seen), and every image a seed names keeps its seed label.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.augment import AugmentConfig, ViewAugment
from contrastkit.engine_contract import Plan, epoch_seed
from contrastkit.errors import ConfigError, DataError

FINETUNE_DIR = "finetune"  # RUN/finetune/: the engine run folder (log.jsonl, checkpoints/last.pt)
SCHEMA = "contrastkit.finetune/1"
STREAM_SEEDS, STREAM_UNLABELLED, STREAM_VIEWS = 11, 12, 13  # epoch_seed streams of the three draws
WEAK_CROP_SCALE = (0.8, 1.0)  # alpha: flip and a mild crop, no intensity change


@dataclass(frozen=True)
class FineTuneConfig:
    """FixMatch's settings (defaults: the paper's tau, lambda_u and EMA; B and mu sized for CPUs).

    Attributes:
        minutes: wall-clock budget of the whole fine-tuning (resumed runs continue the count).
        steps: the most optimiser steps, rounded up to whole epochs (a budget usually stops it first).
        batch_size: seed images per step, ``B`` (drawn with replacement).
        mu: unlabelled images per seed image, ``mu`` (FixMatch: 7 on GPUs).
        threshold: confidence ``tau`` above which a weak view's prediction is a pseudo-label.
        unlabelled_weight: ``lambda_u``.
        lr: AdamW learning rate after the warm-up.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW's decoupled weight decay of weight matrices.
        ema: decay of the weight average that predicts.
        teacher_weight: ``lambda_t`` of the teacher term (0: plain FixMatch), see :func:`fixmatch_loss`.
        teacher_share: the most confident share of the training images whose teacher label is used.
        seed: seeds every draw.
        checkpoint_minutes: also checkpoint inside an epoch at this interval.
    """

    minutes: float | None = 10.0
    steps: int = 20_000
    batch_size: int = 32
    mu: int = 3
    threshold: float = 0.95
    unlabelled_weight: float = 1.0
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    ema: float = 0.999
    teacher_weight: float = 1.0
    teacher_share: float = 0.5
    seed: int = 0
    checkpoint_minutes: float = 5.0

    def check(self) -> None:
        """Raise ConfigError naming the first bad setting."""
        if self.minutes is not None and not 0 < self.minutes < math.inf:
            raise ConfigError(f"--finetune-minutes must be > 0, got {self.minutes}")
        for name in ("steps", "batch_size", "mu"):
            if getattr(self, name) < 1:
                raise ConfigError(f"fine-tuning {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"the pseudo-label threshold must be in (0, 1], got {self.threshold}")
        if not (self.lr > 0 and self.unlabelled_weight >= 0 and self.weight_decay >= 0 and 0 <= self.ema < 1
                and self.warmup_steps >= 0 and self.teacher_weight >= 0 and 0 < self.teacher_share <= 1):
            raise ConfigError("fine-tuning needs lr > 0, unlabelled weight >= 0, weight decay >= 0, 0 <= ema < 1, "
                              "warm-up >= 0, teacher weight >= 0, 0 < teacher share <= 1")


def fixmatch_loss(logits_labelled: torch.Tensor, labels: torch.Tensor, logits_weak: torch.Tensor,
                  logits_strong: torch.Tensor, threshold: float, unlabelled_weight: float,
                  teacher_labels: torch.Tensor | None = None, teacher_mask: torch.Tensor | None = None,
                  teacher_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """FixMatch's ``l_s + lambda_u l_u`` (Eq. 2-4 of arXiv 2001.07685; see the module docstring).

    With a teacher (the frozen-embedding seed model's labels of the unlabelled
    images, noisy-student style: Xie et al. 2020, arXiv 1911.04252) the loss
    gains ``lambda_t l_t``, ``l_t = (1 / (mu B)) sum_b m_b H(t_b, p(y | A(u_b)))``
    with ``t_b`` the teacher's label and ``m_b`` 1 where it is among its most confident.

    Args:
        logits_labelled: (B, C) logits of the seeds' weak views.
        labels: (B,) their classes.
        logits_weak: (U, C) logits of the unlabelled images' weak views (detached here).
        logits_strong: (U, C) logits of their strong views.
        threshold: ``tau``.
        unlabelled_weight: ``lambda_u``.
        teacher_labels: (U,) the teacher's classes of the unlabelled images; teacher_mask: (U,) 1 where used.
        teacher_weight: ``lambda_t``.

    Returns:
        (loss, logs) with the two terms and the share of unlabelled images above ``tau``.
    """
    supervised = F.cross_entropy(logits_labelled.float(), labels)
    q = logits_weak.detach().float().softmax(1)
    confidence, pseudo = q.max(1)
    mask = (confidence >= threshold).float()
    per_item = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    unsupervised = (per_item * mask).mean()  # 1 / (mu B) over all unlabelled images, masked ones count as 0
    loss = supervised + unlabelled_weight * unsupervised
    logs = {"supervised": float(supervised.detach()), "unsupervised": float(unsupervised.detach()),
            "mask_rate": float(mask.mean())}
    if teacher_labels is not None and teacher_weight > 0:
        taught = (F.cross_entropy(logits_strong.float(), teacher_labels, reduction="none") * teacher_mask.float()).mean()
        loss = loss + teacher_weight * taught
        logs["teacher"] = float(taught.detach())
    return loss, {"loss": float(loss.detach()), **logs}


class FixMatch(nn.Module):
    """The backbone, a linear classifier on its features, and their weight average (the engine's trainable)."""

    def __init__(self, backbone: nn.Module, num_classes: int, config: FineTuneConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(int(backbone.embed_dim), num_classes)
        self.config = config
        self.average = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "classifier": copy.deepcopy(self.classifier)})
        self.average.requires_grad_(False)
        self.sums: dict[str, float] = {}  # of this epoch's logs, read by _EpochLogs (not checkpointed)
        self.steps_logged = 0

    def forward(self, labelled: torch.Tensor, labels: torch.Tensor, weak: torch.Tensor, strong: torch.Tensor,
                teacher_labels: torch.Tensor | None = None, teacher_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.classifier(self.backbone(torch.cat([labelled, weak, strong])))
        b, u = len(labelled), len(weak)
        loss, logs = fixmatch_loss(logits[:b], labels, logits[b:b + u], logits[b + u:], self.config.threshold,
                                   self.config.unlabelled_weight, teacher_labels, teacher_mask,
                                   self.config.teacher_weight)
        for key in ("supervised", "unsupervised", "mask_rate", "teacher"):  # epoch means for the log (_EpochLogs)
            if key in logs:
                self.sums[key] = self.sums.get(key, 0.0) + logs[key]
        self.steps_logged += 1
        return loss, logs

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Move the weight average towards the weights (BatchNorm statistics are copied)."""
        d = min(self.config.ema, (1 + step) / (10 + step))
        for name in ("backbone", "classifier"):
            live, avg = getattr(self, name), self.average[name]
            for p_avg, p in zip(avg.parameters(), live.parameters()):
                p_avg.lerp_(p.detach(), 1 - d)
            for b_avg, b in zip(avg.buffers(), live.buffers()):
                b_avg.copy_(b)

    @property
    def embed_dim(self) -> int:
        return self.classifier.out_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The weight average's logits (B, C): what :func:`contrastkit.embedding.compute_embeddings` collects."""
        return self.average["classifier"](self.average["backbone"](x))


class _EpochLogs:
    """The engine's epoch-end monitor: the epoch means of the two loss terms and of the pseudo-label share."""

    def __init__(self, model: FixMatch) -> None:
        self.model = model

    def measure(self) -> dict[str, Any]:
        m = self.model
        means = {key: v / max(m.steps_logged, 1) for key, v in m.sums.items()}
        m.sums, m.steps_logged = {}, 0
        return means

    def summary(self, record: dict[str, Any]) -> str:
        if "mask_rate" not in record:
            return ""
        teacher = f"  teacher loss {record['teacher']:.3f}" if "teacher" in record else ""
        return (f"seed loss {record['supervised']:.3f}  unlabelled loss {record['unsupervised']:.3f}{teacher}  "
                f"pseudo-labelled {record['mask_rate']:.0%}")


def weak_recipe(strong: AugmentConfig) -> AugmentConfig:
    """FixMatch's alpha: the strong recipe's flips with a mild crop and no intensity, colour or erasing change."""
    return dataclasses.replace(strong, crop_scale=WEAK_CROP_SCALE, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                               solarize_p=0.0, erase_p=0.0)


class _SeedEpoch:
    """One epoch of (seed views, labels, weak views, strong views) from ``start`` on."""

    def __init__(self, source: "SeedBatches", epoch: int, start: int, gen: torch.Generator) -> None:
        self.source, self.epoch, self.start, self.gen = source, epoch, start, gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        s = self.source
        g = torch.Generator().manual_seed(epoch_seed(s.seed, self.epoch, STREAM_SEEDS))
        picks = torch.randint(len(s.seed_labels), (s.steps_per_epoch, s.batch_size), generator=g)  # with replacement
        order = s.unlabelled[torch.randperm(len(s.unlabelled),
                                            generator=torch.Generator().manual_seed(
                                                epoch_seed(s.seed, self.epoch, STREAM_UNLABELLED)))]
        u = s.batch_size * s.mu
        dev = s.runtime.device
        for step in range(self.start, s.steps_per_epoch):
            seeds = s.seed_images[picks[step]].to(dev)
            rows = order[step * u:(step + 1) * u].sort().values
            unlabelled = s.images.get_batch(rows).to(dev)
            batch = (s.runtime.prepare(s.weak(seeds, self.gen)), s.seed_labels[picks[step]].to(dev),
                     s.runtime.prepare(s.weak(unlabelled, self.gen)), s.runtime.prepare(s.strong(unlabelled, self.gen)))
            if s.teacher is not None:
                batch += (s.teacher[0][rows].to(dev), s.teacher[1][rows].to(dev))
            yield batch

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def close(self) -> None:
        pass


class SeedBatches:
    """The engine's batch source: a pure function of (seed, epoch, step); the view generator is its state."""

    state_key = "aug_rng"

    def __init__(self, images: Any, unlabelled: torch.Tensor, seed_images: torch.Tensor, seed_labels: torch.Tensor,
                 weak: ViewAugment, strong: ViewAugment, config: FineTuneConfig, runtime: Any,
                 teacher: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.images, self.unlabelled, self.teacher = images, unlabelled, teacher  # teacher: (labels, mask) per image
        self.seed_images, self.seed_labels = seed_images, seed_labels
        self.weak, self.strong, self.runtime = weak, strong, runtime
        self.seed, self.batch_size, self.mu = config.seed, config.batch_size, config.mu
        self.items_per_step = config.batch_size * (1 + config.mu)
        self.steps_per_epoch = len(unlabelled) // (config.batch_size * config.mu)

    def epoch(self, epoch: int, start_step: int, state: torch.Tensor | None) -> _SeedEpoch:
        gen = torch.Generator(device=self.runtime.device)
        if state is not None:
            gen.set_state(state)
        else:
            gen.manual_seed(epoch_seed(self.seed, epoch, STREAM_VIEWS))
        return _SeedEpoch(self, epoch, start_step, gen)


def _lr(config: FineTuneConfig) -> Callable[[int], float]:
    return lambda step: config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))


@dataclass
class FineTuneResult:
    """Every item's class probabilities from the fine-tuned network, and how the training went."""

    proba: np.ndarray  # (N, C) float32, rows as embeddings.npy
    history: list[dict[str, Any]]
    steps: int
    stopped_on_time: bool
    elapsed_s: float


def finetune_from_seeds(run_dir: str | Path, sources: list[str], seed_idx: np.ndarray, seed_labels: np.ndarray,
                        num_classes: int, config: FineTuneConfig = FineTuneConfig(), *, resume: bool = False,
                        progress: bool = True, teacher: np.ndarray | None = None) -> FineTuneResult:
    """Fine-tune the run's encoder on the seeds with FixMatch, then predict every item.

    Args:
        run_dir: the run (its ``best.pt`` starts the backbone; ``RUN/finetune/`` is written).
        sources: the sources of embeddings.npy's rows (train rows then test rows): they must be the run's data.
        seed_idx: (S,) rows of the seeds; seed_labels: (S,) their classes in [0, num_classes).
        config: FixMatch's settings.
        resume: continue ``RUN/finetune/`` from its last checkpoint (the seeds and settings must be the same).
        progress: progress bar.
        teacher: (N, C) class probabilities of every row from a frozen-embedding seed model; used when
            ``config.teacher_weight`` > 0 (its most confident ``teacher_share`` of the training rows).

    Raises:
        DataError: the embeddings are not of the run's data, or the run has no training images.
        ConfigError: a bad setting; an existing ``RUN/finetune/`` without ``resume``; a resume with other seeds.
    """
    from contrastkit import engine
    from contrastkit.checkpoint import load_method
    from contrastkit.data import load_dataset
    from contrastkit.embedding import compute_embeddings
    from contrastkit.optim import param_groups
    from contrastkit.runlock import run_lock
    from contrastkit.runtime import Runtime
    from contrastkit.train import augment_recipe

    config.check()
    run_dir = Path(run_dir)
    method, tconfig, info = load_method(run_dir)
    data = load_dataset(tconfig.data, image_size=tconfig.image_size, skip_bad=tconfig.skip_bad)
    if list(sources) != list(data.train.sources) + list(data.test.sources):
        raise DataError(f"{run_dir / 'embeddings.npy'}: its rows are not the run's own images ({data.train.name}); "
                        f"fine-tuning trains on the run's data: run `contrastkit embed {run_dir}` first")
    n_train = len(data.train)
    if n_train < config.batch_size * config.mu:
        raise ConfigError(f"{data.train.name}: {n_train} training images, fewer than one step's "
                          f"{config.batch_size * config.mu} unlabelled images")
    seed_idx, seed_labels = np.asarray(seed_idx, np.int64), np.asarray(seed_labels, np.int64)
    runtime = Runtime.create(tconfig.device, tconfig.precision, tconfig.channels_last)
    strong_cfg = augment_recipe(info, tconfig)
    weak = ViewAugment(weak_recipe(strong_cfg), info["mean"], info["std"])
    strong = ViewAugment(strong_cfg, info["mean"], info["std"])

    def image_rows(rows: np.ndarray) -> torch.Tensor:  # embedding rows -> uint8 images
        parts = [data.train.get_batch(torch.from_numpy(rows[rows < n_train]))] if (rows < n_train).any() else []
        if (rows >= n_train).any():
            parts.append(data.test.get_batch(torch.from_numpy(rows[rows >= n_train] - n_train)))
        order = np.argsort(np.concatenate([np.flatnonzero(rows < n_train), np.flatnonzero(rows >= n_train)]))
        return torch.cat(parts)[torch.from_numpy(order)]

    seed_images = image_rows(seed_idx)  # (S, C, H, W) uint8, in the seeds' order
    model = FixMatch(method.backbone, num_classes, config)
    engine.place(model, runtime)
    groups = param_groups(model, config.weight_decay)
    for g in groups:
        g.pop("lars")
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    taught = None
    if config.teacher_weight > 0:
        if teacher is None or teacher.shape != (len(sources), num_classes):
            raise ConfigError(f"a teacher weight needs the teacher's ({len(sources)}, {num_classes}) probabilities")
        conf = teacher[:n_train].max(1)
        cut = np.quantile(conf, 1 - config.teacher_share)
        taught = (torch.from_numpy(teacher[:n_train].argmax(1).astype(np.int64)), torch.from_numpy(conf >= cut))
    source = SeedBatches(data.train, torch.arange(n_train), seed_images, torch.from_numpy(seed_labels), weak, strong,
                         config, runtime, taught)
    epochs = max(1, math.ceil(config.steps / source.steps_per_epoch))
    plan = Plan(epochs=epochs, lr=_lr(config), checkpoint_minutes=config.checkpoint_minutes, minutes=config.minutes,
                budget_option="--finetune-minutes")
    out_dir = run_dir / FINETUNE_DIR
    settings = {"config": dataclasses.asdict(config), "seeds": seed_idx.tolist(), "seed_labels": seed_labels.tolist(),
                "num_classes": int(num_classes)}

    def check_resume(state: dict[str, Any]) -> None:
        saved = state.get("finetune", {})
        same = {k: v for k, v in saved.items() if k != "config"} == {k: v for k, v in settings.items() if k != "config"}
        resumable = ("minutes", "checkpoint_minutes")
        if not same or {k: v for k, v in saved.get("config", {}).items() if k not in resumable} != \
                {k: v for k, v in settings["config"].items() if k not in resumable}:
            raise ConfigError(f"{out_dir}: fine-tuned with other seeds or settings; resume with the same ones, or "
                              f"remove {out_dir} to start again")

    budget = f", at most {config.minutes:g} minutes" if config.minutes is not None else ""
    banner = (f"fine-tuning {tconfig.backbone} with FixMatch on {len(seed_idx)} seed labels and {n_train} unlabelled "
              f"images ({data.train.name}), {runtime.describe()}, at most {config.steps} steps of "
              f"{config.batch_size} + {config.batch_size * config.mu} images{budget}")
    with run_lock(out_dir):
        result = engine.run(model, source, optimizer, plan, runtime, out_dir, resume=resume, progress=progress,
                            meta={"finetune": settings, "data": info}, schema=SCHEMA,
                            monitor=_EpochLogs(model), check_resume=check_resume, banner=banner)
        logits = torch.cat([compute_embeddings(model, part, info, runtime) for part in (data.train, data.test)
                            if len(part)])
    proba = logits.float().softmax(1).numpy()
    steps = sum(int(r.get("steps", source.steps_per_epoch)) for r in result.history)
    return FineTuneResult(proba=proba, history=result.history, steps=steps, stopped_on_time=result.stopped_on_time,
                          elapsed_s=result.elapsed_s)


def label_by_finetuning(run_dir: str | Path, sources: list[str], seed_idx: np.ndarray, seed_labels: np.ndarray,
                        num_classes: int, config: FineTuneConfig, *, resume: bool = False, progress: bool = True,
                        teacher: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """:func:`finetune_from_seeds` as ``label --seed-labels`` uses it: a SeedResult (seeds keep their labels)
    and what label_metrics.json records of the training."""
    from contrastkit.seeds import SeedResult

    out = finetune_from_seeds(run_dir, sources, seed_idx, seed_labels, num_classes, config, resume=resume,
                              progress=progress, teacher=teacher)
    labels, confidence = out.proba.argmax(1).astype(np.int64), out.proba.max(1).astype(np.float64)
    labels[seed_idx], confidence[seed_idx] = seed_labels, 1.0
    result = SeedResult(labels=labels, confidence=np.clip(confidence, 0.0, 1.0), proba=out.proba, model="finetune",
                        cv_accuracy={}, folds=0, num_classes=num_classes)
    last = out.history[-1] if out.history else {}
    info = {"method": "FixMatch (Sohn et al. 2020) from the run's encoder", "config": dataclasses.asdict(config),
            "steps": out.steps, "seconds": out.elapsed_s, "stopped_on_time": out.stopped_on_time,
            "last_epoch": {k: last.get(k) for k in ("epoch", "loss", "supervised", "unsupervised", "mask_rate", "teacher")},
            "folder": str(Path(run_dir) / FINETUNE_DIR)}
    return result, info
