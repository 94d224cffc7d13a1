"""Exact cosine kNN: chunked torch (default) and faiss IndexFlatIP vs scikit-learn brute force.

Queries/s and agreement of the neighbour lists on random unit vectors
(default 100,000 queries x 100,000 references x 256 dims, k = 10), all in one run
so the ratios are comparable on a shared machine. faiss is optional
(``pip install moaspace[faiss]``); it is skipped when missing.

Writes ``benchmarks/results/bench_knn.json``.

    python benchmarks/bench_knn.py [--n-query 100000] [--n-ref 100000] [--dim 256] [--k 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from moaspace._core.neighbors import knn_search
from moaspace._utils import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-query", type=int, default=100_000)
    parser.add_argument("--n-ref", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ref = rng.standard_normal((args.n_ref, args.dim), dtype=np.float32)
    query = rng.standard_normal((args.n_query, args.dim), dtype=np.float32)

    runs: dict[str, dict] = {}
    found: dict[str, np.ndarray] = {}
    for name in ("torch", "faiss", "sklearn"):
        t0 = time.perf_counter()
        if name == "sklearn":
            from sklearn.neighbors import NearestNeighbors

            nn = NearestNeighbors(n_neighbors=args.k, metric="cosine", algorithm="brute")
            _, idx = nn.fit(ref).kneighbors(query)
        else:
            try:
                _, idx = knn_search(query, ref, args.k, backend=name)
            except Exception as exc:  # faiss not installed
                runs[name] = {"skipped": str(exc)}
                continue
        seconds = time.perf_counter() - t0
        found[name] = idx
        runs[name] = {"seconds": seconds, "queries_per_s": args.n_query / seconds}
    base = found["sklearn"]
    for name, idx in found.items():
        same_sets = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(idx, base, strict=True)])
        runs[name]["neighbour_agreement_vs_sklearn"] = float(same_sets)
        runs[name]["speedup_vs_sklearn"] = runs["sklearn"]["seconds"] / runs[name]["seconds"]
    result = {"benchmark": "bench_knn", **vars(args), "cpu_count": os.cpu_count(), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_knn.json").write_text(json.dumps({**provenance(), **result}, indent=2))
    print(f"exact cosine kNN, {args.n_query:,} queries x {args.n_ref:,} refs x {args.dim}, "
          f"k={args.k}")
    print(f"{'backend':<10}{'seconds':>10}{'queries/s':>12}{'x sklearn':>11}{'agreement':>11}")
    for name, run in runs.items():
        if "skipped" in run:
            print(f"{name:<10} skipped ({run['skipped'][:50]})")
            continue
        print(f"{name:<10}{run['seconds']:>10.1f}{run['queries_per_s']:>12,.0f}"
              f"{run['speedup_vs_sklearn']:>11.2f}{run['neighbour_agreement_vs_sklearn']:>11.4f}")


if __name__ == "__main__":
    main()
