"""`moaspace prepare --genes all` at real width: wall time and peak RSS vs signatures.

For each N (default 10k, 25k, 50k, 100k signatures) this writes a LINCS-format
release of N signatures x 12,328 genes (978 real landmark ids + 11,350
synthetic ids, as many as ``geneinfo_beta.txt`` has), streaming the matrix
into the ``.gctx`` from a lazy row generator (never whole in memory), then
runs ``moaspace prepare --genes all`` in a fresh subprocess and records its
wall time and peak RSS (``os.wait4`` rusage of that child alone). The gene
order of the matrix is shuffled relative to ``geneinfo`` so every block is
re-ordered, as with the real files; the output is spot-checked against the
``.gctx`` (random rows, all genes, by id) so a fast but wrong run cannot pass.

All signatures pass the default filters (``trt_cp``, ``is_hiq == 1``, 6 h /
24 h, >= 10 signatures per compound, >= 10 compounds per MoA), so the output
is N x 12,328 float32 (N x 49.3 kB: 4.9 GB at 100k).

Sizes whose run would exceed ``--max-seconds`` (predicted from a linear fit of
the sizes already run) or the free memory / disk are not run but extrapolated,
and labelled ``"extrapolated": true`` in the JSON and the table.

    python benchmarks/bench_prepare.py [--sizes 10000,25000,50000,100000] [--dir /tmp]

Writes ``benchmarks/results/bench_prepare.json``. Disk: about 2 x output per
size (gctx + h5ad), deleted after each size unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moaspace._utils import provenance

RESULTS = Path(__file__).resolve().parent / "results"
N_GENES = 12_328
ROWS_PER_COMPOUND = 20
COMPOUNDS_PER_MOA = 25
MB = 2**20


class LazyRows:
    """Row-sliceable matrix made on demand: row ``i`` depends on (seed, i // block) only."""

    def __init__(self, n_rows: int, n_cols: int, seed: int = 0, block: int = 4096):
        self.shape = (n_rows, n_cols)
        self.seed, self.block = seed, block

    def _block(self, b: int) -> np.ndarray:
        stop = min(self.shape[0], (b + 1) * self.block)
        rng = np.random.default_rng([self.seed, b])
        return rng.standard_normal((stop - b * self.block, self.shape[1]), dtype=np.float32)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        assert step == 1
        parts = []
        for b in range(start // self.block, (max(stop, start + 1) - 1) // self.block + 1):
            block = self._block(b)
            lo, hi = max(start - b * self.block, 0), min(stop - b * self.block, len(block))
            parts.append(block[lo:hi])
        return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), np.float32)


def genes() -> pd.DataFrame:
    """geneinfo: the 978 real landmark ids first, then synthetic 'best inferred' ids."""
    from importlib import resources

    with resources.as_file(resources.files("moaspace.resources") / "landmark_genes.csv") as p:
        lm = pd.read_csv(p, dtype={"pr_gene_id": str})
    n_extra = N_GENES - len(lm)
    ids = lm["pr_gene_id"].tolist() + [str(990_000_001 + i) for i in range(n_extra)]
    symbols = lm["pr_gene_symbol"].tolist() + [f"SYN{i}" for i in range(n_extra)]
    space = ["landmark"] * len(lm) + ["best inferred"] * n_extra
    return pd.DataFrame({"gene_id": ids, "gene_symbol": symbols, "ensembl_id": "-",
                         "gene_title": "-", "gene_type": "protein-coding", "src": "NCBI",
                         "feature_space": space})


