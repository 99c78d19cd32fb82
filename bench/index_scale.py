"""FAISS index kinds at scale: build time, memory, query latency and recall@10 against exact search.

For each size N the script writes synthetic embeddings (a Gaussian mixture of
1000 components, each varying along 16 directions of its own plus a little
noise, L2-normalised: the low intrinsic dimension of real embeddings) chunk by
chunk to a memory-mapped .npy, so 10M x 512 (20 GB) is never in RAM at once.
It then computes the exact top-10 of --queries held-out queries by brute force
over the memory map (``contrastkit.vectors.exact_search``, in chunks), the
reference of every recall figure, and for each index kind, in a child process
of its own (so that the peak memory measured is that kind's alone):

1. builds it with ``contrastkit.index.build_index`` from the memory map, as
   ``contrastkit index`` does (train + add in chunks, then nprobe / efSearch
   tuned until recall@10 on 1000 items as queries reaches 0.95);
2. measures its serialised size, the peak RSS (``getrusage``; it includes
   resident pages of the memory-mapped vectors, which the kernel can drop) and
   the peak anonymous memory above the child's start (sampled from
   /proc/self/status: the memory the build really needs);
3. times the batch of held-out queries (per query) and single queries (median
   of up to 200), each the median of --repeats runs, and measures recall@10
   of the held-out queries against the exact top-10 (IVF-PQ also without the
   exact re-ranking of its candidates, to show what the 1-byte codes give).

Kinds whose index would not fit in the memory budget (default 80% of the
memory available now) are skipped with a line that says so: at 10M x 512 only
IVF-PQ fits in 24 GiB. HNSW is skipped above --hnsw-max items (its build
takes hours on a few cores).

Usage:
    python bench/index_scale.py --sizes 5000 --dim 32 --queries 50    # smoke run, seconds
    python bench/index_scale.py --sizes 1000000 --dim 512 --out index_1m.json
    python bench/index_scale.py --sizes 10000000 --dim 512 --kinds ivfpq --data-dir /big/disk --out index_10m.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, peak_rss_bytes, write_results  # noqa: E402

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
COMPONENTS = 1000  # mixture components of the synthetic embeddings
LATENT = 16  # directions each component varies along
SPREAD = 0.6  # scale of that variation, against unit-variance centre coordinates
NOISE = 0.1  # isotropic noise per coordinate
GEN_CHUNK = 65_536  # rows generated and written at a time (128 MiB at 512-d)
SINGLE_QUERIES = 200  # single-query latency: the median over up to this many queries
HNSW_MAX_ITEMS = 2_000_000  # default --hnsw-max


# ----------------------------------------------------------------------------- synthetic embeddings


class Mixture:
    """A seeded Gaussian mixture whose components vary along a few directions of their own."""

    def __init__(self, dim: int, components: int = COMPONENTS, latent: int = LATENT, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 0])
        self.dim, self.components, self.latent, self.seed = dim, components, latent, seed
        self.centres = rng.standard_normal((components, dim), dtype=np.float32)  # (C, D)
        self.bases = rng.standard_normal((components, latent, dim), dtype=np.float32) * (SPREAD / np.sqrt(latent))

    def sample(self, n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) L2-normalised float32 vectors and their (n,) components, from a seeded stream."""
        rng = np.random.default_rng([self.seed, 1, stream])
        comp = rng.integers(0, self.components, n)
        x = self.centres[comp] + NOISE * rng.standard_normal((n, self.dim), dtype=np.float32)  # (n, D)
        z = rng.standard_normal((n, self.latent), dtype=np.float32)  # (n, L)
        order = np.argsort(comp, kind="stable")
        bounds = np.searchsorted(comp[order], np.arange(self.components + 1))
        for c in range(self.components):  # one small matmul per component present in the chunk
            rows = order[bounds[c] : bounds[c + 1]]
            if len(rows):
                x[rows] += z[rows] @ self.bases[c]  # (r, L) @ (L, D)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, comp.astype(np.int32)


def write_mixture(path: Path, n: int, mixture: Mixture) -> np.ndarray:
    """Write ``n`` vectors of ``mixture`` to the .npy ``path`` chunk by chunk; returns their components.

    Written to a temporary name and renamed at the end, so an existing file
    at ``path`` is complete and can be reused.
    """
    tmp = path.with_name(path.name + ".partial")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, mixture.dim))
    comps = np.zeros(n, dtype=np.int32)
    for i, start in enumerate(range(0, n, GEN_CHUNK)):
        x, comp = mixture.sample(min(GEN_CHUNK, n - start), stream=i + 1)
        out[start : start + len(x)] = x
        comps[start : start + len(x)] = comp
    out.flush()
    del out
    np.save(path.with_name(path.stem + ".components.npy"), comps)
    os.replace(tmp, path)
    return comps


