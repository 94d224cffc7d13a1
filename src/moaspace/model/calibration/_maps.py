"""The calibration maps (temperature, isotonic, logistic) and their out-of-fold choice.

Each map turns a predictor's per-class scores into P(top call correct); the one
with the lowest out-of-fold Brier score on the validation rows is chosen
(:func:`auto_candidates`, :func:`moaspace.model.calibration.fit_calibration`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special

from moaspace._core.neighbors import PREDICTORS, l2_normalize
from moaspace.errors import InputError, MoaspaceError
from moaspace.model.calibration._metrics import brier_score

#: how moa_pred_score is made; "none" keeps the raw top score (chosen when no fitted map
#: beats it out of fold); fit_calibration(method="auto") picks by out-of-fold Brier score
CALIBRATION_METHODS = ("isotonic", "temperature", "logistic", "none")
#: inputs of the logistic calibration (:func:`confidence_features`)
CONFIDENCE_FEATURES = ("logit_top_score", "logit_wide_share", "prototype_margin")
#: neighbours of the wider, unweighted vote in :func:`confidence_features`
WIDE_K = 50
#: inverse L2 strength of the logistic calibration (standardised features)
LOGISTIC_C = 1.0
#: added to kNN vote shares before the log, so a class with no vote keeps a finite logit
KNN_EPS = 1e-3
#: temperature of :func:`moaspace._core.neighbors.prototype_scores` (scores = softmax(cos / 0.1))
PROTOTYPE_TEMPERATURE = 0.1


def score_logits(scores: np.ndarray, predict_method: str = "knn") -> np.ndarray:
    """Logits behind the per-class scores of :func:`moaspace.tl.predict`.

    ``knn``: ``log(vote share + KNN_EPS)``; ``prototype`` and ``hidden_prototype``:
    ``log(softmax)`` (= cos / 0.1 up to a per-row constant).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if predict_method == "knn":
        return np.log(scores + KNN_EPS)
    if predict_method in ("prototype", "hidden_prototype"):
        return np.log(np.clip(scores, 1e-300, None))
    raise InputError(f"unknown method {predict_method!r}; use one of {list(PREDICTORS)}")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64)."""
    return special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, codes: np.ndarray,
                    bounds: tuple[float, float] = (0.02, 50.0)) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (bounded 1-D search)."""
    from scipy.optimize import minimize_scalar

    codes = np.asarray(codes)
    if len(codes) == 0:
        raise InputError("no rows to fit a temperature on")
    rows = np.arange(len(codes))

    def nll(log_t: float) -> float:
        x = logits / math.exp(log_t)
        return float((special.logsumexp(x, axis=1) - x[rows, codes]).mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def fit_isotonic(confidence, correct, *, per_block: bool = True) -> dict:
    """Monotone map from the top score to P(correct), as JSON-friendly breakpoints ``x``, ``y``.

    ``per_block`` (default): each block of the isotonic fit (rows sharing one fitted value)
    gets the rule-of-succession estimate ``(k + 1) / (n_b + 2)`` of its ``k`` right calls in
    ``n_b`` rows, and the blocks are made monotone again (weighted by ``n_b + 2``). Plain
    isotonic regression is biased at its ends on small validation sets: the lowest block
    often holds no right call (a fold of 62 real drugs: 0 of ~30), and a query there got
    1 / (n + 2) = 0.016 where 9% of such calls were right (real consensus set, seed 1:
    signature ECE 0.089, 0.045 with per-block estimates; ``docs/confidence.md``). With
    thousands of validation rows the blocks are large and the two agree.
    ``per_block=False``: the plain fit, kept within ``[1 / (n + 2), (n + 1) / (n + 2)]``
    (``n`` rows; used for the per-MoA maps, fitted on ``n x n_moas`` rows).
    """
    from sklearn.isotonic import IsotonicRegression

    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    n = len(correct)
    if per_block and n:
        iso = IsotonicRegression(increasing=True).fit(confidence, correct)
        x, y = _per_block_succession(confidence, correct, iso.predict(confidence))
    else:
        lo, hi = 1.0 / (n + 2), (n + 1.0) / (n + 2)
        iso = IsotonicRegression(y_min=lo, y_max=hi, increasing=True, out_of_bounds="clip")
        iso.fit(confidence, correct)
        x, y = iso.X_thresholds_, iso.y_thresholds_
    return {"x": [float(v) for v in x], "y": [float(v) for v in y]}


def _per_block_succession(confidence: np.ndarray, correct: np.ndarray, fitted: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of the isotonic blocks (rows sharing a fitted value), each block valued
    ``(k + 1) / (n_b + 2)`` and made monotone again: its lowest and highest confidence, as
    scikit-learn's thresholds (linear between blocks, flat beyond the ends)."""
    from sklearn.isotonic import IsotonicRegression

    blocks, block_of = np.unique(np.round(fitted, 12), return_inverse=True)
    k = np.bincount(block_of, weights=correct)
    size = np.bincount(block_of).astype(np.float64)
    value = IsotonicRegression(increasing=True).fit(
        blocks, (k + 1.0) / (size + 2.0), sample_weight=size + 2.0).predict(blocks)
    frame = pd.DataFrame({"block": block_of, "x": confidence}).groupby("block")["x"]
    lo, hi = frame.min().to_numpy(), frame.max().to_numpy()
    x = np.column_stack([lo, hi]).ravel()
    y = np.repeat(value, 2)
    keep = np.r_[True, np.diff(x) > 0]  # a one-value block gives one point
    return x[keep], y[keep]


def confidence_features(scores: np.ndarray, z: np.ndarray | None, centres: np.ndarray | None,
                        sims: np.ndarray, idx: np.ndarray, ref_codes: np.ndarray, *,
                        wide_k: int = WIDE_K, cos: np.ndarray | None = None) -> np.ndarray:
    """Inputs of the logistic calibration, one row per query (:data:`CONFIDENCE_FEATURES`).

    For the top class ``c`` of ``scores`` (kNN vote shares or prototype scores):

    ``logit_top_score``
        logit of the top score (clipped to ``[KNN_EPS, 1 - KNN_EPS]``);
    ``logit_wide_share``
        logit of the share of the ``wide_k`` nearest atlas signatures (unweighted)
        whose MoA is ``c``, clipped likewise: a finer vote than the ``k`` (10)
        neighbours of the prediction, which are often unanimous;
    ``prototype_margin``
        cosine to the nearest MoA prototype minus cosine to the second nearest
        (how clearly the query sits in one MoA's region of the sphere).

    ``sims``, ``idx``: the query's nearest atlas neighbours, most similar first,
    at least ``wide_k`` of them (fewer when the atlas is smaller);
    ``ref_codes``: class code of every atlas signature; ``centres``: unit
    prototypes (:func:`moaspace._core.neighbors.prototypes`); ``cos``: the queries'
    cosines to those prototypes when already computed (``z`` and ``centres`` are then
    not read).
    """
    scores = np.asarray(scores, dtype=np.float64)
    idx = np.asarray(idx)
    if cos is None:
        cos = l2_normalize(np.asarray(z, np.float32)) @ np.asarray(centres, np.float32).T
    if len(idx) != len(scores) or len(sims) != len(scores) or len(cos) != len(scores):
        raise InputError("scores, z, sims and idx must have one row per query")
    top = scores.argmax(axis=1)
    w = min(int(wide_k), idx.shape[1])
    if w < 1:
        raise InputError("confidence_features needs at least one neighbour per query")
    wide = (np.asarray(ref_codes)[idx[:, :w]] == top[:, None]).mean(axis=1)
    cos = np.sort(np.asarray(cos, np.float32), axis=1).astype(np.float64)
    margin = cos[:, -1] - cos[:, -2] if cos.shape[1] >= 2 else np.ones(len(cos))

    def logit(p):
        p = np.clip(p, KNN_EPS, 1.0 - KNN_EPS)
        return np.log(p) - np.log1p(-p)

    return np.column_stack([logit(scores.max(axis=1)), logit(wide), margin])


def fit_logistic(features, correct, c: float = LOGISTIC_C) -> dict:
    """Logistic regression of "top call correct" on ``features`` (Platt scaling on several inputs).

    Features are standardised and the weights L2-penalised (``C = c``); with 3
    weights and an intercept it needs far fewer rows than an isotonic step per
    level of the score. Returns JSON-friendly ``mean``, ``scale``, ``coef``,
    ``intercept`` and the output bounds ``lo``, ``hi`` (the rule-of-succession
    bounds of :func:`fit_isotonic`). A single-outcome sample gives a constant.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, np.float64)
    y = np.asarray(correct).astype(int)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise InputError("features must be a non-empty 2-D array with one row per label")
    n = len(y)
    lo, hi = 1.0 / (n + 2), (n + 1.0) / (n + 2)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    if len(np.unique(y)) < 2:
        p = (y.sum() + 1.0) / (n + 2.0)
        coef, intercept = np.zeros(x.shape[1]), math.log(p / (1 - p))
    else:
        lr = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
        coef, intercept = lr.coef_[0], float(lr.intercept_[0])
    return {"mean": [float(v) for v in mean], "scale": [float(v) for v in scale],
            "coef": [float(v) for v in coef], "intercept": float(intercept),
            "lo": float(lo), "hi": float(hi)}


def apply_logistic(fit: dict, features) -> np.ndarray:
    """P(top call correct) of a :func:`fit_logistic` result for feature rows."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != len(fit["coef"]):
        raise MoaspaceError(f"logistic calibration expects {len(fit['coef'])} features per row, "
                            f"got shape {x.shape}")
    eta = ((x - np.asarray(fit["mean"])) / np.asarray(fit["scale"])) @ np.asarray(fit["coef"])
    p = 1.0 / (1.0 + np.exp(-(eta + fit["intercept"])))
    return np.clip(p, fit["lo"], fit["hi"])


def _out_of_fold_confidence(method: str, top: np.ndarray, logits: np.ndarray,
                            codes: np.ndarray, correct: np.ndarray, groups,
                            features: np.ndarray | None = None,
                            extra: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Calibrated top confidence of each row from a calibrator fitted without its fold
    (5 folds, grouped by compound when ``groups`` is given): an honest "after" on the
    validation rows, which an in-sample isotonic fit would make look perfect. ``extra``:
    (top score, correct) of rows that join every fold's isotonic fit (cross-fitted rows)."""
    from sklearn.model_selection import GroupKFold, KFold

    n = len(codes)
    if method == "none":
        return top.astype(np.float64)
    if groups is not None and len(np.unique(groups)) >= 2:
        folds = GroupKFold(n_splits=min(5, len(np.unique(groups)))).split(top, groups=groups)
    elif n >= 2:
        folds = KFold(n_splits=min(5, n), shuffle=True, random_state=0).split(top)
    else:
        return np.full(n, np.nan)
    out = np.empty(n)
    for fit, held in folds:
        if method == "isotonic":
            iso = (fit_isotonic(top[fit], correct[fit]) if extra is None else fit_isotonic(
                np.concatenate([top[fit], extra[0]]), np.concatenate([correct[fit], extra[1]])))
            out[held] = np.interp(top[held], iso["x"], iso["y"])
        elif method == "logistic":
            out[held] = apply_logistic(fit_logistic(features[fit], correct[fit]), features[held])
        else:
            t = fit_temperature(logits[fit], codes[fit])
            out[held] = softmax(logits[held], t).max(axis=1)
    return out



def _lowest_brier(oofs: dict[str, np.ndarray], correct: np.ndarray,
                  candidates: tuple[str, ...] = CALIBRATION_METHODS) -> str:
    """The calibration map among ``candidates`` with the lowest out-of-fold Brier score
    (ties: listed order)."""
    briers = {m: brier_score(oofs[m], correct) for m in candidates}
    return min(candidates, key=lambda m: (np.nan_to_num(briers[m], nan=np.inf),
                                          CALIBRATION_METHODS.index(m)))


def auto_candidates(predict_method: str) -> tuple[str, ...]:
    """Maps ``method="auto"`` chooses among for a predictor's scores.

    A kNN vote share is a share of neighbours, and ``none`` keeps it when no fitted
    map beats it. A prototype score is a softmax at a fixed, arbitrary temperature
    (0.1): kept raw it is no probability. On the open-set benchmark (24 seeds)
    validation picked ``none`` for the hidden-prototype scores in 4 seeds, by
    out-of-fold Brier margins of 0.0004-0.0031, and its test ECE there was 0.06-0.09;
    the best fitted map on validation had 0.04 in three of them (0.085 in the
    fourth). So prototype predictors always get a fitted map (``none`` can still be
    forced).
    """
    if predict_method == "knn":
        return CALIBRATION_METHODS
    return tuple(m for m in CALIBRATION_METHODS if m != "none")
