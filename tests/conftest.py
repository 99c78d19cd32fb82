"""Shared fixtures: small slices of real Fashion-MNIST (from the embedded subset)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from contrastkit.data.dataset import DataSplits


def stratified_slice(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """The first ``per_class`` indices of every class, sorted."""
    idx = [torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()]
    return torch.cat(idx).sort().values


@pytest.fixture(scope="session")
def fmnist_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DataSplits]:
    """Real Fashion-MNIST: 60 train and 20 test images per class, as an .npz and loaded."""
    from contrastkit.data import load_dataset

    full = load_dataset(None)
    tr = stratified_slice(full.train.labels, 60)
    te = stratified_slice(full.test.labels, 20)
    path = tmp_path_factory.mktemp("data") / "fmnist_small.npz"
    np.savez(
        path,
        images=full.train.images[tr].numpy(),
        labels=full.train.labels[tr].numpy(),
        test_images=full.test.images[te].numpy(),
        test_labels=full.test.labels[te].numpy(),
        class_names=np.array(full.train.class_names),
    )
    return path, load_dataset(str(path))


@pytest.fixture(scope="session")
def trained_copy(fmnist_small, tmp_path_factory) -> Callable[..., Path]:
    """Factory: ``make(name, *train_options)`` gives a fresh copy of a run trained with ``contrastkit train``
    on ``fmnist_small``; runs with the same options are trained once per session and copied."""
    from contrastkit.cli import main

    path, _ = fmnist_small
    trained: dict[tuple[str, ...], Path] = {}

    def make(name: str, *options: str) -> Path:
        if options not in trained:
            run = tmp_path_factory.mktemp("trained") / "run"
            assert main(["train", "--data", str(path), "--out", str(run), "--quiet", *options]) == 0
            trained[options] = run
        copy = tmp_path_factory.mktemp("runs") / name
        shutil.copytree(trained[options], copy)
        return copy

    return make


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one thread for the test: tiny indexes and k-means gain nothing from threads, and OpenMP
    spin-waits badly on a busy machine (used by test_index.py and test_label.py)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
