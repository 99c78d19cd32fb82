"""What the benchmark scripts share: timing a training step, fitting a budget, evaluating frozen features.

Every script prints :func:`environment.describe` first and reports medians
of several runs; the helpers here keep the measurements the same across
scripts (the same step, the same evaluation).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from contrastkit.config import TrainConfig
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.embedding import compute_embeddings
from contrastkit.evaluation import evaluate_features
from contrastkit.methods import build_method
from contrastkit.methods.base import Method
from contrastkit.optim import build_optimizer
from contrastkit.runtime import Runtime
from contrastkit.train import FitResult, ViewMaker, augment_recipe, data_info, fit
from environment import peak_rss_bytes  # bench/ is on sys.path of every script that imports harness

WARMUP_STEPS = 2  # untimed steps first: allocator, oneDNN kernels and bf16 weight caches warm up


def step_seconds(config: TrainConfig, data: DataSplits, steps: int = 8) -> dict[str, list[float]]:
    """Seconds of each of ``steps`` training steps, in total and in its parts.

    A step is what ``fit`` does per batch (without the kNN monitor and
    checkpoints), on the first ``batch_size`` training images: batch read,
    augmentation, forward, backward and optimiser step.

    Returns:
        ``{"total": [...], "views": [...]}``: whole steps, and the batch read
        plus augmentation part of each.
    """
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    info = data_info(data.train, config)
    method = build_method(config, info["channels"], info["num_classes"]).to(runtime.device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    make_views = ViewMaker(method, augment_recipe(info, config), info, runtime)
    optimizer = build_optimizer(method, config)
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(config.batch_size)
    labels = data.train.labels[idx] if data.train.labels is not None else None
    out: dict[str, list[float]] = {"total": [], "views": []}
    for step in range(steps + WARMUP_STEPS):
        t0 = time.perf_counter()
        x = data.train.get_batch(idx)
        views = make_views(x, gen)
        t1 = time.perf_counter()
        with runtime.autocast():
            loss, _ = method(views, labels if method.needs_labels else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(step + 1, 1000)
        if step >= WARMUP_STEPS:
            out["total"].append(time.perf_counter() - t0)
            out["views"].append(t1 - t0)
    return out


def images_per_second(config: TrainConfig, data: DataSplits, steps: int = 8) -> float:
    """Training images/s of one configuration: ``batch_size`` / median step time."""
    return config.batch_size / statistics.median(step_seconds(config, data, steps)["total"])


def epochs_for_budget(minutes: float, rate: float, n: int, overhead: float = 0.0) -> int:
    """Whole epochs of ``n`` images at ``rate`` images/s that fit in ``minutes`` (at least 1).

    Args:
        overhead: seconds spent per epoch besides training steps (the kNN
            monitor, checkpoints), subtracted from the budget.
    """
    per_epoch = n / rate + overhead
    return max(1, int(minutes * 60 / per_epoch))


def run_child(args: Sequence[str]) -> tuple[int, float, float]:
    """Run ``python -m contrastkit ARGS``; (exit status, seconds, peak RSS in MiB of that process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "contrastkit", *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, peak_rss_bytes(usage) / 2**20


def train(config: TrainConfig, data: DataSplits, run_dir: Path) -> tuple[Method, FitResult, float]:
    """Build and fit a method in this process; (method, fit result, wall seconds of fit)."""
    method = build_method(config, data.train.shape[0], data.train.num_classes)
    t0 = time.perf_counter()
    result = fit(method, data, config, run_dir, progress=False)
    return method, result, time.perf_counter() - t0


def frozen_metrics(method: Method, data: DataSplits, config: TrainConfig, linear: bool = True) -> dict[str, Any]:
    """kNN (k=20, weighted k=200) and linear-probe test accuracy of ``method``'s backbone features."""
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    info = data_info(data.train, config)
    method.to(runtime.device)
    train_x = compute_embeddings(method, data.train, info, runtime)
    test_x = compute_embeddings(method, data.test, info, runtime)
    return evaluate_features(train_x, data.train.labels, test_x, data.test.labels,
                             class_names=data.train.class_names, linear=linear)


def random_init_metrics(config: TrainConfig, data: DataSplits, linear: bool = True) -> dict[str, Any]:
    """The same evaluation on the untrained network (the seed's initial weights)."""
    method = build_method(dataclasses.replace(config, method="simclr"), data.train.shape[0])
    return frozen_metrics(method, data, config, linear=linear)


def subset_per_class(ds: ImageDataset, counts: Sequence[int], seed: int = 0) -> ImageDataset:
    """The first ``counts[c]`` images of class c in a seeded shuffle of ``ds``."""
    if ds.labels is None:
        raise ValueError(f"{ds.name}: a per-class subset needs labels")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    keep = []
    for c, k in enumerate(counts):
        members = order[ds.labels[order] == c][:k]
        if len(members) < k:
            raise ValueError(f"{ds.name}: class {c} has {len(members)} images, {k} asked")
        keep.append(members)
    return ds.subset(torch.cat(keep).sort().values)


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals, '-' for None."""
    return "-" if x is None else f"{100 * x:.2f}%"
