"""Shared fixtures: small slices of real Fashion-MNIST (from the embedded subset)."""

from __future__ import annotations

from pathlib import Path

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
