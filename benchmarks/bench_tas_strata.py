"""Does our model pull ahead of logistic regression on high-TAS signatures? (issue #5)

The published anchor (MOASL: top-1 accuracy 0.52-0.56 on unseen compounds) is measured on
TAS-high signatures, and a quarter of the simulator's test signatures come from inactive
compounds that no method can classify. This script asks whether the tie between
``moaspace`` and ``logreg`` in the benchmark table (all test signatures) is an artefact of
those weak signatures: for the same splits as ``moaspace benchmark`` (default simulation,
same split seeds, same training settings: moaspace trains on train and early-stops on val;
the classical baselines fit train + val) it scores macro-F1 on the test signatures whose
TAS is at or above the 0/25/50/75% quantile of the test TAS, and the paired difference
(moaspace minus each baseline, same split) per stratum over seeds.

Writes ``benchmarks/results/bench_tas_strata.json`` and prints a table.

    python benchmarks/bench_tas_strata.py [--data data.h5ad] [--schemes compound,cell]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _simdata import add_data_argument, add_run_arguments, default_data
from sklearn.metrics import f1_score

from moaspace._utils import provenance
from moaspace.benchmark._baselines import make_baseline
from moaspace.model import MoaModel
from moaspace.model._predict import predict
from moaspace.pp._split import split

RESULTS = Path(__file__).resolve().parent / "results"
QUANTILES = (0.0, 0.25, 0.5, 0.75)
BASELINES = ("logreg", "pca_lda")


def predictions(adata: ad.AnnData, scheme: str, seed: int, max_epochs: int) -> pd.DataFrame:
    """Test-row MoA calls of moaspace and the baselines for one split seed."""
    data = split(adata, scheme, seed=seed, copy=True)
    part = data.obs["split"].astype(str).to_numpy()
    fit, test = np.isin(part, ["train", "val"]), part == "test"
    x = np.asarray(data.X)
    y = data.obs["moa"].astype(str).to_numpy()
    out = pd.DataFrame({"moa": y[test], "tas": data.obs["tas"].to_numpy()[test]})
    for name in BASELINES:
        scores, classes = make_baseline(name, seed=seed).fit(x[fit], y[fit]).predict_scores(x[test])
        out[name] = np.asarray(classes)[scores.argmax(axis=1)]
    model = MoaModel(data)
    model.train(max_epochs=max_epochs, seed=seed, progress_bar=False)
    # `moaspace predict`'s top MoA with the model's own predictor (no abstentions)
    pred = predict(model, data[test], compound_key=None, open_set=False)
    out["moaspace"] = np.asarray(pred.uns["moa"]["classes"])[pred.obsm["moa_scores"].argmax(axis=1)]
    return out


def strata(pred: pd.DataFrame) -> list[dict]:
    rows = []
    for q in QUANTILES:
        keep = pred["tas"].to_numpy() >= np.quantile(pred["tas"], q)
        y = pred["moa"].to_numpy()[keep]
        rec = {"quantile": q, "min_tas": float(np.quantile(pred["tas"], q)), "n": int(keep.sum())}
        for method in ("moaspace", *BASELINES):
            rec[method] = float(f1_score(y, pred[method].to_numpy()[keep], average="macro",
                                         labels=np.unique(y), zero_division=0))
        rows.append(rec)
    return rows


def quartiles(pred: pd.DataFrame) -> dict:
    """Accuracy of each method in each TAS quartile of the test signatures (disjoint bins),
    and in the lowest quartile the class each method calls most often: where a method
    spends its calls when the signature carries little signal."""
    q = pd.qcut(pred["tas"].rank(method="first"), 4, labels=False).to_numpy()
    out = {"accuracy": [], "lowest_quartile_top_call": {}}
    for b in range(4):
        rows = pred[q == b]
        out["accuracy"].append({m: float((rows[m] == rows["moa"]).mean())
                                for m in ("moaspace", *BASELINES)})
    low = pred[q == 0]
    for m in ("moaspace", *BASELINES):
        top = low[m].value_counts().index[0]
        out["lowest_quartile_top_call"][m] = {"moa": str(top), "calls": int((low[m] == top).sum()),
                                              "true": int((low["moa"] == top).sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_argument(parser)
    add_run_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = default_data(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    out = {"signatures": adata.n_obs, "seeds": seeds, "max_epochs": args.max_epochs,
           "schemes": {}}
    for scheme in args.schemes.split(","):
        per_seed = []
        for s in seeds:
            pred = predictions(adata, scheme, s, args.max_epochs)
            per_seed.append({"seed": s, "strata": strata(pred), "quartiles": quartiles(pred)})
        summary = []
        print(f"\n{scheme} split: macro-F1 on test signatures with TAS >= a quantile of the "
              f"test TAS (mean over seeds {args.seeds}); paired moaspace - baseline, mean ± sd")
        print(f"{'TAS quantile':>12s} {'rows':>6s} {'moaspace':>9s} {'logreg':>7s} "
              f"{'pca_lda':>8s} {'- logreg':>16s} {'- pca_lda':>16s}")
        for i, q in enumerate(QUANTILES):
            recs = pd.DataFrame([r["strata"][i] for r in per_seed])
            row = {"quantile": q, "n_mean": float(recs["n"].mean())}
            for m in ("moaspace", *BASELINES):
                row[f"{m}_mean"] = float(recs[m].mean())
            for b in BASELINES:
                d = recs["moaspace"] - recs[b]
                row[f"minus_{b}_mean"], row[f"minus_{b}_sd"] = float(d.mean()), float(d.std(ddof=1))
            summary.append(row)
            print(f"{q:12.2f} {row['n_mean']:6.0f} {row['moaspace_mean']:9.3f} "
                  f"{row['logreg_mean']:7.3f} {row['pca_lda_mean']:8.3f} "
                  f"{row['minus_logreg_mean']:+9.3f} ± {row['minus_logreg_sd']:.3f} "
                  f"{row['minus_pca_lda_mean']:+9.3f} ± {row['minus_pca_lda_sd']:.3f}")
        print("accuracy per TAS quartile (lowest first), per seed: "
              + "; ".join(f"seed {r['seed']}: " + ", ".join(
                  f"{m} " + "/".join(f"{a[m]:.2f}" for a in r["quartiles"]["accuracy"])
                  for m in ("moaspace", "logreg")) for r in per_seed))
        out["schemes"][scheme] = {"per_seed": per_seed, "summary": summary}
    out["seconds"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_tas_strata.json").write_text(json.dumps({**provenance(), **out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
