"""Per-MoA probabilities and prediction sets (#28): what ``predict`` writes as
``obsm["moa_proba"]`` and ``obs["moa_pred_set"]``.

``moa_pred_score`` answers "is the top call right?". A compound with two mechanisms needs
another question answered for every MoA ``c``: "is ``c`` one of its MoAs?". Here:

* **Per-MoA probability.** One isotonic map from a MoA's score (the predictor's per-class
  score, e.g. the softmax share of the prototype cosines) to P(that MoA is true), pooled over
  every (validation signature, MoA) pair: one-vs-rest, so the probabilities of a row need
  not sum to one, and a signature between two prototypes can have two high ones.
* **Prediction set.** The top call, plus every other MoA whose probability reaches the
  set threshold. The threshold maximises the mean set F1 of out-of-fold probabilities on
  the validation rows (5 folds grouped by compound): adding a second MoA costs a right top
  call a third of its F1 and turns a wrong one's 0 into 2/3, so a MoA joins the set only when
  it is right often enough. Multi-MoA validation rows count with all their MoAs.
* **Compounds.** The same, on the mean scores of a compound's signatures (a map of its
  own: means are less noisy than single signatures) when the validation holds
  :data:`~moaspace.model.calibration._compound.MIN_COMPOUNDS` compounds of two or more
  signatures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moaspace._core.sets import join_moa_set
from moaspace.model.calibration._maps import fit_isotonic

#: thresholds compared for the prediction sets
SET_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.025), 3))
#: at most this many validation rows fit the pooled map (rows x MoAs pairs)
MAX_ROWS = 5000
N_FOLDS = 5


def truth_matrix(codes: np.ndarray, n_classes: int, sets: list | None = None) -> np.ndarray:
    """Bool ``(n, n_classes)``: row ``i``'s true MoAs (``codes[i]``, or ``sets[i]`` where
    given and not empty)."""
    truth = np.zeros((len(codes), n_classes), dtype=bool)
    ok = np.asarray(codes) >= 0
    truth[np.flatnonzero(ok), np.asarray(codes)[ok]] = True
    for i, s in enumerate(sets or []):
        if s:
            truth[i, list(s)] = True
    return truth


def set_f1(sets: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-row F1 of predicted sets against true sets (both bool ``(n, C)``)."""
    hits = (sets & truth).sum(axis=1)
    size = sets.sum(axis=1) + truth.sum(axis=1)
    return np.where(size > 0, 2.0 * hits / np.maximum(size, 1), 0.0)


def sets_at(proba: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Bool ``(n, C)`` sets: the top score's MoA, and every MoA with ``proba >= threshold``."""
    sets = proba >= threshold
    sets[np.arange(len(scores)), np.asarray(scores).argmax(axis=1)] = True
    return sets


def _map(curve: dict, scores: np.ndarray) -> np.ndarray:
    return np.interp(np.asarray(scores, np.float64), curve["x"], curve["y"])


def _folds(groups: np.ndarray | None, n: int, seed: int = 0) -> np.ndarray:
    """Fold of each row, whole compounds per fold (rows without a group: by row)."""
    keys = np.asarray(groups).astype(str) if groups is not None else np.arange(n).astype(str)
    uniq = np.unique(keys)
    fold_of = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % N_FOLDS,
                       strict=True))
    return np.array([fold_of[k] for k in keys])


def fit_classwise(scores: np.ndarray, truth: np.ndarray, groups: np.ndarray | None = None
                  ) -> dict:
    """The per-MoA map and the set threshold of one predictor's validation scores.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(n, C)`` per-MoA scores of the validation rows (scored by prototypes that never
        saw them).
    truth : numpy.ndarray
        Bool ``(n, C)`` true MoAs (:func:`truth_matrix`).
    groups : numpy.ndarray, optional
        Compound of each row: folds keep compounds whole.

    Returns
    -------
    dict
        ``isotonic`` (breakpoints), ``set_threshold``, and what was measured out of fold:
        ``set_f1`` (at the threshold), ``set_f1_top1`` (the top call alone),
        ``mean_set_size``, ``n``.
    """
    scores = np.asarray(scores, np.float64)
    rows = np.arange(len(scores))
    if len(rows) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_ROWS, replace=False))
    fold = _folds(None if groups is None else np.asarray(groups)[rows], len(rows))
    sc, tr = scores[rows], truth[rows]
    oof = np.empty_like(sc)
    for k in range(N_FOLDS):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any() or not tr[train].any():
            oof[test] = sc[test]
            continue
        oof[test] = _map(fit_isotonic(sc[train].ravel(), tr[train].ravel(),
                                      per_block=False), sc[test])
    f1 = {t: float(set_f1(sets_at(oof, sc, t), tr).mean()) for t in SET_THRESHOLDS}
    best = max(SET_THRESHOLDS, key=lambda t: (round(f1[t], 6), t))  # ties: the smaller sets
    return {"isotonic": fit_isotonic(sc.ravel(), tr.ravel(), per_block=False),
            "set_threshold": float(best),
            "set_f1": f1[best], "set_f1_top1": float(set_f1(sets_at(oof, sc, 2.0), tr).mean()),
            "mean_set_size": float(sets_at(oof, sc, best).sum(axis=1).mean()),
            "n": len(rows)}


def compound_scores(scores: np.ndarray, truth: np.ndarray, groups: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean scores, union of true MoAs and names of the compounds of two or more rows."""
    groups = np.asarray(groups).astype(str)
    frame = pd.DataFrame(np.asarray(scores, np.float64))
    frame["_g"] = groups
    counts = frame["_g"].value_counts()
    keep = frame["_g"].isin(counts.index[counts >= 2]).to_numpy()
    means = frame[keep].groupby("_g", sort=True).mean()
    truth_frame = pd.DataFrame(np.asarray(truth)[keep]).groupby(groups[keep], sort=True).max()
    return means.to_numpy(), truth_frame.loc[means.index].to_numpy(bool), means.index.to_numpy()


def fit_classwise_maps(predictors: dict, truth: np.ndarray, groups: np.ndarray | None,
                       min_compounds: int) -> dict:
    """Per predictor (``name -> (scores, ...)``): :func:`fit_classwise` of the signatures,
    and of the compounds (``"compound"``) when there are ``min_compounds`` of two or more
    signatures."""
    out = {}
    for name, (scores, *_) in predictors.items():
        fitted = fit_classwise(scores, truth, groups)
        if groups is not None:
            means, ctruth, names = compound_scores(scores, truth, groups)
            if len(names) >= min_compounds:
                fitted["compound"] = fit_classwise(means, ctruth, names)
        out[name] = fitted
    return out


def classwise_proba(fitted: dict, scores: np.ndarray) -> np.ndarray:
    """Calibrated per-MoA probabilities ``(n, C)`` (float32) of per-MoA scores."""
    return _map(fitted["isotonic"], scores).astype(np.float32)


def set_labels(sets: np.ndarray, classes, abstain: np.ndarray | None = None) -> np.ndarray:
    """``|``-joined MoA names of each row's set, in ``obs["moa_set"]``'s order
    (:func:`moaspace._core.sets.join_moa_set`; "" where ``abstain``)."""
    names = np.asarray(classes, dtype=object)
    out = np.array([join_moa_set(names[row]) for row in sets], dtype=object)
    if abstain is not None:
        out[np.asarray(abstain, bool)] = ""
    return out
