"""Fitting a :class:`~moaspace.model.calibration.Calibration` on validation queries.

:func:`fit_calibration` runs, in order: check the options, keep the validation rows of
a known MoA (:func:`_validation_rows`), score them with every predictor
(:func:`_predictors`), fit every calibration map per predictor (:func:`_fit_maps`),
choose each predictor's map out of fold (:func:`_choose_maps`), record the kNN
vote's before/after metrics (:func:`_knn_summary`), and fit the open-set thresholds
against leave-own-MoA-out pseudo-unknowns (:func:`_fit_open_set`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from moaspace._core.neighbors import (
    cosine_softmax,
    encode_labels,
    knn_scores,
    knn_search,
    l2_normalize,
    prototypes,
)
from moaspace.errors import InputError
from moaspace.model.calibration._calibration import Calibration, _records
from moaspace.model.calibration._classwise import fit_classwise_maps, truth_matrix
from moaspace.model.calibration._compound import MIN_COMPOUNDS, fit_compound_maps
from moaspace.model.calibration._maps import (
    CALIBRATION_METHODS,
    PROTOTYPE_TEMPERATURE,
    WIDE_K,
    _lowest_brier,
    _out_of_fold_confidence,
    auto_candidates,
    confidence_features,
    fit_isotonic,
    fit_logistic,
    fit_temperature,
    score_logits,
    softmax,
)
from moaspace.model.calibration._metrics import (
    DEFAULT_N_BINS,
    binary_nll,
    brier_score,
    choose_threshold,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    roc_points,
    tas_coverage_curve,
    unknown_auroc,
)
from moaspace.model.calibration._openset import (
    OPENSET_SCORES,
    choose_openset_score,
    leave_moa_out_scores,
    openset_scores,
)
from moaspace.model.calibration._pooled import fit_pooled_thresholds
from moaspace.model.calibration._strength import (
    choose_min_score,
    choose_min_strength,
    strength_coverage_curve,
)

logger = logging.getLogger("moaspace.model.calibration")


def fit_calibration(
    z: np.ndarray,
    labels,
    reference: np.ndarray,
    ref_labels,
    *,
    classes=None,
    k: int = 10,
    weighting: str = "distance",
    method: str = "auto",
    target_false_unknown: float = 0.05,
    score: str = "auto",
    energy_scale: float = 30.0,
    tas=None,
    min_tas: float | None = None,
    groups=None,
    n_bins: int = DEFAULT_N_BINS,
    wide_k: int = WIDE_K,
    backend: str = "torch",
    hidden: np.ndarray | None = None,
    hidden_centres: np.ndarray | None = None,
    hidden_cos: np.ndarray | None = None,
    strength: np.ndarray | None = None,
    crossfit=None,
) -> Calibration:
    """Fit probability calibration and the open-set threshold on validation queries.

    Parameters
    ----------
    z, labels
        Embeddings (any space) and true MoAs of validation signatures of
        compounds absent from ``reference`` (held-out compounds of known MoAs).
        Rows whose MoA is not in ``classes`` are ignored with a warning.
    reference, ref_labels
        The atlas (training embeddings) and its MoAs.
    k, weighting
        The kNN settings of the predictions to calibrate.
    method
        ``isotonic`` (a monotone map of the top score to P(correct)),
        ``temperature`` (one parameter on log vote shares; gives a full
        probability matrix but calibrates kNN vote shares poorly, which are
        discrete and often exactly 1: see docs/confidence.md), ``logistic``
        (logistic regression of P(correct) on :func:`confidence_features`: the
        top score, a ``wide_k``-neighbour vote and the prototype margin),
        ``none`` (the raw top score), or ``auto`` (default): the one with the
        lowest out-of-fold Brier score on the validation rows, chosen for the
        kNN vote and each prototype predictor separately (``Calibration.methods``).
    target_false_unknown
        Share of known validation queries allowed above the unknown threshold.
    score
        Open-set score for ``unknown`` calls; ``pseudo_unknown``: the best AUROC
        against leave-own-MoA-out pseudo-unknowns on the validation rows; ``auto``
        (default): ``hidden_prototype`` where ``hidden``/``hidden_cos`` are given (on
        held-out MoAs of the real consensus set and the default simulator it beat the
        pseudo-unknown choice on average; ``docs/benchmarks.md``), else as
        ``pseudo_unknown``.
    tas, min_tas
        TAS of the validation rows (for the accuracy-vs-coverage curve) and
        the no-call cut-off to store (None: off).
    groups
        Compound of each validation row: the "after" ECE and reliability
        curve stored in ``validation`` are out-of-fold (5 folds grouped by
        compound), not in-sample; the per-compound ``unknown`` thresholds
        (``Calibration.pooled``, :mod:`._pooled`) are fitted on these compounds.
    wide_k
        Neighbours of the wider vote in :func:`confidence_features`.
    hidden, hidden_centres
        Last-hidden-layer activations of the ``z`` rows and that layer's MoA
        prototypes (a model's; see :func:`openset_scores`): adds the
        ``hidden_prototype`` open-set score to those compared, and calibrates
        the ``hidden_prototype`` predictor (nearest hidden-layer prototype).
    strength
        Signature strength of the ``z`` rows (:func:`moaspace._core.strength.signature_strength`):
        the ``no call`` cut-off ``min_strength`` is chosen on them
        (:func:`choose_min_strength`, for the prototype-layer predictor when there is
        one, else the kNN vote); None: no cut-off.
    hidden_cos
        Instead of ``hidden`` and ``hidden_centres``: the rows' cosines to the
        prototype-layer prototypes, ``(n, n_classes)``, e.g. cross-fitted so that no
        row is scored by prototypes fitted on it
        (:func:`moaspace.model.predictor.crossfit_cosines`).
    crossfit
        Extra rows of held-out compounds scored by fold models, on this model's scale
        (:class:`moaspace.model._crossfit.CrossfitRows`; needs ``hidden_cos``). They
        join the validation rows of the ``hidden_prototype`` predictor's map, which is
        then ``isotonic`` (the one map that reads the top score alone, all they carry on
        this model's scale). Everything else (the other maps, the per-MoA and compound
        maps, the ``no call`` cut-off and the ``unknown`` thresholds) uses the validation
        rows: thresholds fitted with them went from below their target to above it on
        the simulator and farther below it on the real consensus set, where each fold
        model's score shift is estimated from ~48 single-signature drugs, and flagged no
        more novel compounds at a matched rate (``docs/confidence.md``).
    """
    if hidden_cos is None and hidden is not None:
        if len(hidden) != len(z):
            raise InputError(f"the prototype layer has {len(hidden)} rows for {len(z)} "
                             "calibration rows")
        if hidden_centres is None or len(hidden_centres) != len(
                encode_labels(np.asarray(ref_labels).astype(str), classes)[1]):
            raise InputError("hidden_centres must have one row per class, got "
                             f"{None if hidden_centres is None else len(hidden_centres)}")
        hidden_cos = (l2_normalize(hidden) @ np.asarray(hidden_centres, np.float32).T)
    _check_options(method, score, z, hidden_cos)
    rows = _validation_rows(z, labels, reference, ref_labels, classes, hidden_cos=hidden_cos,
                            tas=tas, groups=groups, strength=strength)
    sims, idx = knn_search(rows.z, rows.reference, max(k, wide_k), backend=backend)
    votes = knn_scores(sims[:, :k], idx[:, :k], rows.ref_codes, len(rows.classes),
                       weighting=weighting)
    centres, _ = prototypes(rows.reference, rows.ref_labels, rows.classes)
    predictors = _predictors(rows, votes, centres)
    maps = _fit_maps(predictors, rows, sims, idx, wide_k)
    val: dict = {"n": len(rows.codes), "n_classes_present": len(np.unique(rows.codes))}
    cal = Calibration(classes=list(rows.classes), k=int(k), weighting=weighting,
                      temperature=maps.temperature, isotonic=maps.isotonic,
                      logistic=maps.logistic, wide_k=int(wide_k),
                      energy_scale=float(energy_scale), n_bins=int(n_bins),
                      target_false_unknown=float(target_false_unknown),
                      min_tas=None if min_tas is None else float(min_tas))
    _choose_maps(cal, val, predictors, rows, maps, method, n_bins)
    if crossfit is not None and "hidden_prototype" in predictors:
        _add_crossfit_map(cal, val, predictors["hidden_prototype"][0], rows,
                          maps.right["hidden_prototype"], crossfit, n_bins)
    cal.compound, val["compound"] = fit_compound_maps(predictors, rows.codes, rows.groups,
                                                      n_bins)
    _fit_sets_and_no_call(cal, val, predictors, rows, maps)
    _knn_summary(cal, val, votes, rows.codes, maps, n_bins)
    cal.thresholds, known_scores = _fit_open_set(
        val, rows, sims, centres, votes, k=k, weighting=weighting, energy_scale=energy_scale,
        backend=backend, target_false_unknown=target_false_unknown)
    cal.score = _open_set_score(score, val["auroc_pseudo_unknown"])
    cal.pooled = _fit_pooled(rows, known_scores[cal.score], cal.min_strength,
                             target_false_unknown)
    if rows.tas is not None and np.isfinite(rows.tas).any():
        val["tas_coverage"] = _records(tas_coverage_curve(rows.tas, maps.right["knn"]))
    cal.validation = val
    logger.info(
        "calibration on %d validation signatures: ECE %.3f -> %.3f (%s, out-of-fold); "
        "open-set score %r "
        "(pseudo-unknown AUROC %.3f), threshold %.4f for %.0f%% false unknowns",
        val["n"], val["ece_before"], val["ece_after"], cal.method, cal.score,
        val["auroc_pseudo_unknown"][cal.score], cal.thresholds[cal.score],
        100 * target_false_unknown)
    return cal


def _fit_sets_and_no_call(cal: Calibration, val: dict, predictors: dict,
                           rows: _ValidationRows, maps: _FittedMaps) -> None:
    """The per-MoA maps and set thresholds (:mod:`._classwise`) and the ``no call``
    cut-offs on strength and calibrated probability (:mod:`._strength`, from the
    prototype-layer predictor's validation calls when there is one), with what they
    measured in ``val``."""
    cal.classwise = fit_classwise_maps(predictors, truth_matrix(rows.codes, len(rows.classes)),
                                       rows.groups, MIN_COMPOUNDS)
    val["classwise"] = {name: {k: v for k, v in fit.items() if k != "isotonic"}
                        for name, fit in cal.classwise.items()}
    for summary in val["classwise"].values():
        if "compound" in summary:
            summary["compound"] = {k: v for k, v in summary["compound"].items()
                                   if k != "isotonic"}
    right = maps.right.get("hidden_prototype", maps.right["knn"])
    chance = np.bincount(rows.codes).max() / len(rows.codes)
    cal.min_score = choose_min_score(right, chance)
    if rows.strength is not None:
        cal.min_strength = choose_min_strength(rows.strength, right, chance)
        val["strength_coverage"] = _records(strength_coverage_curve(rows.strength, right))


#: score rules that pick a score rather than name one (see :func:`fit_calibration`)
SCORE_RULES = ("auto", "pseudo_unknown")


def _add_crossfit_map(cal: Calibration, val: dict, scores: np.ndarray, rows: _ValidationRows,
                      right: np.ndarray, crossfit, n_bins: int) -> None:
    """The ``hidden_prototype`` map refitted (isotonic) on the validation rows and the
    cross-fitted rows (see ``crossfit`` in :func:`fit_calibration`). Its "after" summary
    in ``validation["hidden_prototype"]`` is out-of-fold over the validation rows (every
    fold's map fitted on the other folds and all cross-fitted rows); ``validation
    ["crossfit"]`` records the fold models."""
    if crossfit.cos.shape[1] != scores.shape[1]:
        raise InputError(f"the cross-fitted rows have {crossfit.cos.shape[1]} classes, the "
                         f"calibration {scores.shape[1]}")
    top = scores.max(axis=1)
    cal.isotonic["hidden_prototype"] = fit_isotonic(np.concatenate([top, crossfit.top]),
                                                    np.concatenate([right, crossfit.right]))
    cal.methods["hidden_prototype"] = "isotonic"
    oof = _out_of_fold_confidence("isotonic", top, None, rows.codes, right, rows.groups,
                                  extra=(crossfit.top, crossfit.right))
    val["hidden_prototype"].update(
        method="isotonic", ece_after=expected_calibration_error(oof, right, n_bins),
        reliability_after=_records(reliability_curve(oof, right, n_bins)),
        brier_out_of_fold_crossfit=brier_score(oof, right),
        nll_correct_out_of_fold_crossfit=binary_nll(oof, right))
    val["crossfit"] = {**crossfit.record, "accuracy": float(crossfit.right.mean())}


def _open_set_score(score: str, aurocs: dict[str, float]) -> str:
    """The open-set score ``score`` asks for (see :func:`fit_calibration`); ``aurocs``: the
    pseudo-unknown AUROC of every score the rows have."""
    if score == "auto" and "hidden_prototype" in aurocs:
        # leave-own-MoA-out pseudo-unknowns do not look like real new mechanisms: on held-out
        # MoAs their choice was mostly below hidden_prototype where it differed (5 of 7 runs;
        # real consensus set AUROC 0.612 -> 0.629 over 6 seeds; docs/benchmarks.md)
        return "hidden_prototype"
    if score in SCORE_RULES:
        return choose_openset_score(aurocs)
    return score


def _check_options(method: str, score: str, z, hidden) -> None:
    """Refuse a calibration method or open-set score that does not exist or cannot be had."""
    if method != "auto" and method not in CALIBRATION_METHODS:
        raise InputError(f"method must be 'auto' or one of {list(CALIBRATION_METHODS)}, "
                         f"got {method!r}")
    if score not in SCORE_RULES and score not in OPENSET_SCORES:
        raise InputError(f"score must be 'auto', 'pseudo_unknown' or one of "
                         f"{list(OPENSET_SCORES)}, got {score!r}")
    if score == "hidden_prototype" and hidden is None:
        raise InputError("score 'hidden_prototype' needs the prototype-layer activations and "
                         "prototypes of a model (this one has none: retrain it)")
    if hidden is not None and len(hidden) != len(z):
        raise InputError(f"the prototype layer has {len(hidden)} rows for {len(z)} "
                         "calibration rows")


@dataclass(frozen=True)
class _ValidationRows:
    """The validation rows of a known MoA (``codes >= 0``) and the atlas they are scored
    against: ``hidden_cos`` (cosines to the prototype-layer prototypes), ``tas`` and
    ``groups`` are those rows' (or None)."""

    z: np.ndarray
    codes: np.ndarray
    classes: list[str]
    reference: np.ndarray
    ref_labels: np.ndarray
    ref_codes: np.ndarray
    hidden_cos: np.ndarray | None
    tas: np.ndarray | None
    groups: np.ndarray | None
    strength: np.ndarray | None = None


def _validation_rows(z, labels, reference, ref_labels, classes, *, hidden_cos,
                     tas, groups, strength=None) -> _ValidationRows:
    """Encode the labels, check the shapes, and drop (with a warning) rows of MoAs absent
    from the reference; an error when none are left."""
    z = np.asarray(z, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    ref_labels = np.asarray(ref_labels).astype(str)
    if z.ndim != 2 or len(z) != len(labels):
        raise InputError(f"z {z.shape} and labels ({len(labels)}) do not match")
    ref_codes, classes = encode_labels(ref_labels, classes)
    if len(classes) < 2:
        raise InputError("calibration needs a reference with at least two MoAs")
    if hidden_cos is not None and np.shape(hidden_cos)[1] != len(classes):
        raise InputError(f"the prototype-layer cosines must have one column per class "
                         f"({len(classes)}), got {np.shape(hidden_cos)[1]}")
    codes, _ = encode_labels(labels, classes)
    known = codes >= 0
    if (~known).any():
        logger.warning("%d calibration signatures have a MoA absent from the reference; ignored",
                       int((~known).sum()))
    if not known.any():
        raise InputError(
            "no calibration signatures of a known MoA: calibration needs validation "
            "signatures (held-out compounds of MoAs in the training split, obs['split'] == "
            "'val')")
    if known.sum() < 50:
        logger.warning("only %d calibration signatures: the calibration will be noisy",
                       int(known.sum()))
    return _ValidationRows(
        z=z[known], codes=codes[known], classes=classes, reference=reference,
        ref_labels=ref_labels, ref_codes=ref_codes,
        hidden_cos=(None if hidden_cos is None
                    else np.asarray(hidden_cos, dtype=np.float32)[known]),
        tas=None if tas is None else np.asarray(tas, dtype=np.float64)[known],
        groups=None if groups is None else np.asarray(groups).astype(str)[known],
        strength=None if strength is None else np.asarray(strength, np.float64)[known])


def _predictors(rows: _ValidationRows, votes: np.ndarray,
                centres: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each predictor's scores, and the rows' cosines to the prototypes of the layer it
    reads (the margin feature of the logistic map)."""
    cos = l2_normalize(rows.z) @ np.asarray(centres, np.float32).T
    # prototype_scores(rows.z, centres), from these cosines (the centres are float32)
    predictors = {"knn": (votes, cos),
                  "prototype": (cosine_softmax(cos, PROTOTYPE_TEMPERATURE).astype(np.float32),
                                cos)}
    if rows.hidden_cos is not None:
        # prototype_scores' softmax, from cosines already computed (cross-fitted)
        predictors["hidden_prototype"] = (
            cosine_softmax(rows.hidden_cos, PROTOTYPE_TEMPERATURE).astype(np.float32),
            rows.hidden_cos)
    return predictors


@dataclass(frozen=True)
class _FittedMaps:
    """Per predictor: each map fitted on all validation rows, the rows' confidence
    features and whether the top call was right."""

    temperature: dict
    isotonic: dict
    logistic: dict
    features: dict
    right: dict


def _fit_maps(predictors: dict, rows: _ValidationRows, sims: np.ndarray, idx: np.ndarray,
              wide_k: int) -> _FittedMaps:
    """Fit the temperature, isotonic and logistic maps of every predictor."""
    maps = _FittedMaps({}, {}, {}, {}, {})
    for name, (sc, cos) in predictors.items():
        logits = score_logits(sc, name)
        maps.temperature[name] = fit_temperature(logits, rows.codes)
        maps.right[name] = sc.argmax(axis=1) == rows.codes
        maps.isotonic[name] = fit_isotonic(sc.max(axis=1), maps.right[name])
        maps.features[name] = confidence_features(sc, None, None, sims, idx,
                                                  rows.ref_codes, wide_k=wide_k, cos=cos)
        maps.logistic[name] = fit_logistic(maps.features[name], maps.right[name])
    return maps


def _choose_maps(cal: Calibration, val: dict, predictors: dict, rows: _ValidationRows,
                 maps: _FittedMaps, method: str, n_bins: int) -> None:
    """Set each predictor's map (``method``, or ``auto``: the lowest out-of-fold Brier score)
    on ``cal`` and record its summary in ``val``.

    Out-of-fold (grouped by compound) scores of every map, for each prediction method: the
    map is chosen per method, as kNN vote shares and prototype softmaxes differ in shape.
    The kNN map's summary is the top level of ``validation``, the others' ``validation[name]``.
    """
    for name, (sc, _) in predictors.items():
        oofs = {m: _out_of_fold_confidence(m, sc.max(axis=1), score_logits(sc, name), rows.codes,
                                           maps.right[name], rows.groups, maps.features[name])
                for m in CALIBRATION_METHODS}
        chosen = (method if method != "auto"
                  else _lowest_brier(oofs, maps.right[name], auto_candidates(name)))
        summary = _map_summary(sc.max(axis=1), maps.right[name], oofs, chosen, n_bins)
        if name == "knn":
            cal.method = chosen
            val.update(summary)
        else:
            cal.methods[name] = chosen
            val[name] = {"method": chosen, **summary}


def _knn_summary(cal: Calibration, val: dict, votes: np.ndarray, codes: np.ndarray,
                 maps: _FittedMaps, n_bins: int) -> None:
    """Record the kNN vote's ECE (in sample), Brier score and NLLs before and after its map."""
    correct, before = maps.right["knn"], votes.max(axis=1)
    proba, conf = cal.calibrate_scores(votes, "knn", maps.features["knn"])
    val["ece_after_in_sample"] = expected_calibration_error(conf, correct, n_bins)
    val["brier_before"] = brier_score(before, correct)
    val["brier_after"] = val["brier_out_of_fold"][cal.method]
    val["nll_correct_before"] = binary_nll(before, correct)
    val["nll_correct_after"] = val["nll_correct_out_of_fold"][cal.method]
    val["nll_before"] = negative_log_likelihood(softmax(score_logits(votes, "knn")), codes)
    if proba is not None:  # temperature only; in sample, unlike the out-of-fold scores above
        val["nll_after_in_sample"] = negative_log_likelihood(proba, codes)


def _fit_open_set(val: dict, rows: _ValidationRows, sims: np.ndarray, centres: np.ndarray,
                  votes: np.ndarray, *, k: int, weighting: str, energy_scale: float,
                  backend: str, target_false_unknown: float) -> tuple[dict, dict]:
    """Every open-set score's threshold and the known rows' scores (returned), and, in
    ``val``, each score's AUROC, ROC and rates against the leave-own-MoA-out
    pseudo-unknowns of the validation rows."""
    known_s = openset_scores(rows.z, centres=centres, knn_sims=sims, k=k, class_scores=votes,
                             energy_scale=energy_scale, hidden_cos=rows.hidden_cos)
    pseudo = leave_moa_out_scores(rows.z, rows.codes, rows.reference, rows.ref_codes, centres,
                                  k=k, weighting=weighting, energy_scale=energy_scale,
                                  backend=backend, hidden_cos=rows.hidden_cos)
    names = [n for n in OPENSET_SCORES if n in known_s]  # hidden_prototype: with a model only
    val["auroc_pseudo_unknown"] = {n: unknown_auroc(known_s[n], pseudo[n]) for n in names}
    thresholds = {n: choose_threshold(known_s[n], target_false_unknown) for n in names}
    val["false_unknown_rate"] = {n: float((known_s[n] > thresholds[n]).mean()) for n in names}
    val["pseudo_unknown_detected"] = {n: float((pseudo[n] > thresholds[n]).mean())
                                      for n in names}
    val["roc_pseudo_unknown"] = {n: roc_points(known_s[n], pseudo[n]) for n in names}
    return thresholds, known_s


def _fit_pooled(rows: _ValidationRows, scores: np.ndarray, min_strength: float | None,
                target_false_unknown: float) -> dict:
    """Compound-level unknown thresholds (:mod:`._pooled`) from the validation rows that get
    a call (strength at or above ``min_strength``, recorded as ``min_strength``: the
    signatures that may vote in ``predict``); empty without compounds."""
    if rows.groups is None:
        return {}
    keep = np.ones(len(scores), dtype=bool)
    cut = 0.0
    if rows.strength is not None and min_strength is not None and min_strength > 0:
        keep, cut = rows.strength >= min_strength, float(min_strength)
    # predict lets only signatures at least this strong vote, whatever its own cut-off
    return {**fit_pooled_thresholds(scores[keep], rows.groups[keep], target_false_unknown),
            "min_strength": cut}


def _map_summary(top: np.ndarray, correct: np.ndarray, oofs: dict[str, np.ndarray],
                 chosen: str, n_bins: int) -> dict:
    """What ``validation`` records of one predictor's calibration: accuracy, ECE of the raw
    top score and of the chosen map, and every map's out-of-fold Brier, NLL and ECE."""
    return {
        "accuracy": float(correct.mean()),
        "brier_out_of_fold": {m: brier_score(o, correct) for m, o in oofs.items()},
        "nll_correct_out_of_fold": {m: binary_nll(o, correct) for m, o in oofs.items()},
        "ece_out_of_fold": {m: expected_calibration_error(o, correct, n_bins)
                            for m, o in oofs.items()},
        "ece_before": expected_calibration_error(top, correct, n_bins),
        "ece_after": expected_calibration_error(oofs[chosen], correct, n_bins),  # out-of-fold
        "reliability_before": _records(reliability_curve(top, correct, n_bins)),
        "reliability_after": _records(reliability_curve(oofs[chosen], correct, n_bins)),
    }

