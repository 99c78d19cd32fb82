"""The engine's state on disk: reading a checkpoint, the RNG state it keeps, ``log.jsonl``, a rank's batch-source state on resume.

Written by :func:`contrastkit.engine.run` (the checkpoints themselves with
:func:`contrastkit.atomic.atomic_torch_save`); kept apart so that the loop
reads as a loop.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from contrastkit.atomic import atomic_write_text
from contrastkit.errors import CheckpointError


def load_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: plain tensors and values only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one message
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict, got {type(state).__name__})")
    return state


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def write_log(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``log.jsonl``: one JSON object per epoch, written atomically."""
    atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def _resumed_source_state(state: dict[str, Any], key: str, rank: int, world: int) -> torch.Tensor | None:
    """This rank's source state from a mid-epoch checkpoint; None when its world size differs."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        if rank == 0:
            tqdm.write(f"note: the checkpoint was written inside an epoch by {saved_world} process(es) and this run has "
                       f"{world}: the rest of that epoch gets other random draws (augmentations) than an "
                       "uninterrupted run", file=sys.stderr)
        return None
    # A copy: Generator.set_state reads a row of the (world, bytes) tensor wrongly (a crash in torch 2.13).
    return state[f"{key}_ranks"][rank].clone() if world > 1 else state[key]
