"""Calibrated confidence and 'unknown mechanism' calls on MoAs held out of training (issue #10).

simulate (default config) -> prepare -> ``moa`` split (20% of the MoAs only in test, the
other MoAs split by compound) -> train moaspace (early stop on validation compounds; the
calibration is fitted on them at the end of training) -> on the test signatures, for
moaspace and for the raw-signature baseline (cosine kNN of the z-scores against the
training signatures, calibrated on the same validation compounds by the same code):

* known-vs-unknown AUROC of every open-set score (signature level, and compound level
  with the mean score of each compound's signatures);
* at the threshold chosen on validation for a 5% false-unknown rate: the false-unknown
  rate on known test signatures, the share of unknown-MoA signatures detected, macro-F1
  over the known MoAs with the unknown calls (open) and without them (closed: every
  unknown-MoA signature is forced into a known MoA);
* ECE (15 equal-width bins), Brier score and NLL of "top call correct" of
  ``moa_pred_score`` on the known test signatures before calibration (kNN vote share)
  and after (the method chosen on validation by out-of-fold Brier score; and each of
  isotonic, temperature, logistic);
* accuracy vs coverage when signatures below a TAS cut-off get no call (TAS from
  ``obs["tas"]``; a data set without it, such as the real consensus set, uses the signature
  strength instead, ``moaspace._core.strength.signature_strength`` at the model's ``clip``,
  and the tables say "strength").

Two more rows in the main table (issue #28, unknown MoAs): ``linear_msp``, the max-softmax
of a linear baseline (the repo's ``logreg`` baseline, ``make_baseline("logreg")``: PCA to
100 components, standardised, multinomial logistic regression with ``C=0.1``) fitted on the
training z-scores of the known MoAs, unknown score ``1 - max probability``, threshold for 5%
false unknowns on the validation rows (``choose_threshold``); and for every method
``detected_at_5pct_test``: the share of novel test signatures flagged at the threshold set
on the *test* known signatures for 5% false unknowns (an oracle operating point: the
ceiling of the score, not a deployable number).

Data: the default simulation (``--sim-seed``), a prepared h5ad (``--data``), or the shipped
real consensus set (``--real``: ``datasets.lincs_consensus(min_compounds_per_moa=5,
multi_moa="drop")``, the 519 single-MoA drugs of the 44 MoAs with >= 5 drugs that
``benchmark_real_cv5`` uses; one signature per drug, so the compound AUROC equals the
signature one).

Writes ``benchmarks/results/<name>.json`` / ``.md`` and three figures ``<name>_*.png``
(``--name``: ``bench_openset``, or ``bench_openset_real`` with ``--real``), prints the
tables.

    python benchmarks/bench_openset.py [--seeds 0,1,...,23] [--max-epochs 30] [--moa-fraction 0.2]
    python benchmarks/bench_openset.py --real --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _simdata import simulate_prepared

from moaspace import pl
from moaspace._core.neighbors import (
    encode_labels,
    knn_scores,
    knn_search,
    prototype_scores,
    prototypes,
)
from moaspace._core.sets import has_label
from moaspace._core.strength import signature_strength
from moaspace._utils import provenance
from moaspace.benchmark import make_baseline
from moaspace.datasets import lincs_consensus
from moaspace.datasets._simulate import SimulationConfig
from moaspace.model import MoaModel
from moaspace.model._predict import predict
from moaspace.model.calibration import (
    CALIBRATION_METHODS,
    NO_CALL,
    OPENSET_SCORES,
    UNKNOWN,
    binary_nll,
    brier_score,
    choose_openset_score,
    choose_threshold,
    confidence_features,
    expected_calibration_error,
    fit_calibration,
    open_set_metrics,
    reliability_curve,
    roc_points,
    tas_coverage_curve,
    unknown_auroc,
)
from moaspace.model.calibration._pooled import fit_pooled_thresholds, pooled_unknown
from moaspace.pp._split import split

RESULTS = Path(__file__).resolve().parent / "results"
#: rows of the tables: moaspace with its default predictor (nearest hidden-layer prototype),
#: the same model's kNN vote in the embedding, the raw-signature baseline, and the max-softmax
#: of a linear baseline (no calibration map, no embedding scores: "–" where they would be)
SHOWN = ("moaspace", "moaspace_knn", "raw_knn", "linear_msp")
#: the rows that are calibrated by ``fit_calibration`` (every calibration table)
CALIBRATED = SHOWN[:3]
#: TAS cut-offs as quantiles of the known test signatures' TAS: coverage 100%, 80%, ... 20%
TAS_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)
#: target false-unknown rate of the thresholds (validation-chosen and the test oracle)
TARGET = 0.05
#: the real consensus set of the README's real row (``benchmark_real_cv5``)
REAL = {"min_compounds_per_moa": 5, "multi_moa": "drop"}


def strength_of(adata, clip: float | None) -> tuple[np.ndarray, str]:
    """Per-row TAS (``obs["tas"]``) when the data has it, else the signature strength
    (RMS of the z-scores clipped at ``clip``): the values, and the name the tables use."""
    if "tas" in adata.obs:
        tas = pd.to_numeric(adata.obs["tas"], errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(tas).any():
            return tas, "TAS"
    return signature_strength(np.asarray(adata.X), clip), "strength"


def oracle_detection(score: np.ndarray, unknown: np.ndarray) -> dict:
    """ORACLE: the threshold set on the *test* known rows for ``TARGET`` false unknowns
    (``choose_threshold``: at most that share above it); the share of unknown test rows
    above it. The ceiling of the score at that operating point, not a deployable number."""
    thr = choose_threshold(score[~unknown], TARGET)
    return {"detected_at_5pct_test": float(np.mean(score[unknown] > thr)),
            "false_unknown_at_5pct_test": float(np.mean(score[~unknown] > thr)),
            "threshold_at_5pct_test": thr}


def evaluate_space(cal, z_test, test_obs, reference, ref_labels, held_moas, *, tas,
                   hidden=None, hidden_centres=None, predictor: str = "knn") -> dict:
    """Open-set and calibration metrics of one embedding (ours or raw) on the test rows;
    ``tas``: the test rows' TAS or signature strength (``strength_of``);
    ``hidden``/``hidden_centres``: our model's last hidden layer (raw z-scores have none).
    ``predictor``: how the MoA is called and whose score is calibrated, ``knn`` (the
    vote in ``z_test``) or ``hidden_prototype`` (a model's default), each with its own
    calibration map chosen on validation."""
    classes = cal.classes
    codes, _ = encode_labels(ref_labels, classes)
    sims, idx = knn_search(z_test, reference, max(cal.k, 10, cal.wide_k))
    votes = knn_scores(sims[:, :cal.k], idx[:, :cal.k], codes, len(classes))
    centres, _ = prototypes(reference, ref_labels, classes)
    if predictor == "knn":
        class_scores, layer, layer_centres = votes, z_test, centres
        cal_val = cal.validation
    else:
        class_scores = prototype_scores(hidden, hidden_centres)
        layer, layer_centres = hidden, hidden_centres
        cal_val = cal.validation[predictor]
    chosen_map = cal.method_for(predictor)
    from moaspace.model.calibration import openset_scores

    scores = openset_scores(z_test, centres=centres, knn_sims=sims, k=cal.k, class_scores=votes,
                            energy_scale=cal.energy_scale, hidden=hidden,
                            hidden_centres=hidden_centres)
    y = test_obs["moa"].astype(str).to_numpy()
    unknown = np.isin(y, list(held_moas))
    pred = np.asarray(classes, dtype=object)[class_scores.argmax(axis=1)].astype(str)
    correct = pred == y
    raw_conf = class_scores.max(axis=1)
    feats = confidence_features(class_scores, layer, layer_centres, sims, idx, codes,
                                wide_k=cal.wide_k)
    conf = {}
    for method in CALIBRATION_METHODS:
        c = copy.deepcopy(cal)
        if predictor == "knn":
            c.method = method
        else:
            c.methods[predictor] = method
        conf[method] = c.calibrate_scores(class_scores, predictor, feats)[1]
    compounds = test_obs["pert_id"].astype(str).to_numpy()
    cpd_unknown = pd.Series(unknown).groupby(compounds).first()
    per_score = {}
    for name in [n for n in OPENSET_SCORES if n in scores]:
        m = open_set_metrics(y, pred, scores[name], classes, cal.thresholds[name],
                             raw_conf=raw_conf, proba_conf=conf[chosen_map])
        mean = pd.Series(scores[name]).groupby(compounds).mean()
        m["auroc_compound"] = unknown_auroc(mean[~cpd_unknown].to_numpy(),
                                            mean[cpd_unknown].to_numpy())
        m["auroc_validation_pseudo"] = cal.validation["auroc_pseudo_unknown"][name]
        m.update(oracle_detection(scores[name], unknown))
        per_score[name] = m
    per_score[cal.score]["pooled"] = compound_pooled(scores[cal.score], unknown, compounds,
                                                     cal.pooled, cal.threshold)
    known = ~unknown
    tas = np.asarray(tas, dtype=np.float64)
    out = {
        "score": cal.score, "threshold": cal.threshold, "chosen": per_score[cal.score],
        "per_score": per_score,
        "predictor": predictor,
        "calibration": chosen_map,
        "accuracy_known": float(correct[known].mean()),
        **{metric: {"before": fn(raw_conf[known], correct[known]),
                    **{m: fn(conf[m][known], correct[known]) for m in conf},
                    "chosen": fn(conf[chosen_map][known], correct[known])}
           for metric, fn in (("ece", expected_calibration_error), ("brier", brier_score),
                              ("nll", binary_nll))},
        "ece_validation": {"before": cal_val["ece_before"],
                           "after_out_of_fold": cal_val["ece_out_of_fold"][chosen_map]},
        "brier_validation_out_of_fold": cal_val["brier_out_of_fold"],
        "nll_validation_out_of_fold": cal_val["nll_correct_out_of_fold"],
        "ece_validation_out_of_fold": cal_val["ece_out_of_fold"],
        "reliability_test": {
            "before": reliability_curve(raw_conf[known], correct[known]).to_dict("records"),
            "after": reliability_curve(conf[chosen_map][known], correct[known]).to_dict("records"),
        },
        "roc_test": {n: roc_points(s[known], s[unknown]) for n, s in scores.items()},
        # per-row confidences, pooled over seeds in main() (popped before the JSON is written)
        "_rows": {"before": raw_conf[known], "after": conf[chosen_map][known],
                  "correct": correct[known], "compound": compounds[known]},
        "tas_coverage": tas_coverage_curve(
            tas[known], correct[known],
            thresholds=np.nanquantile(tas[known], TAS_LEVELS)).to_dict("records"),
        "tas_quartiles": tas_quartiles(tas[known], conf[chosen_map][known], correct[known]),
    }
    return out


def tas_quartiles(tas, confidence, correct) -> list[dict]:
    """Mean calibrated score and accuracy per TAS quartile (lowest first): does the score
    already say that a weak signature's call is unreliable?"""
    q = pd.qcut(pd.Series(tas).rank(method="first"), 4, labels=False).to_numpy()
    return [{"quartile": b + 1, "n": int((q == b).sum()),
             "mean_score": float(np.mean(confidence[q == b])),
             "accuracy": float(np.mean(correct[q == b]))} for b in range(4)]


def compound_pooled(score, unknown, compounds, fit: dict, threshold: float) -> dict:
    """Unknown calls made per compound (``predict(unknown_by="compound")``): every
    signature of a compound shares the call from the compound's mean score against the
    threshold fitted for that many signatures (``fit``, :mod:`._pooled`); a compound
    too small for it keeps the per-signature ``threshold``. Signature-level rates, and
    the AUROC of the pooled mean score over signatures and over compounds."""
    mean, flag, pooled = pooled_unknown(score, compounds, np.ones(len(score), bool), fit)
    called = np.where(pooled, flag, np.asarray(score) > threshold)
    pooled_score = np.where(pooled, mean, score)
    cpd_unknown = pd.Series(unknown).groupby(compounds).first()
    cpd_mean = pd.Series(pooled_score).groupby(compounds).first()
    return {"auroc": unknown_auroc(pooled_score[~unknown], pooled_score[unknown]),
            "auroc_compound": unknown_auroc(cpd_mean[~cpd_unknown].to_numpy(),
                                            cpd_mean[cpd_unknown].to_numpy()),
            "false_unknown_rate": float(called[~unknown].mean()),
            "unknown_detected": float(called[unknown].mean()),
            "share_pooled": float(pooled.mean()), "sizes": fit.get("sizes", []),
            **oracle_detection(pooled_score, unknown)}


def predict_rates(pred, known: np.ndarray) -> dict:
    """What ``predict`` called, as a user gets it ('no call' for weak signatures first):
    the shares of known and of novel-MoA test signatures called 'unknown' and 'no call',
    and the AUROC of the score the unknown calls read (the compound mean where it was
    pooled)."""
    calls = pred.obs["moa_pred"].astype(str).to_numpy()
    score = pred.obs["moa_unknown_score"].to_numpy(np.float64)
    if "moa_unknown_score_compound" in pred.obs:
        pooled = pred.obs["moa_unknown_score_compound"].to_numpy(np.float64)
        score = np.where(np.isfinite(pooled), pooled, score)
    novel = ~known
    return {"false_unknown_rate": float((calls[known] == UNKNOWN).mean()),
            "unknown_detected": float((calls[novel] == UNKNOWN).mean()),
            "no_call_known": float((calls[known] == NO_CALL).mean()),
            "no_call_novel": float((calls[novel] == NO_CALL).mean()),
            "auroc": unknown_auroc(score[known], score[novel]),
            "unknown_by": pred.uns["moa"]["params"].get("unknown_by", "signature")}


def evaluate_linear_msp(x, y, s, compounds, tas, held_moas, seed: int) -> dict:
    """The max-softmax of a linear baseline as an open-set score: the repo's ``logreg``
    baseline (PCA 100, standardised, multinomial logistic regression, ``C=0.1``) fitted on
    the training rows (known MoAs only, as the model), unknown score ``1 - max
    probability``, threshold for ``TARGET`` false unknowns on the validation rows. The
    same keys as ``evaluate_space`` where they apply; no calibration map (the softmax is
    its raw score: ``ece``/``brier``/``nll`` have ``before`` only)."""
    t0 = time.perf_counter()
    train = s == "train"
    # the baseline's 100 components, capped as pca_knn caps them (a small input has fewer genes)
    n_components = min(100, int(train.sum()) - 1, x.shape[1])
    fit = make_baseline("logreg", seed=seed, n_components=n_components).fit(x[train], y[train])
    classes = fit.classes_
    val = (s == "val") & np.isin(y, classes)
    proba_val, _ = fit.predict_scores(x[val])
    threshold = choose_threshold(1.0 - proba_val.max(axis=1), TARGET)
    test = s == "test"
    proba, _ = fit.predict_scores(x[test])
    score = 1.0 - proba.max(axis=1).astype(np.float64)
    y_test = y[test]
    pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)].astype(str)
    unknown = np.isin(y_test, list(held_moas))
    known = ~unknown
    top = proba.max(axis=1).astype(np.float64)
    m = open_set_metrics(y_test, pred, score, classes, threshold, raw_conf=top)
    groups = compounds[test]
    mean = pd.Series(score).groupby(groups).mean()
    cpd_unknown = pd.Series(unknown).groupby(groups).first()
    m["auroc_compound"] = unknown_auroc(mean[~cpd_unknown].to_numpy(),
                                        mean[cpd_unknown].to_numpy())
    m["auroc_validation_pseudo"] = None
    m["validation_false_unknown_rate"] = float(np.mean(1.0 - proba_val.max(axis=1) > threshold))
    m.update(oracle_detection(score, unknown))
    val_fit = fit_pooled_thresholds(1.0 - proba_val.max(axis=1), compounds[val], TARGET)
    m["pooled"] = compound_pooled(score, unknown, groups, val_fit, threshold)
    correct = pred == y_test
    tas = np.asarray(tas, dtype=np.float64)[test]
    return {
        "score": "max_softmax", "threshold": threshold, "chosen": m,
        "per_score": {"max_softmax": m}, "predictor": f"logreg (PCA {n_components}, C=0.1)",
        "calibration": "none", "accuracy_known": float(correct[known].mean()),
        **{metric: {"before": fn(top[known], correct[known])}
           for metric, fn in (("ece", expected_calibration_error), ("brier", brier_score),
                              ("nll", binary_nll))},
        "roc_test": {"max_softmax": roc_points(score[known], score[unknown])},
        "tas_coverage": tas_coverage_curve(
            tas[known], correct[known],
            thresholds=np.nanquantile(tas[known], TAS_LEVELS)).to_dict("records"),
        # mean score: the uncalibrated max softmax
        "tas_quartiles": tas_quartiles(tas[known], top[known], correct[known]),
        "seconds": time.perf_counter() - t0,
    }