def mixture_file(folder: Path, n: int, dim: int, components: int, seed: int) -> tuple[Path, np.ndarray, float]:
    """The vectors file of (n, dim) (reused when it is already in ``folder``), its components, and seconds spent."""
    path = folder / f"mixture_{n}x{dim}_c{components}_s{seed}.npy"
    comps_path = path.with_name(path.stem + ".components.npy")
    if path.is_file() and comps_path.is_file() and np.load(path, mmap_mode="r").shape == (n, dim):
        return path, np.load(comps_path), 0.0
    need = n * dim * 4 + n * 4
    free = shutil.disk_usage(folder).free
    if need > 0.95 * free:
        raise SystemExit(f"{n} x {dim} float32 vectors need {need / 2**30:.1f} GiB on disk but {folder} has "
                         f"{free / 2**30:.1f} GiB free: pass --data-dir on a larger disk, or smaller --sizes")
    t0 = time.perf_counter()
    comps = write_mixture(path, n, Mixture(dim, components, seed=seed))
    return path, comps, time.perf_counter() - t0


# ----------------------------------------------------------------------------- memory


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def needed_bytes(kind: str, n: int, dim: int, hnsw_m: int) -> int:
    """Rough memory of building ``kind`` on n x dim: the index plus the k-means training sample."""
    from contrastkit.index import ivf_cells, ivf_train_rows, pq_subquantizers

    train = ivf_train_rows(n, ivf_cells(n)) * dim * 4
    return {
        "flat": n * dim * 4,
        "ivf": n * (dim * 4 + 8) + train,
        "ivfpq": n * (pq_subquantizers(dim) + 8) + train,
        "hnsw": int(n * (dim * 4 + 2 * hnsw_m * 4 * 1.1)),
    }[kind]


class AnonPeak:
    """Peak anonymous resident memory (RssAnon of /proc/self/status) above its value at start, sampled every 20 ms."""

    def __init__(self) -> None:
        self.start = self.peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _read() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = self._read()
            if now is not None and self.peak is not None:
                self.peak = max(self.peak, now)

    def stop(self) -> int | None:
        """Bytes above the start (None where /proc is missing)."""
        self._stop.set()
        self._thread.join()
        now = self._read()
        if self.peak is None or self.start is None or now is None:
            return None
        return max(self.peak, now) - self.start


# ----------------------------------------------------------------------------- one kind, in a child process


def _median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_kind(path: str, kind: str, queries: np.ndarray, exact: np.ndarray, repeats: int,
                 tune_queries: int, seed: int) -> list[dict[str, Any]]:
    """Build one index from the memory map at ``path`` and measure it (run in a fresh process)."""
    import faiss

    from contrastkit.index import build_index
    from contrastkit.index_search import search

    anon = AnonPeak()
    features = np.load(path, mmap_mode="r")
    index, info = build_index(features, kind, recall_queries=tune_queries, seed=seed)
    size = 0

    def count(block: bytes) -> int:
        nonlocal size
        size += len(block)
        return len(block)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))  # the size of index.faiss, without a copy
    k = exact.shape[1]
    rows = []
    for factor in ([info["rerank"], 1] if info["rerank"] > 1 else [1]):
        found = search(index, queries, k, features, factor)[1]
        recall = float(np.mean([len(np.intersect1d(f, e)) / k for f, e in zip(found, exact)]))
        batch = _median_seconds(lambda: search(index, queries, k, features, factor), repeats) / len(queries)
        singles = queries[:SINGLE_QUERIES]

        def one_by_one() -> list[float]:
            out = []
            for q in singles:
                t0 = time.perf_counter()
                search(index, q[None], k, features, factor)
                out.append(time.perf_counter() - t0)
            return out

        single = statistics.median(statistics.median(one_by_one()) for _ in range(repeats))
        rows.append({
            "kind": kind if factor == info["rerank"] else f"{kind} (codes only, no re-ranking)",
            "info": info, "rerank": factor, "index_bytes": size, "recall_at_10": recall,
            "batch_seconds_per_query": batch, "single_query_seconds": single,
        })
    peak_anon = anon.stop()
    peak_rss = peak_rss_bytes()
    for r in rows:
        r.update({"peak_rss_bytes": peak_rss, "peak_anon_extra_bytes": peak_anon,
                  "faiss_threads": faiss.omp_get_max_threads()})
    return rows


