"""'Unknown mechanism' calls per compound: the open-set score pooled over a compound's
signatures, against a threshold that depends on how many signatures were pooled.

One signature of a new mechanism is often close to some known MoA by chance (noise,
a weak response, a cell line where the drug does little), so the signature-level
open-set score separates known from novel MoAs only moderately. The signatures of one
compound share its mechanism, and their mean score is far less noisy: on the
simulator's held-out MoAs the mean over a compound's signatures separates novel from
known compounds much better than any single signature (``docs/confidence.md``).

The threshold of a mean over ``n`` signatures must be chosen for ``n``: the mean of
two signatures spreads more than the mean of thirty, so one threshold would flag
small known compounds too often. :func:`fit_pooled_thresholds` draws ``n`` signatures
of each validation compound many times and takes, for each ``n``, the quantile of
those means that leaves ``target`` of the known compounds above it.
:func:`pooled_unknown` applies the threshold of the largest fitted ``n`` not above a
query compound's own count (a smaller ``n`` has a higher, more cautious threshold), and
extrapolates it, by a one-way random-effects model of the scores, to compounds with more
signatures than any validation compound has.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: numbers of pooled signatures a threshold is fitted for (where validation has them)
POOL_SIZES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
#: validation compounds needed (with at least ``n`` signatures) to fit the threshold of ``n``
MIN_POOL_COMPOUNDS = 10
#: draws of ``n`` signatures per validation compound
POOL_DRAWS = 50
#: thresholds are extrapolated up to this multiple of the largest fitted size, no further
MAX_EXTRAPOLATION = 2


def fit_pooled_thresholds(scores, groups, target: float, *, seed: int = 0) -> dict:
    """Thresholds of the mean open-set score over ``n`` signatures of one compound.

    Parameters
    ----------
    scores : array-like
        Open-set scores of validation signatures of known MoAs (higher = farther).
    groups : array-like
        The compound of each signature.
    target : float
        Share of known compounds allowed above each threshold.
    seed : int, default 0
        Seeds the draws.

    Returns
    -------
    dict
        ``sizes`` (the ``n`` fitted, from :data:`POOL_SIZES`), ``thresholds`` (one per
        size, never rising with ``n``), ``n_compounds`` (validation compounds drawn
        from per size), and the variance components that extrapolate the threshold to
        larger ``n`` (``mean``, ``between_var``, ``within_var``; see
        :func:`pooled_threshold`); empty lists when fewer than
        :data:`MIN_POOL_COMPOUNDS` compounds have two signatures.
    """
    scores = np.asarray(scores, dtype=np.float64)
    per_compound = [np.sort(g.to_numpy()) for _, g in pd.Series(scores).groupby(
        np.asarray(groups).astype(str), sort=True)]
    rng = np.random.default_rng(seed)
    sizes, thresholds, counts = [], [], []
    for n in POOL_SIZES:
        eligible = [a for a in per_compound if len(a) >= n]
        if len(eligible) < MIN_POOL_COMPOUNDS:
            break
        # POOL_DRAWS random n-subsets of each compound: a random permutation per draw
        means = np.concatenate([
            np.take(a, np.argsort(rng.random((POOL_DRAWS, len(a))), axis=1)[:, :n]).mean(axis=1)
            for a in eligible])
        sizes.append(n)
        thresholds.append(float(np.quantile(means, 1.0 - target)))
        counts.append(len(eligible))
    # a mean over more signatures never needs a higher threshold (sampling noise could say so)
    thresholds = np.minimum.accumulate(thresholds).tolist() if thresholds else []
    return {"sizes": sizes, "thresholds": thresholds, "n_compounds": counts,
            **_variance_components(per_compound)}


def _variance_components(per_compound: list[np.ndarray]) -> dict:
    """One-way random-effects split of the scores of compounds with two signatures or more:
    ``mean`` (of the compound means), ``between_var`` (of the compounds' true means) and
    ``within_var`` (of a signature around its compound's mean), so that a mean over ``n``
    signatures spreads as ``between_var + within_var / n``."""
    groups = [a for a in per_compound if len(a) >= 2]
    if len(groups) < 2:
        return {}
    means = np.array([a.mean() for a in groups])
    sizes = np.array([len(a) for a in groups], dtype=np.float64)
    within = sum(((a - a.mean()) ** 2).sum() for a in groups) / (sizes - 1).sum()
    between = max(float(means.var(ddof=1) - np.mean(within / sizes)), 0.0)
    return {"mean": float(means.mean()), "between_var": between, "within_var": float(within)}


def pooled_threshold(fit: dict, n: np.ndarray) -> np.ndarray:
    """The threshold for a mean over ``n`` signatures (NaN where ``n`` is below the
    smallest fitted size: those signatures keep their own threshold).

    Above the largest fitted size ``N`` (validation compounds are rarely as large as a
    query's), the threshold's distance from the mean shrinks as the spread of a mean of
    ``n`` does: ``mean + (t_N - mean) * sqrt((b + w / n) / (b + w / N))`` with the
    fitted variance components ``b`` (between compounds) and ``w`` (within one), up to
    ``n = MAX_EXTRAPOLATION * N``; the threshold of ``N`` itself would flag fewer known
    compounds than the target.

    Parameters
    ----------
    fit : dict
        :func:`fit_pooled_thresholds`' result.
    n : numpy.ndarray
        Numbers of pooled signatures.

    Returns
    -------
    numpy.ndarray
        One threshold per entry of ``n`` (float64, NaN where none applies).
    """
    sizes = np.asarray(fit.get("sizes", []), dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    out = np.full(n.shape, np.nan)
    if len(sizes) == 0:
        return out
    thresholds = np.asarray(fit["thresholds"], dtype=np.float64)
    pos = np.searchsorted(sizes, n, side="right") - 1  # the largest fitted size <= n
    ok = pos >= 0
    out[ok] = thresholds[pos[ok]]
    b, w = fit.get("between_var"), fit.get("within_var")
    big = n > sizes[-1]
    if b is not None and w is not None and b + w / sizes[-1] > 0 and big.any():
        # no further than MAX_EXTRAPOLATION x the largest size: an underestimated
        # between-compound variance would let the threshold fall too far
        m = np.minimum(n[big], MAX_EXTRAPOLATION * sizes[-1])
        ratio = np.sqrt((b + w / m) / (b + w / sizes[-1]))
        out[big] = fit["mean"] + (thresholds[-1] - fit["mean"]) * ratio
    return out


def pooled_unknown(scores, groups, eligible, fit: dict) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Compound-level unknown calls of query signatures.

    Parameters
    ----------
    scores : array-like
        The signatures' open-set scores.
    groups : array-like
        Their compounds; a missing id (NaN, None) is no compound: that signature is not
        pooled.
    eligible : array-like of bool
        Signatures that may vote (not ``no call``): a weak signature is far from every
        MoA whatever its mechanism, so it would push known compounds towards unknown.
    fit : dict
        :func:`fit_pooled_thresholds`' result.

    Returns
    -------
    tuple of numpy.ndarray
        ``(mean, unknown, pooled)``, one entry per signature: the mean score of its
        compound's eligible signatures (NaN without any), whether the compound is called
        unknown, and whether the compound's call applies to the signature (an eligible
        signature of a compound with at least the smallest fitted number of eligible
        signatures); where ``pooled`` is False the signature's own threshold decides.
    """
    mean, threshold, pooled = _pooled_means(scores, groups, eligible, fit)
    unknown = pooled & (np.nan_to_num(mean, nan=-np.inf) > np.nan_to_num(threshold, nan=np.inf))
    return mean, unknown, pooled


def _pooled_means(scores, groups, eligible, fit: dict) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Per signature: its compound's mean score over the eligible signatures, the threshold
    for that many, and whether the compound's call applies (see :func:`pooled_unknown`)."""
    scores = np.asarray(scores, dtype=np.float64)
    groups = pd.Series(np.asarray(groups, dtype=object))
    eligible = np.asarray(eligible, dtype=bool) & ~groups.isna().to_numpy()
    groups = groups.astype(str)
    voting = pd.Series(np.where(eligible, scores, np.nan))
    mean = voting.groupby(groups).transform("mean").to_numpy(np.float64)
    n = voting.notna().groupby(groups).transform("sum").to_numpy(np.int64)
    threshold = pooled_threshold(fit, n)
    return mean, threshold, np.isfinite(threshold) & np.isfinite(mean) & eligible


def call_unknown_scores(scores, groups, eligible, fit: dict,
                        signature_threshold: float) -> np.ndarray:
    """The open-set score of each signature's call, on the per-signature threshold's scale.

    Where a signature's compound decides its call (:func:`pooled_unknown`), the compound's
    mean ``m`` is compared with the threshold ``t_n`` for its ``n`` signatures, not with the
    per-signature threshold ``t``. So that the score read beside a call agrees with it
    (``score > t`` exactly where the compound is called unknown), the mean is put on the
    signature scale by its distance from the known compounds' mean ``mu`` (of the random-
    effects fit) in units of the threshold's: ``mu + (m - mu) (t - mu) / (t_n - mu)``. A
    compound's mean spreads less the more signatures it pools, and this unit shrinks with
    it, so compounds of different sizes rank by how far beyond their own threshold they
    are. (Where ``t_n`` is not above ``mu``, which a fitted threshold never was, the shift
    ``m - t_n + t`` keeps the agreement.) Other signatures keep their own score.

    Parameters
    ----------
    scores, groups, eligible, fit
        As for :func:`pooled_unknown`.
    signature_threshold : float
        The per-signature threshold ``t`` (``Calibration.threshold``).

    Returns
    -------
    numpy.ndarray
        float64, one per signature.
    """
    own = np.asarray(scores, dtype=np.float64)
    mean, threshold, pooled = _pooled_means(own, groups, eligible, fit)
    t, mu = float(signature_threshold), fit.get("mean")
    out = own.copy()
    m, tn = mean[pooled], threshold[pooled]
    shifted = m - tn + t
    if mu is None or not np.isfinite(mu) or t <= mu:
        out[pooled] = shifted
        return out
    wide = tn > mu
    out[pooled] = np.where(wide, mu + (m - mu) * (t - mu) / np.where(wide, tn - mu, 1.0),
                           shifted)
    return out
