"""One home for every training default.

:class:`TrainConfig` is a frozen dataclass: the CLI builds its options from
these fields (so ``--help`` shows these defaults), the training loop reads
it, and a copy is saved as ``config.json`` in every run folder and inside
every checkpoint. Each field's comment gives its unit and the advice behind
the default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastkit.config_dict import dataclass_from_dict
from contrastkit.errors import ConfigError
from contrastkit.losses import DISTANCES as DISTANCE_NAMES

METHOD_NAMES = ("simclr", "pairwise", "supcon", "supervised", "barlowtwins", "vicreg", "simsiam", "byol", "moco", "nnclr", "dino")
OPTIMIZER_NAMES = ("adamw", "lars")
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
PRECISION_NAMES = ("auto", "bf16", "fp16", "fp32")
BALANCE_NAMES = ("none", "clusters")


# Fields that say how a run executes, not what it learns: a resumed run may change them.
RESUMABLE_FIELDS = ("device", "checkpoint_minutes", "workers", "compile", "minutes")


def _field(default: Any, help: str) -> Any:
    """A dataclass field whose help text (unit and advice) the CLI shows."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Defaults are the recipe measured best for small images on CPU (see
    BENCHMARKS.md); every field can be set from ``contrastkit train``.
    """

    # --- data ---
    data: str | None = _field(None, "data set: a built-in name (default, fashion-mnist, cifar10, cifar100, digits, ...) or a path to IDX files, CIFAR batches, an image folder or an .npz; omitted = the embedded Fashion-MNIST subset (10k train / 2k test)")
    image_size: int | None = _field(None, "side of the square training views in px; omitted = the images' own size")
    crop_min_scale: float | None = _field(None, "smallest area fraction of the random resized crop, in (0, 1]; omitted = the recipe's default for the image size (0.8 for grayscale, 0.08 for RGB)")
    erase_p: float | None = _field(None, "probability of random erasing in each view (a rectangle of 0.02-0.33 of the view's area set to the mean, torchvision's RandomErasing), in [0, 1]; omitted = the recipe's default: 0.5 for grayscale images, 0 for RGB")
    skip_bad: bool = _field(False, "image folders: leave out image files that cannot be decoded (empty, not an image, corrupt or truncated) and say how many on stderr; off = stop with one error listing them")
    workers: int | None = _field(None, "data-loading worker processes that decode the next batches while the model trains (>= 0; 0 = decode in the training process); omitted = 0 for data held in memory, min(4, CPU cores - 1) but at least 1 for image folders too large for memory, which stream from disk. Under torchrun each process starts its own (auto counts its share of the cores). Does not change the results")
    balance: str = _field("none", "rebalance long-tailed training data without labels: none (each epoch shows every image once) or clusters (each epoch draws as many images, with replacement, with weights inverse to the size of the image's k-means cluster in the current embedding, so every cluster is drawn about equally often: the idea of BCL, arXiv 2205.12693, and SDCLR, arXiv 2106.02990). Costs an embedding of the training images and a k-means every --balance-every epochs; BENCHMARKS.md 'Imbalanced data' has what it measured")
    balance_clusters: int = _field(10, "--balance clusters: k-means clusters K of the embedding (2 <= K <= training images); use at least the number of kinds of image you expect, more splits a large kind into several clusters (it is then drawn more)")
    balance_every: int = _field(2, "--balance clusters: epochs between two refreshes of the clusters (>= 1), the first at the start of training (on the untrained network's features)")

    # --- model ---
    method: str = _field("simclr", "training method: simclr (NT-Xent), pairwise (margin contrastive loss), supcon (needs labels), supervised (baseline, needs labels), barlowtwins (cross-correlation to identity), vicreg (variance-invariance-covariance), simsiam (predictor + stop-gradient), byol (predictor + EMA target), moco (MoCo v2: momentum key encoder + queue of negatives), nnclr (nearest neighbour from a support queue as positive), dino (self-distillation to an EMA teacher with centring, sharpening and multi-crop)")
    backbone: str = _field("small_cnn", "encoder network: small_cnn (fast, for 28-32 px), seed_cnn, resnet18, resnet34, resnet50")
    backbone_width: int | None = _field(None, "small_cnn: channels of its stem (> 0); the embedding has 8 x this many dims and a step costs about (width / 32)^2 as much. Omitted = 32 (256 dims); other backbones refuse it")
    proj_hidden_dim: int = _field(512, "hidden width of the projection MLP (dino: of its head's 3-layer MLP; paper 2048)")
    proj_dim: int = _field(128, "output dimension of the projection MLP (SimCLR: 128); barlowtwins and vicreg gain from wider projections (papers: 8192), try 1024-2048; dino: the L2-normalised bottleneck before the prototypes (paper 256)")
    pred_hidden_dim: int = _field(512, "hidden width of the predictor MLP of byol, simsiam and nnclr (input and output are --proj-dim); BYOL uses 4096 for 256-d projections, SimSiam a bottleneck of 512 for 2048-d")

    # --- loss ---
    temperature: float = _field(0.1, "NT-Xent / SupCon / MoCo / NNCLR temperature tau (> 0); 0.1-0.5 works, lower values need larger batches (MoCo v2: 0.2, NNCLR: 0.1)")
    margin: float = _field(1.0, "margin m (> 0) of the pairwise loss, in units of --distance on L2-normalised projections (d in [0, 2])")
    distance: str = _field("euclidean", "distance of the pairwise loss: euclidean or cosine (1 - cos)")
    barlow_lambda: float | None = _field(None, "barlowtwins: weight (>= 0) of the off-diagonal (redundancy) term; omitted = 1 / --proj-dim (Tsai et al. 2021, arXiv 2104.13712), 0.0078 for 128 dims; the paper's 5e-3 was tuned for 8192 dims")
    vicreg_sim_weight: float = _field(25.0, "vicreg: weight lambda (>= 0) of the invariance (MSE) term; paper 25")
    vicreg_var_weight: float = _field(25.0, "vicreg: weight mu (>= 0) of the variance (hinge on std, gamma 1) term; paper 25, keep it >= --vicreg-sim-weight against collapse")
    vicreg_cov_weight: float = _field(1.0, "vicreg: weight nu (>= 0) of the covariance (decorrelation) term; paper 1")
    momentum: float = _field(0.99, "byol and moco: EMA base tau in [0, 1) of the target / key encoder, per optimiser step (target = tau target + (1 - tau) online); byol ramps it to 1 with a cosine, moco keeps it constant; dino's teacher follows byol's cosine. Papers: 0.996 (BYOL, DINO) and 0.999 (MoCo) for runs of ~100k steps; 0.99 suits runs of a few thousand steps")
    dino_out_dim: int = _field(1024, "dino: prototypes K, the size of the distributions the student matches to the teacher (> 0). Paper 65536 on ImageNet; 1024 keeps the head's last layer (--proj-dim x K weights) and the loss cheap on CPU and is still 100x the classes of Fashion-MNIST / CIFAR-10; try 4096+ for larger, more varied data")
    dino_student_temp: float = _field(0.1, "dino: student softmax temperature tau_s (> 0); paper 0.1")
    dino_teacher_temp: float = _field(0.04, "dino: teacher softmax temperature tau_t (> 0), below --dino-student-temp so the teacher's targets are sharper; paper 0.04 (its default), up to 0.07 for long runs. Too high and the outputs collapse to uniform, too low and to one prototype")
    dino_warmup_teacher_temp: float = _field(0.04, "dino: teacher temperature (> 0) at the start of the linear warm-up to --dino-teacher-temp over --dino-warmup-teacher-temp-epochs; paper 0.04 (warmed up to 0.07 over 30 epochs)")
    dino_warmup_teacher_temp_epochs: float = _field(0.0, "dino: epochs (>= 0) of the teacher-temperature warm-up from --dino-warmup-teacher-temp to --dino-teacher-temp, per optimiser step; 0 = constant --dino-teacher-temp (the paper code's default); paper 30 of 100+ epochs, with --dino-teacher-temp 0.07")
    dino_center_momentum: float = _field(0.9, "dino: EMA rate m in [0, 1) of the centre subtracted from the teacher's logits, per step (c = m c + (1 - m) batch mean); paper 0.9")
    local_views: int | None = _field(None, "multi-crop (dino, simclr): small local crops per image besides the 2 global views: side round(size x 96/224) px (12 px for 28 px images), area fraction 0.05-0.4; dino's student sees them (the teacher only the global views), simclr treats every view of an image as a positive of every other (SupCon's loss with one class per image). 0 = no multi-crop; omitted = 4 for dino, 0 for simclr; other methods ignore it. Each costs about (96/224)^2 = 0.18 of a global view, so 4 make a step about 1.4x as long as with 2 views; the DINO paper uses 6-10")
    queue_size: int = _field(4096, "moco: negative keys in the queue; nnclr: projections in the support set (> 0). Papers use 65536 (MoCo) and 98304 (NNCLR) on ImageNet; keep it well below the number of training images, 4096 suits Fashion-MNIST / CIFAR")

    # --- optimisation ---
    epochs: int | None = _field(None, "passes over the training split; omitted = as many as make --steps optimiser steps (at least 1), so a small data set gets more passes and a large one fewer (a fixed 30 epochs was 300 steps on 1 500 images: worse than raw pixels; see BENCHMARKS.md, 'How long a default run trains')")
    steps: int = _field(2000, "optimiser steps of a run whose --epochs is omitted (> 0), rounded up to whole epochs; ignored when --epochs is given. 2000 steps at batch 128 are 5 epochs of Fashion-MNIST's 60 000 images (about 5 minutes on 2 CPU cores) and 286 of 1 000 images")
    minutes: float | None = _field(None, "wall-clock budget of the whole run in minutes (> 0): training stops after the first step past it, with a checkpoint and the log record marked stopped_on_time. The schedule is still planned over --epochs (choose them so the run fits); a resumed run counts the time already spent, and a larger --minutes on --resume trains on. Omitted = no budget")
    batch_size: int = _field(128, "images per step (each gives 2 views); larger batches give NT-Xent more negatives but fewer steps per epoch. Under torchrun this is the global batch, split evenly over the processes (must be divisible by their number), and losses see the whole global batch")
    optimizer: str = _field("adamw", "adamw (robust at small batches) or lars (SimCLR's choice for large batches)")
    lr: float | None = _field(None, "peak learning rate after warm-up; omitted = 2e-3 for adamw, 0.3 x batch/256 for lars (SimCLR)")
    weight_decay: float | None = _field(None, "weight decay, never applied to biases and norms; omitted = 5e-4 for adamw, 1e-6 for lars")
    warmup_epochs: float = _field(2.0, "epochs of linear learning-rate warm-up, followed by cosine decay to 0")

    # --- run ---
    seed: int = _field(0, "seeds initialisation, shuffling and augmentation: same seed, same weights")
    device: str = _field("auto", "auto picks cuda, then mps, then cpu")
    precision: str = _field("auto", "auto = bf16 autocast on CUDA and on CPUs with bf16 instructions (AVX512-BF16/AMX), else fp32")
    channels_last: bool = _field(True, "NHWC memory format (faster convolutions on CPU and GPU)")
    patience: int = _field(0, "stop after this many epochs without a better kNN monitor score on the validation slice; 0 = never")
    monitor_bank: int = _field(10000, "training images (unaugmented, outside the validation slice) in the kNN monitor's bank")
    monitor_queries: int = _field(2000, "size of the validation slice: training images (stratified, at most a tenth of them) held out of the monitor's bank and classified by the kNN monitor each epoch; best.pt and --patience follow it, the test split is never used to choose anything. Methods that train with labels (supcon, supervised) leave the slice out of training")
    knn_k: int = _field(20, "neighbours of the kNN monitor (cosine similarity, majority vote)")
    checkpoint_minutes: float = _field(5.0, "also checkpoint inside an epoch at this interval, in minutes")
    compile: bool = _field(False, "torch.compile the backbone (PyTorch 2 compiler, in place: checkpoints keep their keys). Pays a one-time compilation of tens of seconds (and again when the batch shape changes, e.g. for the kNN monitor), then runs faster steps, mostly on GPUs; on CPUs it needs a C++ compiler. Does not change what is learnt beyond floating-point rounding")
    sync_bn: bool = _field(False, "under torchrun on CUDA GPUs: batch-norm statistics over the global batch (SyncBatchNorm; SimCLR's global BN, arXiv 2002.05709 Sec. 2.3) instead of each process's share; costs a collective per BN layer. PyTorch's SyncBatchNorm does not run on CPUs; a single process ignores it")


    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHOD_NAMES)
        _check_choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        _check_choice("distance", self.distance, DISTANCE_NAMES)
        _check_choice("device", self.device, DEVICE_NAMES)
        _check_choice("precision", self.precision, PRECISION_NAMES)
        if self.epochs is not None:
            _check_positive("epochs", self.epochs)
        _check_positive("steps", self.steps)
        _check_positive("proj_hidden_dim", self.proj_hidden_dim)
        _check_positive("proj_dim", self.proj_dim)
        _check_positive("pred_hidden_dim", self.pred_hidden_dim)
        _check_positive("queue_size", self.queue_size)
        _check_positive("dino_out_dim", self.dino_out_dim)
        _check_positive("dino_student_temp", self.dino_student_temp)
        _check_positive("dino_teacher_temp", self.dino_teacher_temp)
        _check_positive("dino_warmup_teacher_temp", self.dino_warmup_teacher_temp)
        if not 0 <= self.dino_warmup_teacher_temp_epochs < float("inf"):
            raise ConfigError(f"--dino-warmup-teacher-temp-epochs must be a finite number >= 0, got {self.dino_warmup_teacher_temp_epochs}")
        if not 0 <= self.dino_center_momentum < 1:
            raise ConfigError(f"--dino-center-momentum must be in [0, 1) (EMA rate of the centre), got {self.dino_center_momentum}")
        if self.local_views is not None and self.local_views < 0:
            raise ConfigError(f"--local-views must be >= 0 (0 = no multi-crop), got {self.local_views}")
        if self.barlow_lambda is not None and not 0 <= self.barlow_lambda < float("inf"):
            raise ConfigError(f"--barlow-lambda must be a finite number >= 0, got {self.barlow_lambda}")
        for name in ("vicreg_sim_weight", "vicreg_var_weight", "vicreg_cov_weight"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.vicreg_sim_weight + self.vicreg_var_weight + self.vicreg_cov_weight == 0:
            raise ConfigError("--vicreg-sim-weight, --vicreg-var-weight and --vicreg-cov-weight must not all be 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1) (EMA base tau), got {self.momentum}")
        _check_positive("temperature", self.temperature)
        _check_positive("margin", self.margin)
        _check_positive("monitor_bank", self.monitor_bank)
        _check_positive("monitor_queries", self.monitor_queries)
        _check_positive("knn_k", self.knn_k)
        _check_positive("checkpoint_minutes", self.checkpoint_minutes)
        if self.minutes is not None and not 0 < self.minutes < float("inf"):
            raise ConfigError(f"--minutes must be > 0 (a wall-clock budget), got {self.minutes}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2 (contrastive losses need other images), got {self.batch_size}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"--image-size must be at least 8 px, got {self.image_size}")
        if self.crop_min_scale is not None and not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"--crop-min-scale must be in (0, 1], got {self.crop_min_scale}")
        if self.erase_p is not None and not 0 <= self.erase_p <= 1:
            raise ConfigError(f"--erase-p must be in [0, 1], got {self.erase_p}")
        if self.lr is not None:
            _check_positive("lr", self.lr)
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0 (0 = decode in the training process), got {self.workers}")
        _check_choice("balance", self.balance, BALANCE_NAMES)
        if self.balance_clusters < 2:
            raise ConfigError(f"--balance-clusters must be >= 2 (k-means clusters), got {self.balance_clusters}")
        if self.balance_every < 1:
            raise ConfigError(f"--balance-every must be >= 1 (epochs between refreshes), got {self.balance_every}")
        if self.backbone_width is not None:
            _check_positive("backbone_width", self.backbone_width)
            if self.backbone != "small_cnn":
                raise ConfigError(f"--backbone-width applies to small_cnn only, not to --backbone {self.backbone}")
        if self.patience < 0:
            raise ConfigError(f"--patience must be >= 0 (0 = never stop early), got {self.patience}")

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr`` or the optimiser's default."""
        if self.lr is not None:
            return self.lr
        if self.optimizer == "lars":
            return 0.3 * self.batch_size / 256  # SimCLR, arXiv 2002.05709, appendix B.1
        return 2e-3

    @property
    def decay(self) -> float:
        """Weight decay: ``weight_decay`` or the optimiser's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-6 if self.optimizer == "lars" else 5e-4

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, refusing unknown keys with a clear message."""
        return dataclass_from_dict(
            cls, values, lambda unknown, known: f"unknown configuration keys {unknown}; known keys: {known}"
        )

    def save(self, path: Path) -> None:
        """Write as indented JSON (atomically)."""
        from contrastkit.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """Read a config.json written by :meth:`save`."""
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object of configuration values")
        return cls.from_dict(values)


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(valid)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
