"""Subset read of a real-size GCTX vs a naive full read: time and peak RSS.

Builds a GCTX of 720,216 signatures x 978 genes (the landmark-level size of
the LINCS beta level-5 file; ~2.8 GB on disk), then, each in a fresh process
so that peak RSS is measured cleanly:

* ``subset``: ``moaspace.io.read_gctx`` of N random signatures (default 100,000);
* ``naive``: read the whole matrix with h5py, then take the same rows
  (what cmapPy-style loaders do).

Prints a table and writes ``benchmarks/results/bench_gctx.json``. Acceptance:
peak RSS of the subset read < 2 x output size + 300 MB.

    python benchmarks/bench_gctx.py [--n-sigs 720216] [--n-genes 978] [--n-read 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moaspace._utils import provenance

RESULTS = Path(__file__).resolve().parent / "results"


class LazyRandom:
    """Row-sliceable stand-in for a matrix too large to hold: rows are made on demand."""

    def __init__(self, n_rows: int, n_cols: int, seed: int = 0):
        self.shape = (n_rows, n_cols)
        self.seed = seed

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        rng = np.random.default_rng([self.seed, start])
        return rng.standard_normal((stop - start, self.shape[1]), dtype=np.float32)


def build(path: Path, n_sigs: int, n_genes: int) -> float:
    from moaspace.io import write_gctx

    t0 = time.perf_counter()
    write_gctx(path, LazyRandom(n_sigs, n_genes), [f"SIG{i:07d}" for i in range(n_sigs)],
               [str(10_000 + i) for i in range(n_genes)], chunk_rows=256)
    return time.perf_counter() - t0


def child(mode: str, path: str, n_read: int, seed: int) -> None:
    """Run one read in this (fresh) process and print JSON with time and peak RSS."""
    import h5py

    from moaspace.io import read_gctx, read_gctx_meta

    _, cols = read_gctx_meta(path)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(cols), size=n_read, replace=False)
    cids = cols.index[pick].tolist()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if mode == "subset":
        adata = read_gctx(path, cids=cids)
        X = adata.X
    else:
        with h5py.File(path, "r") as handle:
            full = handle["/0/DATA/0/matrix"][()]
        X = full[pick]
        del full
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_bytes": peak,
                      "rss_before_read_bytes": base_rss, "output_bytes": int(X.nbytes),
                      "shape": list(X.shape), "checksum": float(X[:100].sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-sigs", type=int, default=720_216)
    parser.add_argument("--n-genes", type=int, default=978)
    parser.add_argument("--n-read", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the file")
    parser.add_argument("--keep", action="store_true", help="keep the built file")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.n_read, args.seed)
        return

    workdir = Path(tempfile.mkdtemp(dir=args.dir))
    path = workdir / f"bench_{args.n_sigs}x{args.n_genes}.gctx"
    build_s = build(path, args.n_sigs, args.n_genes)
    runs = {}
    modes = ["subset"] if args.skip_naive else ["subset", "naive"]
    for mode in modes:
        cmd = [sys.executable, __file__, "--child", mode, str(path), "--n-read",
               str(args.n_read), "--seed", str(args.seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    if "naive" in runs:
        assert runs["naive"]["checksum"] == runs["subset"]["checksum"], "reads disagree"
    output = runs["subset"]["output_bytes"]
    limit = 2 * output + 300 * 2**20
    result = {
        "benchmark": "bench_gctx",
        "n_sigs": args.n_sigs, "n_genes": args.n_genes, "n_read": args.n_read,
        "file_bytes": path.stat().st_size, "build_seconds": build_s,
        "runs": runs, "subset_rss_limit_bytes": limit,
        "subset_within_limit": runs["subset"]["peak_rss_bytes"] < limit,
        "cpu_count": os.cpu_count(),
    }
    if "naive" in runs:
        result["rss_ratio_naive_over_subset"] = (
            runs["naive"]["peak_rss_bytes"] / runs["subset"]["peak_rss_bytes"])
        result["time_ratio_naive_over_subset"] = runs["naive"]["seconds"] / runs["subset"]["seconds"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_gctx.json").write_text(json.dumps({**provenance(), **result}, indent=2))

    mb = 2**20
    print(f"GCTX {args.n_sigs:,} x {args.n_genes:,} ({result['file_bytes'] / mb:,.0f} MB), "
          f"reading {args.n_read:,} random signatures (output {output / mb:,.0f} MB)")
    print(f"{'method':<10}{'seconds':>10}{'peak RSS MB':>14}")
    for mode, run in runs.items():
        print(f"{mode:<10}{run['seconds']:>10.1f}{run['peak_rss_bytes'] / mb:>14,.0f}")
    print(f"subset limit (2 x output + 300 MB): {limit / mb:,.0f} MB -> "
          f"{'OK' if result['subset_within_limit'] else 'EXCEEDED'}")
    if "naive" in runs:
        print(f"naive / subset: RSS x{result['rss_ratio_naive_over_subset']:.2f}, "
              f"time x{result['time_ratio_naive_over_subset']:.2f}")
    if not args.keep:
        path.unlink()
        workdir.rmdir()
    if not result["subset_within_limit"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
