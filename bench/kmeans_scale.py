"""k-means for auto-labelling at scale: FAISS (spherical, sampled) against scikit-learn, time, memory, accuracy.

For each size N the script writes synthetic embeddings (the Gaussian mixture
of bench/index_scale.py with --components components, L2-normalised, to a
memory-mapped .npy written chunk by chunk) and clusters them with
``contrastkit.label.label_clusters`` into --clusters groups with each
backend, as ``contrastkit label --clusters K --kmeans-backend B`` does (10
seeded restarts; the confidence of every item included), each run in a
process of its own so that its peak memory is its own. Cluster accuracy
(Hungarian matching) against the mixture components tells whether the
faster backend clusters as well.

Usage:
    python bench/kmeans_scale.py --sizes 20000 --dim 64                 # smoke run, seconds
    python bench/kmeans_scale.py --sizes 100000,1000000 --dim 512 --out kmeans.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe, peak_rss_bytes, write_results  # noqa: E402
from index_scale import AnonPeak, mixture_file, parse_sizes  # noqa: E402

BACKENDS = ("faiss", "sklearn")


def cluster_once(path: str, components_path: str, k: int, backend: str, seed: int) -> dict[str, Any]:
    """Cluster the memory map at ``path`` with one backend and measure it (run in a fresh process)."""
    from contrastkit.label import KMEANS_RESTARTS, cluster_metrics, label_clusters

    anon = AnonPeak()
    features = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    result = label_clusters(features, k, backend=backend, seed=seed)
    seconds = time.perf_counter() - t0
    extra = anon.stop()
    truth = np.load(components_path)
    metrics = cluster_metrics(truth, result.clusters)
    return {
        "backend": result.backend, "seconds": seconds, "n_init": KMEANS_RESTARTS,
        "cluster_accuracy": metrics["cluster_accuracy"], "nmi": metrics["nmi"],
        "mean_confidence": float(result.confidence.mean()),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_anon_extra_bytes": extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("100000,1000000"),
                        help="comma-separated numbers of embeddings (default: 100000,1000000)")
    parser.add_argument("--dim", type=int, default=512, help="dimensions (default: 512)")
    parser.add_argument("--clusters", type=int, default=10, help="k (default: 10)")
    parser.add_argument("--components", type=int, default=None, help="mixture components (default: --clusters)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, of faiss, sklearn")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the generated vectors here and reuse them (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if any(b not in BACKENDS for b in backends) or args.clusters < 2 or not args.sizes:
        parser.error("check --backends (faiss, sklearn), --clusters (>= 2) and --sizes")
    components = args.components or args.clusters

    import faiss

    from contrastkit.label import FAISS_KMEANS_ITERATIONS, FAISS_KMEANS_SAMPLE

    print(describe())
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; k = {args.clusters}; faiss: spherical, "
          f"{FAISS_KMEANS_ITERATIONS} iterations, sample <= {FAISS_KMEANS_SAMPLE}; sklearn: KMeans (lloyd, float64)")
    print(f"data: Gaussian mixture, {components} components, L2-normalised, dim {args.dim}")
    context = get_context("forkserver" if "forkserver" in get_all_start_methods() else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["faiss", "sklearn.cluster", "contrastkit.label"])
    results = []
    if args.data_dir:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(str(args.data_dir)) if args.data_dir else tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path, _, gen_s = mixture_file(Path(tmp), n, args.dim, components, args.seed)
            comps_path = path.with_name(path.stem + ".components.npy")
            print(f"\nN = {n}: {path} ({n * args.dim * 4 / 2**30:.2f} GiB"
                  + (f", written in {gen_s:.0f} s)" if gen_s else ", reused)"), flush=True)
            for backend in backends:
                with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                    r = pool.submit(cluster_once, str(path), str(comps_path), args.clusters, backend, args.seed).result()
                r.update({"n": n, "dim": args.dim, "k": args.clusters})
                results.append(r)
                print(f"{backend}: {r['seconds']:.1f} s, cluster accuracy {r['cluster_accuracy']:.2%}, "
                      f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)

    print()
    print("| N | dim | k | backend | seconds | peak RSS MiB | peak extra anon MiB | cluster accuracy | NMI |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        anon = "n/a" if r["peak_anon_extra_bytes"] is None else f"{r['peak_anon_extra_bytes'] / 2**20:.0f}"
        print(f"| {r['n']:,} | {r['dim']} | {r['k']} | {r['backend']} | {r['seconds']:.1f} | "
              f"{r['peak_rss_bytes'] / 2**20:.0f} | {anon} | {r['cluster_accuracy']:.2%} | {r['nmi']:.3f} |")
    if args.out:
        write_results(args.out, args, results)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
