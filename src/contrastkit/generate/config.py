"""GeneratorConfig: every default of ``contrastkit train-generator``, with its unit and advice.

Saved as ``RUN/generator/config.json`` and inside every generator
checkpoint; ``contrastkit train-generator`` builds one option per field from
the help texts here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastkit.atomic import atomic_write_text
from contrastkit.config_dict import dataclass_from_dict
from contrastkit.errors import ConfigError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
PRECISION_NAMES = ("auto", "bf16", "fp16", "fp32")
RESUMABLE_FIELDS = ("minutes", "device", "checkpoint_minutes")  # how a run executes, not what it learns


def _field(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class GeneratorConfig:
    """The two models of RCG at small scale and how long each trains.

    The representation generator's defaults take a few minutes for 10 000
    images on 2 CPU cores, the pixel generator's about 15 (measured on busy
    cores); ``minutes`` caps both.
    """

    # --- budget ---
    minutes: float | None = _field(None, "wall-clock budget of both models together, in minutes; rep-share of it goes to the representation generator, the rest to the pixel generator; each stops after its first step past its share (resumable: --resume with a larger --minutes trains on); omitted = train the full epochs")
    rep_share: float = _field(0.2, "share of --minutes given to the representation generator, in (0, 1); the MLP is cheap, the U-Net takes the rest")
    # --- representation generator (an MLP flow-matching model over the run's standardised embeddings) ---
    rep_epochs: int = _field(100, "epochs over the training embeddings (a 10 000-row epoch at batch 256 is 39 steps)")
    rep_batch_size: int = _field(256, "embeddings per step")
    rep_hidden: int = _field(512, "width of the MLP's residual blocks")
    rep_blocks: int = _field(4, "residual blocks of the MLP (RCG: 12 of 1536 at ImageNet scale)")
    rep_lr: float = _field(1e-3, "AdamW peak learning rate of the representation generator (linear warm-up over the first 5%% of steps, then cosine)")
    # --- pixel generator (a conditional U-Net trained with flow matching) ---
    epochs: int = _field(10, "epochs of the pixel generator over the training images (the expensive model: a step of 128 28-px images at width 32 took 1.2 s on 2 busy CPU cores, so 10 epochs of 10 000 images are about 15 minutes there; --minutes caps it)")
    batch_size: int = _field(128, "images per step of the pixel generator")
    width: int = _field(32, "channels of the U-Net's first level (levels: width x 1, 2, 2; a step costs about (width / 32)^2 as much)")
    lr: float = _field(2e-4, "AdamW peak learning rate of the pixel generator (warm-up over 5%% of steps, then cosine)")
    p_uncond: float = _field(0.1, "probability that a training image's condition is replaced by the learned null embedding, so classifier-free guidance works; 1 trains an unconditional baseline (the condition is never seen)")
    # --- both ---
    ema: float = _field(0.999, "decay of the exponential moving average of the weights that sampling uses, in [0, 1) (warmed up as min(ema, (1 + step) / (10 + step)))")
    seed: int = _field(0, "seeds the initial weights, the order, the noise and the times of every step")
    device: str = _field("auto", "auto, cpu, cuda or mps")
    precision: str = _field("auto", "auto (bf16 where the CPU or GPU has it, else fp32), bf16, fp16 or fp32")
    checkpoint_minutes: float = _field(5.0, "also checkpoint inside an epoch at this interval, in minutes")

    def __post_init__(self) -> None:
        for name in ("rep_epochs", "rep_batch_size", "rep_hidden", "rep_blocks", "epochs", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("rep_lr", "lr", "checkpoint_minutes"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.minutes is not None and not 0 < self.minutes < float("inf"):
            raise ConfigError(f"--minutes must be > 0 (a wall-clock budget), got {self.minutes}")
        if not 0 < self.rep_share < 1:
            raise ConfigError(f"--rep-share must be in (0, 1), got {self.rep_share}")
        if not 0 <= self.p_uncond <= 1:
            raise ConfigError(f"--p-uncond must be in [0, 1], got {self.p_uncond}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")
        if self.device not in DEVICE_NAMES:
            raise ConfigError(f"--device {self.device!r}: choose from {', '.join(DEVICE_NAMES)}")
        if self.precision not in PRECISION_NAMES:
            raise ConfigError(f"--precision {self.precision!r}: choose from {', '.join(PRECISION_NAMES)}")

    @property
    def conditional(self) -> bool:
        """Whether the pixel generator ever sees its condition (False: the unconditional baseline)."""
        return self.p_uncond < 1

    def budget(self, model: str) -> float | None:
        """Minutes of ``model`` (``rep`` or ``pixel``) under ``minutes``; None without a budget."""
        if self.minutes is None:
            return None
        return self.minutes * (self.rep_share if model == "rep" else 1 - self.rep_share)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        return dataclass_from_dict(cls, d, lambda unknown, known: f"unknown generator options {', '.join(unknown)}")

    @classmethod
    def load(cls, path: Path) -> "GeneratorConfig":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
        if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
            raise ConfigError(f"{path}: not a generator config (expected an object with 'config')")
        try:
            return cls.from_dict(d["config"])
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None


def write_config(path: Path, config: GeneratorConfig, info: dict[str, Any]) -> None:
    """``RUN/generator/config.json``: the options and what they were trained on, atomically."""
    atomic_write_text(path, json.dumps({"config": config.to_dict(), **info}, indent=2) + "\n")
