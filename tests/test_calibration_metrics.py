"""Calibration and open-set metrics (moaspace.model.calibration._metrics): the unknown
threshold rule, ECE and reliability bins, Brier score and NLL, TAS coverage, open-set
test metrics."""

from __future__ import annotations

import numpy as np
import pytest

from moaspace.errors import InputError
from moaspace.model.calibration import (
    _out_of_fold_confidence,
    binary_nll,
    brier_score,
    choose_threshold,
    expected_calibration_error,
    open_set_metrics,
    reliability_curve,
    tas_coverage_curve,
    unknown_auroc,
)

# --------------------------------------------------------------------------------- threshold logic


def test_threshold_is_the_exact_quantile_of_known_scores():
    scores = np.random.default_rng(0).permutation(np.arange(100, dtype=float))
    t = choose_threshold(scores, 0.05)
    assert t == 94.0  # the 95th smallest: exactly 5 of 100 scores are strictly above
    assert int((scores > t).sum()) == 5
    assert choose_threshold(scores, 0.0) == 99.0  # nothing known rejected
    assert int((scores > choose_threshold(scores, 0.29)).sum()) == 29  # no float drift
    assert choose_threshold(scores, 0.999) == 0.0
    # n = 30, 5%: floor(1.5) = 1 score above
    assert int((np.arange(30) > choose_threshold(np.arange(30), 0.05)).sum()) == 1


def test_threshold_gives_five_percent_false_unknown_on_validation():
    known = np.random.default_rng(1).normal(size=1000)
    t = choose_threshold(known, 0.05)
    assert (known > t).mean() == pytest.approx(0.05)
    # ties: never more than the target (rows equal to the threshold stay known)
    tied = np.r_[np.zeros(90), np.ones(10)]
    t = choose_threshold(tied, 0.05)
    assert t == 1.0 and (tied > t).mean() == 0.0 <= 0.05
    # NaN scores are ignored
    assert choose_threshold(np.r_[np.arange(20.0), np.nan], 0.05) == 18.0


@pytest.mark.parametrize("bad", [[], [np.nan, np.inf]])
def test_threshold_without_scores_is_an_input_error(bad):
    with pytest.raises(InputError, match="no finite"):
        choose_threshold(np.array(bad, dtype=float))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2.0])
def test_threshold_rate_out_of_range(rate):
    with pytest.raises(InputError, match="target_false_unknown"):
        choose_threshold(np.arange(10.0), rate)


# --------------------------------------------------------------------------------- ECE, Brier, NLL


def test_ece_matches_a_hand_computation():
    conf = np.array([0.1, 0.15, 0.55, 0.62, 0.95, 0.99])
    correct = np.array([0, 0, 1, 0, 1, 1])
    # 10 equal-width bins (lo, hi]: 0.1 -> bin 0, 0.15 -> 1, 0.55 -> 5, 0.62 -> 6,
    # 0.95 and 0.99 -> 9 (mean confidence 0.97, accuracy 1)
    hand = (0.1 + 0.15 + 0.45 + 0.62 + 2 * 0.03) / 6
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(hand)
    curve = reliability_curve(conf, correct, n_bins=10)
    assert curve["n"].tolist() == [1, 1, 0, 0, 0, 1, 1, 0, 0, 2]
    assert curve.loc[9, "confidence"] == pytest.approx(0.97)
    assert np.isnan(curve.loc[2, "accuracy"])
    # perfectly calibrated bins: ECE 0
    assert expected_calibration_error([0.5, 0.5], [1, 0], n_bins=10) == 0.0
    assert expected_calibration_error([0.0], [0], n_bins=10) == 0.0  # 0 goes to bin 0


def test_brier_and_nll_of_top_call_correctness_by_hand():
    conf, correct = np.array([0.9, 0.2, 0.5]), np.array([1, 0, 1])
    assert brier_score(conf, correct) == pytest.approx((0.01 + 0.04 + 0.25) / 3)
    assert binary_nll(conf, correct) == pytest.approx(-(np.log(0.9) + np.log(0.8)
                                                        + np.log(0.5)) / 3)
    # a confident error costs -log(0.001) nats, not infinity
    assert binary_nll([1.0], [0]) == pytest.approx(np.log(1000.0))
    assert binary_nll([0.0, 1.0], [0, 1]) == pytest.approx(-np.log(0.999))
    # sharpness: both constant-at-accuracy and perfect sorting have ECE 0, only Brier differs
    y = np.r_[np.ones(50), np.zeros(50)]
    assert expected_calibration_error(np.full(100, 0.5), y) == 0.0
    assert brier_score(np.full(100, 0.5), y) == 0.25
    assert brier_score(y, y) == 0.0
    assert np.isnan(brier_score([], [])) and np.isnan(binary_nll([], []))
    with pytest.raises(InputError, match="shape"):
        brier_score([0.5, 0.5], [1])


