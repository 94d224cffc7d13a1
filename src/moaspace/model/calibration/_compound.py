"""Compound-level calibration: the probability that a compound's call is right.

A compound is called by the mean of its signatures' per-MoA scores
(:func:`moaspace.model._predict.compound_calls`). That mean is no probability: a
prototype softmax at a fixed temperature averages to a flat 0.1-0.2 for calls that are
right most of the time. Here the top mean score of each validation compound is mapped to
P(correct) with the map (isotonic or temperature) of lowest out-of-fold Brier score, per
predictor, exactly as the signature-level maps are chosen. A compound with a single voting
signature (consensus data) keeps that signature's calibrated score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moaspace.model.calibration._maps import (
    _lowest_brier,
    _out_of_fold_confidence,
    fit_isotonic,
    fit_temperature,
    score_logits,
    softmax,
)
from moaspace.model.calibration._metrics import brier_score, expected_calibration_error

#: maps compared for the compound level (the logistic map's kNN features are signature-level)
COMPOUND_METHODS = ("isotonic", "temperature")
#: fewer validation compounds of two or more signatures than this: no compound map
MIN_COMPOUNDS = 10


def compound_means(scores: np.ndarray, codes: np.ndarray, groups: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean per-MoA scores of each compound (``groups``) and its true MoA code (the most
    frequent code of its rows)."""
    frame = pd.DataFrame(np.asarray(scores, np.float64))
    frame["_group"] = np.asarray(groups).astype(str)
    means = frame.groupby("_group", sort=True).mean()
    truth = (pd.Series(np.asarray(codes), index=frame["_group"]).groupby(level=0)
             .agg(lambda v: v.value_counts().index[0]).reindex(means.index))
    return means.to_numpy(), truth.to_numpy(np.int64)


def fit_compound_maps(predictors: dict, codes: np.ndarray, groups, n_bins: int
                      ) -> tuple[dict, dict]:
    """Per predictor, the compound-level map and what it measured out of fold.

    Parameters
    ----------
    predictors : dict
        ``name -> (scores, ...)`` of the validation rows (the signature-level inputs).
    codes : numpy.ndarray
        True MoA code of each validation row.
    groups : numpy.ndarray or None
        Compound of each validation row (None: no compound level).
    n_bins : int
        Bins of the ECE.

    Returns
    -------
    maps : dict
        ``name -> {"method": ..., "isotonic": {...}}`` or ``{"method": "temperature",
        "temperature": t}``; empty without enough compounds.
    summary : dict
        ``name -> {"n_compounds", "accuracy", "ece_before", "ece_after", "brier_after"}``.
    """
    if groups is None:
        return {}, {}
    # a compound of one signature is called by that signature's own calibrated score
    # (predict does so), so the map is fitted on compounds of two or more
    names, counts = np.unique(np.asarray(groups).astype(str), return_counts=True)
    several = np.isin(np.asarray(groups).astype(str), names[counts >= 2])
    if (counts >= 2).sum() < MIN_COMPOUNDS:
        return {}, {}
    maps, summary = {}, {}
    for name, (scores, *_) in predictors.items():
        means, truth = compound_means(np.asarray(scores)[several], np.asarray(codes)[several],
                                      np.asarray(groups)[several])
        top = means.max(axis=1)
        right = means.argmax(axis=1) == truth
        logits = score_logits(means, name)
        oofs = {m: _out_of_fold_confidence(m, top, logits, truth, right, None)
                for m in COMPOUND_METHODS}
        chosen = _lowest_brier(oofs, right, COMPOUND_METHODS)
        fitted = {"method": chosen}
        if chosen == "isotonic":
            fitted["isotonic"] = fit_isotonic(top, right)
        else:
            fitted["temperature"] = fit_temperature(logits, truth)
        maps[name] = fitted
        summary[name] = {
            "n_compounds": len(truth), "accuracy": float(right.mean()), "method": chosen,
            "ece_before": expected_calibration_error(top, right, n_bins),
            "ece_after": expected_calibration_error(oofs[chosen], right, n_bins),
            "brier_after": brier_score(oofs[chosen], right)}
    return maps, summary


def apply_compound_map(fitted: dict, means: np.ndarray, predict_method: str) -> np.ndarray:
    """Calibrated P(correct) of each compound's top call from its mean scores."""
    means = np.asarray(means, np.float64)
    if fitted["method"] == "isotonic":
        curve = fitted["isotonic"]
        return np.interp(means.max(axis=1), curve["x"], curve["y"]).astype(np.float32)
    proba = softmax(score_logits(means, predict_method), fitted["temperature"])
    return proba.max(axis=1).astype(np.float32)
