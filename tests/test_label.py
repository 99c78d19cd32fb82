"""Auto-labelling: clustering metrics, seed models and their choice, confidences, seed CSVs, the CLI end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from contrastkit.cli import main
from contrastkit.errors import ConfigError, DataError
from contrastkit import label as label_module
from contrastkit.label import (
    SEED_MODELS,
    assign_in_chunks,
    centroid_margin,
    cluster_accuracy,
    cluster_metrics,
    label_clusters,
    label_from_seeds,
    label_run,
    least_confident,
    read_seed_labels,
    write_labels_csv,
)


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def blobs(per_class: int = 50, classes: int = 4, dim: int = 8, spread: float = 0.15, seed: int = 0):
    """Gaussian blobs around orthogonal unit vectors: (features, labels)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:classes]
    x = np.concatenate([c + spread * rng.standard_normal((per_class, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(classes), per_class)


def seeds_of(y: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])


# ----------------------------------------------------------------------------- metrics


def test_hungarian_matching_of_permuted_labels_is_perfect():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 1, 1])  # a renaming of the classes
    acc, mapping = cluster_accuracy(y, pred)
    assert acc == 1.0 and mapping == {2: 0, 0: 1, 1: 2}


def test_hungarian_matching_of_a_known_confusion():
    # classes 0,0,0,1,1,1 ; clusters a=5: 0,0,1 and b=7: 1,1,0 -> best matching 5->0, 7->1, 4 of 6 right
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([5, 5, 7, 5, 7, 7])
    acc, mapping = cluster_accuracy(y, pred)
    assert acc == pytest.approx(4 / 6) and mapping == {5: 0, 7: 1}
    # one cluster for everything: only one class can be matched
    assert cluster_accuracy(y, np.zeros(6, dtype=int))[0] == pytest.approx(0.5)
    # more clusters than classes: the unmatched cluster's items count as wrong
    assert cluster_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2]))[0] == pytest.approx(3 / 4)


def test_cluster_metrics_skip_unknown_labels():
    y = np.array([0, 0, 1, 1, -1, -1])
    pred = np.array([1, 1, 0, 0, 0, 1])
    m = cluster_metrics(y, pred)
    assert m["n_labelled"] == 4
    assert m["cluster_accuracy"] == 1.0 and m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert cluster_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))["ari"] < 0.01


# ----------------------------------------------------------------------------- clustering


@pytest.mark.parametrize("algorithm", ["kmeans", "spectral"])
def test_clustering_recovers_blobs(algorithm):
    x, y = blobs()
    r = label_clusters(x, 4, algorithm=algorithm)
    m = cluster_metrics(y, r.clusters)
    assert m["cluster_accuracy"] > 0.95 and m["nmi"] > 0.9 and m["ari"] > 0.9
    assert r.clusters.shape == (len(x),) and set(r.clusters.tolist()) == {0, 1, 2, 3}
    assert ((r.confidence >= 0) & (r.confidence <= 1)).all()


def test_faiss_kmeans_recovers_blobs():
    x, y = blobs(per_class=300, classes=5, dim=16, spread=0.2)
    r = label_clusters(x, 5, backend="faiss")
    m = cluster_metrics(y, r.clusters)
    assert r.backend == "faiss" and m["cluster_accuracy"] > 0.95 and m["nmi"] > 0.9 and m["ari"] > 0.9
    assert r.clusters.shape == (len(x),) and set(r.clusters.tolist()) == set(range(5))
    np.testing.assert_allclose(np.linalg.norm(r.centroids, axis=1), 1.0, atol=1e-5)  # spherical k-means
    assert ((r.confidence >= 0) & (r.confidence <= 1)).all()
    again = label_clusters(x, 5, backend="faiss")  # seeded: the same clusters every time
    np.testing.assert_array_equal(again.clusters, r.clusters)