def build(workdir: Path, n_sigs: int, seed: int) -> dict:
    """Write gctx + siginfo + geneinfo + compoundinfo + moa table; return paths and timings."""
    from moaspace.io import write_gctx

    workdir.mkdir(parents=True, exist_ok=True)
    geneinfo = genes()
    rng = np.random.default_rng(seed)
    gene_order = rng.permutation(len(geneinfo))  # matrix rows in another order than geneinfo
    matrix_genes = geneinfo["gene_id"].to_numpy()[gene_order].tolist()
    n_cpd = max(1, n_sigs // ROWS_PER_COMPOUND)
    cpd = np.arange(n_sigs) % n_cpd
    pert_ids = np.array([f"BRD-K{i:08d}" for i in range(n_cpd)])
    moa_of_cpd = np.array([f"MoA_{i // COMPOUNDS_PER_MOA:04d}" for i in range(n_cpd)])
    cells = np.array(["A549", "MCF7", "PC3", "VCAP", "HT29", "A375", "HA1E", "HEPG2"])
    sig_ids = [f"BENCH{i // 384:05d}_{cells[i % 8]}_24H:{pert_ids[cpd[i]]}:{i % 384}"
               for i in range(n_sigs)]
    siginfo = pd.DataFrame({
        "sig_id": sig_ids, "pert_id": pert_ids[cpd], "cmap_name": [f"drug{c}" for c in cpd],
        "pert_type": "trt_cp", "cell_iname": cells[np.arange(n_sigs) % 8], "pert_dose": 10.0,
        "pert_dose_unit": "uM", "pert_idose": "10 uM",
        "pert_time": np.where(np.arange(n_sigs) % 2, 24, 6), "pert_time_unit": "h",
        "tas": rng.uniform(0, 1, n_sigs).round(4), "is_hiq": 1, "qc_pass": 1,
    })
    compoundinfo = pd.DataFrame({"pert_id": pert_ids, "cmap_name": [f"drug{i}" for i in
                                                                   range(n_cpd)],
                                 "target": "EGFR", "moa": moa_of_cpd})
    labels = pd.DataFrame({"BRD-ID": pert_ids, "Drug name": compoundinfo["cmap_name"],
                           "MOA": moa_of_cpd})
    paths = {"gctx": workdir / "level5_bench.gctx", "siginfo": workdir / "siginfo_beta.txt",
             "geneinfo": workdir / "geneinfo_beta.txt",
             "compoundinfo": workdir / "compoundinfo_beta.txt",
             "moa_labels": workdir / "moa_labels.csv"}
    t0 = time.perf_counter()
    write_gctx(paths["gctx"], LazyRows(n_sigs, N_GENES, seed), sig_ids, matrix_genes)
    gctx_s = time.perf_counter() - t0
    siginfo.to_csv(paths["siginfo"], sep="\t", index=False)
    geneinfo.to_csv(paths["geneinfo"], sep="\t", index=False)
    compoundinfo.to_csv(paths["compoundinfo"], sep="\t", index=False)
    labels.to_csv(paths["moa_labels"], index=False)
    return {"paths": paths, "build_seconds": gctx_s, "n_compounds": n_cpd,
            "n_moas": len(set(moa_of_cpd))}


def run_prepare(paths: dict, out: Path) -> dict:
    """``moaspace prepare --genes all`` in a fresh process; wall time and its own peak RSS."""
    cmd = [sys.executable, "-m", "moaspace.cli", "--quiet", "prepare", "--gctx",
           str(paths["gctx"]), "--siginfo", str(paths["siginfo"]), "--geneinfo",
           str(paths["geneinfo"]), "--compoundinfo", str(paths["compoundinfo"]),
           "--moa-labels", str(paths["moa_labels"]), "--genes", "all", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime}


def verify(paths: dict, out: Path, n_check: int, seed: int) -> int:
    """Compare random output rows with the gctx, gene by gene id; return rows checked."""
    import anndata as ad
    import h5py

    adata = ad.read_h5ad(out, backed="r")
    try:
        assert adata.shape[1] == N_GENES, adata.shape
        rng = np.random.default_rng(seed + 1)
        rows = np.sort(rng.choice(adata.n_obs, size=min(n_check, adata.n_obs), replace=False))
        got = np.asarray(adata.X[rows])
        names = adata.obs_names[rows]
        var = list(adata.var_names)
    finally:
        adata.file.close()
    with h5py.File(paths["gctx"], "r") as handle:
        col = pd.Index([s.decode() for s in handle["/0/META/COL/id"][()]])
        row = pd.Index([s.decode() for s in handle["/0/META/ROW/id"][()]])
        pos = col.get_indexer(names)
        order = np.argsort(pos)
        want = np.empty_like(got)
        want[order] = handle["/0/DATA/0/matrix"][np.sort(pos), :]
    want = want[:, row.get_indexer(var)]
    if not np.array_equal(got, want):
        raise SystemExit(f"{out}: values differ from the gctx")
    return len(rows)


def fit(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares line value = a + b * n."""
    if len(sizes) == 1:
        return 0.0, values[0] / sizes[0]
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,25000,50000,100000",
                        help="comma list of signature counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (big files)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="skip (and extrapolate) a size predicted to take longer")
    parser.add_argument("--check-rows", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the files of each size")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_prepare.json")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())

    import psutil

    runs: list[dict] = []
    result = {
        "benchmark": "bench_prepare", "command": "moaspace prepare --genes all",
        "n_genes": N_GENES, "sizes": sizes, "cpu_count": os.cpu_count(),
        "memory_total_bytes": psutil.virtual_memory().total, "python": sys.version.split()[0],
        "machine": platform.platform(), "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        output_bytes = n * N_GENES * 4
        measured = [r for r in runs if not r.get("extrapolated")]
        reason = None
        if measured:
            a, b = fit([r["n_sigs"] for r in measured], [r["prepare_seconds"] for r in measured])
            if a + b * n > args.max_seconds:
                reason = f"predicted {a + b * n:.0f} s > --max-seconds {args.max_seconds:.0f}"
        scratch = args.dir or Path(tempfile.gettempdir())
        free_disk = shutil.disk_usage(scratch).free
        if reason is None and free_disk < 2.3 * output_bytes + 2 * 2**30:
            reason = f"only {free_disk / 2**30:.1f} GB free disk in {scratch}"
        avail = psutil.virtual_memory().available
        if reason is None and avail < 1.5 * output_bytes + 2**30:
            reason = f"only {avail / 2**30:.1f} GB memory available"
        if reason is not None:
            a, b = fit([r["n_sigs"] for r in measured], [r["prepare_seconds"] for r in measured])
            ar, br = fit([r["n_sigs"] for r in measured], [r["peak_rss_bytes"] for r in measured])
            runs.append({"n_sigs": n, "extrapolated": True, "reason": reason,
                         "output_bytes": output_bytes, "prepare_seconds": a + b * n,
                         "peak_rss_bytes": ar + br * n})
            print(f"N={n:,}: not run ({reason}); extrapolated", flush=True)
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"bench_prepare_{n}_", dir=args.dir))
        try:
            print(f"N={n:,}: building {n:,} x {N_GENES:,} release in {workdir}", flush=True)
            built = build(workdir, n, args.seed)
            out = workdir / "prepared.h5ad"
            print(f"N={n:,}: gctx written in {built['build_seconds']:.1f} s; running prepare",
                  flush=True)
            load_before = os.getloadavg()[0]
            prep = run_prepare(built["paths"], out)
            checked = verify(built["paths"], out, args.check_rows, args.seed)
            run = {"n_sigs": n, "extrapolated": False, "output_bytes": output_bytes,
                   "gctx_file_bytes": built["paths"]["gctx"].stat().st_size,
                   "h5ad_file_bytes": out.stat().st_size,
                   "build_gctx_seconds": built["build_seconds"],
                   "prepare_seconds": prep["seconds"], "peak_rss_bytes": prep["peak_rss_bytes"],
                   "user_seconds": prep["user_seconds"], "system_seconds": prep["system_seconds"],
                   "rss_over_output": prep["peak_rss_bytes"] / output_bytes,
                   "rows_verified": checked, "n_compounds": built["n_compounds"],
                   "load_average_1min_before": load_before,
                   "load_average_1min_after": os.getloadavg()[0],
                   "n_moas": built["n_moas"]}
            runs.append(run)
            print(f"N={n:,}: prepare {prep['seconds']:.1f} s, peak RSS "
                  f"{prep['peak_rss_bytes'] / MB:,.0f} MB (output {output_bytes / MB:,.0f} MB), "
                  f"{checked} rows verified", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        args.out.write_text(json.dumps({**provenance(), **result}, indent=2))

    measured = [r for r in runs if not r.get("extrapolated")]
    if len(measured) >= 2:
        ns = [r["n_sigs"] for r in measured]
        a, b = fit(ns, [r["prepare_seconds"] for r in measured])
        ar, br = fit(ns, [r["peak_rss_bytes"] for r in measured])
        result["fit"] = {"seconds_intercept": a, "seconds_per_1k_sigs": 1000 * b,
                         "rss_intercept_bytes": ar, "rss_bytes_per_sig": br,
                         "output_bytes_per_sig": N_GENES * 4}
    args.out.write_text(json.dumps({**provenance(), **result}, indent=2))

    print(f"\nmoaspace prepare --genes all ({N_GENES:,} genes), {os.cpu_count()} CPUs, "
          f"{result['memory_total_bytes'] / 2**30:.0f} GB RAM")
    print(f"{'signatures':>11}{'output MB':>11}{'seconds':>9}{'peak RSS MB':>13}"
          f"{'RSS/out':>9}  note")
    for r in runs:
        note = "EXTRAPOLATED (linear fit)" if r.get("extrapolated") else "measured"
        print(f"{r['n_sigs']:>11,}{r['output_bytes'] / MB:>11,.0f}{r['prepare_seconds']:>9.1f}"
              f"{r['peak_rss_bytes'] / MB:>13,.0f}{r['peak_rss_bytes'] / r['output_bytes']:>9.2f}"
              f"  {note}")
    if "fit" in result:
        f = result["fit"]
        print(f"linear fit: {f['seconds_intercept']:.1f} s + {f['seconds_per_1k_sigs']:.2f} s "
              f"per 1k signatures; RSS {f['rss_intercept_bytes'] / MB:.0f} MB + "
              f"{f['rss_bytes_per_sig'] / 1024:.1f} kB per signature "
              f"(output {f['output_bytes_per_sig'] / 1024:.1f} kB)")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
