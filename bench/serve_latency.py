"""Response times of ``contrastkit serve`` at 100k and 1M items, on synthetic run folders.

For each size N the script writes a run folder (in --data-dir, default a
temporary folder): ``embeddings.npy`` (the Gaussian mixture of
bench/index_scale.py, written chunk by chunk, --dim dimensions), ``items.csv``
(90 % train, 10 % test, a label per item), ``meta.json`` (10 class names),
``labels.csv`` (cluster = label, a random confidence), an ``.npz`` data set of
8 x 8 grayscale images (every 997th item an exact copy of the one before)
and ``config.json`` pointing at it, so images are
served by row from the run's own data set as in a real run. It then starts
the explorer as ``contrastkit serve`` does (the state read, the search index
found or built: exact up to 100 000 items, ``contrastkit index``'s tuned IVF
above; the 2-D map computed and cached), twice (the second start reads the
cached map and index), serves it with uvicorn on a loopback port in a thread,
and times each request over one keep-alive HTTP connection (``http.client``):
the median and 90th percentile of --repeats requests, each with other
parameters (another offset, item, region). Uploads are not timed: they add one
forward pass of the encoder (independent of N) to the neighbour search timed
here.

With ``--audit`` it also times the data problems check (``contrastkit
audit``, run as the page's button runs it: the kNN graph from the run's
index, exact duplicates by image digests, outliers, cleanlab's label issues,
audit.csv written) and then the problems view: the items of each problem
found, worst first, paged on the server.

Usage:
    python bench/serve_latency.py --sizes 2000 --repeats 5 --map-points 300   # smoke run, seconds
    python bench/serve_latency.py --sizes 100000 1000000 --out serve_latency.json
    python bench/serve_latency.py --sizes 100000 1000000 --audit --out serve_latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, peak_rss_bytes, write_results  # noqa: E402
from index_scale import Mixture  # noqa: E402

CLASSES = 10
CHUNK = 65_536  # rows generated and written at a time
DUPLICATE_EVERY = 997  # every 997th item is an exact copy (image and embedding) of the one before, for the audit to find


def write_run(folder: Path, n: int, dim: int, seed: int = 0) -> None:
    """A synthetic run folder of ``n`` items (see the module docstring)."""
    from contrastkit.config import TrainConfig
    from contrastkit.sources import source_to_text

    folder.mkdir(parents=True, exist_ok=True)
    n_test = max(1, n // 10)
    n_train = n - n_test
    mix = Mixture(dim, seed=seed)
    rng = np.random.default_rng(seed)
    emb = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    component = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        x, c = mix.sample(min(CHUNK, n - start), start // CHUNK)
        emb[start : start + len(x)] = x
        component[start : start + len(x)] = c
    label = component % CLASSES
    images = (label[:, None, None] * 20 + rng.integers(0, 60, (n, 8, 8))).astype(np.uint8)  # (N, 8, 8)
    copies = np.arange(DUPLICATE_EVERY, n, DUPLICATE_EVERY)  # planted exact duplicates of the item before
    for i in copies.tolist():
        emb[i], images[i], label[i] = emb[i - 1], images[i - 1], label[i - 1]
    emb.flush()
    del emb
    np.savez(folder / "data.npz", images=images[:n_train], labels=label[:n_train], test_images=images[n_train:],
             test_labels=label[n_train:], class_names=np.array([f"class{c}" for c in range(CLASSES)]))
    TrainConfig(data=str(folder / "data.npz")).save(folder / "config.json")
    sources = [f"data.npz:images:{i}" for i in range(n_train)] + [f"data.npz:test_images:{i}" for i in range(n_test)]
    with open(folder / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "split", "source", "label"])
        for i, (s, y) in enumerate(zip(sources, label.tolist())):
            w.writerow([i, "train" if i < n_train else "test", source_to_text(s), y])
    meta = {"count": n, "dim": dim, "splits": {"train": n_train, "test": n_test},
            "class_names": [f"class{c}" for c in range(CLASSES)]}
    (folder / "meta.json").write_text(json.dumps(meta) + "\n")
    conf = rng.random(n)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["item", "source", "label", "confidence", "cluster"])
        for i, (s, y, p) in enumerate(zip(sources, label.tolist(), conf.tolist())):
            w.writerow([i, s, y, f"{p:.4f}", y])


def start_state(folder: Path, map_points: int) -> tuple[Any, float]:
    """The explorer's state of ``folder`` and the seconds it took to start."""
    from contrastkit.explorer.state import RunState

    t = time.perf_counter()
    state = RunState(folder, map_points=map_points, log=lambda s: print(f"  {s}", flush=True))
    return state, time.perf_counter() - t