def run_seed(adata, seed: int, args) -> dict:
    data = split(adata, "moa", moa_fraction=args.moa_fraction, seed=seed, copy=True)
    rec = data.uns["moaspace"]["split"]
    held = rec["test_only_moas"]
    s = data.obs["split"].astype(str).to_numpy()
    # a test signature of a multi-MoA or unlabelled compound (NaN obs["moa"]) is neither known
    # nor of a held-out MoA: scored as 'known' it would count as a false unknown
    s = np.where((s == "test") & ~has_label(data.obs["moa"]), "unlabelled", s)
    t0 = time.perf_counter()
    folds = args.calibration_folds
    model = MoaModel(data, calibration_folds=folds if folds == "auto" else int(folds))
    model.train(max_epochs=args.max_epochs, seed=seed, progress_bar=False)
    seconds = time.perf_counter() - t0
    assert model.calibration is not None, "training did not calibrate the model"
    test = data[s == "test"].copy()
    # the prototype layer (the last hidden layer, stacked with the whitened signature when
    # the model has one), as predict() scores it against model.hidden_prototypes
    z_test, hidden_test = model.embed_layers(test, ("embedding", "prototype"))
    strength, measure = strength_of(data, model.config.clip)
    ours, ours_knn = (
        evaluate_space(model.calibration, z_test, test.obs, np.asarray(model.atlas.X),
                       model.atlas.obs["moa"].astype(str), held, tas=strength[s == "test"],
                       hidden=hidden_test,
                       hidden_centres=model.hidden_prototypes, predictor=predictor)
        for predictor in (model.config.predictor, "knn"))
    ours_knn.pop("roc_test")  # the open-set scores do not depend on the predictor: as `ours`
    # the library path gives the same calls and scores as the metrics above
    pred = predict(model, test, compound_key=None)
    calls = pred.obs["moa_pred"].astype(str).to_numpy()
    n_unknown = int((calls == UNKNOWN).sum())
    flagged = pred.obs["moa_unknown_score"].to_numpy() > model.calibration.threshold
    # a signature below the model's strength cut-off is "no call" before "unknown" (predict
    # only; the metrics here call every signature)
    no_call = calls == NO_CALL
    assert n_unknown == int((flagged & ~no_call).sum())
    known = ~np.isin(test.obs["moa"].astype(str), held)
    np.testing.assert_allclose(pred.obs["moa_pred_score"].to_numpy()[known],
                               ours["_rows"]["after"], atol=1e-5)
    product = {"signature": predict_rates(pred, known)}
    pooled = predict(model, test, compound_key="pert_id")  # unknown_by="compound", the default
    product["compound"] = predict_rates(pooled, known)

    x = np.asarray(data.X, dtype=np.float32)
    y = data.obs["moa"].astype(str).to_numpy()
    compounds = data.obs["pert_id"].astype(str).to_numpy()
    raw_cal = fit_calibration(x[s == "val"], y[s == "val"], x[s == "train"], y[s == "train"],
                              k=model.config.knn_k, tas=strength[s == "val"],
                              groups=compounds[s == "val"])
    raw = evaluate_space(raw_cal, x[s == "test"], test.obs, x[s == "train"], y[s == "train"],
                         held, tas=strength[s == "test"])
    linear = evaluate_linear_msp(x, y, s, compounds, strength, held, seed)
    return {
        "seed": seed, "test_only_moas": held, "n_signatures": rec["n_signatures"],
        "n_test_unknown": int(np.isin(test.obs["moa"].astype(str), held).sum()),
        "train_seconds": seconds, "best_epoch": model.best_epoch,
        "best_val_f1": model.best_val_f1, "predict_unknown_calls": n_unknown,
        "predict_no_calls": int(no_call.sum()),
        "predict_calls": product,
        "strength_measure": measure,
        "methods": {"moaspace": ours, "moaspace_knn": ours_knn, "raw_knn": raw,
                    "linear_msp": linear},
    }


