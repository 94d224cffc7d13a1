"""Training throughput, time to best validation F1 and peak memory on simulated data.

    python benchmarks/bench_train.py                      # ~100,000 x 978, full run
    python benchmarks/bench_train.py --n-signatures 20000 --max-epochs 10

Data come from the project simulator (``moaspace.datasets._simulate``) when it is
importable, else from the small generator in ``tests/_synthetic.py``. The
data are split by compound (``moaspace.pp._split``), the model is trained
with early stopping, and the model's kNN macro-F1 on validation and test
compounds is compared with a cosine kNN on the raw signatures of the same
split. Results are printed as a table and written to
``benchmarks/results/bench_train.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import psutil
import torch

from moaspace._core.neighbors import knn_predict
from moaspace._utils import provenance
from moaspace.model import MoaModel, macro_f1
from moaspace.pp._prepare import read_h5ad, write_h5ad
from moaspace.pp._split import split

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_train")


def make_data(n_signatures: int, n_genes: int, seed: int, source: str):
    """Labelled signatures, about ``n_signatures`` of them, with ``n_genes`` genes."""
    if source == "simulator":
        from moaspace.datasets._simulate import SimulationConfig, simulate_adata

        # the default release has ~21 signatures per compound
        n_compounds = max(60, round(n_signatures / 21.2))
        genes = "landmark" if n_genes == 978 else "all"
        adata, _ = simulate_adata(SimulationConfig(seed=seed, n_compounds=n_compounds,
                                                   genes=genes))
        adata = adata[adata.obs["moa"].astype(str) != ""].copy()
        counts = adata.obs["pert_id"].value_counts()
        adata = adata[adata.obs["pert_id"].isin(counts.index[counts >= 3])].copy()
        return adata
    sys.path.insert(0, str(ROOT / "tests"))
    from _synthetic import make_synthetic

    cells = ("A549", *(f"CELL{i}" for i in range(10)))
    return make_synthetic(n_moas=30, compounds_per_moa=max(4, n_signatures // 30 // 20),
                          n_genes=n_genes, n_signatures=n_signatures, cells=cells, seed=seed)


class Timer(L.Callback):
    """Per-epoch training and validation wall time, and RSS samples.

    Plain callbacks run *before* the module's ``on_train_epoch_end`` (where
    validation happens), so ``epoch end -> next epoch start`` is validation
    plus checkpointing.
    """

    def __init__(self):
        self.proc = psutil.Process()
        self.epochs: list[dict] = []
        self.peak_rss = 0
        self.t_fit = None
        self._start = None
        self._end = None

    def _rss(self):
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def on_fit_start(self, trainer, pl_module):
        self.t_fit = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        now = time.perf_counter()
        if self._end is not None:
            self.epochs[-1]["val_s"] = now - self._end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % 50 == 0:
            self._rss()

    def on_train_epoch_end(self, trainer, pl_module):
        self._end = time.perf_counter()
        self._rss()
        self.epochs.append({"epoch": trainer.current_epoch, "train_s": self._end - self._start,
                            "end_s": self._end - self.t_fit})
        n = len(pl_module.data.train_idx)
        logger.info("epoch %d: %.1f s training, %.0f samples/s", trainer.current_epoch,
                    self._end - self._start, n / (self._end - self._start))

    def on_train_end(self, trainer, pl_module):
        if self._end is not None and self.epochs and "val_s" not in self.epochs[-1]:
            self.epochs[-1]["val_s"] = time.perf_counter() - self._end
        self._rss()


def knn_scores(emb: np.ndarray, adata, k: int) -> dict:
    """Signature-level kNN macro-F1 on val and test against the training signatures."""
    split_ = adata.obs["split"].astype(str).to_numpy()
    moa = adata.obs["moa"].astype(str).to_numpy()
    classes = sorted(set(moa[split_ == "train"]))
    code = {m: i for i, m in enumerate(classes)}
    y = np.array([code.get(m, -1) for m in moa])
    train = split_ == "train"
    out = {}
    for part in ("val", "test"):
        q = (split_ == part) & (y >= 0)
        scores, _ = knn_predict(emb[q], emb[train], y[train], k=k, classes=range(len(classes)))
        out[part] = round(macro_f1(y[q], scores.argmax(axis=1)), 4)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-signatures", type=int, default=100_000)
    p.add_argument("--n-genes", type=int, default=978)
    p.add_argument("--source", choices=["simulator", "synthetic"], default="simulator")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--hp", default="{}", help="JSON dict of MoaModel hyper-parameters")
    p.add_argument("--no-raw", action="store_true", help="skip the raw-signature kNN baseline")
    p.add_argument("--baseline-hp", default=None,
                   help="JSON hyper-parameters of a second model trained in the same run; "
                        "the result records the train-time ratio (e.g. the previous default: "
                        '\'{"input_whitening": "off", "linear_view_weight": 0}\')')
    p.add_argument("--data-cache", type=Path, default=None,
                   help="read the simulated data from this .h5ad if it exists, else write it")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_train.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("moaspace.datasets._simulate").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.source == "simulator":
        try:
            import moaspace.datasets._simulate  # noqa: F401
        except ImportError:
            logger.warning("moaspace.datasets._simulate not available; using the synthetic generator")
            args.source = "synthetic"

    t0 = time.perf_counter()
    if args.data_cache is not None and args.data_cache.exists():
        adata = read_h5ad(args.data_cache)
    else:
        adata = make_data(args.n_signatures, args.n_genes, args.seed, args.source)
        if args.data_cache is not None:
            write_h5ad(adata, args.data_cache)
    split(adata, "compound", seed=args.seed)
    t_data = time.perf_counter() - t0
    logger.info("data: %s in %.0f s", adata.shape, t_data)

    timer = Timer()
    hp = json.loads(args.hp)
    model = MoaModel(adata, **hp)
    t1 = time.perf_counter()
    summary = model.train(max_epochs=args.max_epochs, batch_size=args.batch_size,
                          seed=args.seed, patience=args.patience, accelerator=args.accelerator,
                          callbacks=[timer], progress_bar=False)
    t_train = time.perf_counter() - t1
    n_train = model.train_info["n_train"]
    epochs = timer.epochs
    train_s = [e["train_s"] for e in epochs]
    best = summary["best_epoch"]
    t2 = time.perf_counter()
    emb = model.embed(adata)
    t_embed = time.perf_counter() - t2
    scores = {"model": knn_scores(emb, adata, model.config.knn_k)}
    if not args.no_raw:
        x = np.asarray(adata.X, dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        scores["raw_cosine_knn"] = knn_scores(x, adata, model.config.knn_k)
    result = {
        **provenance(),
        "machine": {"cpu_count": psutil.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "device": (torch.cuda.get_device_name(0)
                               if args.accelerator != "cpu" and torch.cuda.is_available()
                               else "cpu")},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"source": args.source, "n_signatures": int(adata.n_obs),
                 "n_genes": int(adata.n_vars), "n_moas": int(adata.obs["moa"].nunique()),
                 "n_compounds": int(adata.obs["pert_id"].nunique()), "n_train": int(n_train),
                 "n_val": int(model.train_info["n_val"]), "seconds": round(t_data, 1)},
        "config": model.config.to_dict(),
        "epochs_run": len(epochs),
        "best_epoch": best,
        "best_val_f1": summary["best_val_f1"],
        "samples_per_s_median": round(n_train / float(np.median(train_s)), 1),
        "epoch_train_s_median": round(float(np.median(train_s)), 2),
        "epoch_val_s_median": round(float(np.median([e.get("val_s", 0) for e in epochs])), 2),
        "time_to_best_s": round(epochs[best]["end_s"], 1) if 0 <= best < len(epochs) else None,
        "train_total_s": round(t_train, 1),
        "embed_s": round(t_embed, 2),
        "peak_rss_mb": round(max(timer.peak_rss,
                                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
                             / 2**20, 1),
        "scores": scores,
        # every epoch timed, of every candidate network (input_whitening="auto" trains two)
        "per_epoch": [{**e, "samples_per_s": round(n_train / e["train_s"], 1)} for e in epochs],
        "history": model.history,
        "train_info": model.train_info,
    }
    if args.baseline_hp is not None:
        # the same data, seed and machine, in the same run: the time ratio is what is compared
        base = MoaModel(adata, **json.loads(args.baseline_hp))
        t3 = time.perf_counter()
        base.train(max_epochs=args.max_epochs, batch_size=args.batch_size, seed=args.seed,
                   patience=args.patience, accelerator=args.accelerator, progress_bar=False)
        t_base = time.perf_counter() - t3
        result["baseline"] = {"hp": json.loads(args.baseline_hp),
                              "train_total_s": round(t_base, 1),
                              "epochs_run": len(base.history),
                              "scores": {"model": knn_scores(base.embed(adata), adata,
                                                             base.config.knn_k)}}
        result["train_time_ratio"] = round(t_train / t_base, 2)
        logger.info("train time %.0f s vs baseline %.0f s: ratio %.2f", t_train, t_base,
                    t_train / t_base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))

    rows = [
        ("data", f"{adata.n_obs:,} x {adata.n_vars} ({args.source}), "
                 f"{result['data']['n_moas']} MoAs, {result['data']['n_compounds']} compounds"),
        ("train / val signatures", f"{n_train:,} / {result['data']['n_val']:,}"),
        ("epochs run (best)", f"{len(epochs)} ({best})"),
        ("samples/s (median epoch)", f"{result['samples_per_s_median']:,.0f}"),
        ("train s / val s per epoch",
         f"{result['epoch_train_s_median']} / {result['epoch_val_s_median']}"),
        ("time to best val F1", f"{result['time_to_best_s']} s"),
        ("total training time", f"{result['train_total_s']} s"),
        ("peak RSS", f"{result['peak_rss_mb']:,.0f} MB"),
        ("val / test macro-F1 model", f"{scores['model']['val']} / {scores['model']['test']}"),
    ]
    if "raw_cosine_knn" in scores:
        raw = scores["raw_cosine_knn"]
        rows.append(("val / test macro-F1 raw kNN", f"{raw['val']} / {raw['test']}"))
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()
