"""Evaluate frozen features: kNN, linear probe, per-class accuracy, and baselines.

Reads the files of ``contrastkit embed`` (embedding them first if they are
missing), so the same code evaluates embeddings from any source. Beside the
self-supervised figures it reports the raw-pixel kNN baseline (the line that
self-supervision must clear) and, on request, a supervised baseline: the same
backbone trained with labels on the same budget (epochs, batch, schedule).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.atomic import atomic_write_text
from contrastkit.checkpoint import load_method
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.embedding import EMBEDDINGS_FILE, Embeddings, compute_embeddings, embed_run, read_embeddings
from contrastkit.errors import ConfigError, DataError
from contrastkit.knn import knn_predict
from contrastkit.linear_probe import fit_linear_probe
from contrastkit.methods import build_method
from contrastkit.runlock import run_lock
from contrastkit.runtime import Runtime
from contrastkit.train import fit

METRICS_FILE = "metrics.json"
BASELINE_NAMES = ("supervised",)


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred == labels).float().mean())


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None) -> dict[str, float]:
    """Accuracy of each class present in ``labels``, keyed by class name (or index)."""
    out = {}
    for c in sorted(set(labels.tolist())):
        mask = labels == c
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        out[name] = _accuracy(pred[mask], labels[mask])
    return out


WEIGHTED_K = 200  # neighbours of the weighted vote (Wu et al. 2018; DINO, solo-learn)
WEIGHTED_TEMPERATURES = (0.01, 0.02, 0.05, 0.07, 0.1, 0.2, 0.5)  # candidates of the weighted vote's temperature
TUNING_FRACTION = 0.1  # share of the training features held out to choose that temperature


def tune_knn_temperature(
    train_x: torch.Tensor, train_y: torch.Tensor, k: int = WEIGHTED_K,
    grid: tuple[float, ...] = WEIGHTED_TEMPERATURES, seed: int = 0,
) -> float:
    """The weighted-kNN temperature best on a held-out tenth of the training features (never the test split).

    Cosine similarities live on very different scales in different feature
    spaces (raw pixels are all alike, embeddings spread out), so one fixed
    temperature would favour one of them; each feature set gets its own,
    chosen the same way. Ties go to the earlier (sharper) temperature.
    """
    from contrastkit.data.dataset import held_out_indices

    if len(train_x) < 20 or len(grid) == 1:
        return grid[0] if len(grid) == 1 else 0.07
    fit_idx, val_idx = held_out_indices(len(train_x), train_y, fraction=TUNING_FRACTION, seed=seed)
    c = int(train_y.max()) + 1
    fit_idx, val_idx = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
    scores = [_accuracy(knn_predict(train_x[fit_idx], train_y[fit_idx], train_x[val_idx], k=k, temperature=t,
                                    num_classes=c), train_y[val_idx]) for t in grid]
    return grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]


def evaluate_features(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    class_names: list[str] | None = None,
    linear: bool = True,
) -> dict[str, Any]:
    """kNN (k=20 vote, weighted k=200) and linear-probe accuracy of frozen features.

    Every choice (the weighted vote's temperature, the probe's penalty) is
    made on a held-out tenth of the training features; the test split only
    reports.

    Args:
        train_x, train_y: (N, D) features and (N,) labels of the training split.
        test_x, test_y: (M, D) features and (M,) labels of the test split.
        class_names: names for the per-class table.
        linear: also fit the linear probe.
    """
    num_classes = max(int(train_y.max()), int(test_y.max())) + 1
    temperature = tune_knn_temperature(train_x, train_y)
    knn20 = knn_predict(train_x, train_y, test_x, k=20, num_classes=num_classes)
    knn200 = knn_predict(train_x, train_y, test_x, k=WEIGHTED_K, temperature=temperature, num_classes=num_classes)
    out: dict[str, Any] = {
        "knn_top1_k20": _accuracy(knn20, test_y),
        "knn_top1_k200_weighted": _accuracy(knn200, test_y),
        "knn_k200_temperature": temperature,
        "per_class": {"knn_k20": per_class_accuracy(knn20, test_y, class_names)},
    }
    if linear:
        t0 = time.perf_counter()
        probe = fit_linear_probe(train_x, train_y, num_classes)
        pred = probe.logits(test_x).argmax(1)
        out["linear_probe_top1"] = _accuracy(pred, test_y)
        out["linear_probe_l2"] = probe.l2
        out["linear_probe_seconds"] = time.perf_counter() - t0
        out["per_class"]["linear_probe"] = per_class_accuracy(pred, test_y, class_names)
    return out


RAW_PIXEL_MAX_SIDE = 32  # raw-pixel baselines use at most 32 x 32 px (larger images are downsampled)


def raw_pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> (B, C*H*W) float pixels in [0, 255], downsampled to RAW_PIXEL_MAX_SIDE when larger."""
    from contrastkit.data.formats import resize_images

    if max(x.shape[-2:]) > RAW_PIXEL_MAX_SIDE:
        x = resize_images(x, RAW_PIXEL_MAX_SIDE)
    return x.flatten(1).float()