def _mean_std(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "–"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=0):.3f}"


def pooled_metrics(rows: dict[str, list[dict]]) -> dict:
    """ECE / Brier / NLL of the known test signatures of all seeds together, per method.

    One seed's ~1,500 known test signatures (~57 compounds) put ECE's sampling floor near
    0.03, and each seed's calibration is fitted on ~35 validation compounds, so per-seed
    ECE mostly measures that seed's level shift. Pooling the seeds' honest test
    predictions (each calibrated on its own validation compounds) measures whether the
    probabilities are calibrated across deployments with ~6x the rows.
    """
    out = {}
    for method, parts in rows.items():
        correct = np.concatenate([p["correct"] for p in parts])
        res = {"n": len(correct)}
        for when in ("before", "after"):
            conf = np.concatenate([p[when] for p in parts])
            res[when] = {"ece": expected_calibration_error(conf, correct),
                         "brier": brier_score(conf, correct), "nll": binary_nll(conf, correct),
                         "reliability": reliability_curve(conf, correct).to_dict("records")}
        out[method] = res
    diffs = _bootstrap_differences(rows)
    for name, d in diffs.items():
        out[f"{name}_after_difference"] = d
    return out


def _bootstrap_differences(rows: dict[str, list[dict]], n_boot: int = 1000) -> dict:
    """Pooled ECE, Brier and NLL after calibration, moaspace minus raw kNN, each with a 95%
    interval from one bootstrap over (seed, compound) clusters (a compound's signatures
    are not independent); the three metrics are computed on the same resamples."""
    ours, raw = rows["moaspace"], rows["raw_knn"]
    conf = {m: np.concatenate([p["after"] for p in rows[m]]) for m in rows}
    hit = {m: np.concatenate([p["correct"] for p in rows[m]]) for m in rows}
    # the two methods score the same known test rows of each seed, in the same order
    keys = np.concatenate([[f"{i}:{c}" for c in p["compound"]] for i, p in enumerate(ours)])
    assert all((a["compound"] == b["compound"]).all() for a, b in zip(ours, raw, strict=True))
    _, cluster = np.unique(keys, return_inverse=True)
    members = np.split(np.argsort(cluster, kind="stable"), np.cumsum(np.bincount(cluster))[:-1])
    metrics = {"ece": expected_calibration_error, "brier": brier_score, "nll": binary_nll}

    def diff(fn, pick=slice(None)):
        return (fn(conf["moaspace"][pick], hit["moaspace"][pick])
                - fn(conf["raw_knn"][pick], hit["raw_knn"][pick]))

    rng = np.random.default_rng(0)
    diffs = {name: np.empty(n_boot) for name in metrics}
    for b in range(n_boot):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        for name, fn in metrics.items():
            diffs[name][b] = diff(fn, pick)
    out = {}
    for name, fn in metrics.items():
        lo, hi = np.quantile(diffs[name], [0.025, 0.975])
        out[name] = {"difference": float(diff(fn)), "ci95": [float(lo), float(hi)],
                     "share_of_resamples_below_zero": float((diffs[name] < 0).mean()),
                     "clusters": len(members), "n_boot": n_boot}
    return out


