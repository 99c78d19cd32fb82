"""contrastkit audit: planted duplicates, leaks, outliers and mislabelled items are found, and only those."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.audit import (
    AUDIT_FILE,
    AUDIT_SUMMARY_FILE,
    COLUMNS,
    audit,
    exact_groups,
    neighbour_graph,
    neighbour_probs,
    outliers,
)
from contrastkit.cli import main
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.embedding import write_embeddings
from contrastkit.errors import DataError

N_TRAIN, N_TEST, CLASSES, DIM = 60, 21, 3, 16
# planted problems (row indices; test rows come after the 60 train rows)
LEAK_TRAIN, LEAK_TEST = 2, N_TRAIN + 5  # the same picture in both splits
EXACT_A, EXACT_B = 20, 23  # the same picture twice in train (embeddings differ a little, as bf16 batches may)
NEAR_A, NEAR_B = 30, 33  # different pictures, nearly the same embedding
OUTLIER = 45
MISLABELLED = 50  # lies in cluster 50 % 3 = 2, labelled 0


def _features(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three orthogonal clusters in 16-d (row i in cluster i % 3), with the planted rows."""
    n = N_TRAIN + N_TEST
    cluster = np.arange(n) % CLASSES
    x = np.eye(DIM)[cluster] + 0.3 * rng.standard_normal((n, DIM))
    x[LEAK_TEST] = x[LEAK_TRAIN] + 1e-4 * rng.standard_normal(DIM)
    x[EXACT_B] = x[EXACT_A] + 1e-4 * rng.standard_normal(DIM)
    x[NEAR_B] = x[NEAR_A] + 1e-3 * rng.standard_normal(DIM)
    x[OUTLIER] = np.eye(DIM)[DIM - 1] * 2.0 + 0.1 * rng.standard_normal(DIM)
    labels = cluster.copy()
    labels[MISLABELLED] = 0
    return x.astype(np.float32), labels


def _write_run(folder: Path, labelled: bool = True, seed: int = 0) -> Path:
    """A run folder without a model: an .npz data set, config.json, embeddings.npy / items.csv / meta.json."""
    rng = np.random.default_rng(seed)
    features, labels = _features(rng)
    images = rng.integers(0, 256, (N_TRAIN + N_TEST, 8, 8), dtype=np.uint8)  # all different
    images[LEAK_TEST] = images[LEAK_TRAIN]
    images[EXACT_B] = images[EXACT_A]
    folder.mkdir(parents=True)
    arrays = {"images": images[:N_TRAIN], "test_images": images[N_TRAIN:]}
    if labelled:
        arrays.update(labels=labels[:N_TRAIN], test_labels=labels[N_TRAIN:],
                      class_names=np.array(["zero", "one", "two"]))
    np.savez(folder / "data.npz", **arrays)
    TrainConfig(data=str(folder / "data.npz")).save(folder / "config.json")
    data = load_dataset(str(folder / "data.npz"))
    assert len(data.train) == N_TRAIN and len(data.test) == N_TEST
    write_embeddings(folder, data, torch.from_numpy(features[:N_TRAIN]), torch.from_numpy(features[N_TRAIN:]), {"run": "synthetic"})
    return folder


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / AUDIT_FILE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _with(rows: list[dict[str, str]], problem: str) -> set[int]:
    return {int(r["item"]) for r in rows if problem in r["problems"].split()}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "run")


