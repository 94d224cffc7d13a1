"""What the default 'no call' for weak signatures costs and buys (#28).

For each data set and seed: split by compound, train the default model, ``predict`` the test
signatures with the calibrated cut-offs (the default: strength and calibrated probability),
with the strength cut-off alone (``min_score=0``) and with neither (``min_strength=0,
min_score=0``), and report the share withheld, the accuracy of the calls made, and the
macro-F1 of ``moa_pred`` (abstentions count as misses) next to ``moa_pred_known`` (every
signature called). Same model, same rows, one run.

    python benchmarks/bench_no_call.py --seeds 0,1,2                   # the shipped real set
    python benchmarks/bench_no_call.py --data sim0.h5ad --seeds 0,1    # any prepared data

Writes ``benchmarks/results/bench_no_call_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

import moaspace as ms
from moaspace._utils import provenance

OUT = Path(__file__).resolve().parent / "results"


def _scores(pred, y, labels) -> dict:
    called = ~pred.obs["moa_pred"].isin(["unknown", "no call"]).to_numpy()
    right = pred.obs["moa_pred"].astype(str).to_numpy() == y
    return {"macro_f1_pred": float(f1_score(y, pred.obs["moa_pred"].astype(str), labels=labels,
                                            average="macro")),
            "no_call": float((pred.obs["moa_pred"] == "no call").mean()),
            "unknown": float((pred.obs["moa_pred"] == "unknown").mean()),
            "accuracy_called": float(right[called].mean()) if called.any() else float("nan")}


def run_seed(adata, seed: int, max_epochs: int) -> dict:
    ms.pp.split(adata, scheme="compound", seed=seed)
    model = ms.MoaModel(adata)
    model.train(max_epochs=max_epochs, progress_bar=False, seed=seed, accelerator="cpu")
    test = adata[adata.obs["split"] == "test"].copy()
    y = test.obs["moa"].astype(str).to_numpy()
    labels = sorted(set(y))
    on = ms.tl.predict(model, test, compound_key=None)
    strength = ms.tl.predict(model, test, compound_key=None, min_score=0)
    off = ms.tl.predict(model, test, compound_key=None, min_strength=0, min_score=0)
    return {"min_strength": model.calibration.min_strength,
            "min_score": model.calibration.min_score,
            "macro_f1_known": float(f1_score(y, on.obs["moa_pred_known"].astype(str),
                                             labels=labels, average="macro")),
            "default": _scores(on, y, labels), "strength_only": _scores(strength, y, labels),
            "no_cutoff": _scores(off, y, labels)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="a prepared .h5ad (default: the shipped real set)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=60)
    args = p.parse_args(argv)
    if args.data is None:
        adata = ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
        name = "real"
    else:
        adata = ms.pp.read_h5ad(args.data)
        adata = adata[adata.obs["moa"].notna()].copy()
        name = args.data.stem
    t0 = time.perf_counter()
    seeds = {int(s): run_seed(adata, int(s), args.max_epochs) for s in args.seeds.split(",")}
    print(f"| {name} seed | min strength | min score | no call (strength -> both) | unknown "
          "| accuracy of calls (off -> strength -> both) "
          "| macro-F1 moa_pred (off -> strength -> both) | moa_pred_known |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, r in seeds.items():
        d, s, o = r["default"], r["strength_only"], r["no_cutoff"]
        print(f"| {seed} | {r['min_strength'] or 0:.2f} | {r['min_score'] or 0:.3f} "
              f"| {s['no_call']:.3f} -> {d['no_call']:.3f} | {d['unknown']:.3f} "
              f"| {o['accuracy_called']:.3f} -> {s['accuracy_called']:.3f} -> "
              f"{d['accuracy_called']:.3f} | {o['macro_f1_pred']:.3f} -> "
              f"{s['macro_f1_pred']:.3f} -> {d['macro_f1_pred']:.3f} "
              f"| {r['macro_f1_known']:.3f} |")
    summary = {}
    for variant in ("strength_only", "default"):
        diff = [r[variant]["macro_f1_pred"] - r["no_cutoff"]["macro_f1_pred"]
                for r in seeds.values()]
        summary[variant] = {
            "macro_f1_pred_change_mean": float(np.mean(diff)),
            "macro_f1_pred_change_sd": float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0,
            "no_call_mean": float(np.mean([r[variant]["no_call"] for r in seeds.values()])),
            "accuracy_called_mean": float(np.mean([r[variant]["accuracy_called"]
                                                   for r in seeds.values()]))}
    summary["no_cutoff_accuracy_called_mean"] = float(np.mean(
        [r["no_cutoff"]["accuracy_called"] for r in seeds.values()]))
    print(summary)
    OUT.mkdir(exist_ok=True)
    (OUT / f"bench_no_call_{name}.json").write_text(json.dumps(
        {**provenance(), "data": name, "max_epochs": args.max_epochs,
         "seconds": time.perf_counter() - t0, "seeds": seeds, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