def _paired(runs: list[dict], metric: str) -> str:
    """moaspace minus raw_knn per seed (after calibration): mean ± sd, seeds where lower."""
    d = np.array([r["methods"]["moaspace"][metric]["chosen"]
                  - r["methods"]["raw_knn"][metric]["chosen"] for r in runs])
    return f"{d.mean():+.3f} ± {d.std(ddof=0):.3f} (lower in {(d < 0).sum()}/{len(d)})"


def paired_auroc(runs: list[dict], key: str, other: str = "raw_knn") -> dict:
    """moaspace minus ``other`` per seed, each with its chosen open-set score: mean, sd
    (ddof 1), seeds higher, and a two-sided sign-test p over the seeds (held-out MoAs
    differ between seeds, so the seeds are the independent units)."""
    from scipy.stats import binomtest

    d = np.array([r["methods"]["moaspace"]["chosen"][key]
                  - r["methods"][other]["chosen"][key] for r in runs])
    higher, lower = int((d > 0).sum()), int((d < 0).sum())
    p = binomtest(higher, higher + lower).pvalue if higher + lower else float("nan")
    return {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else float("nan"),
            "higher": higher, "n": len(d), "sign_test_p": float(p)}


def without_hidden(runs: list[dict]) -> dict:
    """moaspace as it was before the hidden-layer score: per seed the embedding score with
    the best validation (pseudo-unknown) AUROC among the other scores, same tie rule as
    ``fit_calibration``; its test AUROCs and the paired difference to raw kNN."""
    out = {"chosen": [], "auroc": [], "auroc_compound": []}
    for r in runs:
        ps = r["methods"]["moaspace"]["per_score"]
        best = choose_openset_score({n: s["auroc_validation_pseudo"] for n, s in ps.items()
                                     if n != "hidden_prototype"})
        out["chosen"].append(best)
        for key in ("auroc", "auroc_compound"):
            out[key].append(ps[best][key])
    for key in ("auroc", "auroc_compound"):
        d = np.array(out[key]) - np.array([r["methods"]["raw_knn"]["chosen"][key] for r in runs])
        out[f"{key}_minus_raw"] = {"mean": float(d.mean()),
                                   "sd": float(d.std(ddof=1)) if len(d) > 1 else float("nan"),
                                   "higher": int((d > 0).sum()), "n": len(d)}
    return out


