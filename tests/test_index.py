"""Similar-image search: FAISS index against brute-force NumPy, recall of approximate indexes, files, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from contrastkit.cli import main
from contrastkit.errors import ConfigError, DataError
from contrastkit.index import IVFPQ_MIN_ITEMS, auto_kind, build_index
from contrastkit.index_files import INDEX_FILE, INDEX_INFO_FILE, index_run, read_index, write_index
from contrastkit.index_search import recall_at_k, search
from contrastkit.montage import embed_query_images
from contrastkit.similar import search_run
from contrastkit.vectors import exact_search


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def numpy_cosine_topk(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: cosine similarity of every query to every item, sorted descending, in float64."""
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ b.astype(np.float64).T  # (Q, N)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Vectors around random centres: the structure real embeddings have (and IVF relies on)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float32)


def embedding_like(n: int, d: int, clusters: int, seed: int, latent: int = 4) -> np.ndarray:
    """Clusters that vary along a few directions each, plus a little noise: the low intrinsic
    dimension of real embeddings, which product quantization (and every ANN index) relies on."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    bases = rng.normal(size=(clusters, latent, d)) / np.sqrt(latent)
    c = rng.integers(0, clusters, n)
    x = centres[c] + 0.5 * np.einsum("nl,nld->nd", rng.normal(size=(n, latent)), bases[c])
    return (x + 0.05 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("n, d, k", [(500, 16, 10), (37, 8, 5), (3, 4, 10)])
def test_exact_search_equals_numpy_cosine_topk(n, d, k):
    rng = np.random.default_rng(n)
    base = (rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)  # norms vary
    queries = rng.normal(size=(7, d)).astype(np.float32)
    index, info = build_index(base)
    assert info["kind"] == "flat" and info["count"] == n
    scores, ids = search(index, queries, k)
    ref_scores, ref_ids = numpy_cosine_topk(base, queries, min(k, n))
    assert ids.shape == (7, min(k, n))  # k above N gives every item
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind, knob", [("ivf", "nprobe"), ("hnsw", "ef_search")])
def test_approximate_index_recall_is_measured_and_high(kind, knob):
    x = clustered(3000, 32, 40, seed=1)
    index, info = build_index(x, kind, recall_queries=300)
    assert info["kind"] == kind and info["recall_queries"] == 300
    assert info["recall_at_10"] >= 0.95  # the tuning target
    # measured again, on other queries, by hand against NumPy brute force
    rows = np.random.default_rng(7).choice(len(x), 200, replace=False)
    _, found = search(index, x[rows], 10)
    _, exact = numpy_cosine_topk(x, x[rows], 10)
    by_hand = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist())])
    assert by_hand > 0.9
    assert recall_at_k(index, x, 10, rows) == pytest.approx(by_hand, abs=1e-9)
    if kind == "ivf":
        assert 1 <= info["nprobe"] < info["nlist"]  # tuned, not "search every cell"


def test_recall_at_k_sees_a_poor_index():
    x = clustered(3000, 32, 40, seed=2)
    index, info = build_index(x, "ivf", nprobe=1, recall_queries=200)
    assert info["nprobe"] == 1
    assert info["recall_at_10"] == pytest.approx(recall_at_k(index, x, 10, 200), abs=1e-4)
    assert recall_at_k(index, x, 10, 200) < recall_at_k(build_index(x, "flat")[0], x, 10, 200) == 1.0


def test_auto_picks_exact_below_threshold_and_ivf_above():
    x = clustered(2000, 16, 20, seed=3)
    assert build_index(x, exact_max_items=2000)[1]["kind"] == "flat"
    assert build_index(x, exact_max_items=1999, recall_queries=100)[1]["kind"] == "ivf"


@pytest.mark.parametrize("rows", [1, 64, None])
def test_exact_search_in_chunks_equals_numpy(rows):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 12)).astype(np.float32)
    queries = rng.normal(size=(9, 12)).astype(np.float32)
    scores, ids = exact_search(base, queries, 10, rows)
    ref_scores, ref_ids = numpy_cosine_topk(base, queries, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_ivfpq_recall_against_exact_search():
    x = embedding_like(20_000, 64, 50, seed=1)
    index, info = build_index(x, "ivfpq", recall_queries=300)
    assert info["kind"] == "ivfpq" and info["pq_m"] == 8 and info["code_bytes"] == 8 and info["rerank"] == 10
    assert info["recall_at_10"] >= 0.95 and 1 <= info["nprobe"] < info["nlist"]
    # other queries, against NumPy brute force: the re-ranked search keeps recall high
    rows = np.random.default_rng(7).choice(len(x), 100, replace=False)
    _, found = search(index, x[rows], 10, x, info["rerank"])
    _, exact = numpy_cosine_topk(x, x[rows], 10)
    by_hand = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist())])
    assert by_hand > 0.9
    assert recall_at_k(index, x, 10, rows, rerank_factor=info["rerank"]) == pytest.approx(by_hand, abs=1e-9)
    # the 8-byte codes alone rank worse: the exact re-scoring is what earns the recall
    assert recall_at_k(index, x, 10, rows) < by_hand - 0.2
    with pytest.raises(DataError, match="re-ranking needs"):
        search(index, x[:2], 10, None, 10)


def test_auto_switches_to_ivfpq_above_the_memory_threshold():
    assert auto_kind(10**6, 512) == "ivf" and auto_kind(2 * 10**6, 512) == "ivfpq"  # 2 GiB of float32
    assert auto_kind(IVFPQ_MIN_ITEMS - 1, 16, float_max_bytes=1) == "flat"  # too few items to train PQ
    x = embedding_like(IVFPQ_MIN_ITEMS, 16, 20, seed=2)
    size = x.nbytes  # N * D * 4
    assert build_index(x, float_max_bytes=size)[1]["kind"] == "flat"
    index, info = build_index(x, float_max_bytes=size - 1, recall_queries=100)
    assert info["kind"] == "ivfpq" and info["pq_m"] == 2 and info["recall_at_10"] >= 0.9
    with pytest.raises(ConfigError, match=f"at least {IVFPQ_MIN_ITEMS} items"):
        build_index(x[:500], "ivfpq")


def test_ivf_with_an_hnsw_graph_of_the_centroids():
    x = clustered(3000, 32, 40, seed=1)
    index, info = build_index(x, "ivf", quantizer="hnsw", recall_queries=300)
    assert info["quantizer"] == "hnsw" and info["recall_at_10"] >= 0.95 and info["nprobe"] < info["nlist"]


def test_build_from_a_memory_map_reads_it_in_chunks(tmp_path):
    import tracemalloc

    x = clustered(20_000, 32, 40, seed=6)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    tracemalloc.start()  # NumPy's allocations (not FAISS's): what the build copies of the embeddings
    index, _ = build_index(mapped, "flat", chunk=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes / 8  # one chunk of 1000 rows at a time, never the 2.4 MiB array
    q = x[:50] + 0.01
    np.testing.assert_array_equal(search(index, q, 10)[1], search(build_index(x)[0], q, 10)[1])
    ivf, info = build_index(mapped, "ivf", chunk=777, recall_queries=100)
    same, _ = build_index(x, "ivf", recall_queries=100)
    np.testing.assert_array_equal(search(ivf, q, 10)[1], search(same, q, 10)[1])


def write_embedding_folder(folder, x):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", x)
    with open(folder / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "split", "source", "label"])
        for i in range(len(x)):
            w.writerow([i, "train", f"item{i}", ""])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_round_trips_through_files(tmp_path, kind):
    x = clustered(1500, 16, 15, seed=4)
    write_embedding_folder(tmp_path, x)
    info = index_run(tmp_path, kind, recall_queries=100)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    saved = json.loads((tmp_path / INDEX_INFO_FILE).read_text())
    assert saved == info and saved["kind"] == kind and 0.95 <= saved["recall_at_10"] <= 1.0
    index, read_info = read_index(tmp_path, x)
    assert read_info == saved and index.ntotal == 1500
    fresh, _ = build_index(x, kind, recall_queries=100)
    if kind == "ivf":
        import faiss

        assert faiss.extract_index_ivf(index).nprobe == saved["nprobe"]
    if kind == "hnsw":
        assert index.hnsw.efSearch == saved["ef_search"]
    q = x[:20] + 0.01
    s1, i1 = search(index, q, 10)
    s2, i2 = search(fresh, q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_ivfpq_round_trips_through_files_and_search_reranks(tmp_path):
    x = embedding_like(IVFPQ_MIN_ITEMS, 16, 20, seed=4)
    write_embedding_folder(tmp_path, x)
    info = index_run(tmp_path, "ivfpq", recall_queries=100)
    saved = json.loads((tmp_path / INDEX_INFO_FILE).read_text())
    assert saved == info and saved["kind"] == "ivfpq" and saved["rerank"] == 10 and saved["recall_at_10"] >= 0.9
    index, read_info = read_index(tmp_path, x)
    assert read_info == saved and index.ntotal == len(x)
    fresh, _ = build_index(x, "ivfpq", recall_queries=100)
    q = x[:20] + 0.01
    np.testing.assert_array_equal(search(index, q, 10, x, 10)[1], search(fresh, q, 10, x, 10)[1])
    result = search_run(tmp_path, [5, 9000], k=3)  # reads the index written above, re-ranks from embeddings.npy
    assert result["index_note"] == ""
    for query in result["queries"]:
        first = query["results"][0]  # exact re-scoring: the item itself first, with cosine 1
        assert first["index"] == query["query"] and first["score"] == pytest.approx(1.0, abs=1e-5)


def test_read_index_refuses_mismatched_or_corrupt_files(tmp_path):
    x = clustered(200, 8, 4, seed=5)
    index, info = build_index(x)
    write_index(tmp_path, index, {**info, "embeddings_fingerprint": "other"})
    read_index(tmp_path)  # fine without features to compare
    with pytest.raises(DataError, match="other embeddings"):
        read_index(tmp_path, x)
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    with pytest.raises(DataError, match="SHA-256"):
        read_index(tmp_path)


# ----------------------------------------------------------------------------- end to end on a real run

TRAIN_ARGS = ["--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]


@pytest.fixture(scope="module")
def run(trained_copy):
    return trained_copy("search", *TRAIN_ARGS)


def test_index_command_embeds_first_and_writes_files(run, capsys):
    for name in ("embeddings.npy", INDEX_FILE, INDEX_INFO_FILE):  # as right after training, whatever ran before
        (run / name).unlink(missing_ok=True)
    assert main(["index", str(run)]) == 0
    out = capsys.readouterr().out
    assert "flat index of 800 x 256" in out and "recall@10: 1.0" in out
    info = json.loads((run / INDEX_INFO_FILE).read_text())
    assert info["kind"] == "flat" and info["count"] == 800 and (run / INDEX_FILE).is_file()


def test_search_by_item_returns_the_item_first(run, fmnist_small, capsys):
    _, data = fmnist_small
    assert main(["search", str(run), "5", "650", "--top-k", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [q["query"] for q in result["queries"]] == [5, 650]
    for q in result["queries"]:
        first = q["results"][0]
        assert q["type"] == "item" and len(q["results"]) == 4
        assert first["index"] == q["query"] and first["score"] == pytest.approx(1.0, abs=1e-5)
        assert set(first) == {"rank", "index", "score", "split", "source", "label", "class_name"}
        assert [r["rank"] for r in q["results"]] == [1, 2, 3, 4]
        scores = [r["score"] for r in q["results"]]
        assert scores == sorted(scores, reverse=True)
    first = result["queries"][1]["results"][0]
    assert first["split"] == "test" and first["source"].endswith(":test_images:50")
    label = int(data.test.labels[50])
    assert first["label"] == label and first["class_name"] == data.train.class_names[label]


def test_search_by_image_file_finds_that_image(run, fmnist_small, tmp_path, capsys):
    _, data = fmnist_small
    gray = data.train.images[123, 0].numpy()  # (28, 28) uint8
    png, rgb = tmp_path / "query.png", tmp_path / "query_rgb.png"
    Image.fromarray(gray, mode="L").save(png)
    Image.fromarray(np.stack([gray] * 3, -1), mode="RGB").save(rgb)  # RGB is converted to the run's grayscale
    feats = embed_query_images(run, [png, rgb])
    assert feats.shape == (2, 256) and feats.dtype == np.float32
    stored = np.load(run / "embeddings.npy")[123]
    assert np.dot(feats[0], stored) / (np.linalg.norm(feats[0]) * np.linalg.norm(stored)) > 0.999

    assert main(["search", str(run), str(png), str(rgb), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert f"query {png}" in out and "rank" in out and "source" in out
    assert main(["search", str(run), str(png), str(rgb), "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for q in result["queries"]:
        assert q["type"] == "file" and q["results"][0]["index"] == 123
        assert q["results"][0]["score"] > 0.999


def test_montage_has_one_row_per_query(run, fmnist_small, tmp_path, capsys):
    _, data = fmnist_small
    png = tmp_path / "q.png"
    Image.fromarray(data.test.images[3, 0].numpy(), mode="L").save(png)
    out = tmp_path / "montage.png"
    assert main(["search", str(run), "7", str(png), "--top-k", "5", "--montage", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as im:
        # 28 px images are enlarged twice to 56 px tiles, 2 px apart: 6 columns (query + 5), 2 rows
        assert im.size == (6 * 58 + 2, 2 * 58 + 2) and im.mode == "L"
        sheet = np.array(im)
    tile = sheet[2:58:2, 2:58:2]  # the first query's tile, back to 28 x 28
    np.testing.assert_array_equal(tile, data.train.images[7, 0].numpy())


def test_stale_index_is_rebuilt_with_its_kind(run, capsys):
    assert main(["index", str(run), "--kind", "hnsw", "--recall-queries", "100"]) == 0
    info = json.loads((run / INDEX_INFO_FILE).read_text())
    (run / INDEX_INFO_FILE).write_text(json.dumps({**info, "embeddings_fingerprint": "old"}))
    assert main(["search", str(run), "0", "--top-k", "1"]) == 0
    assert "rebuilt the index" in capsys.readouterr().out
    rebuilt = json.loads((run / INDEX_INFO_FILE).read_text())
    assert rebuilt["embeddings_fingerprint"] == info["embeddings_fingerprint"] and rebuilt["kind"] == "hnsw"


@pytest.mark.parametrize(
    "query, extra, message",
    [
        ("/nonexistent/query.png", [], "/nonexistent/query.png: query image file does not exist"),
        ("800", [], "query 800: item index out of range 0..799"),
        ("-1", [], "query -1: item index out of range"),
        ("0", ["--top-k", "0"], "--top-k must be >= 1, got 0"),
    ],
)
def test_search_errors_name_the_value(run, query, extra, message, capsys):
    assert main(["search", str(run), query, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_undecodable_query_file_is_named(run, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["search", str(run), str(bad)]) == 2
    assert "notes.png: cannot decode image" in capsys.readouterr().err
