"""Calibration and open-set evaluation metrics on plain arrays.

Reliability curve, expected calibration error (ECE; defined in the package
docstring, :mod:`moaspace.model.calibration`), Brier score, NLL, AUROC and ROC
points of unknown scores, the unknown threshold, TAS coverage, and the test
metrics of an open-set predictor (:func:`open_set_metrics`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moaspace._core.labels import UNKNOWN
from moaspace.errors import InputError

#: probabilities are clipped to [NLL_EPS, 1 - NLL_EPS] in :func:`binary_nll`
NLL_EPS = 1e-3
DEFAULT_N_BINS = 15


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # confidences and edges both rounded to 6 decimals: a float32 score that means 0.2 is
    # 0.2000000030 and would leave its right-closed bin (0.1333, 0.2] for the next one
    edges = np.round(np.linspace(0.0, 1.0, n_bins + 1), 6)
    conf = np.round(np.clip(np.asarray(confidence, np.float64), 0.0, 1.0), 6)
    return np.searchsorted(edges[1:-1], conf, side="left")


def reliability_curve(confidence, correct, n_bins: int = DEFAULT_N_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin: ``bin_lo, bin_hi, n, confidence, accuracy``.

    Bins are right-closed, ``(lo, hi]`` (0 goes to the first); empty bins have
    ``n == 0`` and NaN confidence / accuracy. Rows with a non-finite confidence
    are left out (they belong to no bin).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise InputError("confidence and correct must be 1-D arrays of the same length")
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    finite = np.isfinite(confidence)
    confidence, correct = confidence[finite], correct[finite]
    b = _bin_index(confidence, n_bins)
    n = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(b, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(n > 0, conf_sum / np.maximum(n, 1), np.nan)
        acc = np.where(n > 0, acc_sum / np.maximum(n, 1), np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "n": n.astype(int),
                         "confidence": conf, "accuracy": acc})


def expected_calibration_error(confidence, correct, n_bins: int = DEFAULT_N_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins (see the package docstring).

    NaN when there are no rows or any confidence is not finite (e.g. an
    out-of-fold confidence that could not be fitted): such an ECE is undefined,
    and dropping the rows would report a calibration that was never measured.
    """
    if not np.isfinite(np.asarray(confidence, dtype=np.float64)).all():
        return float("nan")
    curve = reliability_curve(confidence, correct, n_bins)
    total = int(curve["n"].sum())
    if total == 0:
        return float("nan")
    full = curve[curve["n"] > 0]
    return float((full["n"] / total * (full["accuracy"] - full["confidence"]).abs()).sum())