def _paired_auroc(runs: list[dict], key: str, other: str = "raw_knn") -> str:
    s = paired_auroc(runs, key, other)
    return (f"{s['mean']:+.3f} ± {s['sd']:.3f} (sd, ddof 1; higher in {s['higher']}/{s['n']}, "
            f"sign test p = {s['sign_test_p']:.2g})")


def pooled_table(runs: list[dict], target: float) -> list[str]:
    """Unknown calls made per compound (each method's chosen score averaged over a compound's
    test signatures, threshold fitted per number of signatures on validation), and what
    ``predict`` itself called, per signature and per compound."""
    lines = ["", "Unknown calls per compound (`predict --unknown-by compound`, the default): every "
             "test signature takes its compound's call, from the mean score of the compound's "
             "signatures against the validation threshold for that many signatures:", "",
             "| method | AUROC, signatures (pooled score) | AUROC, compounds | false-unknown "
             f"rate (target {target:.0%}) | unknown detected | ORACLE: detected at {target:.0%} "
             "set on test |", "|---" * 6 + "|"]
    for method in SHOWN:
        ps = [r["methods"][method]["chosen"].get("pooled") for r in runs]
        if any(p is None for p in ps):
            continue
        lines.append(f"| {method} | " + " | ".join(_mean_std([p[key] for p in ps]) for key in (
            "auroc", "auroc_compound", "false_unknown_rate", "unknown_detected",
            "detected_at_5pct_test")) + " |")
    product = [r.get("predict_calls") for r in runs]
    if all(product):
        lines += ["", "What `moaspace predict` called on the test signatures (weak signatures get "
                  "'no call' first, so they are neither false unknowns nor detected):", "",
                  "| unknown calls | AUROC | known called unknown | novel called unknown | "
                  "known 'no call' | novel 'no call' |", "|---" * 6 + "|"]
        for by in ("signature", "compound"):
            ps = [p[by] for p in product]
            lines.append(f"| per {by} | " + " | ".join(_mean_std([p[key] for p in ps]) for key in (
                "auroc", "false_unknown_rate", "unknown_detected", "no_call_known",
                "no_call_novel")) + " |")
    return lines


