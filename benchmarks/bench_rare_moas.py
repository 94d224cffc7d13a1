"""Rare MoAs as classes (#28): how moaspace calls MoAs with 1-4 drugs, and what keeping them
costs the common ones, on the shipped real consensus set.

Per seed, 5-fold cross-validation over drugs (``pp.cv_folds``), the default model:

* ``common``: ``lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")``, the README's 519
  drugs in 44 MoAs (``prepare``'s default: rare MoAs dropped);
* ``with_rare``: the single-MoA drugs of every MoA kept as classes
  (``prepare --keep-rare-moas``).

Reported: macro-F1 over the 44 common MoAs on their drugs (both data sets), and for the rare
MoAs, by their number of drugs, the share of their drugs called right (recall) and how
often the model calls a rare MoA wrongly (its precision). A MoA with one drug is never in
the training folds when its drug is tested: its recall is 0 by construction.

    python benchmarks/bench_rare_moas.py --seeds 0,1,2

Writes ``benchmarks/results/bench_rare_moas.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

import moaspace as ms
from moaspace._utils import provenance
from moaspace.pp._split import cv_folds

OUT = Path(__file__).resolve().parent / "results"


def cv_calls(adata, seed: int, max_epochs: int) -> pd.Series:
    """The pooled test calls (top known MoA) of 5-fold CV over the drugs of ``adata``."""
    calls = pd.Series(index=adata.obs_names, dtype=object)
    for labels in cv_folds(adata, 5, seed=seed):
        data = adata.copy()
        data.obs["split"] = pd.Categorical(labels, categories=["train", "val", "test"])
        model = ms.MoaModel(data)
        model.train(max_epochs=max_epochs, progress_bar=False, seed=seed, accelerator="cpu")
        test = data[labels == "test"].copy()
        pred = ms.tl.predict(model, test, compound_key=None, open_set=False, min_strength=0)
        calls[test.obs_names] = pred.obs["moa_pred"].astype(str).to_numpy()
    return calls


def run_seed(common, with_rare, seed: int, max_epochs: int) -> dict:
    out = {}
    shared = common.obs_names
    labels44 = sorted(common.obs["moa"].astype(str).unique())
    for name, data in (("common", common), ("with_rare", with_rare)):
        calls = cv_calls(data, seed, max_epochs)
        y = data.obs["moa"].astype(str)
        out[f"macro_f1_common_{name}"] = float(f1_score(
            y[shared], calls[shared], labels=labels44, average="macro"))
        if name == "with_rare":
            size = y.map(y.value_counts())
            rare = ~y.isin(labels44)
            for lo, hi, key in ((1, 1, "1"), (2, 2, "2"), (3, 4, "3-4")):
                rows = rare & size.between(lo, hi)
                out[f"rare_{key}_drugs"] = int(rows.sum())
                out[f"rare_{key}_recall"] = float((calls[rows] == y[rows]).mean())
            called_rare = calls.isin(set(y[rare]))
            out["rare_calls"] = int(called_rare.sum())
            out["rare_call_precision"] = (float((calls[called_rare] == y[called_rare]).mean())
                                          if called_rare.any() else float("nan"))
            out["n_classes_with_rare"] = int(y.nunique())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=60)
    args = p.parse_args(argv)
    common = ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    every = ms.datasets.lincs_consensus(multi_moa="drop")
    with_rare = every[every.obs["moa"].notna()].copy()
    t0 = time.perf_counter()
    seeds = {int(s): run_seed(common, with_rare, int(s), args.max_epochs)
             for s in args.seeds.split(",")}
    frame = pd.DataFrame(seeds).T
    print(frame.round(3).to_string())
    diff = frame["macro_f1_common_with_rare"] - frame["macro_f1_common_common"]
    summary = {"common_f1_change_mean": float(diff.mean()),
               "common_f1_change_sd": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
               **{c: float(frame[c].mean()) for c in frame.columns}}
    print(json.dumps(summary, indent=1))
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_rare_moas.json").write_text(json.dumps(
        {**provenance(), "max_epochs": args.max_epochs, "seconds": time.perf_counter() - t0,
         "seeds": {str(k): v for k, v in seeds.items()}, "summary": summary},
        indent=1, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


if __name__ == "__main__":
    main()