def negative_log_likelihood(proba: np.ndarray, codes: np.ndarray) -> float:
    """Mean -log p(true class) (probabilities clipped at 1e-12)."""
    p = proba[np.arange(len(codes)), codes]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def _paired(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Confidences and 0/1 outcomes as float64 arrays of the same shape."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape:
        raise InputError("confidence and correct must have the same shape")
    return confidence, correct


def brier_score(confidence, correct) -> float:
    """Mean squared error of the confidence against "top call correct" (0/1); nan for no rows.

    Unlike ECE it also rewards sharpness: a calibrated predictor that separates
    right from wrong calls scores lower than one that gives everyone the mean
    accuracy."""
    confidence, correct = _paired(confidence, correct)
    if len(correct) == 0:
        return float("nan")
    return float(np.mean((confidence - correct) ** 2))


def binary_nll(confidence, correct, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood (nats) of "top call correct" under the confidence.

    Confidences are clipped to ``[eps, 1 - eps]`` (default 1e-3), so one confident
    error costs at most ``-log(eps)`` (6.9 nats) instead of infinity; nan for no rows.
    """
    confidence, correct = _paired(confidence, correct)
    if len(correct) == 0:
        return float("nan")
    p = np.clip(confidence, eps, 1.0 - eps)
    return float(-np.mean(correct * np.log(p) + (1.0 - correct) * np.log1p(-p)))


def unknown_auroc(known_scores, unknown_scores) -> float:
    """AUROC of telling unknown queries (positives) from known ones by their unknown score."""
    from sklearn.metrics import roc_auc_score

    known = np.asarray(known_scores, dtype=np.float64)
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return float(roc_auc_score(y, np.r_[known, unknown]))


def roc_points(known_scores, unknown_scores, max_points: int = 101) -> dict:
    """ROC curve (false-unknown rate on known queries vs detection rate of unknown ones)
    thinned to at most ``max_points`` points, with its AUROC; JSON-friendly."""
    from sklearn.metrics import roc_curve

    known = np.asarray(known_scores, dtype=np.float64)
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    fpr, tpr, _ = roc_curve(y, np.r_[known, unknown])
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr],
            "auroc": unknown_auroc(known, unknown)}


def choose_threshold(known_scores, target_false_unknown: float = 0.05) -> float:
    """Unknown-score threshold for a target false-unknown rate on known queries.

    With the ``n`` known (validation) scores sorted ascending ``s_1 <= ... <= s_n``
    and ``m = floor(target * n)``, the threshold is ``s_(n-m)``; a query is
    ``unknown`` when its score is **strictly greater**. So at most ``m`` of
    the known scores (exactly ``m`` without ties) are called unknown: the
    realised false-unknown rate on the validation rows is ``<= target``.
    ``target = 0`` gives the maximum (nothing known is rejected).
    """
    s = np.asarray(known_scores, dtype=np.float64).ravel()
    s = np.sort(s[np.isfinite(s)])
    if len(s) == 0:
        raise InputError("no finite known-query scores to choose an unknown threshold from")
    if not 0 <= target_false_unknown < 1:
        raise InputError(f"target_false_unknown must be in [0, 1), got {target_false_unknown}")
    m = math.floor(target_false_unknown * len(s) + 1e-9)
    return float(s[len(s) - m - 1])


def tas_coverage_curve(tas, correct, thresholds=None, n_points: int = 20) -> pd.DataFrame:
    """Accuracy vs coverage when signatures with TAS below ``min_tas`` get no call.

    Returns one row per ``min_tas`` (default: ``n_points`` quantiles of TAS from
    0 to 95%): ``min_tas``, ``coverage`` (share called), ``n`` and ``accuracy``
    of the called rows. Rows with NaN TAS are left out.
    """
    tas = np.asarray(tas, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    ok = np.isfinite(tas)
    tas, correct = tas[ok], correct[ok]
    if len(tas) == 0:
        return pd.DataFrame(columns=["min_tas", "coverage", "n", "accuracy"])
    if thresholds is None:
        thresholds = np.unique(np.quantile(tas, np.linspace(0, 0.95, n_points)))
    rows = []
    for t in np.asarray(thresholds, dtype=np.float64):
        keep = tas >= t
        rows.append({"min_tas": float(t), "coverage": float(keep.mean()), "n": int(keep.sum()),
                     "accuracy": float(correct[keep].mean()) if keep.any() else float("nan")})
    return pd.DataFrame(rows)


def choose_min_tas(tas, correct, target_accuracy: float) -> float | None:
    """Smallest TAS cut-off whose called signatures reach ``target_accuracy`` (None if none)."""
    curve = tas_coverage_curve(tas, correct, n_points=40)
    ok = curve[curve["accuracy"] >= target_accuracy]
    return None if ok.empty else float(ok["min_tas"].min())


def open_set_metrics(
    y_true, y_pred, unknown_score, known_classes, threshold: float,
    *, proba_conf=None, raw_conf=None, n_bins: int = DEFAULT_N_BINS, flagged=None,
) -> dict:
    """Test metrics of an open-set predictor.

    ``y_true``: true MoAs (those outside ``known_classes`` are the unknowns);
    ``y_pred``: the top known MoA of each row; ``unknown_score`` and
    ``threshold`` make the unknown calls, unless ``flagged`` (bool per row) gives
    them (``predict``'s, where a weak signature is ``no call`` whatever its score);
    the AUROC reads ``unknown_score`` either way. Returns AUROC known-vs-unknown,
    false-unknown rate on known rows, detection rate of unknown rows,
    macro-F1 over the known MoAs with and without the unknown calls (unknown
    rows count as errors when called as a known MoA), and ECE, Brier score and
    NLL of "top call correct" (:func:`brier_score`, :func:`binary_nll`) of the
    known rows before / after calibration when ``raw_conf`` / ``proba_conf``
    are given.
    """
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    unknown_score = np.asarray(unknown_score, dtype=np.float64)
    known_classes = [str(c) for c in known_classes]
    is_known = np.isin(y_true, known_classes)
    flagged = (unknown_score > threshold if flagged is None
               else np.asarray(flagged, dtype=bool))
    open_pred = np.where(flagged, UNKNOWN, y_pred)
    truth = np.where(is_known, y_true, UNKNOWN)
    labels = sorted(set(y_true[is_known]))
    out = {
        "n_known": int(is_known.sum()), "n_unknown": int((~is_known).sum()),
        "auroc": unknown_auroc(unknown_score[is_known], unknown_score[~is_known]),
        "false_unknown_rate": float(flagged[is_known].mean()) if is_known.any() else float("nan"),
        "unknown_detected": float(flagged[~is_known].mean()) if (~is_known).any()
        else float("nan"),
        "macro_f1_known_open": float(f1_score(truth, open_pred, labels=labels, average="macro",
                                              zero_division=0)) if labels else float("nan"),
        "macro_f1_known_closed": float(f1_score(truth, y_pred, labels=labels, average="macro",
                                                zero_division=0)) if labels else float("nan"),
        "accuracy_known_closed": float((y_pred[is_known] == y_true[is_known]).mean())
        if is_known.any() else float("nan"),
    }
    correct = (y_pred == y_true)[is_known]
    for when, conf in (("before", raw_conf), ("after", proba_conf)):
        if conf is not None:
            conf = np.asarray(conf, dtype=np.float64)[is_known]
            out[f"ece_{when}"] = expected_calibration_error(conf, correct, n_bins)
            out[f"brier_{when}"] = brier_score(conf, correct)
            out[f"nll_correct_{when}"] = binary_nll(conf, correct)
    return out
