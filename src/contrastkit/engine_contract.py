"""What the training engine (:mod:`contrastkit.engine`) is handed and what it hands back.

The protocols of a batch source (its epochs' batches and their resumable
state) and of an epoch-end monitor, the :class:`Plan` (epochs, schedule,
checkpoint interval, budget), the :class:`Selection` of the best epoch and
of early stopping, the :class:`RunResult`, and :func:`epoch_seed`, the
per-epoch seed every batch source draws from. The engine's module docstring
says what a trainable and a batch source must do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch

from contrastkit.errors import ConfigError


class EpochBatches(Protocol):
    """The batches of one epoch, from the step the run reached on."""

    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...  # each: the trainable's positional arguments

    def state(self) -> torch.Tensor: ...  # this rank's hidden state now (a flat tensor), for mid-epoch checkpoints

    def close(self) -> None: ...


class BatchSource(Protocol):
    """Batches as a pure function of (seed, epoch, step), plus a resumable state inside an epoch."""

    steps_per_epoch: int
    items_per_step: int  # global batch size: weights the epoch's mean loss and gives items/s
    state_key: str  # checkpoint key of the state (``<key>_ranks`` for every rank's in a distributed run)

    def epoch(self, epoch: int, start_step: int, state: torch.Tensor | None) -> EpochBatches:
        """Epoch ``epoch``'s batches from ``start_step`` on; ``state`` is a checkpoint's (None: the epoch's start)."""
        ...

    # Optional, like a trainable's: extra_state() -> dict of plain values and tensors kept in every checkpoint
    # ("source_state"), load_extra_state(state) restores it on resume before the first epoch() call.


class Monitor(Protocol):
    """Measured on rank 0 at every epoch end; its values join the epoch's log record."""

    def measure(self) -> dict[str, Any]: ...

    def summary(self, record: dict[str, Any]) -> str: ...  # text for the epoch line (may print warnings itself)


@dataclass(frozen=True)
class Selection:
    """Which epoch is best (``best.pt``) and when to stop early.

    Attributes:
        metric: key of the monitor value; epochs where it is None count as improved.
        mode: ``max`` or ``min``.
        patience: stop after this many epochs without improvement (0 = never).
        label: how messages name the metric.
        fmt: how messages format it.
    """

    metric: str
    mode: str = "max"
    patience: int = 0
    label: str = ""
    fmt: str = "{:.4g}"

    def better(self, value: float, best: float) -> bool:
        return value > best if self.mode == "max" else value < best


@dataclass(frozen=True)
class Plan:
    """How long and how fast: epochs, the learning rate of each step, checkpoint interval, budget."""

    epochs: int
    lr: Callable[[int], float]  # global step -> learning rate (pure: resume depends on it)
    checkpoint_minutes: float = 5.0  # also checkpoint inside an epoch at this interval
    minutes: float | None = None  # wall-clock budget of the whole run (see the module docstring); None = none
    budget_option: str = "--minutes"  # how messages name the budget's command-line option

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}")
        if not self.checkpoint_minutes > 0:
            raise ConfigError(f"--checkpoint-minutes must be > 0, got {self.checkpoint_minutes}")
        if self.minutes is not None and not 0 < self.minutes < float("inf"):
            raise ConfigError(f"{self.budget_option} must be > 0 (a wall-clock budget), got {self.minutes}")


@dataclass
class RunResult:
    """What :func:`contrastkit.engine.run` did."""

    history: list[dict[str, Any]]  # one record per epoch, as in log.jsonl (a last one cut short by the budget too)
    best: float | None  # best value of the selection metric, None without one
    stopped_early: bool
    stopped_on_time: bool  # the wall-clock budget ran out before the last epoch ended
    elapsed_s: float  # training seconds counted against the budget, over every session of the run


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of one epoch's draws of one random stream: a pure function of (seed, epoch, stream), below 2**63.

    Batch sources seed their per-epoch generators from it, so batches stay a
    pure function of (seed, epoch, step); each caller picks its own streams.
    """
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63)
