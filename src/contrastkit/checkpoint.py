"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` and a schema check.

A checkpoint is a dict of tensors and plain Python values only (no pickled
classes), so loading one from a stranger cannot run code. Layout::

    schema       "contrastkit.checkpoint/1"
    config       TrainConfig.to_dict()
    data         {"channels", "image_size", "mean", "std", "num_classes", "class_names"}
    model        method.state_dict()
    epoch        epochs completed (an epoch in progress is recorded by `step_in_epoch`)
    ...          training state (optimiser, RNG states, history) in last.pt only;
                 a distributed run also stores ``world_size`` and, inside an
                 epoch, ``aug_rng_ranks`` (every rank's augmentation state)

Only rank 0 of a distributed run writes checkpoints; they hold the plain
method's state dict (no DistributedDataParallel ``module.`` prefix, and
SyncBatchNorm has BatchNorm's keys), so any run loads in one process.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from contrastkit.atomic import atomic_torch_save
from contrastkit.config import TrainConfig
from contrastkit.errors import CheckpointError, ConfigError
from contrastkit.methods import build_method
from contrastkit.methods.base import Method

SCHEMA = "contrastkit.checkpoint/1"
REQUIRED_KEYS = ("schema", "config", "data", "model", "epoch")
DATA_KEYS = ("channels", "image_size", "mean", "std", "num_classes", "class_names")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with the schema tag added) to ``path`` atomically."""
    atomic_torch_save(path, {"schema": SCHEMA, **state})


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely and check its schema.

    Raises:
        CheckpointError: the file is missing, is not a torch checkpoint, would
            need arbitrary code to load (refused by ``weights_only=True``), or
            lacks the keys of the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CheckpointError(f"{path}: refused, it holds objects that are not plain tensors and values ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a contrastkit checkpoint (expected a dict, got {type(state).__name__})")
    if state.get("schema") != SCHEMA:
        raise CheckpointError(f"{path}: not a contrastkit checkpoint (schema {state.get('schema')!r}, expected {SCHEMA!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    missing += [f"data.{k}" for k in DATA_KEYS if k not in state.get("data", {})]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def run_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """Path of a run's ``best.pt`` (falling back to ``last.pt``) or ``last.pt``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    ckpt_dir = run_dir / "checkpoints"
    candidates = ["best.pt", "last.pt"] if which == "best" else ["last.pt"]
    for name in candidates:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    raise CheckpointError(f"{run_dir}: no checkpoint in {ckpt_dir} (looked for {', '.join(candidates)}); was the run trained?")


def load_method(run_dir: Path, which: str = "best") -> tuple[Method, TrainConfig, dict[str, Any]]:
    """Rebuild a run's trained method in eval mode.

    Returns:
        (method on CPU, its TrainConfig, the checkpoint's data dict).
    """
    path = run_checkpoint(run_dir, which)
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad configuration inside the checkpoint ({e})") from None
    data = state["data"]
    method = build_method(config, int(data["channels"]), int(data["num_classes"]))
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {config.method}/{config.backbone} model ({e})") from None
    method.eval()
    return method, config, data