# ----------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def knob(info: dict[str, Any]) -> str:
    if info["kind"] in ("ivf", "ivfpq"):
        q = ", HNSW quantizer" if info.get("quantizer") == "hnsw" else ""
        pq = f", PQ{info['pq_m']}" if info["kind"] == "ivfpq" else ""
        return f"nlist {info['nlist']}, nprobe {info['nprobe']}{pq}{q}"
    if info["kind"] == "hnsw":
        return f"M {info['hnsw_m']}, efSearch {info['ef_search']}"
    return "exact"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1000000"),
                        help="comma-separated numbers of vectors (default: 1000000; 10M x 512 needs 20 GB of disk)")
    parser.add_argument("--dim", type=int, default=512, help="dimensions (default: 512)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for recall and latency (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="latency runs; the median is reported (default: 3)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--tune-queries", type=int, default=1000,
                        help="items used as queries to tune nprobe / efSearch, as `contrastkit index` (default: 1000)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="skip kinds whose index needs more (default: 80%% of the memory available now)")
    parser.add_argument("--hnsw-max", type=int, default=HNSW_MAX_ITEMS,
                        help=f"skip HNSW above this many vectors (build time) (default: {HNSW_MAX_ITEMS})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the generated vectors here and reuse them (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or args.queries < 1 or args.repeats < 1 or args.dim < 1 or not args.sizes:
        parser.error(f"check --kinds ({', '.join(KINDS)}), --queries, --repeats, --dim and --sizes")

    import faiss

    from contrastkit.index import HNSW_M, IVFPQ_MIN_ITEMS
    from contrastkit.vectors import exact_search

    budget = int(args.memory_gib * 2**30) if args.memory_gib else int(0.8 * available_bytes())
    print(describe())
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; memory budget "
          f"{budget / 2**30:.1f} GiB ({'--memory-gib' if args.memory_gib else '80% of MemAvailable'})")
    print(f"data: Gaussian mixture, {COMPONENTS} components varying along {LATENT} directions each, L2-normalised, "
          f"dim {args.dim}; {args.queries} held-out queries; latency: median of {args.repeats} runs")
    results: list[dict[str, Any]] = []
    # each kind runs in a fresh process (its own peak memory), forked from a server that has imported
    # FAISS and contrastkit once but never run a thread pool; spawn where there is no fork server
    context = get_context("forkserver" if "forkserver" in get_all_start_methods() else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["faiss", "contrastkit.index"])
    if args.data_dir:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(str(args.data_dir)) if args.data_dir else tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in args.sizes:
            path, _, gen_s = mixture_file(folder, n, args.dim, COMPONENTS, args.seed)
            print(f"\nN = {n}: vectors {path} ({n * args.dim * 4 / 2**30:.2f} GiB"
                  + (f", written in {gen_s:.0f} s)" if gen_s else ", reused)"), flush=True)
            queries = Mixture(args.dim, COMPONENTS, seed=args.seed).sample(args.queries, stream=10**9)[0]
            t0 = time.perf_counter()
            exact = exact_search(np.load(path, mmap_mode="r"), queries, 10)[1]
            exact_s = time.perf_counter() - t0
            print(f"exact top-10 of {args.queries} queries by brute force over the memory map: {exact_s:.1f} s "
                  f"({exact_s / args.queries * 1e3:.2f} ms per query)", flush=True)
            fitted = []
            for kind in kinds:
                need = needed_bytes(kind, n, args.dim, HNSW_M)
                if need > budget:
                    print(f"{kind}: skipped: needs ~{need / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB budget "
                          f"(pass --memory-gib, or --sizes 1000000,5000000)", flush=True)
                    continue
                if kind == "ivfpq" and n < IVFPQ_MIN_ITEMS:
                    print(f"ivfpq: skipped: product quantization needs at least {IVFPQ_MIN_ITEMS} vectors", flush=True)
                    continue
                if kind == "hnsw" and n > args.hnsw_max:
                    print(f"hnsw: skipped above --hnsw-max {args.hnsw_max} vectors (its build takes hours here)", flush=True)
                    continue
                with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                    rows = pool.submit(measure_kind, str(path), kind, queries, exact, args.repeats,
                                       args.tune_queries, args.seed).result()
                for r in rows:
                    r.update({"n": n, "dim": args.dim, "exact_bruteforce_seconds_per_query": exact_s / args.queries})
                    info = r["info"]
                    print(f"{r['kind']}: build {info['train_seconds'] + info['add_seconds']:.1f} s "
                          f"(train {info['train_seconds']:.1f} + add {info['add_seconds']:.1f}), tune {info['tune_seconds']:.1f} s, "
                          f"{knob(info)}; index {r['index_bytes'] / 2**20:.1f} MiB; "
                          f"{r['batch_seconds_per_query'] * 1e6:.0f} us/query in a batch, "
                          f"{r['single_query_seconds'] * 1e3:.2f} ms single; recall@10 {r['recall_at_10']:.4f}", flush=True)
                fitted.append(kind)
                results.extend(rows)
            if not fitted:
                print(f"N = {n}: no index kind fits in {budget / 2**30:.1f} GiB; try --sizes 1000000,5000000")

    print()
    print("| N | dim | index | parameters | build s (train + add) | tune s | index MiB | peak RSS MiB | "
          "peak extra anon MiB | batch us/query | single query ms | recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        info = r["info"]
        anon = "n/a" if r["peak_anon_extra_bytes"] is None else f"{r['peak_anon_extra_bytes'] / 2**20:.0f}"
        print(f"| {r['n']:,} | {r['dim']} | {r['kind']} | {knob(info)} | "
              f"{info['train_seconds'] + info['add_seconds']:.1f} ({info['train_seconds']:.1f} + {info['add_seconds']:.1f}) | "
              f"{info['tune_seconds']:.1f} | {r['index_bytes'] / 2**20:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} | {anon} | "
              f"{r['batch_seconds_per_query'] * 1e6:.0f} | {r['single_query_seconds'] * 1e3:.2f} | {r['recall_at_10']:.4f} |")
    if args.out:
        write_results(args.out, args, results)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