def test_faiss_kmeans_on_a_sample_and_chunked_assignment(monkeypatch):
    x, y = blobs(per_class=200, classes=4, spread=0.15, seed=3)
    monkeypatch.setattr(label_module, "FAISS_KMEANS_MIN_ITEMS", 500)  # auto: faiss above 500 items
    monkeypatch.setattr(label_module, "FAISS_KMEANS_SAMPLE", 300)  # trains on 300 of the 800 items
    assert label_clusters(x[:500], 4).backend == "sklearn"
    r = label_clusters(x, 4)
    assert r.backend == "faiss" and cluster_metrics(y, r.clusters)["cluster_accuracy"] > 0.95
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest, conf = assign_in_chunks(x, r.centroids, rows=37)  # 37 items at a time = all at once
    whole = centroid_margin(xn.astype(np.float64), r.centroids)
    np.testing.assert_array_equal(nearest, whole[0])
    np.testing.assert_allclose(conf, whole[1], atol=1e-12)
    np.testing.assert_array_equal(r.clusters, nearest)


def test_least_confident_items_lie_between_blobs():
    x, _ = blobs(per_class=40, classes=3, spread=0.1)
    e = np.eye(8, dtype=np.float32)
    between = np.stack([(e[0] + e[1]) / 2, (e[1] + e[2]) / 2, (e[0] + e[2]) / 2])
    x = np.concatenate([x, between])
    r = label_clusters(x, 3)
    assert set(least_confident(r.confidence, 3).tolist()) == {120, 121, 122}
    assert r.confidence[120:].max() < 0.1 < np.median(r.confidence[:120])


def test_too_many_clusters_is_a_config_error_with_the_numbers():
    x, _ = blobs(per_class=3, classes=2)
    for backend in ("sklearn", "faiss"):
        with pytest.raises(ConfigError, match=r"--clusters 7 is larger than the number of items \(6\)"):
            label_clusters(x, 7, backend=backend)
    with pytest.raises(ConfigError, match="algorithm"):
        label_clusters(x, 2, algorithm="dbscan")
    with pytest.raises(ConfigError, match="--kmeans-backend 'gpu' is not one of auto, sklearn, faiss"):
        label_clusters(x, 2, backend="gpu")


def test_scan_through_label_clusters_and_its_errors():
    from contrastkit.scan import ScanConfig

    x, y = blobs(per_class=30, classes=3)
    cfg = ScanConfig(heads=4, epochs=1, min_steps=300, batch_size=45, lr=1e-2, selflabel_epochs=3)
    r = label_clusters(x, 3, algorithm="scan", scan_config=cfg, neighbors=5)
    assert r.algorithm == "scan" and r.scan.config["neighbours"] == 5  # --neighbors overrides SCAN's 20
    assert cluster_metrics(y, r.clusters)["cluster_accuracy"] > 0.95
    np.testing.assert_array_equal(r.confidence, r.scan.proba.max(1))  # the head's max probability
    assert r.centroids.shape == (3, 8)
    with pytest.raises(ConfigError, match=r"--clusters 91 is larger than the number of items \(90\)"):
        label_clusters(x, 91, algorithm="scan")
    with pytest.raises(ConfigError, match="--clusters must be >= 2"):
        label_clusters(x, 1, algorithm="scan")
    with pytest.raises(ConfigError, match="--neighbors must be >= 1"):
        label_clusters(x, 3, algorithm="scan", neighbors=0)