def requests_for(n: int, bounds: list[float], repeats: int, rng: np.random.Generator,
                 problems: list[str] = ()) -> dict[str, list[tuple[str, str, Any]]]:
    """Per request kind, ``repeats`` (method, path, body) with different parameters; ``problems``: audit's, to list worst first."""
    x0, y0, x1, y1 = bounds
    out: dict[str, list[tuple[str, str, Any]]] = {}

    def region() -> str:
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        w, h = (x1 - x0) / 10, (y1 - y0) / 10
        return f"{cx - w:.3f},{cy - h:.3f},{cx + w:.3f},{cy + h:.3f}"

    items = rng.integers(0, n, repeats * 2)
    out["info"] = [("GET", "/api/info", None)] * repeats
    out["page 1 (60 items)"] = [("GET", "/api/items?limit=60", None)] * repeats
    out["deep page"] = [("GET", f"/api/items?offset={int(o)}&limit=60", None) for o in rng.integers(0, n - 60, repeats)]
    out["filter split+label+confidence"] = [
        ("GET", f"/api/items?split=test&label={c}&conf_min=0.2&conf_max=0.8&limit=60", None)
        for c in rng.integers(0, CLASSES, repeats)]
    out["sort by confidence"] = [("GET", f"/api/items?sort=confidence&cluster={c}&limit=60", None)
                                 for c in rng.integers(0, CLASSES, repeats)]
    out["map region"] = [("GET", f"/api/items?region={region()}&limit=60", None) for _ in range(repeats)]
    out["review (40 least confident)"] = [("GET", "/api/review?limit=40", None)] * repeats
    out["neighbours (k=12)"] = [("GET", f"/api/neighbours/{int(i)}?k=12", None) for i in items[:repeats]]
    out["image"] = [("GET", f"/api/image/{int(i)}", None) for i in items[repeats:]]
    out["map points"] = [("GET", "/api/map", None)] * repeats
    out["label write-back"] = [("POST", "/api/labels", {"item": int(i), "label": f"class{int(i) % CLASSES}"})
                               for i in items[:repeats]]
    for problem in problems:
        out[f"problems: {problem}, worst first"] = [
            ("GET", f"/api/items?problem={problem}&sort=severity&limit=60", None)] * repeats
    return out


def time_requests(state: Any, repeats: int, seed: int) -> dict[str, dict[str, float]]:
    """Serve ``state`` on a loopback port and time every request kind: median and p90 ms, response bytes."""
    from contrastkit.commands.serve import bind, serving_in_background
    from contrastkit.explorer.app import create_app

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(state, host="127.0.0.1", port=port)
    headers = {"Cookie": f"contrastkit_{port}={app.token}", "Host": f"127.0.0.1:{port}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    results: dict[str, dict[str, float]] = {}
    with serving_in_background(app, sock), contextlib.closing(conn):
        problems = [p for p, mask in state.problems.items() if mask.any()]
        calls_by_kind = requests_for(state.n, state.map_points()["bounds"], repeats, np.random.default_rng(seed), problems)
        for kind, calls in calls_by_kind.items():
            ms, size = [], 0
            for method, path, body in calls:
                extra = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"} if body is not None else {}
                t = time.perf_counter()
                conn.request(method, path, body=None if body is None else json.dumps(body), headers={**headers, **extra})
                response = conn.getresponse()
                data = response.read()
                ms.append((time.perf_counter() - t) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
                size = len(data)
            ms.sort()
            results[kind] = {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
                             "bytes": size}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="items per run (default: 100000 1000000)")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimensions (default: 256, small_cnn's)")
    parser.add_argument("--repeats", type=int, default=30, help="requests timed per kind (default: 30)")
    parser.add_argument("--map-points", type=int, default=5000, help="items in the t-SNE of the map (default: 5000, serve's)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the run folders go (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audit", action="store_true",
                        help="also time the data problems check (contrastkit audit) and the problems view")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    print(describe(), flush=True)

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve-latency-")
        args.data_dir = Path(tmp.name)
    results: dict[str, Any] = {}
    try:
        for n in args.sizes:
            folder = args.data_dir / f"run_{n}"
            t = time.perf_counter()
            if not (folder / "labels.csv").is_file():
                write_run(folder, n, args.dim, args.seed)
            print(f"{n} items x {args.dim}: run folder in {time.perf_counter() - t:.1f} s", flush=True)
            _, first = start_state(folder, args.map_points)
            state, cached = start_state(folder, args.map_points)
            t = time.perf_counter()
            state.image_png(0)  # the data set is loaded on the first image
            images_s = time.perf_counter() - t
            audit: dict[str, Any] = {}
            if args.audit:
                (folder / "audit.csv").unlink(missing_ok=True)
                t = time.perf_counter()
                state.run_audit()  # what POST /api/audit runs
                audit = {"audit_s": time.perf_counter() - t, "peak_rss_gib": peak_rss_bytes() / 2**30,
                         "found": {p: int(m.sum()) for p, m in state.problems.items()}}
                print(f"  audit: {audit['audit_s']:.1f} s, items found per problem {audit['found']}; "
                      f"peak RSS so far {audit['peak_rss_gib']:.2f} GiB", flush=True)
            timings = time_requests(state, args.repeats, args.seed)
            results[str(n)] = {"first_start_s": first, "cached_start_s": cached, "first_image_s": images_s,
                               "requests": timings, **audit}
            print(f"  start: {first:.1f} s the first time (map and index computed), {cached:.1f} s with them cached; "
                  f"first image {images_s:.1f} s (loads the data set)", flush=True)
            (folder / "seed_labels.csv").unlink(missing_ok=True)
        sizes = [str(n) for n in args.sizes]
        print("\n| request | " + " | ".join(f"{int(n):,} items: median / p90 ms" for n in sizes) + " | response bytes |")
        print("| --- | " + " | ".join("---" for _ in sizes) + " | --- |")
        kinds = dict.fromkeys(kind for n in sizes for kind in results[n]["requests"])  # problems found may differ by size
        for kind in kinds:
            cells = [f"{results[n]['requests'][kind]['median_ms']:.1f} / {results[n]['requests'][kind]['p90_ms']:.1f}"
                     if kind in results[n]["requests"] else "-" for n in sizes]
            size = next(results[n]["requests"][kind]["bytes"] for n in reversed(sizes) if kind in results[n]["requests"])
            print(f"| {kind} | " + " | ".join(cells) + f" | {size:,} |")
        if args.audit:
            print("| audit (contrastkit audit, s) | " + " | ".join(f"{results[n]['audit_s']:.1f}" for n in sizes) + " | |")
        print(f"peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")
        if args.out:
            write_results(args.out, args, results)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
