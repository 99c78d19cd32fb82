"""contrastkit serve over HTTP (Starlette's TestClient): every route, and every guard of "safe by default"."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from contrastkit.cli import main
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.embedding import write_embeddings
from contrastkit.explorer import app as app_module
from contrastkit.explorer.app import allowed_hosts, create_app
from contrastkit.explorer.loading import MAP_FILE
from contrastkit.explorer.review import SEEDS_FILE
from contrastkit.explorer.state import RunState
from contrastkit.label import write_labels_csv

N_TRAIN, N_TEST, CLASSES, DIM = 60, 21, 3, 16
TWIN_A, TWIN_B = 4, 7  # nearly the same embedding
LEAK_TRAIN, LEAK_TEST = 2, N_TRAIN + 5  # the same picture in both splits
PORT = 8765
ORIGIN = {"Origin": f"http://127.0.0.1:{PORT}"}
TOKEN = "test-token"
NAMES = ["zero", "one", "two"]


def _write_run(folder: Path) -> Path:
    """A run folder without a model: .npz images (row i of class i % 3), config.json, embeddings, labels.csv."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    cls = np.arange(n) % CLASSES
    images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    images[LEAK_TEST] = images[LEAK_TRAIN]
    x = np.eye(DIM)[cls] + 0.3 * rng.standard_normal((n, DIM))
    x[TWIN_B] = x[TWIN_A] + 1e-3 * rng.standard_normal(DIM)
    x[LEAK_TEST] = x[LEAK_TRAIN] + 1e-4 * rng.standard_normal(DIM)
    folder.mkdir(parents=True)
    np.savez(folder / "data.npz", images=images[:N_TRAIN], labels=cls[:N_TRAIN], test_images=images[N_TRAIN:],
             test_labels=cls[N_TRAIN:], class_names=np.array(NAMES))
    TrainConfig(data=str(folder / "data.npz")).save(folder / "config.json")
    data = load_dataset(str(folder / "data.npz"))
    x = x.astype(np.float32)
    write_embeddings(folder, data, torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(x[N_TRAIN:]), {"run": "synthetic"})
    conf = np.linspace(0.05, 0.95, n)[rng.permutation(n)]
    clusters = (cls + 1) % CLASSES  # k-means cluster numbers (not class indices)
    write_labels_csv(folder / "labels.csv", list(data.train.sources) + list(data.test.sources), clusters, conf, clusters)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _write_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def state(run_dir) -> Iterator[RunState]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # tiny searches gain nothing from threads (as conftest's one_faiss_thread)
    yield RunState(run_dir, map_points=40)
    faiss.omp_set_num_threads(before)


def _client(state: RunState, host: str = "127.0.0.1", cookie: bool = True) -> TestClient:
    client = TestClient(create_app(state, token=TOKEN, host=host, port=PORT), base_url=f"http://127.0.0.1:{PORT}")
    if cookie:
        client.cookies.set(f"contrastkit_{PORT}", TOKEN)
    return client


@pytest.fixture
def client(state) -> TestClient:
    state.changed[:] = False
    return _client(state)


ROUTES = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/api/info"), ("GET", "/api/items"), ("GET", "/api/image/0"),
          ("GET", "/api/neighbours/0"), ("GET", "/api/map"), ("GET", "/api/review"), ("POST", "/api/search"),
          ("POST", "/api/labels"), ("POST", "/api/respread"), ("GET", "/api/respread/status"), ("POST", "/api/audit")]


# ----------------------------------------------------------------------------- the guards


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_refuses_a_request_without_the_token(state, method, path):
    c = _client(state, cookie=False)
    r = c.request(method, path, json={} if method == "POST" else None, headers=ORIGIN)
    assert r.status_code == 403 and "token" in r.text
    c.cookies.set(f"contrastkit_{PORT}", "wrong")
    assert c.request(method, path, json={} if method == "POST" else None, headers=ORIGIN).status_code == 403


