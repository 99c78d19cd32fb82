"""``contrastkit index``: build the similar-image search index (FAISS) of a run's embeddings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastkit import index as ix  # the index defaults live there (numpy and torch only; FAISS loads on use)
from contrastkit import index_files, index_search

NAME = "index"
HELP = "build the similar-image search index (FAISS) of a run's embeddings"
DESCRIPTION = (
    "Build a FAISS index of the L2-normalised embeddings (inner product = cosine similarity;\n"
    f"embeds first when embeddings.npy is missing). Exact (IndexFlatIP) up to {ix.EXACT_MAX_ITEMS} items, IVF above,\n"
    f"IVF-PQ when the float32 vectors would exceed {ix.FLOAT_INDEX_MAX_BYTES / 2**30:g} GiB (about 1M x 512);\n"
    "an approximate index is tuned until its recall@10 against exact search, measured on a sample of\n"
    "items as queries, reaches --target-recall.\n\n"
    "Writes into the run folder:\n"
    "  index.faiss  the serialised index\n"
    "  index.json   kind, parameters (nlist, nprobe / ef_search), recall@10, build time"
)
FORMATTER = argparse.RawDescriptionHelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folder, the index kind and how an approximate one is tuned."""
    parser.add_argument("run", type=Path, help="run folder (or any folder with embeddings.npy and items.csv)")
    parser.add_argument(
        "--kind", choices=ix.KINDS, default="auto",
        help="flat (exact), ivf (IndexIVFFlat, nlist ~ 4*sqrt(N)), ivfpq (IndexIVFPQ: 1 byte per 8 dimensions, "
        "candidates re-scored exactly from embeddings.npy), hnsw (IndexHNSWFlat), or auto: flat up to "
        f"{ix.EXACT_MAX_ITEMS} items, ivf above, ivfpq above {ix.FLOAT_INDEX_MAX_BYTES / 2**30:g} GiB of float32 "
        "vectors (default: auto)",
    )
    parser.add_argument("--nprobe", type=int, default=None,
                        help="IVF cells visited per query (default: the smallest power of two reaching --target-recall)")
    parser.add_argument("--target-recall", type=float, default=ix.TARGET_RECALL,
                        help=f"recall@10 an approximate index is tuned to reach (default: {ix.TARGET_RECALL})")
    parser.add_argument("--recall-queries", type=int, default=index_search.RECALL_QUERIES,
                        help=f"items used as queries to measure recall (default: {index_search.RECALL_QUERIES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training sample and recall queries (default: 0)")
    parser.add_argument("--json", action="store_true", help="print index.json instead of the summary")


def run(args: argparse.Namespace) -> int:
    """Build the index, then print its kind, parameters, recall and the files written (or index.json)."""
    info = index_files.index_run(args.run, args.kind, nprobe=args.nprobe, target_recall=args.target_recall,
                        recall_queries=args.recall_queries, seed=args.seed)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    params = {"ivf": f" (nlist {info.get('nlist')}, nprobe {info.get('nprobe')})",
              "ivfpq": f" (nlist {info.get('nlist')}, nprobe {info.get('nprobe')}, {info.get('code_bytes')} bytes per "
                       f"vector, re-ranking {info.get('rerank')}x)",
              "hnsw": f" (M {info.get('hnsw_m')}, ef_search {info.get('ef_search')})"}.get(info["kind"], "")
    print(f"{info['kind']} index{params} of {info['count']} x {info['dim']} embeddings in {info['build_seconds']:.1f} s")
    if info["kind"] == "flat":
        print("recall@10: 1.0 (exact search)")
    else:
        print(f"recall@10 against exact search on {info['recall_queries']} item queries: {info['recall_at_10']:.4f}")
    print(f"wrote {args.run / index_files.INDEX_FILE}, {args.run / index_files.INDEX_INFO_FILE}")
    return 0
