"""Would cross-fitted models over the training compounds calibrate better than the validation
split alone? (issue #28: the per-compound 'unknown' thresholds and the ECE of known calls)

The calibration of a trained model (its per-compound unknown thresholds, the map of its
prototype-layer confidence) is fitted on ~30 validation compounds (simulator) or ~48
validation drugs (real consensus set). This benchmark asks whether K models, each trained
with one fold of the training compounds left out, give usable extra calibration rows: the
left-out compounds, scored by the model that never saw them.

Per seed: ``moa`` split (20% of the MoAs only in test) -> train the default model (the
final model; its validation rows cross-fitted as ``train()`` does) -> K fold models, each
trained the same way (same seed, epochs, early stopping on the same validation compounds)
without one fold of the training compounds (stratified by MoA; MoAs with one training
compound stay whole). Each fold model scores its left-out compounds and the validation
compounds. Calibration rows come from:

* ``val``: the final model's validation rows (what ``train()`` uses);
* ``crossfit``: the fold models' left-out rows, scores as they are;
* ``crossfit_matched``: the same, put on the final model's scale through the validation
  compounds, which every model scores (the scale of the scores differs between training
  runs): each fold model's open-set scores moved by the difference of the validation rows'
  mean score under the final model and under that fold model, and its confidences (top
  softmax) mapped by quantiles, from that fold model's validation confidences to the final
  model's;
* ``val+crossfit_matched``: both.

From each source: the per-compound unknown thresholds (``fit_pooled_thresholds``, strong
signatures only, as ``train()``) for several targets, applied to the final model's test
signatures (per-compound calls as ``predict``: rates per signature), and the isotonic map of
the prototype-layer softmax (``fit_isotonic``), whose ECE (15 bins) is measured on the known
test signatures. Also, per fold model, the mean open-set score of its left-out, validation
and known test rows (are the left-out rows exchangeable with test rows?).

    python benchmarks/bench_crossfit_calibration.py --data sim0.h5ad --seeds 0,1,2,3,4,5
    python benchmarks/bench_crossfit_calibration.py --real --seeds 0,1,2,3,4,5 --folds 5

Writes ``benchmarks/results/<name>.json`` / ``.md`` and prints the tables.
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
from _simdata import default_data
from scipy import special

from moaspace._core.strength import signature_strength
from moaspace._utils import provenance
from moaspace.datasets import lincs_consensus
from moaspace.model import MoaModel
from moaspace.model._calibrate import calibration_cosines
from moaspace.model._crossfit import fold_of_compounds
from moaspace.model.calibration import choose_threshold, expected_calibration_error
from moaspace.model.calibration._maps import PROTOTYPE_TEMPERATURE, fit_isotonic
from moaspace.model.calibration._pooled import fit_pooled_thresholds, pooled_unknown
from moaspace.pp._split import split

RESULTS = Path(__file__).resolve().parent / "results"
REAL = {"min_compounds_per_moa": 5, "multi_moa": "drop"}  # as bench_openset.py --real
#: false-unknown targets the thresholds are fitted for (0.05: the default)
TARGETS = (0.03, 0.05, 0.08, 0.10)
SOURCES = ("val", "crossfit", "crossfit_matched", "val+crossfit_matched")


def scored_rows(model: MoaModel, data: ad.AnnData, mask: np.ndarray, *, val: bool = False,
                classes: list[str] | None = None) -> dict:
    """Prototype-layer cosines of ``data[mask]`` under ``model`` (cross-fitted for the
    validation rows, as ``train()`` scores them), with each row's open-set score, top
    softmax, whether the top call is right, compound, strength and MoA code (-1: a MoA
    absent from ``classes``, the final model's)."""
    sub = data[mask].copy()
    cos = (calibration_cosines(model, data, sub) if val else model.predictor_of(
        "hidden_prototype").cosines(model.embed(sub, layer="prototype")))
    cos = pd.DataFrame(np.asarray(cos), columns=model.moas).reindex(
        columns=classes or model.moas).to_numpy()  # a fold model may lack a class
    code_of = {m: i for i, m in enumerate(classes or model.moas)}
    code = sub.obs["moa"].astype(str).map(code_of).fillna(-1).astype(int).to_numpy()
    proba = special.softmax(np.nan_to_num(cos, nan=-1.0) / PROTOTYPE_TEMPERATURE, axis=1)
    return {"score": 1 - np.nanmax(cos, axis=1), "top": proba.max(axis=1),
            "right": proba.argmax(axis=1) == code, "code": code,
            "compound": sub.obs["pert_id"].astype(str).to_numpy(),
            "strength": signature_strength(model.align_genes(sub), model.config.clip)}


def run_seed(adata: ad.AnnData, seed: int, args) -> dict:
    """The final model, the fold models and every source's calibration on one split."""
    data = split(adata, "moa", moa_fraction=0.2, seed=seed, copy=True)
    part = data.obs["split"].astype(str).to_numpy()
    final = MoaModel(data)
    final.train(max_epochs=args.max_epochs, seed=seed, progress_bar=False)
    classes = list(final.moas)
    val = scored_rows(final, data, part == "val", val=True)
    test = scored_rows(final, data, part == "test")
    train_obs = data.obs[part == "train"]  # each MoA's compounds dealt over the folds
    moa_of = train_obs.groupby("pert_id", observed=True)["moa"].first().astype(str)
    fold = fold_of_compounds(moa_of, args.folds, seed + 1000)
    pert = data.obs["pert_id"].astype(str).to_numpy()
    left_out, matched, folds = [], [], []
    for f in range(args.folds):
        out = (part == "train") & np.isin(pert, [c for c, v in fold.items() if v == f])
        fdata = data.copy()
        fdata.obs["split"] = pd.Categorical(np.where(out, "unused", part),
                                            categories=data.obs["split"].cat.categories)
        model = MoaModel(fdata)
        model.train(max_epochs=args.max_epochs, seed=seed, progress_bar=False)
        rows = scored_rows(model, fdata, out, classes=classes)
        fval = scored_rows(model, fdata, part == "val", val=True, classes=classes)
        ftest = scored_rows(model, fdata, part == "test", classes=classes)
        shift = float(val["score"].mean() - fval["score"].mean())
        left_out.append(rows)
        rank = np.searchsorted(np.sort(fval["top"]), rows["top"], side="right") / len(fval["top"])
        matched.append({**rows, "score": rows["score"] + shift,
                        "top": np.quantile(val["top"], np.clip(rank, 0.0, 1.0))})
        folds.append({"fold": f, "n_compounds": int(sum(v == f for v in fold.values())),
                      "shift": shift, "mean_score_left_out": float(rows["score"].mean()),
                      "mean_score_val": float(fval["score"].mean()),
                      "mean_score_test_known": float(ftest["score"][ftest["code"] >= 0].mean())})
    sources = {"val": [val], "crossfit": left_out, "crossfit_matched": matched,
               "val+crossfit_matched": [val, *matched]}
    min_strength = final.calibration.min_strength or 0.0
    return {"seed": seed, "folds": folds,
            "final": {"mean_score_val": float(val["score"].mean()),
                      "mean_score_test_known": float(test["score"][test["code"] >= 0].mean())},
            "sources": {name: source_metrics(parts, test, min_strength)
                        for name, parts in sources.items()}}


def source_metrics(parts: list[dict], test: dict, min_strength: float) -> dict:
    """Per target: the per-compound calls' false-unknown rate and novel detection on the
    test signatures; and the test ECE of the isotonic map fitted on the source."""
    rows = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    known = rows["code"] >= 0
    ok = known & (rows["strength"] >= min_strength)
    novel = test["code"] < 0
    out: dict = {"n_rows": int(known.sum()), "n_compounds": len(set(rows["compound"][ok]))}
    for target in TARGETS:
        fit = fit_pooled_thresholds(rows["score"][ok], rows["compound"][ok], target)
        single = choose_threshold(rows["score"][ok], target)
        _, flag, pooled = pooled_unknown(test["score"], test["compound"],
                                         np.ones(len(novel), bool), fit)
        called = np.where(pooled, flag, test["score"] > single)
        out[f"{target:g}"] = {"false_unknown": float(called[~novel].mean()),
                              "detected": float(called[novel].mean())}
    iso = fit_isotonic(rows["top"][known], rows["right"][known])
    conf = np.interp(test["top"][~novel], iso["x"], iso["y"])
    out["ece"] = expected_calibration_error(conf, test["right"][~novel], 15)
    return out


def _ms(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def tables(runs: list[dict]) -> str:
    """Markdown: every source at the default target, the trade-off over targets, and the
    fold models' score levels."""
    lines = ["| calibration rows | rows (mean) | false unknowns (target 5%) | novel flagged | "
             "ECE of known calls |", "|---" * 5 + "|"]
    for name in SOURCES:
        s = [r["sources"][name] for r in runs]
        lines.append(f"| {name} | {np.mean([x['n_rows'] for x in s]):.0f} | "
                     f"{_ms([x['0.05']['false_unknown'] for x in s])} | "
                     f"{_ms([x['0.05']['detected'] for x in s])} | {_ms([x['ece'] for x in s])} |")
    lines += ["", "Per-compound calls at each fitted target (false unknowns / novel flagged, "
              "mean over seeds):", "",
              "| calibration rows | " + " | ".join(f"target {t:g}" for t in TARGETS) + " |",
              "|---" * (len(TARGETS) + 1) + "|"]
    for name in SOURCES:
        cells = [f"{np.mean([r['sources'][name][f'{t:g}']['false_unknown'] for r in runs]):.3f}"
                 f" / {np.mean([r['sources'][name][f'{t:g}']['detected'] for r in runs]):.3f}"
                 for t in TARGETS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    folds = [f for r in runs for f in r["folds"]]
    gap = [f["mean_score_left_out"] - f["mean_score_test_known"] for f in folds]
    lines += ["", f"Fold models ({len(folds)}): mean open-set score of the left-out rows minus "
              f"the known test rows under the same model {_ms(gap)}; shift between the "
              f"final and a fold model's validation scores {_ms([f['shift'] for f in folds])} "
              "(range "
              f"{min(f['shift'] for f in folds):+.3f} to {max(f['shift'] for f in folds):+.3f})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared h5ad of `moaspace simulate --seed 0` (made if absent)")
    parser.add_argument("--real", action="store_true",
                        help="the shipped real consensus set, as bench_openset.py --real")
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    name = args.name or ("bench_crossfit_calibration_real" if args.real
                         else "bench_crossfit_calibration")
    adata = lincs_consensus(**REAL) if args.real else default_data(args.data)
    flag = "--real" if args.real else (f"--data {args.data.name}" if args.data else "")
    t0, runs = time.perf_counter(), []
    for seed in args.seeds.split(","):  # results are rewritten after every seed
        runs.append(run_seed(adata, int(seed), args))
        done = ",".join(str(r["seed"]) for r in runs)
        header = (f"# Cross-fitted calibration rows\n\n`python benchmarks/"
                  f"bench_crossfit_calibration.py {flag} --seeds {done} --folds {args.folds} "
                  f"--max-epochs {args.max_epochs}`: {adata.n_obs} signatures; mean ± sd "
                  f"(ddof 0) over seeds {done}.\n\n")
        text = tables(runs)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.md").write_text(header + text + "\n")
        (args.out / f"{name}.json").write_text(json.dumps(
            {**provenance(), "argv": flag, "folds": args.folds, "max_epochs": args.max_epochs,
             "targets": TARGETS, "seconds": time.perf_counter() - t0, "runs": runs},
            indent=1, default=float))
    print(header + text)


if __name__ == "__main__":
    main()