def test_token_in_the_url_sets_a_strict_http_only_cookie(state):
    c = _client(state, cookie=False)
    r = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert f"contrastkit_{PORT}={TOKEN}".lower() in cookie and "samesite=strict" in cookie and "httponly" in cookie
    assert c.get("/").status_code == 200  # the cookie now travels
    r = c.get(f"http://127.0.0.1:{PORT}//evil.example/?token={TOKEN}&k=a%0d%0ab", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/evil.example/?k=a%0D%0Ab"  # stays on this server
    assert _client(state, cookie=False).get("/?token=nope").status_code == 403
    assert c.post(f"/api/labels?token={TOKEN}", json={}, headers=ORIGIN).status_code == 403  # the URL token opens the page only


@pytest.mark.parametrize("host,ok", [(f"127.0.0.1:{PORT}", True), (f"localhost:{PORT}", True),
                                     (f"evil.example:{PORT}", False), ("127.0.0.1:9999", False), ("127.0.0.1", False)])
def test_host_header_must_be_the_bound_host(client, host, ok):
    r = client.get("/api/info", headers={"Host": host})
    assert (r.status_code == 200) == ok
    if not ok:
        assert r.status_code == 403 and "Host" in r.text


def test_wildcard_host_accepts_any_host_name_but_still_needs_the_token(state):
    assert allowed_hosts("0.0.0.0", PORT) is None and allowed_hosts("10.1.2.3", PORT) == {f"10.1.2.3:{PORT}"}
    c = _client(state, host="0.0.0.0")
    assert c.get("/api/info", headers={"Host": "my-machine:8765"}).status_code == 200
    assert _client(state, host="0.0.0.0", cookie=False).get("/api/info").status_code == 403


def test_no_cross_origin_access(client):
    r = client.options("/api/items", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert r.status_code in (403, 405) and not any(k.lower().startswith("access-control") for k in r.headers)
    r = client.get("/api/info", headers={"Origin": "http://evil.example"})
    assert not any(k.lower().startswith("access-control") for k in r.headers)
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"] and r.headers["x-content-type-options"] == "nosniff"
    body = json.dumps({"item": 0, "label": "one"})
    for headers in ({"Origin": "http://evil.example"}, {}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{PORT + 1}"}):
        r = client.post("/api/labels", content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 403 and "Origin" in r.text
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = client.post("/api/labels", content=body, headers={"Content-Type": kind, **ORIGIN})
        assert r.status_code == 415


@pytest.mark.parametrize("path", ["/static/../state.py", "/static/%2e%2e/state.py", "/static/..%2Fstate.py",
                                  "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/static/index.html/../app.py",
                                  "/static/state.py", "/static/__init__.py", "/api/image/..%2F..%2Fetc%2Fpasswd",
                                  "/api/image/-1", "/api/image/1e3", "/api/image/%2Fetc%2Fpasswd", "/etc/passwd",
                                  "/api/image/0/../../config.json", "/config.json", "/items.csv"])
def test_traversal_attempts_get_nothing(client, run_dir, path):
    r = client.get(path)
    assert r.status_code in (400, 404)
    assert "root:" not in r.text and "import" not in r.text and "data.npz" not in r.text


def test_static_files_are_the_package_files(client):
    from importlib import resources

    static = resources.files("contrastkit.explorer") / "static"
    for name, kind in (("app.js", "javascript"), ("map.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.content == (static / name).read_bytes() and kind in r.headers["content-type"]
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: every resource from this server


# ----------------------------------------------------------------------------- the routes


def test_info(client):
    info = client.get("/api/info").json()
    assert info["items"] == N_TRAIN + N_TEST and info["splits"] == ["test", "train"] and info["choices"] == NAMES
    assert info["labels"] == ["0", "1", "2"] and info["clusters"] == 3 and info["has_model"] is False


def test_images_by_row_index_are_the_data_sets_pixels(client, run_dir):
    data = np.load(run_dir / "data.npz")
    for item, expected in ((3, data["images"][3]), (N_TRAIN + 1, data["test_images"][1])):
        r = client.get(f"/api/image/{item}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)
    assert client.get(f"/api/image/{N_TRAIN + N_TEST}").status_code == 404


def test_items_page_filter_and_sort_on_the_server(client, state):
    r = client.get("/api/items?limit=10&offset=5").json()
    assert r["total"] == N_TRAIN + N_TEST and [it["item"] for it in r["items"]] == list(range(5, 15))
    r = client.get("/api/items?split=test&limit=500").json()
    assert r["total"] == N_TEST and {it["split"] for it in r["items"]} == {"test"}
    r = client.get("/api/items?label=1&limit=500").json()
    assert r["total"] == 27 and all(it["label"] == "1" and it["cluster"] == 1 for it in r["items"])
    assert client.get("/api/items?cluster=2&limit=500").json()["total"] == 27
    r = client.get("/api/items?sort=confidence&conf_min=0.2&conf_max=0.6&limit=500").json()
    conf = [it["confidence"] for it in r["items"]]
    assert conf == sorted(conf) and min(conf) >= 0.2 and max(conf) <= 0.6 and r["total"] == len(conf)
    first = client.get("/api/items?sort=-confidence&limit=1").json()["items"][0]
    assert first["confidence"] == pytest.approx(0.95)
    x, y = state.xy[TWIN_A]
    r = client.get(f"/api/items?region={x - 1e-3},{y - 1e-3},{x + 1e-3},{y + 1e-3}&limit=500").json()
    assert TWIN_A in [it["item"] for it in r["items"]]
    inside = ((np.abs(state.xy[:, 0] - x) <= 1e-3) & (np.abs(state.xy[:, 1] - y) <= 1e-3)).sum()
    assert r["total"] == inside
    for bad in ("limit=501", "limit=0", "offset=-1", "sort=name", "cluster=x", "conf_min=abc", "region=1,2",
                "problem=outlier"):
        assert client.get(f"/api/items?{bad}").status_code == 400, bad


def test_neighbours_with_scores(client):
    r = client.get(f"/api/neighbours/{TWIN_A}?k=5").json()
    scores = [n["score"] for n in r["neighbours"]]
    assert r["query"]["item"] == TWIN_A and r["neighbours"][0]["item"] == TWIN_B and scores[0] > 0.99
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and TWIN_A not in [n["item"] for n in r["neighbours"]]
    assert client.get("/api/neighbours/0?k=0").status_code == 400
    assert client.get("/api/neighbours/0?k=101").status_code == 400
    assert client.get("/api/neighbours/99999").status_code == 404


def test_map_is_sampled_cached_and_linked(client, state, run_dir):
    m = client.get("/api/map").json()
    assert len(m["item"]) == len(m["x"]) == len(m["group"]) == 40 < state.n and m["group_names"] == ["0", "1", "2"]
    assert (run_dir / MAP_FILE).is_file()
    item = client.get(f"/api/items?offset={m['item'][0]}&limit=1").json()["items"][0]
    assert (item["x"], item["y"]) == pytest.approx((m["x"][0], m["y"][0]), abs=1e-3)  # grid and map agree
    before = (run_dir / MAP_FILE).stat().st_mtime_ns
    again = RunState(run_dir, map_points=40)
    assert (run_dir / MAP_FILE).stat().st_mtime_ns == before and np.array_equal(again.xy, state.xy)


def test_review_and_label_write_back(client, run_dir, state):
    review = client.get("/api/review?limit=5").json()
    conf = [it["confidence"] for it in review["items"]]
    assert conf == sorted(conf) and conf[0] == pytest.approx(0.05) and review["choices"] == NAMES
    first = review["items"][0]["item"]
    r = client.post("/api/labels", json={"item": first, "label": "two"}, headers=ORIGIN)
    assert r.status_code == 200 and r.json()["item"]["correction"] == "two" and r.json()["corrections"] == 1
    client.post("/api/labels", json={"item": 10, "label": "one"}, headers=ORIGIN)
    with open(run_dir / SEEDS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"item": state.sources[i], "label": lbl} for i, lbl in sorted([(first, "two"), (10, "one")])]
    assert first not in [it["item"] for it in client.get("/api/review?limit=5").json()["items"]]  # reviewed: not again
    assert client.get("/api/items?corrected=1&limit=500").json()["total"] == 2
    assert client.post("/api/labels", json={"item": 10, "label": None}, headers=ORIGIN).json()["corrections"] == 1
    assert client.post("/api/labels", json={"item": 10, "label": "seven"}, headers=ORIGIN).status_code == 400
    assert client.post("/api/labels", json={"item": 10**6, "label": "one"}, headers=ORIGIN).status_code == 404
    assert client.post("/api/labels", json={"item": "10", "label": "one"}, headers=ORIGIN).status_code == 400
    assert client.post("/api/labels", json=[1, 2], headers=ORIGIN).status_code == 400
    assert RunState(run_dir, map_points=40).corrections == {first: "two"}  # read back at the next start
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temporary left
    client.post("/api/labels", json={"item": first, "label": None}, headers=ORIGIN)


def test_respread_labels_every_item_from_the_corrections(client, run_dir, state):
    assert client.post("/api/respread", json={}, headers=ORIGIN).status_code == 400  # no corrections yet
    for c in range(CLASSES):  # two correct labels per class (row i is of class i % 3)
        for i in (c, c + 3):
            assert client.post("/api/labels", json={"item": i, "label": NAMES[c]}, headers=ORIGIN).status_code == 200
    r = client.post("/api/respread", json={}, headers=ORIGIN)
    assert r.status_code == 200
    out = r.json()
    assert out["seeds"] == 6 and out["changed"] == N_TRAIN + N_TEST  # cluster numbers became class names
    assert 0 < out["seconds"] < 600
    status = client.get("/api/respread/status").json()
    assert status["running"] is False and status["elapsed_s"] is None and status["error"] is None
    assert status["last"]["changed"] == out["changed"] and status["last"]["seconds"] == out["seconds"]
    labels = {int(row["item"]): row["label"] for row in csv.DictReader(open(run_dir / "labels.csv"))}
    correct = np.mean([labels[i] == NAMES[i % CLASSES] for i in labels])
    assert correct > 0.7  # three clusters, 6 seeds: far above chance (1 in 3)
    assert {"before": "1", "after": NAMES[0], "item": 0} in out["items"]
    assert client.get("/api/items?changed=1&limit=500").json()["total"] == out["changed"]
    assert client.get("/api/info").json()["labels"] == sorted(set(labels.values()), key=lambda s: (len(s), s))
    for i in (0, 1, 2, 3, 4, 5):
        client.post("/api/labels", json={"item": i, "label": None}, headers=ORIGIN)


def test_respread_status_tells_the_stage_while_it_runs(run_dir, tmp_path, monkeypatch):
    """GET /api/respread/status during a re-spread (held inside its graph stage): running, the stage, the
    seconds so far; a second POST meanwhile gets 409; afterwards the last one's seconds and changes."""
    import threading

    from contrastkit import seeds

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    state = RunState(run, map_points=40)
    for c in range(CLASSES):
        for i in (c, c + 3):
            state.set_label(i, NAMES[c])
    inside, release = threading.Event(), threading.Event()
    graphs = seeds.seed_graphs

    def held_graphs(*args, **kwargs):
        inside.set()
        assert release.wait(60)
        return graphs(*args, **kwargs)

    monkeypatch.setattr(seeds, "seed_graphs", held_graphs)
    c = _client(state)
    assert c.get("/api/respread/status").json() == {"running": False, "stage": None, "last": None, "error": None,
                                                    "elapsed_s": None}
    replies = []
    worker = threading.Thread(target=lambda: replies.append(state.respread()))
    worker.start()
    try:
        assert inside.wait(60)
        status = c.get("/api/respread/status").json()
        assert status["running"] is True and status["elapsed_s"] >= 0
        assert status["stage"].startswith("building the 10-nearest-neighbour graphs of 81 items")
        r = c.post("/api/respread", json={}, headers=ORIGIN)
        assert r.status_code == 409 and "already running" in r.json()["error"]
    finally:
        release.set()
        worker.join(60)
    status = c.get("/api/respread/status").json()
    assert status["running"] is False and status["stage"] is None
    assert status["last"]["changed"] == replies[0]["changed"] and status["last"]["model"] == replies[0]["model"]
    assert status["last"]["seconds"] == replies[0]["seconds"] > 0


def test_audit_route_finds_the_leak_and_filters_by_problem(client):
    r = client.post("/api/audit", json={}, headers=ORIGIN)
    assert r.status_code == 200 and r.json()["leaks"]["items"] == 2
    rows = client.get("/api/items?problem=leak&limit=500").json()
    assert sorted(it["item"] for it in rows["items"]) == [LEAK_TRAIN, LEAK_TEST]
    assert "leak" in client.get(f"/api/items?offset={LEAK_TEST}&limit=1").json()["items"][0]["problems"]
    assert client.get("/api/info").json()["problems"]["leaks"]["test_items_with_a_train_duplicate"] == 1


def test_data_problems_are_listed_worst_first_across_pages(run_dir, tmp_path):
    """Each problem by the score audit.py ranks it by (SEVERITY): duplicates and leaks by similarity, outliers by
    mean distance (highest first), label issues by label quality (lowest first); paged on the server."""
    from contrastkit.audit import COLUMNS

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)  # with its cached map
    rng = np.random.default_rng(1)
    n = N_TRAIN + N_TEST
    sim, dist, quality = rng.uniform(0.9, 1, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    flagged = {"near_duplicate": np.arange(0, n, 3), "outlier": np.arange(1, n, 4), "label_issue": np.arange(2, n, 5)}
    quality[7] = np.nan  # a blank score is listed last
    with open(run / "audit.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(n):
            problems = " ".join(p for p, rows in flagged.items() if i in rows)
            w.writerow([i, "", "", "", problems, "", 0, f"{sim[i]:.4f}", f"{dist[i]:.4f}",
                        "" if np.isnan(quality[i]) else f"{quality[i]:.4f}", ""])
    c = _client(RunState(run, map_points=40))
    keys = {"near_duplicate": -np.round(sim, 4), "outlier": -np.round(dist, 4),
            "label_issue": np.where(np.isnan(quality), np.inf, np.round(quality, 4))}
    for problem, rows in flagged.items():
        expected = rows[np.argsort(keys[problem][rows], kind="stable")].tolist()
        assert expected != sorted(expected)  # not the index order by chance
        for query in (f"problem={problem}", f"problem={problem}&sort=severity"):  # worst first is the default
            got, offset = [], 0
            while True:
                page = c.get(f"/api/items?{query}&limit=4&offset={offset}").json()
                got += [it["item"] for it in page["items"]]
                offset += 4
                if offset >= page["total"]:
                    break
            assert got == expected, (problem, query)
        assert [it["item"] for it in c.get(f"/api/items?problem={problem}&sort=index&limit=500").json()["items"]] \
            == rows.tolist()
    assert 7 in flagged["label_issue"] and c.get("/api/items?problem=label_issue&limit=500").json()["items"][-1]["item"] == 7
    item = c.get("/api/items?problem=outlier&limit=1").json()["items"][0]
    assert item["scores"]["mean_distance"] == pytest.approx(dist[flagged["outlier"]].max(), abs=1e-4)
    assert c.get("/api/items?sort=severity").status_code == 400  # worst of which problem?


# ----------------------------------------------------------------------------- uploads


def _png(side: int = 8, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_capped_and_must_be_json_and_base64(client, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 1000)
    big = base64.b64encode(b"\0" * 3000).decode()
    r = client.post("/api/search", json={"image": big}, headers=ORIGIN)
    assert r.status_code == 413

    def streamed():  # no Content-Length: the cap holds while reading
        yield b'{"image": "'
        for _ in range(10):
            yield b"A" * 1000
        yield b'"}'

    r = client.post("/api/search", content=streamed(), headers={"Content-Type": "application/json", **ORIGIN})
    assert r.status_code == 413
    assert client.post("/api/search", json={"image": "not base64!"}, headers=ORIGIN).status_code == 400
    assert client.post("/api/search", json={"picture": "x"}, headers=ORIGIN).status_code == 400
    assert client.post("/api/search", content=b"{not json", headers={"Content-Type": "application/json", **ORIGIN}).status_code == 400
    # a folder without a model cannot embed an upload
    r = client.post("/api/search", json={"image": base64.b64encode(_png()).decode()}, headers=ORIGIN)
    assert r.status_code == 409 and "model" in r.json()["error"]


TRAIN_ARGS = ["--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]  # as test_index


@pytest.fixture(scope="module")
def trained(trained_copy) -> Path:
    return trained_copy("serve", *TRAIN_ARGS)


def test_upload_finds_the_same_image_by_the_runs_encoder(trained, fmnist_small, tmp_path):
    from contrastkit.embedding import embed_run

    embed_run(trained)
    c = _client(RunState(trained, map_points=30))
    _, data = fmnist_small
    png = c.get("/api/image/650").content  # a test image, as a person would save it
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), data.test.images[650 - len(data.train)][0].numpy())
    r = c.post("/api/search", json={"image": "data:image/png;base64," + base64.b64encode(png).decode(), "k": 3},
               headers=ORIGIN)
    assert r.status_code == 200
    found = r.json()["neighbours"]
    assert found[0]["item"] == 650 and found[0]["score"] > 0.999 and len(found) == 3
    for bad in (b"GIF89a not really", b"\x89PNG\r\n\x1a\n" + b"\0" * 50, b""):
        r = c.post("/api/search", json={"image": base64.b64encode(bad).decode()}, headers=ORIGIN)
        assert r.status_code == 400 and "not an image" in r.json()["error"]
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # ~50 kB on disk, 400 M pixels: over Pillow's limit
    r = c.post("/api/search", json={"image": base64.b64encode(bomb.getvalue()).decode()}, headers=ORIGIN)
    assert r.status_code == 400


# ----------------------------------------------------------------------------- the command


def test_serve_command_binds_loopback_prints_the_url_and_warns_for_a_wildcard(run_dir, monkeypatch, capsys):
    import uvicorn

    seen = {}

    def fake_run(self, sockets=None):
        seen["address"] = sockets[0].getsockname()
        seen["app"] = self.config.app
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    assert main(["serve", str(run_dir), "--port", "0", "--no-browser"]) == 0
    captured = capsys.readouterr()
    host, port = seen["address"][:2]
    assert host == "127.0.0.1" and f"open http://127.0.0.1:{port}/?token={seen['app'].token}" in captured.out
    assert "warning" not in captured.err and len(seen["app"].token) >= 32
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--port", "0", "--no-browser"]) == 0
    captured = capsys.readouterr()
    assert seen["address"][0] == "0.0.0.0" and "warning: --host 0.0.0.0" in captured.err and "token" in captured.err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        assert main(["serve", str(run_dir), "--port", str(busy.getsockname()[1]), "--no-browser"]) == 2
        assert "cannot listen" in capsys.readouterr().err
    finally:
        busy.close()
