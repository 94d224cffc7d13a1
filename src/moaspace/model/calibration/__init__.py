"""Calibrated confidence and 'unknown mechanism' calls (open-set MoA prediction).

A kNN vote share is not a probability: with ten neighbours that agree it is
1.0 even when the neighbours are far away, and a compound with a mechanism
absent from the reference is still forced into the nearest known MoA. This
module turns the scores of :mod:`moaspace.tl.predict` into

* a **calibrated probability** that the top call is right (isotonic
  regression of the top score, temperature scaling of the class scores, or a
  logistic regression on three confidence features: the top score, a wider
  50-neighbour vote and the margin between the two nearest MoA prototypes;
  whichever has the lowest out-of-fold Brier score, the raw score if none
  beats it), fitted on validation compounds the model never trained on;
* an **unknown score** (higher = farther from every known MoA) with a
  threshold chosen on the same validation compounds for a target
  false-unknown rate (default 5%): a query above it is called ``unknown``;
* an optional **minimum TAS** below which a signature gets ``no call`` (little
  transcriptional effect: nothing to call).

Everything works on plain arrays (our embedding, PCA, raw z-scores), so the
raw-signature baseline is calibrated and thresholded by exactly the same code.
The fitted state is a :class:`Calibration`, serialised to ``calibration.json``
in the model directory; :meth:`Calibration.open_set_calls` makes the calls of
a prediction (calibrated score, ``unknown``, ``no call``).

Modules: ``_metrics`` (reliability, ECE, Brier, NLL, AUROC, thresholds, TAS
coverage, :func:`open_set_metrics`), ``_openset`` (open-set scores), ``_maps``
(the calibration maps and their out-of-fold choice), ``_pooled`` (per-compound
``unknown`` calls: the open-set score averaged over a compound's signatures, with a
threshold per number of signatures), ``_calibration`` (the
:class:`Calibration` state and its calls), ``_fit`` (:func:`fit_calibration`).

Open-set scores (:func:`openset_scores`)
----------------------------------------
``prototype``
    1 - max cosine to the MoA prototypes (normalised mean of the atlas
    embeddings of each MoA).
``knn``
    1 - mean cosine of the ``k`` nearest atlas signatures.
``energy``
    -logsumexp(s * cos to the prototypes) / s (``s = energy_scale``); a soft
    version of ``prototype`` that also counts how many MoAs are near.
``msp``
    1 - max kNN vote share (the usual max-softmax baseline).
``hidden_prototype``
    1 - max cosine of the encoder's last hidden layer to that layer's MoA
    prototypes (a trained model's only: raw arrays have no hidden layer).
    The margin losses pull an unseen MoA's embedding onto some known
    centre; the layer before keeps more of what sets it apart.

By default (``score="auto"``) a trained model uses ``hidden_prototype``. With
``score="pseudo_unknown"`` (and ``auto`` on arrays without a hidden layer) the
score is chosen on validation data: every validation signature is scored
twice, once against the full atlas (a known query) and once with its own MoA
removed from the atlas and the prototypes (a *pseudo-unknown*:
leave-own-MoA-out), and the score with the highest AUROC between the two wins.
Pseudo-unknowns are not real new mechanisms: on held-out MoAs of the real
consensus set and the simulator, where that choice differed from
``hidden_prototype`` it was mostly worse (``docs/benchmarks.md``), so a model
no longer lets it choose. Every score's pseudo-unknown AUROC is still recorded
(``validation["auroc_pseudo_unknown"]``). The threshold is a quantile of the
known validation scores (:func:`choose_threshold`).

Expected calibration error (ECE)
--------------------------------
Confidences are put in ``n_bins`` (default 15) equal-width bins
``(0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]`` (a confidence of 0 goes to the
first bin); ``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|`` over
the non-empty bins, where accuracy is the share of rows whose top call is the
true MoA. ECE ignores sharpness (a constant confidence equal to the accuracy
has ECE 0), so the Brier score and the NLL of "top call correct" are reported
with it (:func:`brier_score`, :func:`binary_nll`).
"""

from moaspace._core.labels import NO_CALL, UNKNOWN
from moaspace.model.calibration._calibration import (
    CALIBRATION_FILE,
    CALIBRATION_FORMAT,
    Atlas,
    Calibration,
    OpenSetCalls,
    Query,
)
from moaspace.model.calibration._fit import fit_calibration
from moaspace.model.calibration._maps import (
    CALIBRATION_METHODS,
    CONFIDENCE_FEATURES,
    KNN_EPS,
    LOGISTIC_C,
    PROTOTYPE_TEMPERATURE,
    WIDE_K,
    apply_logistic,
    auto_candidates,
    confidence_features,
    fit_isotonic,
    fit_logistic,
    fit_temperature,
    score_logits,
    softmax,
)
from moaspace.model.calibration._maps import (
    _out_of_fold_confidence as _out_of_fold_confidence,  # the tests read it
)
from moaspace.model.calibration._metrics import (
    DEFAULT_N_BINS,
    NLL_EPS,
    binary_nll,
    brier_score,
    choose_min_tas,
    choose_threshold,
    expected_calibration_error,
    negative_log_likelihood,
    open_set_metrics,
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
from moaspace.model.calibration._strength import choose_min_score, choose_min_strength

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_FORMAT",
    "CALIBRATION_METHODS",
    "CONFIDENCE_FEATURES",
    "DEFAULT_N_BINS",
    "KNN_EPS",
    "LOGISTIC_C",
    "NLL_EPS",
    "NO_CALL",
    "OPENSET_SCORES",
    "PROTOTYPE_TEMPERATURE",
    "UNKNOWN",
    "WIDE_K",
    "Atlas",
    "Calibration",
    "OpenSetCalls",
    "Query",
    "apply_logistic",
    "auto_candidates",
    "binary_nll",
    "brier_score",
    "choose_min_score",
    "choose_min_strength",
    "choose_min_tas",
    "choose_openset_score",
    "choose_threshold",
    "confidence_features",
    "expected_calibration_error",
    "fit_calibration",
    "fit_isotonic",
    "fit_logistic",
    "fit_temperature",
    "leave_moa_out_scores",
    "negative_log_likelihood",
    "open_set_metrics",
    "openset_scores",
    "reliability_curve",
    "roc_points",
    "score_logits",
    "softmax",
    "tas_coverage_curve",
    "unknown_auroc",
]
