"""The ``no call`` cut-offs (#28), chosen on validation rows: on signature strength and on
the calibrated probability that the call is right.

A signature that moves few genes carries little of its compound's mechanism: on the real
consensus set the weakest fifth of held-out drugs (z-score RMS below about 1.0) were called
right 5% of the time, at chance for 38 MoAs, against 29-67% for the stronger fifths. Such
signatures go to whichever class is itself the most inert (antibiotics, whose signatures in
human cells are near-noise), which then becomes a catch-all. ``no call`` keeps them out.

**The rule.** Fit the accuracy of the validation calls as a monotone (isotonic) function of
strength; the cut-off is the smallest strength at which it reaches the lower of
``CHANCE_FACTOR`` (2) times chance (the share of the most common validation MoA: what always
calling it would score) and ``RATIO`` (one half) of the overall validation accuracy. Below
it a call is right less than twice as often as a blind one and less than half as often as
the model's average call (on the real consensus set the weakest fifth of held-out drugs is
at chance). What it withholds and costs on real and simulated data:
``benchmarks/bench_no_call.py`` and docs/confidence.md. The cut-off never passes the ``MAX_SHARE`` (40%)
quantile of the validation strengths, and is None when no signature falls below it. It is
chosen as the unknown threshold is: on validation compounds, scored by prototypes that never
saw them.

**The confidence cut-off** (``min_score``) applies the same level to the calibrated
probability that the top call is right (``moa_pred_score``), which already reads how far
the signature is from its MoA, how clearly it beats the runner-up and how strong it is: a
call below that level is withheld as well. Strength alone misses a strong signature that
lands between classes; on the real level-5 plates (``benchmarks/bench_level5.py``) such
signatures of atorvastatin went to a dozen unrelated classes at calibrated probabilities of
3-18%, while its HMGCR-inhibitor calls sat at 17-95%. The probability is already a
calibrated accuracy, so the level is the cut-off (no second isotonic fit).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: a call is withheld where the validation accuracy falls below this share of the average
RATIO = 0.5
#: ... and below this many times chance
CHANCE_FACTOR = 2.0
#: the cut-off never passes this quantile of the validation strengths
MAX_SHARE = 0.4


def _isotonic_accuracy(strength: np.ndarray, right: np.ndarray) -> np.ndarray:
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(increasing=True, out_of_bounds="clip").fit(
        strength, right).predict(strength)


def choose_min_strength(strength, right, chance: float, *, ratio: float = RATIO,
                        chance_factor: float = CHANCE_FACTOR,
                        max_share: float = MAX_SHARE) -> float | None:
    """The ``no call`` cut-off of :mod:`this module <._strength>` (None: none).

    Parameters
    ----------
    strength : array-like
        Signature strength of each validation row.
    right : array-like of bool
        Whether each row's top call is right.
    chance : float
        Accuracy of a blind call (the share of the most common MoA of the rows).
    ratio, chance_factor, max_share : float
        See the module.
    """
    strength = np.asarray(strength, np.float64)
    right = np.asarray(right, np.float64)
    ok = np.isfinite(strength)
    strength, right = strength[ok], right[ok]
    level = choose_min_score(right, chance, ratio=ratio, chance_factor=chance_factor)
    if level is None:  # the same level, read on the strength axis
        return None
    called = _isotonic_accuracy(strength, right) >= level
    if called.all():
        return None
    cut = float(strength[called].min()) if called.any() else float(strength.max())
    cut = min(cut, float(np.quantile(strength, max_share)))
    return cut if (strength < cut).any() else None


def choose_min_score(right, chance: float, *, ratio: float = RATIO,
                     chance_factor: float = CHANCE_FACTOR) -> float | None:
    """The ``no call`` cut-off on the calibrated ``moa_pred_score``: the accuracy below
    which a call is withheld, the lower of ``chance_factor`` times ``chance`` (the accuracy
    of a blind call) and ``ratio`` times the validation accuracy (``right``: whether each
    validation row's top call is right). None with fewer than 20 rows or none right."""
    right = np.asarray(right, np.float64)
    if len(right) < 20 or right.mean() == 0:
        return None
    return float(min(chance_factor * float(chance), ratio * right.mean()))


def strength_coverage_curve(strength, right, n_points: int = 20) -> pd.DataFrame:
    """Accuracy against coverage when signatures weaker than ``min_strength`` get no call:
    one row per cut-off (``n_points`` quantiles of the strengths, 0 to 95%):
    ``min_strength``, ``coverage``, ``n``, ``accuracy`` of the called rows, and
    ``accuracy_below`` of the withheld ones."""
    strength = np.asarray(strength, np.float64)
    right = np.asarray(right, np.float64)
    cuts = np.unique(np.quantile(strength, np.linspace(0, 0.95, n_points)))
    rows = []
    for t in cuts:
        keep = strength >= t
        rows.append({"min_strength": float(t), "coverage": float(keep.mean()),
                     "n": int(keep.sum()),
                     "accuracy": float(right[keep].mean()) if keep.any() else float("nan"),
                     "accuracy_below": (float(right[~keep].mean()) if (~keep).any()
                                        else float("nan"))})
    return pd.DataFrame(rows)