def raw_pixel_features(ds: ImageDataset, indices: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C*H*W) raw-pixel rows (:func:`raw_pixel_rows`) of the dataset, or of its rows ``indices``."""
    rows = torch.arange(len(ds)) if indices is None else indices
    return torch.cat([raw_pixel_rows(ds.get_batch(rows[start:start + 4096])) for start in range(0, len(rows), 4096)]
                     or [torch.zeros(0, 0)])


def raw_pixel_baselines(data: DataSplits, linear: bool = True) -> dict[str, float]:
    """The lines self-supervision must clear: kNN (k=20, weighted k=200) and a linear probe on raw pixels."""
    out = evaluate_features(
        raw_pixel_features(data.train), data.train.labels, raw_pixel_features(data.test), data.test.labels, linear=linear
    )
    keys = ("knn_top1_k20", "knn_top1_k200_weighted", "knn_k200_temperature", "linear_probe_top1")
    return {f"raw_pixel_{k}": v for k, v in out.items() if k in keys}


def raw_pixel_knn(data: DataSplits, k: int = 20) -> float:
    """kNN accuracy (cosine, majority vote) on raw pixels."""
    pred = knn_predict(raw_pixel_features(data.train), data.train.labels, raw_pixel_features(data.test), k=k,
                       num_classes=data.train.num_classes)
    return _accuracy(pred, data.test.labels)


def _labelled_splits(emb: Embeddings, folder: Path) -> tuple[torch.Tensor, ...]:
    train_x, train_y = emb.split("train")
    test_x, test_y = emb.split("test")
    if train_y is None or test_y is None or (train_y < 0).any() or (test_y < 0).any():
        raise DataError(f"{folder}: evaluation needs a label for every item (items.csv has unlabelled rows)")
    if len(test_x) == 0 or len(train_x) == 0:
        raise DataError(f"{folder}: evaluation needs items in both the train and the test split")
    return torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), torch.from_numpy(test_y)


def evaluate_run(
    run_dir: str | Path,
    *,
    data: DataSplits | None = None,
    baseline: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run folder and write ``metrics.json`` into it.

    Args:
        run_dir: a folder written by ``contrastkit train``.
        data: the data set (default: the one in the run's config); needed for
            embedding, the raw-pixel baseline and the supervised baseline.
        baseline: None, or ``"supervised"`` to also train and evaluate the
            supervised baseline on the same budget.
        progress: show progress bars.
    """
    run_dir = Path(run_dir)
    if baseline is not None and baseline not in BASELINE_NAMES:
        raise ConfigError(f"--baseline {baseline!r} is not one of {', '.join(BASELINE_NAMES)}")
    config = run_config(run_dir)
    with run_lock(run_dir):  # one command at a time writes the folder (contrastkit.runlock)
        return _evaluate_locked(run_dir, config, data, baseline, progress)