def test_audit_command_finds_exactly_the_planted_problems(run, capsys, one_faiss_thread):
    assert main(["audit", str(run)]) == 0
    out = capsys.readouterr().out
    rows = _rows(run)
    assert [list(r) for r in rows[:1]] == [list(COLUMNS)] and len(rows) == N_TRAIN + N_TEST
    assert _with(rows, "exact_duplicate") == {LEAK_TRAIN, LEAK_TEST, EXACT_A, EXACT_B}
    assert _with(rows, "leak") == {LEAK_TRAIN, LEAK_TEST}
    assert _with(rows, "near_duplicate") == {NEAR_A, NEAR_B}  # exact ones are not listed twice
    assert _with(rows, "outlier") == {OUTLIER}
    assert _with(rows, "label_issue") == {MISLABELLED}
    by_item = {int(r["item"]): r for r in rows}
    assert by_item[LEAK_TEST]["duplicate_of"] == str(LEAK_TRAIN) and by_item[LEAK_TEST]["split"] == "test"
    assert by_item[EXACT_A]["duplicate_of"] == str(EXACT_B)
    assert by_item[MISLABELLED]["label"] == "zero" and by_item[MISLABELLED]["suggested_label"] == "two"
    assert float(by_item[MISLABELLED]["label_quality"]) < 0.1 < float(by_item[0]["label_quality"])
    summary = json.loads((run / AUDIT_SUMMARY_FILE).read_text())
    assert summary["exact_duplicates"] == {"items": 4, "groups": 2, "extra_copies": 2}
    assert summary["leaks"]["test_items_with_a_train_duplicate"] == 1
    assert summary["exact_duplicates_by"].startswith("decoded pixels")
    assert "train/test leaks: 2 items" in out and "1 test items" in out
    assert f"  {LEAK_TEST} (test) ~ {LEAK_TRAIN} (train)" in out
    assert f"  {MISLABELLED} (train): zero -> two" in out
    assert f"wrote {run / AUDIT_FILE}" in out


def test_audit_without_labels_or_images(tmp_path, capsys, one_faiss_thread):
    run = _write_run(tmp_path / "run", labelled=False)
    (run / "config.json").unlink()  # images unknown: exact duplicates by identical embeddings
    assert main(["audit", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "label_issues" not in summary and summary["exact_duplicates"]["items"] == 0
    assert "config.json" in summary["images_note"]
    rows = _rows(run)
    # the pixel twins are still near duplicates by their embeddings, and the leak is still found
    assert _with(rows, "leak") == {LEAK_TRAIN, LEAK_TEST}
    assert _with(rows, "near_duplicate") == {LEAK_TRAIN, LEAK_TEST, EXACT_A, EXACT_B, NEAR_A, NEAR_B}
    assert all(r["label"] == "" and r["label_quality"] == "" for r in rows)
    assert main(["audit", str(run)]) == 0
    assert "label issues:     not checked" in capsys.readouterr().out


def test_audit_uses_a_matching_index_and_refuses_tiny_or_missing_runs(run, tmp_path, capsys, one_faiss_thread):
    assert main(["index", str(run)]) == 0
    assert main(["audit", str(run), "--top", "0"]) == 0
    assert _with(_rows(run), "leak") == {LEAK_TRAIN, LEAK_TEST}
    assert main(["audit", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="at least 2 items"):
        neighbour_graph(np.ones((1, 4), np.float32))


def test_neighbour_graph_leaves_out_the_item_even_among_identical_items():
    x = np.vstack([np.ones((5, 4)), np.eye(4)]).astype(np.float32)  # rows 0-4 identical
    g = neighbour_graph(x, k=2)
    assert g.ids.shape == (9, 2)
    assert all(i not in g.ids[i] for i in range(9))
    assert set(g.ids[4].tolist()) <= {0, 1, 2, 3} and np.allclose(g.scores[:5], 1.0)


def test_exact_groups_and_outlier_rule():
    assert exact_groups([b"a", b"b", b"a", b"c", b"a"]).tolist() == [0, -1, 0, -1, 0]
    from contrastkit.audit import Graph

    scores = np.full((20, 3), 0.9, np.float32)
    scores[7] = 0.1  # mean distance 0.9, far above Q3 + 1.7 IQR (IQR 0 here)
    mask, mean, cutoff = outliers(Graph(ids=np.zeros((20, 3), np.int64), scores=scores))
    assert np.flatnonzero(mask).tolist() == [7] and mean[7] == pytest.approx(0.9) and cutoff == pytest.approx(0.1)


def test_neighbour_vote_is_out_of_sample_and_weighted():
    from contrastkit.audit import Graph

    g = Graph(ids=np.array([[1, 2], [0, 2], [0, 1]]), scores=np.array([[0.9, 0.5], [0.9, 0.5], [0.5, 0.5]], np.float32))
    p = neighbour_probs(g, np.array([0, 1, -1]), 2)
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1)
    assert p[0].argmax() == 1 and p[1].argmax() == 0  # each item's own label is not in its vote
    assert p[2][0] == pytest.approx(p[2][1])  # equal weights: a tie


def test_audit_on_arrays_checks_lengths():
    with pytest.raises(DataError, match="other lengths"):
        audit(np.ones((3, 2), np.float32), ["train"] * 2)
