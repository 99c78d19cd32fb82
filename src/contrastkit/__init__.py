"""contrastkit: contrastive self-supervised learning on images.

The Python API mirrors the CLI::

    import contrastkit as ck
    data = ck.load_dataset("fashion-mnist")          # or None for the embedded subset
    config = ck.TrainConfig(epochs=10)
    method = ck.build_method(config, in_channels=1)
    ck.fit(method, data, config, "runs/fmnist")       # contrastkit train
    ck.embed("runs/fmnist")                           # contrastkit embed
    print(ck.evaluate("runs/fmnist"))                 # contrastkit evaluate

Names are imported on first use, so ``import contrastkit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_dataset": ("contrastkit.data", "load_dataset"),
    "TrainConfig": ("contrastkit.config", "TrainConfig"),
    "build_method": ("contrastkit.methods", "build_method"),
    "fit": ("contrastkit.train", "fit"),
    "embed": ("contrastkit.embedding", "embed_run"),
    "read_embeddings": ("contrastkit.embedding", "read_embeddings"),
    "evaluate": ("contrastkit.evaluation", "evaluate_run"),
    "load_method": ("contrastkit.checkpoint", "load_method"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'contrastkit' has no attribute {name!r}")