def tables(runs: list[dict], target: float, pooled: dict | None = None,
           measure: str = "TAS") -> str:
    """The markdown tables; ``measure``: ``TAS`` or ``strength`` (what the coverage and
    quartile tables cut on, see ``strength_of``)."""
    lines = ["| method | open-set score (moaspace: the default; raw kNN: chosen on val) | AUROC known vs unknown | compound AUROC | "
             f"false-unknown rate (target {target:.0%}) | unknown detected | macro-F1 known, "
             "open | macro-F1 known, closed | ORACLE: unknown detected at "
             f"{target:.0%} false unknowns set on test |", "|---" * 9 + "|"]
    for method in SHOWN:
        rs = [r["methods"][method] for r in runs]
        chosen = sorted({r["score"] for r in rs})
        c = [r["chosen"] for r in rs]
        lines.append(
            f"| {method} | {', '.join(chosen)} | {_mean_std([m['auroc'] for m in c])} | "
            f"{_mean_std([m['auroc_compound'] for m in c])} | "
            f"{_mean_std([m['false_unknown_rate'] for m in c])} | "
            f"{_mean_std([m['unknown_detected'] for m in c])} | "
            f"{_mean_std([m['macro_f1_known_open'] for m in c])} | "
            f"{_mean_std([m['macro_f1_known_closed'] for m in c])} | "
            f"{_mean_std([m['detected_at_5pct_test'] for m in c])} |")
    lines += pooled_table(runs, target)
    lines += ["", "`linear_msp`: 1 - max softmax of the `logreg` baseline (PCA 100, standardised, "
              "multinomial logistic regression, C = 0.1) fitted on the training rows, threshold "
              f"for {target:.0%} false unknowns on the validation rows. The last column is an "
              "oracle operating point: the threshold is set on the known *test* signatures "
              f"(at most {target:.0%} of them above it), so it shows how far each score can "
              "separate novel MoAs at that rate, not what a deployed threshold gets; the "
              "validation-chosen threshold's numbers are the two columns after the AUROCs "
              "(compare its detection with the oracle's only together with its false-unknown "
              "rate: a validation threshold that lets more than 5% through detects more).",
              "", "Paired per seed, moaspace minus raw kNN, each with the open-set score it chose "
              "on validation (positive: ours better): AUROC " + _paired_auroc(runs, "auroc")
              + "; compound AUROC " + _paired_auroc(runs, "auroc_compound") + ".",
              "", "Paired per seed, moaspace minus linear_msp: AUROC "
              + _paired_auroc(runs, "auroc", "linear_msp") + "; compound AUROC "
              + _paired_auroc(runs, "auroc_compound", "linear_msp") + "."]
    old = without_hidden(runs)
    d = old["auroc_minus_raw"]
    lines += ["", "Without the hidden-layer score (moaspace choosing among the embedding's scores on "
              f"validation, as before it existed: {', '.join(sorted(set(old['chosen'])))}): AUROC "
              f"{_mean_std(old['auroc'])}, compound AUROC {_mean_std(old['auroc_compound'])}; "
              f"paired minus raw kNN {d['mean']:+.3f} ± {d['sd']:.3f} (sd, ddof 1; higher in "
              f"{d['higher']}/{d['n']})."]
    lines += ["", "Calibration of `moa_pred_score` on the known test signatures: ECE (15 bins), "
              "Brier score and NLL (nats, probabilities clipped to [0.001, 0.999]) of \"top call "
              "correct\", before (the raw top score: prototype softmax for `moaspace`, kNN vote "
              "share for `moaspace_knn` and `raw_knn`, the logistic regression's max softmax for "
              "`linear_msp`, which has no calibration map) and after the calibration chosen on "
              "validation (lowest out-of-fold Brier score, 5 folds grouped by compound); lower "
              "is better:",
              "", "| method | top-1 accuracy | calibration (chosen on val) | ECE before | "
              "ECE after | Brier before | Brier after | NLL before | NLL after |",
              "|---" * 9 + "|"]
    for method in SHOWN:  # linear_msp: its raw softmax only ("–" after)
        rs = [r["methods"][method] for r in runs]
        cells = [_mean_std([r[metric].get(when) for r in rs])
                 for metric in ("ece", "brier", "nll") for when in ("before", "chosen")]
        lines.append(f"| {method} | {_mean_std([r['accuracy_known'] for r in rs])} | "
                     f"{', '.join(sorted({r['calibration'] for r in rs}))} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Paired per seed, moaspace minus raw kNN after calibration (negative: ours "
              "better): ECE " + _paired(runs, "ece") + "; Brier " + _paired(runs, "brier")
              + "; NLL " + _paired(runs, "nll") + "."]
    if pooled:
        lines += ["", "All seeds' known test signatures pooled (each seed calibrated on its own "
                  "validation compounds; ECE of one seed has a sampling floor near 0.03, pooled "
                  "rows lower it):", "",
                  "| method | rows | ECE before | ECE after | Brier before | Brier after | "
                  "NLL before | NLL after |", "|---" * 8 + "|"]
        for method in ("moaspace", "raw_knn"):
            p = pooled[method]
            lines.append(f"| {method} | {p['n']} | " + " | ".join(
                f"{p[when][metric]:.3f}" for metric in ("ece", "brier", "nll")
                for when in ("before", "after")) + " |")
        for metric, label in (("ece", "ECE"), ("brier", "Brier"), ("nll", "NLL")):
            d = pooled[f"{metric}_after_difference"]
            lines += ["", f"Pooled {label} after, moaspace minus raw kNN: {d['difference']:+.4f}, "
                      f"95% interval [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] (bootstrap over "
                      f"the {d['clusters']} seed x compound clusters; below zero in "
                      f"{d['share_of_resamples_below_zero']:.0%} of {d['n_boot']} resamples)."]
    fitted = [m for m in CALIBRATION_METHODS if m != "none"]
    lines += ["", "Every calibration method on the same test rows (ECE / Brier / NLL), and its "
              "out-of-fold Brier score on the validation rows, which chose the method:", "",
              "| method | " + " | ".join(f"{m}: test ECE / Brier / NLL | {m}: val Brier (OOF)"
                                         for m in fitted) + " |",
              "|---" * (2 * len(fitted) + 1) + "|"]
    for method in CALIBRATED:
        rs = [r["methods"][method] for r in runs]
        cells = []
        for m in fitted:
            cells.append(" / ".join(_mean_std([r[metric][m] for r in rs])
                                    for metric in ("ece", "brier", "nll")))
            cells.append(_mean_std([r["brier_validation_out_of_fold"][m] for r in rs]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "AUROC known vs unknown (signature level) of every open-set score; in "
              "brackets the validation AUROC against leave-own-MoA-out pseudo-unknowns used to "
              "choose:", "", "| method | " + " | ".join(OPENSET_SCORES) + " |",
              "|---" * (len(OPENSET_SCORES) + 1) + "|"]
    for method in CALIBRATED:
        cells = []
        for name in OPENSET_SCORES:
            ms = [r["methods"][method]["per_score"].get(name) for r in runs]
            if any(m is None for m in ms):  # raw z-scores have no hidden layer
                cells.append("–")
                continue
            cells.append(f"{_mean_std([m['auroc'] for m in ms])} "
                         f"({_mean_std([m['auroc_validation_pseudo'] for m in ms])})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"ORACLE (threshold set on the known test signatures, at most {target:.0%} "
              "above it): share of unknown-MoA test signatures detected by every open-set score:",
              "", "| method | " + " | ".join(OPENSET_SCORES) + " |",
              "|---" * (len(OPENSET_SCORES) + 1) + "|"]
    for method in CALIBRATED:
        cells = []
        for name in OPENSET_SCORES:
            ms = [r["methods"][method]["per_score"].get(name) for r in runs]
            cells.append("–" if any(m is None for m in ms)
                         else _mean_std([m["detected_at_5pct_test"] for m in ms]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    about = ("TAS" if measure == "TAS" else
             "signature strength (RMS of the z-scores clipped at the model's clip; the data "
             "have no TAS)")
    lines += ["", f"Accuracy vs coverage over {about} (known test signatures; no call below the "
              f"cut-off, a quantile of their {measure}):", "",
              "| method | " + " | ".join(f"coverage {1 - q:.0%}" for q in TAS_LEVELS) + " |",
              "|---" * (len(TAS_LEVELS) + 1) + "|"]
    lines_q = ["", f"Mean calibrated score / accuracy per {measure} quartile of the known test "
               "signatures (lowest first; mean over seeds; linear_msp: its uncalibrated max "
               "softmax):", "",
               "| method | quartile 1 | quartile 2 | quartile 3 | quartile 4 |", "|---" * 5 + "|"]
    for method in SHOWN:
        qs = [r["methods"][method]["tas_quartiles"] for r in runs]
        lines_q.append(f"| {method} | " + " | ".join(
            f"{np.mean([q[i]['mean_score'] for q in qs]):.2f} / "
            f"{np.mean([q[i]['accuracy'] for q in qs]):.2f}" for i in range(4)) + " |")
    first = runs[0]["methods"]["moaspace"]["tas_coverage"]
    lines.append(f"| min {measure} (seed " + str(runs[0]["seed"]) + ") | "
                 + " | ".join(f"{row['min_tas']:.3f}" for row in first) + " |")
    for method in SHOWN:
        cells = []
        for i in range(len(TAS_LEVELS)):
            rows = [r["methods"][method]["tas_coverage"][i] for r in runs]
            cells.append(_mean_std([x["accuracy"] for x in rows]))
        lines.append(f"| {method} accuracy | " + " | ".join(cells) + " |")
    return "\n".join(lines + lines_q)


def figures(run: dict, pooled: dict, seeds: str, out_dir: Path, name: str = "bench_openset",
            measure: str = "TAS") -> None:
    ours, raw = run["methods"]["moaspace"], run["methods"]["raw_knn"]
    linear = run["methods"].get("linear_msp")
    names = {"moaspace": "moaspace", "raw_knn": "raw kNN"}
    fig = pl.reliability_diagram(
        {f"{names[m]} {when}": pooled[m][when]["reliability"]
         for m in names for when in ("before", "after")},
        ece={f"{names[m]} {when}": pooled[m][when]["ece"]
             for m in names for when in ("before", "after")},
        title=f"Reliability, known test rows, seeds {seeds}")
    fig.savefig(out_dir / f"{name}_reliability.png", dpi=90)
    plt.close(fig)  # rewritten after every seed
    rocs = {f"moaspace {n}": r for n, r in ours["roc_test"].items() if n != "msp"}
    rocs.update({f"raw {n}": r for n, r in raw["roc_test"].items() if n != "msp"})
    if linear is not None:
        rocs["linear max-softmax"] = linear["roc_test"]["max_softmax"]
    fig = pl.openset_curve(rocs, chosen=f"moaspace {ours['score']}",
                           title=f"Held-out MoAs vs known MoAs, test (seed {run['seed']})")
    fig.savefig(out_dir / f"{name}_roc.png", dpi=90)
    plt.close(fig)  # rewritten after every seed
    curves = {"moaspace": ours["tas_coverage"], "raw kNN": raw["tas_coverage"]}
    if linear is not None:
        curves["linear (logreg)"] = linear["tas_coverage"]
    fig = pl.tas_coverage(curves, title=f"Accuracy vs coverage over {measure}")
    if measure != "TAS":  # the plot labels its cut-offs "TAS≥"
        for ax in fig.axes:
            for text in ax.texts:
                text.set_text(text.get_text().replace("TAS", measure))
    fig.savefig(out_dir / f"{name}_tas.png", dpi=90)
    plt.close(fig)  # rewritten after every seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, range(24))))
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--moa-fraction", type=float, default=0.2)
    parser.add_argument("--calibration-folds", default="auto",
                        help="ModelConfig.calibration_folds of moaspace (auto: the default; "
                             "0: validation rows only; K >= 2: K fold models)")
    parser.add_argument("--sim-seed", type=int, default=None,
                        help="seed of the default simulation (default 0)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a prepared h5ad instead of simulating (`--sim-seed` is then unused)")
    parser.add_argument("--real", action="store_true",
                        help="the shipped real consensus set, as benchmark_real_cv5: "
                             "lincs_consensus(min_compounds_per_moa=5, multi_moa='drop'), "
                             "519 single-MoA drugs in 44 MoAs")
    parser.add_argument("--name", default=None,
                        help="output stem: <name>.json/.md, <name>_*.png (default "
                             "bench_openset, bench_openset_real with --real)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.real and (args.data is not None or args.sim_seed is not None):
        parser.error("--real takes neither --data nor --sim-seed")
    name = args.name or ("bench_openset_real" if args.real else "bench_openset")
    simulated = not args.real and args.data is None
    sim_seed = (0 if args.sim_seed is None else args.sim_seed) if simulated else None
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    if args.real:
        adata = lincs_consensus(**REAL)
        source, flag = ("the shipped real consensus set (`lincs_consensus(min_compounds_per_moa=5, "
                        "multi_moa='drop')`, as `benchmark_real_cv5`; one signature per drug)",
                        "--real")
    elif args.data is not None:
        adata = ad.read_h5ad(args.data)
        source, flag = f"`{args.data.name}`", f"--data {args.data.name}"
    else:
        _, adata = simulate_prepared(work / "sim", SimulationConfig(seed=sim_seed))
        source, flag = f"default simulation (seed {sim_seed})", f"--sim-seed {sim_seed}"
    target = TARGET
    runs: list[dict] = []
    rows: dict[str, list[dict]] = {"moaspace": [], "raw_knn": []}
    for seed in args.seeds.split(","):  # results are rewritten after every seed
        runs.append(run_seed(adata, int(seed), args))
        for method, result in runs[-1]["methods"].items():
            kept = result.pop("_rows", None)  # linear_msp keeps none
            if method in rows:  # the paired and pooled comparisons: ours vs raw kNN
                rows[method].append(kept)
        pooled = pooled_metrics(rows)
        done = ",".join(str(r["seed"]) for r in runs)
        measure = runs[-1]["strength_measure"]
        result = {
            "data": "real" if args.real else (str(args.data) if args.data else "simulation"),
            "strength_measure": measure,
            "simulation_seed": sim_seed, "signatures": int(adata.n_obs),
            "moas": int(adata.obs["moa"].nunique()), "moa_fraction": args.moa_fraction,
            "max_epochs": args.max_epochs, "target_false_unknown": target,
            "calibration_folds": args.calibration_folds,
            "seconds": time.perf_counter() - t0, "runs": runs, "pooled": pooled,
            "paired_auroc": {key: paired_auroc(runs, key) for key in ("auroc", "auroc_compound")},
            "paired_auroc_vs_linear_msp": {key: paired_auroc(runs, key, "linear_msp")
                                           for key in ("auroc", "auroc_compound")},
            "moaspace_without_hidden_score": without_hidden(runs),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps({**provenance(), **result}, indent=1,
                                                          default=float))
        text = tables(runs, target, pooled, measure)
        folds = (f" --calibration-folds {args.calibration_folds}"
                 if args.calibration_folds != "auto" else "")
        header = (f"# Open-set and calibration benchmark\n\n`python benchmarks/bench_openset.py "
                  f"{flag} --seeds {done} --max-epochs {args.max_epochs}{folds}`: {source}, "
                  f"{adata.n_obs} signatures, {result['moas']} MoAs; `moa` split with "
                  f"{args.moa_fraction:.0%} of the MoAs only in test, {args.max_epochs} epochs "
                  f"max; mean ± std over seeds {done} (population sd, ddof 0).\n\n")
        (args.out / f"{name}.md").write_text(header + text + "\n")
        figures(runs[0], pooled, done, args.out, name, measure)
    print(header + text)


if __name__ == "__main__":
    main()
