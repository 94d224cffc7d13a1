"""Out-of-core training: a backed ``.h5ad`` bigger than a memory limit, and its cost.

    python benchmarks/bench_backed_train.py                 # 50,000 x 12,328 (2.5 GB), 1 GB limit
    python benchmarks/bench_backed_train.py --n-signatures 20000 --limit-mb 512 --fit-signatures 8000

The result kept in ``benchmarks/results`` came from (2-core VM, about 5 min):

    python benchmarks/bench_backed_train.py --n-signatures 40000 --limit-mb 768 \
        --fit-signatures 20000 --cold --hp '{"hidden_dims": [256, 128], "embedding_dim": 64}'

Each run is a fresh process (``worker`` below):

1. **larger than the limit**: an ``.h5ad`` of ``--n-signatures`` x ``--n-genes``
   float32 (bigger than the limit) is written block by block. A process imports
   moaspace, runs a tiny warm-up training (lazy imports, thread pools: the
   baseline), then caps its address space (``RLIMIT_AS``) at that baseline +
   ``--limit-mb``. Loading the file in memory must fail (MemoryError);
   ``MoaModel`` on ``read_h5ad(path, backed="r")`` then trains ``--max-epochs``
   under the same limit and saves a model that loads. Peak RSS (``VmHWM``) and
   address space (``VmPeak``) are recorded.
2. **throughput** on a file of ``--fit-signatures`` rows that fits: the same
   training in memory, backed (file in the page cache) and backed cold (file
   dropped from the page cache first, ``posix_fadvise(DONTNEED)``: batches come
   from the disk), with the ``--hp`` network and with a small I/O-bound network
   (``--io-hp``, where reading rows costs the most relative to compute).

Samples/s are measured over the training batches of each epoch (not
validation). ``--cold`` also drops the big file from the page cache before run
1. Writes ``benchmarks/results/bench_backed_train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from moaspace._utils import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MB = 2**20
sys.path.insert(0, str(ROOT / "tests"))  # _synthetic: the test suite's data and memory helpers


def write_h5ad(path: Path, n_obs: int, n_vars: int, seed: int = 0, block: int = 1000) -> dict:
    """The synthetic backed .h5ad of ``tests/_synthetic.write_blocked_h5ad`` and its sizes.

    20 MoAs x 10 compounds; compounds of group 0 are validation, of group 1
    test. X = 0.7 x MoA centroid + noise.
    """
    from _synthetic import write_blocked_h5ad

    t0 = time.perf_counter()
    write_blocked_h5ad(path, n_obs, n_vars, n_moas=20, n_compounds=200, centroid_scale=0.7,
                       seed=seed, block=block)
    return {"path": str(path), "file_bytes": path.stat().st_size,
            "x_bytes": n_obs * n_vars * 4, "shape": [n_obs, n_vars],
            "write_seconds": round(time.perf_counter() - t0, 1)}


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ worker process
def worker(spec: dict) -> dict:
    """One training run; ``spec``: path, mode (memory | backed), limit_mb, hp, train."""
    import anndata as ad
    import lightning as L
    import torch

    from _synthetic import proc_status_bytes as _status
    from _synthetic import warm_up_training
    from moaspace.model import MoaModel

    torch.set_num_threads(spec["threads"])

    class EpochTimer(L.Callback):
        def __init__(self):
            self.train_s: list[float] = []
            self._t = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # before validation
            self.train_s.append(time.perf_counter() - self._t)

    warm_up_training()

    out: dict = {"mode": spec["mode"], "base_vsz_bytes": _status("VmSize"),
                 "base_rss_bytes": _status("VmRSS")}
    if spec.get("limit_mb"):
        limit = out["base_vsz_bytes"] + spec["limit_mb"] * MB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        out["limit_vsz_bytes"] = limit
        t0 = time.perf_counter()
        try:
            loaded = ad.read_h5ad(spec["path"])
            out["in_memory_load"] = f"loaded {loaded.shape}"
            del loaded
        except Exception as exc:  # MemoryError (anndata may wrap it)
            out["in_memory_load"] = " <- ".join(
                f"{type(e).__name__}: {e}" for e in (exc, exc.__cause__) if e)
        out["in_memory_load_seconds"] = round(time.perf_counter() - t0, 2)
    if spec.get("cold"):
        drop_from_page_cache(Path(spec["path"]))
    t0 = time.perf_counter()
    if spec["mode"] == "backed":
        adata = ad.read_h5ad(spec["path"], backed="r")
    else:
        adata = ad.read_h5ad(spec["path"])
    out["load_seconds"] = round(time.perf_counter() - t0, 2)
    timer = EpochTimer()
    model = MoaModel(adata, **spec["hp"])
    t0 = time.perf_counter()
    model.train(**spec["train"], callbacks=[timer], progress_bar=False, accelerator="cpu")
    out["train_seconds"] = round(time.perf_counter() - t0, 1)
    if spec.get("model_dir"):
        model.save(spec["model_dir"], overwrite=True)
        MoaModel.load(spec["model_dir"])  # a valid model directory
        out["model_dir"] = spec["model_dir"]
    n_train = model.train_info["n_train"]
    out.update({
        "n_train": n_train, "epochs": len(model.history),
        "epoch_train_seconds": [round(s, 2) for s in timer.train_s],
        "samples_per_s": round(n_train / float(np.median(timer.train_s)), 1),
        "best_val_f1": model.best_val_f1,
        "peak_rss_bytes": _status("VmHWM"), "peak_vsz_bytes": _status("VmPeak"),
    })
    out["peak_rss_over_base_bytes"] = out["peak_rss_bytes"] - out["base_rss_bytes"]
    return out


def run_worker(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]),
           "MALLOC_ARENA_MAX": "2"}  # glibc: no 64 MB arena reservation per thread
    load_before = round(os.getloadavg()[0], 2)  # a shared machine: other jobs slow a run
    proc = subprocess.run([sys.executable, __file__, "worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {spec['mode']} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "load_average_1min": [load_before, round(os.getloadavg()[0], 2)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-signatures", type=int, default=50_000,
                   help="rows of the file bigger than the limit")
    p.add_argument("--n-genes", type=int, default=12_328)
    p.add_argument("--limit-mb", type=int, default=1024,
                   help="address space allowed above the post-import baseline")
    p.add_argument("--fit-signatures", type=int, default=10_000,
                   help="rows of the file that fits, for in-memory vs backed samples/s")
    p.add_argument("--max-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--hp", default="{}", help="JSON dict of MoaModel hyper-parameters")
    p.add_argument("--io-hp", default='{"hidden_dims": [64, 32], "embedding_dim": 16}',
                   help="hyper-parameters of the I/O-bound throughput comparison ('' skips it)")
    p.add_argument("--cold", action="store_true",
                   help="drop the big file from the OS page cache before its run")
    p.add_argument("--dir", type=Path, default=Path("/tmp/moaspace_bench_backed"))
    p.add_argument("--keep", action="store_true", help="keep the .h5ad files")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_backed_train.json")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    x_bytes = args.n_signatures * args.n_genes * 4
    if x_bytes <= args.limit_mb * MB:
        raise SystemExit(f"the file ({x_bytes / MB:.0f} MB) must be bigger than the limit "
                         f"({args.limit_mb} MB): raise --n-signatures or lower --limit-mb")
    hp = {"val_max_reference": 5000, **json.loads(args.hp)}
    train = {"max_epochs": args.max_epochs, "batch_size": args.batch_size, "seed": 0,
             "patience": args.max_epochs}
    common = {"hp": hp, "train": train, "threads": args.threads}

    big = write_h5ad(args.dir / "big.h5ad", args.n_signatures, args.n_genes)
    print(f"wrote {big['shape']} ({big['file_bytes'] / MB:,.0f} MB) in {big['write_seconds']} s",
          flush=True)
    limited = run_worker({**common, "mode": "backed", "path": big["path"], "cold": args.cold,
                          "limit_mb": args.limit_mb, "model_dir": str(args.dir / "model")})
    if "MemoryError" not in limited["in_memory_load"]:
        raise SystemExit(f"loading in memory did not fail under the limit: "
                         f"{limited['in_memory_load']}")
    if not args.keep:
        os.unlink(big["path"])

    fit = write_h5ad(args.dir / "fit.h5ad", args.fit_signatures, args.n_genes, seed=1)
    networks = {"hp": hp}
    if args.io_hp:
        networks["io_hp"] = {"val_max_reference": 5000, **json.loads(args.io_hp)}
    throughput = {}
    for name, net_hp in networks.items():
        runs = {}
        for mode, cold in (("memory", False), ("backed", False), ("backed", True)):
            key = f"{mode}_cold" if cold else mode
            runs[key] = run_worker({**common, "hp": net_hp, "mode": mode, "cold": cold,
                                    "path": fit["path"]})
            print(f"{name} {key}: {runs[key]['samples_per_s']:,.0f} samples/s", flush=True)
        throughput[name] = {
            "hp": net_hp, **runs,
            "samples_per_s": {k: v["samples_per_s"] for k, v in runs.items()},
            "backed_over_in_memory": round(
                runs["backed"]["samples_per_s"] / runs["memory"]["samples_per_s"], 3),
            "backed_cold_over_in_memory": round(
                runs["backed_cold"]["samples_per_s"] / runs["memory"]["samples_per_s"], 3),
            "peak_rss_over_base_mb": {k: round(v["peak_rss_over_base_bytes"] / MB, 1)
                                      for k, v in runs.items()},
        }
    if not args.keep:
        os.unlink(fit["path"])

    import torch

    result = {
        "benchmark": "bench_backed_train",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "load_average_1min_end": round(os.getloadavg()[0], 2)},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "page_cache_big_run": "cold (dropped first)" if args.cold else "warm (just written)",
        "larger_than_limit": {
            "file": big, "limit_mb_above_baseline": args.limit_mb,
            "x_over_limit": round(big["x_bytes"] / (args.limit_mb * MB), 2),
            **limited,
            "peak_vsz_over_base_mb": round(
                (limited["peak_vsz_bytes"] - limited["base_vsz_bytes"]) / MB, 1),
            "peak_rss_over_base_mb": round(limited["peak_rss_over_base_bytes"] / MB, 1),
        },
        "throughput_fits_in_memory": {"file": fit, **throughput},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), **result}, indent=1))

    lim = result["larger_than_limit"]
    rows = [
        ("file > limit", f"{big['shape'][0]:,} x {big['shape'][1]:,} float32, X "
                         f"{big['x_bytes'] / MB:,.0f} MB; limit baseline + {args.limit_mb} MB"),
        ("in-memory load under the limit", lim["in_memory_load"][:70]),
        ("backed training under the limit",
         f"{lim['epochs']} epoch(s), {lim['samples_per_s']:,.0f} samples/s, "
         f"{lim['train_seconds']} s"),
        ("peak RSS / address space over baseline",
         f"{lim['peak_rss_over_base_mb']:,.0f} MB / {lim['peak_vsz_over_base_mb']:,.0f} MB"),
    ]
    for name, t in throughput.items():
        sps, rss = t["samples_per_s"], t["peak_rss_over_base_mb"]
        rows += [
            (f"samples/s, {fit['shape'][0]:,} rows, {name} {t['hp'].get('hidden_dims', 'default')}",
             f"in memory {sps['memory']:,.0f}, backed {sps['backed']:,.0f} "
             f"({t['backed_over_in_memory']}), cold {sps['backed_cold']:,.0f} "
             f"({t['backed_cold_over_in_memory']})"),
            (f"peak RSS over baseline, {name}",
             f"in memory {rss['memory']:,.0f} MB, backed {rss['backed']:,.0f} MB"),
        ]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        main()