def test_bad_cluster_options_fail_before_reading_or_embedding(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a run folder: a valid call would embed first
    with pytest.raises(ConfigError, match="--clusters must be >= 2, got 1"):
        label_run(tmp_path, clusters=1)
    with pytest.raises(ConfigError, match="--kmeans-backend"):
        label_run(tmp_path, clusters=3, kmeans_backend="cuda")


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("per_class", [2, 5])
@pytest.mark.parametrize("model", ["knn", "propagation", "linear", "poisson"])
def test_each_seed_model_labels_blobs_from_few_seeds(model, per_class):
    x, y = blobs()
    idx = seeds_of(y, per_class)
    r = label_from_seeds(x, idx, y[idx], models=(model,))
    rest = np.setdiff1d(np.arange(len(y)), idx)
    assert r.model == model
    assert (r.labels[rest] == y[rest]).mean() > 0.9
    assert ((r.confidence >= 0) & (r.confidence <= 1)).all() and (r.confidence[idx] == 1).all()
    assert np.allclose(r.proba.sum(1), 1.0)


def test_propagation_on_the_shared_graph_equals_scikit_learn_label_spreading():
    """The graph built once (exact cosine kNN) gives scikit-learn's own kNN-kernel result."""
    import warnings

    from sklearn.semi_supervised import LabelSpreading

    from contrastkit.vectors import normalise
    from contrastkit.label import _predict_propagation, knn_graph

    rng = np.random.default_rng(0)
    x = normalise(rng.normal(size=(150, 6)), dtype=np.float64)
    idx = np.arange(0, 150, 10)
    y = np.arange(len(idx)) % 3
    target = np.full(150, -1)
    target[idx] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LabelSpreading(kernel="knn", n_neighbors=7, max_iter=100).fit(x, target).label_distributions_
    graph = knn_graph(x, 7)
    assert graph.shape == (150, 150) and (graph.sum(1) == 7).all() and (graph.diagonal() == 1).all()
    ours = _predict_propagation(x, idx, y, 3, 7, graph)
    np.testing.assert_allclose(ours, ref / ref.sum(1, keepdims=True), atol=1e-9)
    np.testing.assert_allclose(_predict_propagation(x, idx, y, 3, 7), ours)  # builds the same graph itself


def test_propagation_never_predicts_a_class_without_seeds():
    """Unreached items are uniform over the seeds' classes: argmax cannot fall on an absent class 0."""
    from contrastkit.label import _predict_propagation

    x, y = blobs(per_class=20, classes=3, spread=0.05)  # three far-apart clumps: no path between them
    idx = seeds_of(y, 1)[1:]  # seeds of classes 1 and 2 only
    proba = _predict_propagation(x, idx, y[idx], 3, 5)
    assert (proba[:, 0] == 0).all() and np.allclose(proba.sum(1), 1.0)
    assert (proba[y == 0].argmax(1) != 0).all()
    r = label_from_seeds(x, seeds_of(y, 1), y[seeds_of(y, 1)])  # 1 seed per class: no model can be right in CV
    assert r.model == SEED_MODELS[0] == "poisson" and set(r.cv_accuracy.values()) == {0.0}  # the tie goes first


@pytest.mark.parametrize("model", ["knn", "propagation", "poisson"])
def test_seed_confidence_is_lowest_between_blobs(model):
    x, y = blobs(per_class=40, classes=3, spread=0.1)
    e = np.eye(8, dtype=np.float32)
    x = np.concatenate([x, np.stack([(e[0] + e[1]) / 2, (e[1] + e[2]) / 2, (e[0] + e[2]) / 2])])
    idx = seeds_of(y, 3)
    r = label_from_seeds(x, idx, y[idx], models=(model,))
    assert set(least_confident(r.confidence, 3).tolist()) == {120, 121, 122}
    assert r.confidence[120:].max() < 0.8 < np.median(r.confidence[:120])


def test_one_seed_per_class_labels_everything():
    """Two classes, 1 seed each: every cross-validation fold trains on one seed of one class; no model may fail."""
    x, y = blobs(classes=2)
    idx = seeds_of(y, 1)
    r = label_from_seeds(x, idx, y[idx])
    rest = np.setdiff1d(np.arange(len(y)), idx)
    assert (r.labels[rest] == y[rest]).mean() > 0.9
    assert set(r.cv_accuracy) == {"knn", "propagation", "linear", "poisson"}


def clumps(seed: int = 0):
    """Two classes split by the sign of one coordinate, each made of 8 small, far-apart clumps.

    Across the class boundary clumps are nearer than along it, so neighbours
    (kNN vote, propagation through a graph whose clumps do not touch) cannot
    reach unseeded clumps correctly, while a linear classifier can.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for cls, y_off, x_off in ((0, 0.2, 0.0), (1, -0.2, 0.5)):
        for j in range(8):
            centre = np.array([x_off + j, y_off, 5.0])
            xs.append(centre + 0.03 * rng.standard_normal((30, 3)) * np.array([1, 1, 0]))
            ys += [cls] * 30
    return np.concatenate(xs).astype(np.float32), np.array(ys)


def test_model_choice_is_made_on_held_out_seeds():
    x, y = clumps()
    idx = np.concatenate([np.flatnonzero(y == c)[np.arange(4) * 60] for c in (0, 1)])  # clumps 0, 2, 4, 6
    r = label_from_seeds(x, idx, y[idx])
    assert r.model == "linear" and r.folds == 4
    assert r.cv_accuracy["linear"] >= 0.9
    assert max(r.cv_accuracy["knn"], r.cv_accuracy["propagation"]) <= 0.6
    assert (r.labels == y).mean() > 0.95
    # the held-out accuracy predicts the real one: the losers really are worse on the rest
    knn_only = label_from_seeds(x, idx, y[idx], models=("knn",))
    assert (knn_only.labels == y).mean() < 0.8


def test_seed_arguments_are_checked():
    x, y = blobs(per_class=5, classes=2)
    with pytest.raises(ConfigError, match="at least 2"):
        label_from_seeds(x, np.array([0]), np.array([0]))
    with pytest.raises(ConfigError, match="distinct"):
        label_from_seeds(x, np.array([0, 0]), np.array([0, 1]))
    with pytest.raises(ConfigError, match="not a choice"):
        label_from_seeds(x, np.array([0, 6]), np.array([0, 1]), models=("svm",))


# ----------------------------------------------------------------------------- seed CSV and labels.csv

SOURCES = ["a.png", "b.png", "c.png", "d.png"]
NAMES = ["cat", "dog"]


def write_csv(path, text):
    path.write_text(text)
    return path


def test_seed_csv_by_source_or_index_and_name_or_integer(tmp_path):
    p = write_csv(tmp_path / "s.csv", "item,label\nb.png,dog\n0,cat\n3,1\nb.png,dog\n")
    idx, y, names = read_seed_labels(p, SOURCES, NAMES)
    assert idx.tolist() == [0, 1, 3] and y.tolist() == [0, 1, 1] and names == NAMES
    # without class names, names in the file become the classes (sorted)
    p = write_csv(tmp_path / "n.csv", "label,item\nzebra,2\nant,0\n")
    idx, y, names = read_seed_labels(p, SOURCES, None)
    assert names == ["ant", "zebra"] and idx.tolist() == [0, 2] and y.tolist() == [0, 1]


@pytest.mark.parametrize(
    "text, line, value",
    [
        ("item,label\n0,cat\nx.png,dog\n", 3, "'x.png'"),  # unknown source
        ("item,label\n0,cat\n9,dog\n", 3, "'9'"),  # index out of range
        ("item,label\n0,cat\n1,bird\n", 3, "'bird'"),  # unknown class name
        ("item,label\n0,cat\n1,2\n", 3, "'2'"),  # class index out of range
        ("item,label\n0,cat\n0,dog\n", 3, "item 0"),  # conflicting labels
        ("item,class\n0,cat\n", 1, "label"),  # missing column
    ],
)
def test_bad_seed_csv_names_file_line_and_value(tmp_path, text, line, value):
    p = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as e:
        read_seed_labels(p, SOURCES, NAMES)
    assert f"bad.csv, line {line}" in str(e.value) and value in str(e.value)


def test_labels_csv_columns_and_rows(tmp_path):
    write_labels_csv(tmp_path / "labels.csv", SOURCES, np.array([1, 0, 0, 1]), np.array([0.9, 0.5, 1.0, 0.25]),
                     np.array([1, 0, 0, 1]), NAMES)
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert list(rows[0]) == ["item", "source", "label", "confidence", "cluster"]
    assert [r["label"] for r in rows] == ["dog", "cat", "cat", "dog"]
    assert rows[3] == {"item": "3", "source": "d.png", "label": "dog", "confidence": "0.2500", "cluster": "1"}


# ----------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def tiny_run(trained_copy):
    return trained_copy("label", "--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100")


def test_cli_clusters_writes_labels_metrics_and_montages(tiny_run, capsys):
    assert main(["label", str(tiny_run), "--clusters", "10", "--review", "3"]) == 0
    out = capsys.readouterr().out
    assert "cluster accuracy" in out and "least confident 3 items" in out
    rows = list(csv.DictReader(open(tiny_run / "labels.csv")))
    assert len(rows) == 800 and list(rows[0]) == ["item", "source", "label", "confidence", "cluster"]
    assert {r["cluster"] for r in rows} == {str(k) for k in range(10)}
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    m = json.loads((tiny_run / "label_metrics.json").read_text())
    assert m["mode"] == "clusters" and sum(m["cluster_sizes"]) == 800
    assert 0.2 < m["ground_truth"]["cluster_accuracy"] <= 1.0  # chance is about 0.1
    assert m["ground_truth"]["n_labelled"] == 800 and 0 < m["ground_truth"]["nmi"] <= 1
    pngs = sorted((tiny_run / "montages").glob("cluster_*.png"))
    assert len(pngs) == 10
    sizes = np.bincount([int(r["cluster"]) for r in rows], minlength=10)
    img = Image.open(tiny_run / "montages" / "cluster_0.png")
    n = min(36, sizes[0])
    cols, rows_ = min(6, n), -(-n // 6)
    assert img.size == (cols * 58 + 2, rows_ * 58 + 2)  # 28 px enlarged x2 to 56, 2 px gaps
    assert img.mode == "L"


def test_cli_scan_with_over_clustering(tiny_run, tmp_path, capsys):
    out_dir = tmp_path / "scan"
    assert main(["label", str(tiny_run), "--clusters", "15", "--algorithm", "scan", "--quiet", "--no-montage",
                 "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "15 clusters (scan)" in out and "SCAN: head" in out and "train rows (600)" in out
    m = json.loads((out_dir / "label_metrics.json").read_text())
    assert m["algorithm"] == "scan" and m["neighbors"] == 20 and len(m["scan"]["head_losses"]) == 50
    assert len(m["cluster_sizes"]) == 15 and sum(m["cluster_sizes"]) == 800
    assert set(m["ground_truth_by_split"]) == {"train", "test"} and 0.2 < m["ground_truth"]["cluster_accuracy"] <= 1
    rows = list(csv.DictReader(open(out_dir / "labels.csv")))
    assert all(1 / 15 - 1e-4 <= float(r["confidence"]) <= 1.0 for r in rows)  # a max over 15 probabilities


def test_cli_seed_labels_with_review(tiny_run, fmnist_small, tmp_path, capsys):
    _, data = fmnist_small
    names = data.train.class_names
    labels = data.train.labels.numpy()
    seeds = tmp_path / "seeds.csv"
    lines = ["item,label"]
    for c in range(10):
        for i in np.flatnonzero(labels == c)[:3]:
            lines.append(f"{i},{names[c]}")
    seeds.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    assert main(["label", str(tiny_run), "--seed-labels", str(seeds), "--review", "5", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "chosen:" in out and "least confident 5 items" in out
    review = out.split("least confident 5 items:")[1].splitlines()[2:7]
    assert len(review) == 5 and all("fmnist_small.npz:" in line for line in review)
    rows = list(csv.DictReader(open(out_dir / "labels.csv")))
    assert len(rows) == 800 and {r["label"] for r in rows} <= set(names)
    m = json.loads((out_dir / "label_metrics.json").read_text())
    assert m["mode"] == "seeds" and m["n_seeds"] == 30 and m["model"] in SEED_MODELS
    assert m["held_out_accuracy"] == m["cv_accuracy"][m["model"]]
    assert m["ground_truth"]["n_non_seed_labelled"] == 770
    assert {s: t["n_non_seed_labelled"] for s, t in m["ground_truth_by_split"].items()} == {"train": 570, "test": 200}
    assert 0.3 < m["ground_truth"]["accuracy_non_seed"] <= 1.0
    confidences = sorted(float(r["confidence"]) for r in rows)
    printed = [float(line.split()[1]) for line in review]
    assert printed == pytest.approx(confidences[:5], abs=1e-4)
    assert (out_dir / "montages" / "cluster_0.png").is_file()


def test_cli_label_errors_and_no_montage(tiny_run, tmp_path, capsys):
    bad = write_csv(tmp_path / "bad.csv", "item,label\n0,T-shirt/top\n1,unicorn\n")
    assert main(["label", str(tiny_run), "--seed-labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, line 3" in err and "unicorn" in err
    assert main(["label", str(tiny_run), "--clusters", "900"]) == 2
    assert "--clusters 900 is larger than the number of items (800)" in capsys.readouterr().err
    # embeddings without a run (from another source): labels, no montages, a note
    emb_only = tmp_path / "emb"
    emb_only.mkdir()
    for name in ("embeddings.npy", "items.csv", "meta.json"):
        (emb_only / name).write_bytes((tiny_run / name).read_bytes())
    assert main(["label", str(emb_only), "--clusters", "3"]) == 0
    assert "note: no montages" in capsys.readouterr().out
    assert (emb_only / "labels.csv").is_file() and not (emb_only / "montages").exists()
    assert json.loads((emb_only / "label_metrics.json").read_text())["kmeans_backend"] == "sklearn"  # auto, 800 items
    assert main(["label", str(emb_only), "--clusters", "3", "--kmeans-backend", "faiss"]) == 0
    m = json.loads((emb_only / "label_metrics.json").read_text())
    assert m["kmeans_backend"] == "faiss" and sum(m["cluster_sizes"]) == 800
    assert main(["label", str(tiny_run), "--clusters", "3", "--no-montage", "--out", str(tmp_path / "nm")]) == 0
    assert not (tmp_path / "nm" / "montages").exists()


def test_choose_model_keeps_the_preferred_model_within_one_standard_error():
    """One-standard-error rule: SE = sqrt(p (1 - p) / n) of the best held-out accuracy p over n predictions."""
    from contrastkit.seeds import choose_model

    models = ("poisson", "knn", "propagation", "linear")
    cv = {"poisson": 0.74, "knn": 0.76, "propagation": 0.70, "linear": 0.78}
    se = np.sqrt(0.78 * 0.22 / 100)  # 0.0414: poisson (0.04 behind) stays, propagation (0.08) is out
    assert 0.78 - se < 0.74
    assert choose_model(cv, models, n_held_out=100) == "poisson"
    # 1 000 predictions shrink the error to 0.013: only linear itself is within it
    assert choose_model(cv, models, n_held_out=1000) == "linear"
    # at n = 400 the SE is 0.0207: knn (0.02 behind, earlier than linear) is chosen, poisson (0.04) is not
    assert choose_model(cv, models, n_held_out=400) == "knn"
    assert choose_model(cv, ("linear", "knn"), n_held_out=100) == "linear"  # the order is the preference
    assert choose_model({"poisson": 0.0, "knn": 0.0}, ("poisson", "knn"), n_held_out=10) == "poisson"
