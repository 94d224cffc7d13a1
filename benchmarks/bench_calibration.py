"""Calibration on held-out compounds, at signature and compound level.

For each data set and seed, 5-fold cross-validation over compounds (``pp.cv_folds``):
each fold trains the default model (its calibration fitted on that fold's validation
compounds, cross-fitted against the prototypes refit on train + val) and calls its test
compounds, so every compound is held out once. Pooled over the folds, the expected
calibration error (10 bins) is measured for ``moa_pred_score`` (signature level) and for
the compound table's calibrated ``moa_pred_score`` (compound level), each next to the raw
score it maps (``moa_scores`` top value; the compound's mean score). Pooling matters: one
test split of a hundred compounds has an ECE noise floor near 0.05-0.1 by itself.

    python benchmarks/bench_calibration.py [--seeds 0,1,2] [--sim-seeds 0] [--sim PATH]

Data sets: the shipped real consensus set (``datasets.lincs_consensus``: one signature
per drug, 519 drugs in 44 MoAs; signature = compound) and a simulated release with
several signatures per compound across cells and doses (``--sim``: a prepared ``.h5ad``;
default: the default simulator world, ``moaspace simulate --seed 0`` + ``prepare``).
Writes ``benchmarks/results/bench_calibration.json`` (``--out``: another file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import moaspace as ms
from moaspace._utils import provenance

OUT = Path(__file__).resolve().parent / "results" / "bench_calibration.json"


def _simulated(path: Path | None):
    if path is not None:
        return ms.pp.read_h5ad(path)
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="bench_calibration_"))
    paths = ms.datasets.simulate(out / "world", seed=0)
    return ms.pp.prepare(paths["gctx"], paths["siginfo"], paths["geneinfo"],
                         paths.get("compoundinfo"), paths.get("moa_labels"))


def _fold(adata, labels: np.ndarray, seed: int, max_epochs: int) -> tuple[dict, dict]:
    """Train on one fold; the test rows' and test compounds' scores and whether right."""
    data = adata.copy()
    data.obs["split"] = labels
    model = ms.MoaModel(data)
    model.train(max_epochs=max_epochs, seed=seed, progress_bar=False)
    test = data[data.obs["split"] == "test"].copy()
    pred = ms.tl.predict(model, test, open_set=False)
    truth = test.obs["moa"].astype(str)
    known = truth.isin(model.moas).to_numpy()
    # moa_pred_score is the probability that the top *known* MoA is right, also where the
    # signature is too weak for a call ('no call' in moa_pred): score that call
    top = pred.obs["moa_pred_known" if "moa_pred_known" in pred.obs else "moa_pred"]
    sig = {"after": pred.obs["moa_pred_score"].to_numpy(float)[known],
           "before": pred.obsm["moa_scores"].max(axis=1)[known],
           "right": (top.astype(str) == truth).to_numpy()[known],
           "no_call": (pred.obs["moa_pred"].astype(str) == "no call").to_numpy()[known]}
    calls = ms.tl.prediction_table(pred, "compound_calls")
    cpd_truth = test.obs.groupby("pert_id", observed=True)["moa"].first().astype(str)
    cpd_truth = cpd_truth.reindex(calls.index)
    keep = cpd_truth.isin(model.moas).to_numpy()
    # a compound whose every signature is 'no call' has no compound call and no score
    silent = keep & ~np.isfinite(calls["moa_pred_score"].to_numpy(float))
    keep &= ~silent
    cpd = {"after": calls["moa_pred_score"].to_numpy(float)[keep],
           "before": calls["mean_score"].to_numpy(float)[keep],
           "right": (calls["moa_pred"].astype(str) == cpd_truth).to_numpy()[keep],
           "n_signatures": calls["n_signatures"].to_numpy()[keep],
           "silent": np.ones(int(silent.sum()), dtype=bool)}  # counted, not scored
    return sig, cpd


def _one(adata, seed: int, max_epochs: int) -> dict:
    from moaspace.model.calibration import expected_calibration_error as ece

    t0 = time.perf_counter()
    parts = [_fold(adata, labels, seed, max_epochs)
             for labels in ms.pp.cv_folds(adata, 5, seed=seed)]
    out = {"seed": seed, "seconds": time.perf_counter() - t0}
    for level, index in (("signature", 0), ("compound", 1)):
        pooled = {k: np.concatenate([p[index][k] for p in parts]) for k in parts[0][index]}
        out[f"{level}_n"] = len(pooled["right"])
        if "no_call" in pooled:
            out[f"{level}_no_call_share"] = float(pooled.pop("no_call").mean())
        if "silent" in pooled:
            out[f"{level}_without_call"] = int(pooled.pop("silent").sum())
        out[f"{level}_accuracy"] = float(pooled["right"].mean())
        out[f"{level}_ece_before"] = ece(pooled["before"], pooled["right"], 10)
        out[f"{level}_ece_after"] = ece(pooled["after"], pooled["right"], 10)
        out[f"{level}_mean_confidence"] = float(pooled["after"].mean())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sim-seeds", default="0")
    p.add_argument("--sim", type=Path, default=None)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--out", type=Path, default=OUT, help="result file (JSON)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    sim_seeds = [int(s) for s in args.sim_seeds.split(",") if s]
    real = ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    runs = {"real_consensus": [_one(real, seed, args.max_epochs) for seed in seeds]}
    if sim_seeds:
        sim = _simulated(args.sim)
        runs["simulated"] = [_one(sim, seed, args.max_epochs) for seed in sim_seeds]
    summary = {}
    keys = ("signature_ece_before", "signature_ece_after", "compound_ece_before",
            "compound_ece_after", "signature_accuracy", "compound_accuracy",
            "signature_mean_confidence", "compound_mean_confidence")
    print(f"{'data':16s} {'metric':26s} mean ± sd over seeds (5-fold CV pooled)")
    for name, rows in runs.items():
        summary[name] = {}
        for key in keys:
            values = np.array([r[key] for r in rows], dtype=float)
            summary[name][key] = {"mean": float(values.mean()),
                                  "sd": float(values.std(ddof=1)) if len(values) > 1 else None}
            print(f"{name:16s} {key:26s} {values.mean():.3f} ± "
                  f"{values.std(ddof=1) if len(values) > 1 else 0:.3f}")
    args.out.write_text(json.dumps({**provenance(), "seeds": seeds, "sim_seeds": sim_seeds,
                               "max_epochs": args.max_epochs,
                               "summary": summary, "runs": runs}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