def _evaluate_locked(
    run_dir: Path, config: TrainConfig, data: DataSplits | None, baseline: str | None, progress: bool
) -> dict[str, Any]:
    """:func:`evaluate_run` once the options are checked and the run folder is locked."""
    if data is None:
        data = load_dataset(config.data, image_size=config.image_size, skip_bad=config.skip_bad)
    if data.train.labels is None or data.test.labels is None:
        raise DataError(f"{data.train.name}: evaluation needs labels, and this data set has none")
    if not (run_dir / EMBEDDINGS_FILE).is_file():
        embed_run(run_dir, data=data)
    emb = read_embeddings(run_dir)
    class_names = emb.meta.get("class_names") or data.train.class_names
    ssl = evaluate_features(*_labelled_splits(emb, run_dir), class_names=class_names)
    metrics: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": emb.meta.get("checkpoint"),
        "data": data.train.name,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "ssl": {k: v for k, v in ssl.items() if k != "per_class"},
        "per_class": ssl["per_class"],
        "class_names": class_names,
        "baselines": raw_pixel_baselines(data),
    }
    if baseline == "supervised":
        metrics["baselines"]["supervised"] = supervised_baseline(run_dir, config, data, progress=progress)
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a run folder was trained with (its config.json); DataError when it is not a run folder."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run folder (no config.json); train one with `contrastkit train --out {run_dir}`")
    return TrainConfig.load(path)


def supervised_baseline(run_dir: Path, config: TrainConfig, data: DataSplits, progress: bool = True) -> dict[str, Any]:
    """Train the same backbone with labels on the same budget; its test accuracy and feature kNN.

    Both sides are read by the same rule: the checkpoint best on the
    validation slice of the training split (which the supervised network
    does not train on), as ``embed`` reads the self-supervised run. The
    baseline run lives in ``run_dir/baseline-supervised`` and is resumed if
    it was interrupted.
    """
    sup_dir = run_dir / "baseline-supervised"
    sup_config = dataclasses.replace(config, method="supervised", patience=0)
    resume = (sup_dir / "checkpoints" / "last.pt").exists()
    method = build_method(sup_config, data.train.shape[0], data.train.num_classes)
    t0 = time.perf_counter()
    fit(method, data, sup_config, sup_dir, resume=resume, progress=progress)
    seconds = time.perf_counter() - t0
    method, _, info = load_method(sup_dir, "best")  # the rule of the self-supervised side: best on the validation slice
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    method.to(runtime.device)
    test_feats = compute_embeddings(method, data.test, info, runtime)
    train_feats = compute_embeddings(method, data.train, info, runtime)
    with torch.no_grad():
        logits = method.classifier(test_feats.to(runtime.device)).float().cpu()
    out = evaluate_features(train_feats, data.train.labels, test_feats, data.test.labels, linear=False)
    return {
        "test_top1": _accuracy(logits.argmax(1), data.test.labels),
        "knn_top1_k20": out["knn_top1_k20"],
        "knn_top1_k200_weighted": out["knn_top1_k200_weighted"],
        "epochs": config.epochs,
        "train_seconds": seconds,
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table of the headline figures."""
    ssl, base = metrics["ssl"], metrics["baselines"]
    sup = base.get("supervised", {})

    def pct(x: float | None) -> str:
        return f"{x:7.2%}" if isinstance(x, float) else "      -"

    rows = [
        ("kNN top-1 (k=20)", ssl.get("knn_top1_k20"), base.get("raw_pixel_knn_top1_k20"), sup.get("knn_top1_k20")),
        ("kNN top-1 (weighted k=200)", ssl.get("knn_top1_k200_weighted"), base.get("raw_pixel_knn_top1_k200_weighted"),
         sup.get("knn_top1_k200_weighted")),
        ("linear probe top-1", ssl.get("linear_probe_top1"), base.get("raw_pixel_linear_probe_top1"), sup.get("test_top1")),
    ]
    lines = [f"{metrics['data']}: {metrics['n_train']} train / {metrics['n_test']} test images",
             f"{'metric':<28}{'self-sup.':>10}{'raw pixels':>12}{'supervised':>12}"]
    lines += [f"{name:<28}{pct(a):>10}{pct(b):>12}{pct(c):>12}" for name, a, b, c in rows]
    if sup:
        lines.append("(supervised: linear-probe row is the trained classifier's test accuracy)")
    return "\n".join(lines)
