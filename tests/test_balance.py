"""Cluster-balanced sampling (contrastkit.balance, ``train --balance clusters``): weights, order, resume."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit import balance as balance_module
from contrastkit.balance import ClusterBalance, inverse_size_weights, kmeans_clusters
from contrastkit.checkpoint import load_checkpoint
from contrastkit.cli import build_parser
from contrastkit.commands.train import config_from_args
from contrastkit.config import TrainConfig
from contrastkit.data.dataset import DataSplits
from contrastkit.errors import ConfigError
from contrastkit.methods import build_method
from contrastkit.runtime import Runtime
from contrastkit.train import ViewBatches, ViewMaker, augment_recipe, data_info, epoch_order, fit

SIZES = (800, 150, 50)  # a head, a middle and a tail cluster


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1000, 16) features in three well-separated blobs of SIZES items, and the blob of each row."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(16)[: len(SIZES)]
    blob = torch.cat([torch.full((s,), i) for i, s in enumerate(SIZES)])
    return centres[blob] + torch.randn(len(blob), 16, generator=g), blob


def test_weights_are_inverse_to_cluster_size_so_a_rare_cluster_is_drawn_as_often_as_a_big_one():
    features, blob = _blobs()
    clusters = kmeans_clusters(features, 3, seed=0)
    assert all(len(clusters[blob == b].unique()) == 1 for b in range(3))  # k-means finds the three blobs
    w = inverse_size_weights(clusters)
    assert w.dtype == torch.float64 and w.sum() == pytest.approx(1.0)
    for b, size in enumerate(SIZES):
        assert torch.allclose(w[blob == b], torch.full((size,), 1 / (3 * size), dtype=torch.float64))
    n = len(blob)
    order = epoch_order(n, seed=0, epoch=0, weights=w)
    assert order.shape == (n,) and 0 <= int(order.min()) and int(order.max()) < n
    draws = torch.bincount(blob[order], minlength=3)  # draws per blob in one epoch
    assert all(abs(int(d) - n / 3) < 60 for d in draws), draws  # ~333 each (binomial sd ~15), not 800 / 150 / 50
    unweighted = torch.bincount(blob[epoch_order(n, seed=0, epoch=0)], minlength=3)
    assert unweighted.tolist() == list(SIZES)


def test_order_is_a_pure_function_of_seed_epoch_and_weights():
    w = inverse_size_weights(torch.tensor([0] * 30 + [1] * 5 + [2] * 5))
    n = len(w)
    first = epoch_order(n, 3, 1, w)
    assert torch.equal(first, epoch_order(n, 3, 1, w.clone()))
    assert not torch.equal(first, epoch_order(n, 3, 2, w))
    assert not torch.equal(first, epoch_order(n, 4, 1, w))
    assert not torch.equal(first, epoch_order(n, 3, 1, inverse_size_weights(torch.tensor([0] * 5 + [1] * 35))))
    with pytest.raises(ValueError, match="weights for 12 items"):
        epoch_order(12, 0, 0, w)


def test_without_balance_the_order_is_the_permutation_of_before(fmnist_small):
    """Pinned orders of the code before --balance existed, and ViewBatches without a balance walks them."""
    assert epoch_order(12, 3, 1).tolist() == [9, 6, 4, 11, 7, 8, 1, 5, 2, 3, 0, 10]
    assert epoch_order(12, 0, 0).tolist() == [1, 4, 6, 8, 11, 0, 5, 3, 2, 9, 10, 7]
    _, data = fmnist_small
    config = TrainConfig(batch_size=50)
    runtime = Runtime.create("cpu", "fp32", False)
    info = data_info(data.train, config)
    maker = ViewMaker(build_method(config, 1), augment_recipe(info, config), info, runtime)
    source = ViewBatches(data.train, None, maker, 3, 50, 0, runtime)
    assert source.extra_state() == {}
    for e in (0, 1):
        batches = source.epoch(e, 0, None)
        assert torch.equal(batches.batches.order, epoch_order(len(data.train), 3, e))
        batches.close()


def test_cluster_balance_refreshes_every_few_epochs_and_keeps_its_state():
    features, blob = _blobs()
    calls = []

    def embed() -> torch.Tensor:
        calls.append(1)
        return features

    bal = ClusterBalance(len(blob), 3, 2, seed=0, embed=embed)
    assert bal.state() == {}
    w0 = bal.weights(0)
    assert torch.equal(bal.weights(1), w0) and len(calls) == 1  # epoch 1 uses epoch 0's clusters
    bal.weights(2)
    assert len(calls) == 2 and bal.state()["balance_epoch"] == 2
    again = ClusterBalance(len(blob), 3, 2, seed=0, embed=embed)
    again.load_state(bal.state())
    assert torch.equal(again.weights(3), bal.weights(3)) and len(calls) == 2  # restored: not clustered again
    with pytest.raises(ConfigError, match="--balance-clusters 2000 must be between 2 and the 1000"):
        ClusterBalance(len(blob), 2000, 2, seed=0, embed=embed)


def test_balance_options_are_checked_and_reach_the_config():
    with pytest.raises(ConfigError, match="--balance 'yes' is not one of none, clusters"):
        TrainConfig(balance="yes")
    with pytest.raises(ConfigError, match="--balance-clusters must be >= 2"):
        TrainConfig(balance_clusters=1)
    with pytest.raises(ConfigError, match="--balance-every must be >= 1"):
        TrainConfig(balance_every=0)
    assert TrainConfig().balance == "none"
    args = build_parser().parse_args(["train", "--out", "x", "--epochs", "1", "--balance", "clusters",
                                      "--balance-clusters", "7", "--balance-every", "3"])
    config, _ = config_from_args(args)
    assert (config.balance, config.balance_clusters, config.balance_every) == ("clusters", 7, 3)


class _Crash(Exception):
    pass


def _fit_until(data: DataSplits, run: Path, crash_at: int = 0, resume: bool = False) -> Any:
    """fit with --balance clusters, a checkpoint after every step; the ``crash_at``-th forward raises (a kill)."""
    config = TrainConfig(epochs=3, batch_size=32, monitor_bank=100, monitor_queries=20, knn_k=5, warmup_epochs=0.5,
                         checkpoint_minutes=1e-9, balance="clusters", balance_clusters=4, balance_every=2)
    method = build_method(config, 1)
    forward, calls = method.forward, itertools.count(1)

    def crashing(*args: Any) -> Any:
        if next(calls) == crash_at:
            raise _Crash
        return forward(*args)

    method.forward = crashing
    if crash_at:
        with pytest.raises(_Crash):
            fit(method, data, config, run, resume=resume, progress=False)
        return None
    return fit(method, data, config, run, resume=resume, progress=False)


def test_a_run_killed_anywhere_resumes_with_the_same_clusters_and_weights(fmnist_small, tmp_path, monkeypatch):
    """192 images, 6 steps per epoch, clusters refreshed at the start of epochs 1 and 3: killed at the start of
    epoch 3 (before its refresh) and inside it (after), the resumed run re-clusters only when due and ends with
    the clusters, weights and losses of an uninterrupted run."""
    _, data = fmnist_small
    tiny = DataSplits(data.train.subset(torch.arange(0, 576, 3)), data.test)
    kmeans_calls = []
    real_kmeans = balance_module.kmeans_clusters
    monkeypatch.setattr(balance_module, "kmeans_clusters", lambda *a, **k: kmeans_calls.append(1) or real_kmeans(*a, **k))

    reference = _fit_until(tiny, tmp_path / "ref")
    assert len(kmeans_calls) == 2
    run = tmp_path / "killed"
    _fit_until(tiny, run, crash_at=13)  # the first step of epoch 3: the last checkpoint ended epoch 2
    cut = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (cut["epoch"], cut["step_in_epoch"], cut["source_state"]["balance_epoch"]) == (2, 0, 0)
    kmeans_calls.clear()
    _fit_until(tiny, run, crash_at=4, resume=True)  # re-clusters at epoch 3, killed at its step 4
    cut = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (cut["epoch"], cut["step_in_epoch"], cut["source_state"]["balance_epoch"]) == (2, 3, 2)
    assert len(kmeans_calls) == 1
    kmeans_calls.clear()
    resumed = _fit_until(tiny, run, resume=True)
    assert kmeans_calls == []  # inside epoch 3: the checkpoint's clusters, not the mid-epoch network's

    want, got = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert want["source_state"]["balance_epoch"] == got["source_state"]["balance_epoch"] == 2
    assert torch.equal(want["source_state"]["balance_clusters"], got["source_state"]["balance_clusters"])
    assert torch.equal(inverse_size_weights(want["source_state"]["balance_clusters"]),
                       inverse_size_weights(got["source_state"]["balance_clusters"]))
    for k in want["model"]:
        assert torch.equal(want["model"][k], got["model"][k]), k
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