def test_ece_is_nan_for_non_finite_confidences_and_curves_skip_them():
    conf = np.array([0.95, 0.97, np.nan, 0.1])
    correct = np.array([0, 0, 1, 0])
    assert np.isnan(expected_calibration_error(conf, correct))
    assert np.isnan(expected_calibration_error(np.full(3, np.nan), np.ones(3)))
    curve = reliability_curve(conf, correct, n_bins=10)
    assert curve["n"].sum() == 3  # the NaN row is in no bin
    assert expected_calibration_error(conf[[0, 1, 3]], correct[[0, 1, 3]]) == pytest.approx(
        (2 * 0.96 + 0.1) / 3)
    # a single validation row cannot be fitted out of fold: its ECE is undefined, not 0
    oof = _out_of_fold_confidence("isotonic", np.array([0.9]), np.zeros((1, 2)), np.array([0]),
                                  np.array([True]), None)
    assert np.isnan(expected_calibration_error(oof, [1]))


@pytest.mark.parametrize("n_bins", [5, 10, 15])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_on_a_bin_edge_stay_in_their_right_closed_bin(n_bins, dtype):
    # every edge j / n_bins, exactly as float64 and as the nearest float32 (which can be
    # above it, e.g. float32(1/3) > 1/3): bins are (lo, hi], so edge j is in bin j - 1
    edges = (np.arange(1, n_bins + 1) / n_bins).astype(dtype)
    curve = reliability_curve(edges, np.ones(n_bins), n_bins=n_bins)
    assert curve["n"].tolist() == [1] * n_bins
    assert reliability_curve(np.array([0.0], dtype), [1], n_bins=n_bins)["n"].iloc[0] == 1


# -------------------------------------------------------------------------------- open set and TAS


def test_open_set_metrics_on_hand_made_predictions():
    y_true = np.array(["A", "A", "B", "B", "X", "X"])  # X: unknown MoA
    y_pred = np.array(["A", "B", "B", "B", "A", "B"])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.35])
    m = open_set_metrics(y_true, y_pred, score, ["A", "B"], threshold=0.5)
    assert m["n_known"] == 4 and m["n_unknown"] == 2
    assert m["false_unknown_rate"] == 0.0 and m["unknown_detected"] == 0.5
    assert m["auroc"] == pytest.approx(unknown_auroc([0.1, 0.2, 0.3, 0.4], [0.8, 0.35]))
    assert m["auroc"] == pytest.approx(7 / 8)  # 0.35 ranks below one known score
    # open (A, B, B, B, unknown, B): F1 A = 2/3 (tp 1, fn 1), B = 2/3 (tp 2, fp 2)
    assert m["macro_f1_known_open"] == pytest.approx(2 / 3)
    # closed (every X row forced into A or B): A = 1/2, B = 2/3
    assert m["macro_f1_known_closed"] == pytest.approx(7 / 12)
    m = open_set_metrics(y_true, y_pred, score, ["A", "B"], threshold=0.35)
    assert m["false_unknown_rate"] == 0.25 and m["unknown_detected"] == 0.5
    # the calls given (e.g. predict's, the 0.4 row weak: 'no call'): the rates follow
    # them, the AUROC still reads the score
    given = open_set_metrics(y_true, y_pred, score, ["A", "B"], threshold=0.35,
                             flagged=[False, False, False, False, True, False])
    assert given["false_unknown_rate"] == 0.0 and given["unknown_detected"] == 0.5
    assert given["auroc"] == m["auroc"]
    assert given["macro_f1_known_open"] == pytest.approx(2 / 3)


def test_tas_coverage_curve():
    tas = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    correct = np.array([0, 0, 1, 1, 1])
    curve = tas_coverage_curve(tas, correct, thresholds=[0.0, 0.25])
    assert curve["coverage"].tolist() == [1.0, 0.5]
    assert curve["accuracy"].tolist() == [0.5, 1.0]
