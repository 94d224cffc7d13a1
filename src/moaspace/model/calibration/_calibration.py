"""The fitted state: :class:`Calibration`, its JSON form, and the open-set calls it makes."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moaspace._core.labels import NO_CALL, UNKNOWN
from moaspace._core.neighbors import knn_scores, prototypes
from moaspace._utils import atomic_write_text
from moaspace.errors import InputError, MoaspaceError
from moaspace.model.calibration._maps import (
    CALIBRATION_METHODS,
    WIDE_K,
    apply_logistic,
    confidence_features,
    score_logits,
    softmax,
)
from moaspace.model.calibration._metrics import DEFAULT_N_BINS
from moaspace.model.calibration._openset import OPENSET_SCORES, openset_scores
from moaspace.model.calibration._pooled import call_unknown_scores, pooled_unknown

logger = logging.getLogger("moaspace.model.calibration")

CALIBRATION_FILE = "calibration.json"
#: 2: ``methods`` (each prototype predictor's own map) and the ``hidden_prototype`` score
#: and predictor; 3: ``compound`` (compound-level maps); 1 and 2 still read
CALIBRATION_FORMAT = 3
_READABLE_FORMATS = (1, 2, 3)


def _missing_map(kind: str, predict_method: str) -> str:
    return (f"no {kind} for method {predict_method!r} (a calibration fitted before this predictor "
            "existed?): refit it with model.calibrate or `moaspace calibrate`")


@dataclass(frozen=True)
class Query:
    """What one prediction computed for its query signatures (one row per query).

    ``z``: embedding; ``scores``: per-class scores of the call (kNN vote shares or
    prototype softmax, columns in the atlas's class order); ``sims``, ``idx``: the
    nearest atlas signatures, most similar first, at least ``max(k, wide_k)`` of
    them; ``hidden``: last-hidden-layer (prototype-layer) activations, where the
    call or the open-set score reads them (else None).
    """

    z: np.ndarray
    scores: np.ndarray
    sims: np.ndarray
    idx: np.ndarray
    hidden: np.ndarray | None = None


@dataclass(frozen=True)
class Atlas:
    """The reference the queries were called against.

    ``ref_z``, ``ref_moa``: atlas embeddings and MoAs; ``codes``: class code of every
    atlas signature; ``classes``: the sorted MoAs; ``centres``: unit MoA prototypes
    of ``ref_z`` (None: computed when needed); ``hidden_centres``: the model's
    hidden-layer prototypes (None for a model without them).
    """

    ref_z: np.ndarray
    ref_moa: np.ndarray
    codes: np.ndarray
    classes: list[str]
    centres: np.ndarray | None = None
    hidden_centres: np.ndarray | None = None

    def embedding_prototypes(self) -> np.ndarray:
        """``centres``, or the prototypes of ``ref_z`` when none were given."""
        if self.centres is not None:
            return self.centres
        return prototypes(self.ref_z, self.ref_moa, self.classes)[0]


@dataclass(frozen=True)
class OpenSetCalls:
    """What :meth:`Calibration.open_set_calls` decides for each query.

    ``labels``: the top known MoA, or ``unknown`` / ``no call``; ``pred_score``: the
    calibrated probability that the top MoA is right; ``unknown_score``: the open-set
    score of the call (higher = farther from every known MoA; above the calibration's
    threshold exactly where a signature that gets a call is ``unknown``: where its
    compound decides, the compound's score on that scale,
    :func:`._pooled.call_unknown_scores`; None only for the closed-set calls of an
    uncalibrated model, see :func:`moaspace.tl.predict`); ``signature_unknown_score``:
    each signature's own open-set score where compounds decided (None where every call
    was made per signature: then it is ``unknown_score``); ``extra``: the abstention
    labels that may occur (categories beyond the MoAs); ``info``: settings to record
    with the prediction (``uns["moa"]["params"]``); ``compound_unknown_score``: the mean
    open-set score of each query's compound (its signatures with a call; None when the
    calls were made per signature); ``weak``: the queries called ``no call`` for their
    strength or TAS (they do not vote for their compound; the other ``no call`` rows are
    calls below ``min_score``, which still vote).
    """

    labels: np.ndarray
    pred_score: np.ndarray
    unknown_score: np.ndarray | None
    extra: list[str]
    info: dict
    compound_unknown_score: np.ndarray | None = None
    weak: np.ndarray | None = None
    signature_unknown_score: np.ndarray | None = None


@dataclass
class Calibration:
    """Fitted calibration of a model (or of any embedding + atlas), saved as JSON.

    ``temperature`` / ``isotonic`` / ``logistic``: per prediction method
    (``knn``, ``prototype``, ``hidden_prototype`` for a model with hidden
    prototypes); ``method`` says which one makes ``moa_pred_score`` of kNN
    predictions, ``methods`` the map of any other prediction method (each chosen
    on its own out-of-fold Brier score; a method missing there falls back to
    ``method``). ``wide_k``: neighbours of the wider vote that the
    logistic calibration reads (:func:`confidence_features`).
    ``score`` is the open-set score used for ``unknown`` calls and
    ``thresholds`` holds a threshold for every score that was compared (all
    chosen for ``target_false_unknown`` on the validation rows;
    ``hidden_prototype`` only for a model's calibration). ``min_tas``: signatures
    below it get ``no call`` (None: off). ``min_strength``: signatures whose
    z-score strength (:func:`moaspace._core.strength.signature_strength`) is below it get
    ``no call`` (chosen on validation, :mod:`._strength`; None: off). ``min_score``: a
    call (not ``unknown``) whose calibrated probability of being right is below it gets
    ``no call`` (the same validation level, :func:`._strength.choose_min_score`; None:
    off). ``validation``: what was measured on
    the validation rows (ECE, NLL, AUROC against pseudo-unknowns, curves).
    ``compound``: per predictor, the map of a compound's top mean score to the
    probability that its call is right (:mod:`._compound`; empty for calibrations
    fitted on fewer than 10 compounds or by moaspace before format 3).
    ``classwise``: per predictor, the map of each MoA's score to the probability that
    the MoA is one of the signature's, and the threshold of the prediction sets
    (:mod:`._classwise`; also per compound under ``"compound"``; empty for calibrations
    fitted before #28). ``pooled``: thresholds of the open-set score averaged over ``n``
    signatures of one compound, for compound-level ``unknown`` calls (:mod:`._pooled`;
    empty: every signature is called on its own).
    """

    classes: list[str]
    k: int = 10
    weighting: str = "distance"
    method: str = "isotonic"
    methods: dict = field(default_factory=dict)
    temperature: dict = field(default_factory=dict)
    isotonic: dict = field(default_factory=dict)
    logistic: dict = field(default_factory=dict)
    wide_k: int = WIDE_K
    energy_scale: float = 30.0
    score: str = "prototype"
    thresholds: dict = field(default_factory=dict)
    target_false_unknown: float = 0.05
    min_tas: float | None = None
    min_strength: float | None = None
    min_score: float | None = None
    n_bins: int = DEFAULT_N_BINS
    validation: dict = field(default_factory=dict)
    compound: dict = field(default_factory=dict)
    classwise: dict = field(default_factory=dict)
    pooled: dict = field(default_factory=dict)
    format_version: int = CALIBRATION_FORMAT

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise MoaspaceError(f"calibration method must be one of {list(CALIBRATION_METHODS)}, "
                                f"got {self.method!r}")
        if self.score not in OPENSET_SCORES:
            raise MoaspaceError(f"open-set score must be one of {list(OPENSET_SCORES)}, "
                                f"got {self.score!r}")
        if "knn" in self.methods:  # one place for the kNN map, so setting `method` switches it
            raise MoaspaceError("the kNN calibration map is `method`, not methods['knn']")
        bad = {k: v for k, v in self.methods.items() if v not in CALIBRATION_METHODS}
        if bad:
            raise MoaspaceError(f"calibration methods must be among {list(CALIBRATION_METHODS)}, "
                                f"got {bad}")

    @property
    def maps(self) -> dict[str, str]:
        """The calibration map of every predictor fitted for, the kNN vote's first."""
        return {"knn": self.method, **self.methods}

    def method_for(self, predict_method: str = "knn") -> str:
        """The calibration map applied to the scores of ``predict_method``."""
        return self.maps.get(predict_method, self.method)

    @property
    def threshold(self) -> float:
        """Threshold of the chosen open-set score."""
        return float(self.thresholds[self.score])

    def calibrate_scores(self, scores: np.ndarray, predict_method: str = "knn",
                         features: np.ndarray | None = None):
        """``(probabilities or None, confidence of the top class)`` for per-class scores.

        Temperature scaling gives a full probability matrix (same argmax as
        ``scores``); isotonic and logistic calibrate the top call only (matrix
        ``None``). ``logistic`` needs the rows' :func:`confidence_features`
        (computed with ``wide_k=self.wide_k``); the other methods ignore them.
        """
        scores = np.asarray(scores)
        top = scores.max(axis=1)
        method = self.method_for(predict_method)
        if method == "none":
            return None, top.astype(np.float32)
        if method == "logistic":
            fit = self.logistic.get(predict_method)
            if fit is None:
                raise MoaspaceError(_missing_map("logistic calibration", predict_method))
            if features is None:
                raise MoaspaceError("the logistic calibration needs confidence_features() of "
                                    "the queries")
            if len(features) != len(scores):
                raise InputError("features and scores must have one row per query")
            return None, apply_logistic(fit, features).astype(np.float32)
        if method == "isotonic":
            curve = self.isotonic.get(predict_method)
            if curve is None:
                raise MoaspaceError(_missing_map("isotonic calibration", predict_method))
            return None, np.interp(top, curve["x"], curve["y"]).astype(np.float32)
        t = self.temperature.get(predict_method)
        if t is None:
            raise MoaspaceError(_missing_map("temperature", predict_method))
        proba = softmax(score_logits(scores, predict_method), t).astype(np.float32)
        return proba, proba.max(axis=1)

    def compound_confidence(self, means: np.ndarray, predict_method: str) -> np.ndarray:
        """Calibrated P(correct) of compound calls from their mean per-MoA scores; without a
        compound map, the signature map applied to the means (with a warning)."""
        from moaspace.model.calibration._compound import apply_compound_map

        fitted = self.compound.get(predict_method)
        if fitted is None:
            logger.info("the calibration has no compound-level map for %r (fewer than 10 "
                        "validation compounds of two or more signatures, or an older "
                        "moaspace): compounds of several signatures use the signature map",
                        predict_method)
            if self.method_for(predict_method) == "logistic":
                return np.asarray(means, np.float64).max(axis=1).astype(np.float32)
            return self.calibrate_scores(means, predict_method)[1]
        return apply_compound_map(fitted, means, predict_method)

    def class_probabilities(self, scores: np.ndarray, predict_method: str,
                            level: str = "signature") -> tuple[np.ndarray, float] | None:
        """``(per-MoA probabilities, set threshold)`` of per-class ``scores`` of
        ``predict_method`` (``level="compound"``: of compounds' mean scores); None when
        this calibration has no per-MoA map for them."""
        from moaspace.model.calibration._classwise import classwise_proba

        fitted = self.classwise.get(predict_method)
        if fitted is not None and level == "compound":
            fitted = fitted.get("compound")
        if fitted is None:
            return None
        return classwise_proba(fitted, scores), float(fitted["set_threshold"])

    def is_unknown(self, unknown_score: np.ndarray, score: str | None = None) -> np.ndarray:
        return np.asarray(unknown_score) > self.thresholds[score or self.score]

    # ------------------------------------------------------------ open-set calls
    def open_set_calls(self, query: Query, atlas: Atlas, method: str, k: int, weighting: str,
                       *, open_set: bool = True, min_tas: float | None = None, tas=None,
                       tas_key: str = "tas", strength=None,
                       min_strength: float | None = None, min_score: float | None = None,
                       groups=None) -> OpenSetCalls:
        """Calibrated score, unknown score and abstentions of one prediction.

        ``method``, ``k``, ``weighting``: how ``query.scores`` were made (a warning
        when ``k`` or ``weighting`` differ from those calibrated for). ``open_set``:
        call ``unknown`` above the threshold of the chosen open-set score.
        ``min_tas`` (None: this calibration's): call ``no call`` where the TAS is
        below it (NaN TAS: the call stays); ``tas``: the queries' TAS column (any
        values :func:`pandas.to_numeric` reads; None: the query has no
        ``obs[tas_key]``, so no ``no call`` flags, with a warning). ``strength``: the
        queries' signature strengths; ``min_strength`` (None: this calibration's; 0: off):
        ``no call`` below it, whatever the TAS. ``min_score`` (None: this calibration's; 0:
        off): ``no call`` for a call (after the ``unknown`` calls) whose calibrated
        probability is below it. ``groups``: the queries' compounds; with
        them (and :attr:`pooled` thresholds) a compound with several signatures that get a
        call is called ``unknown`` or not as a whole, from their mean open-set score
        (:func:`._pooled.pooled_unknown`; ``OpenSetCalls.compound_unknown_score``).
        """
        if list(self.classes) != list(atlas.classes):
            raise MoaspaceError("the calibration was fitted for other MoAs than the atlas "
                                "holds; refit it with model.calibrate")
        if k != self.k or weighting != self.weighting:
            logger.warning("calibration was fitted for k=%d, weighting=%r; scores with k=%d, "
                           "%r may be miscalibrated", self.k, self.weighting, k, weighting)
        centres = atlas.embedding_prototypes()
        pred_score = self._calibrated_confidence(query, atlas, centres, method)
        unknown = self._unknown_score(query, atlas, centres)
        labels = np.asarray(atlas.classes, dtype=object)[query.scores.argmax(axis=1)]
        extra = []
        info = {"open_set": bool(open_set), "unknown_score": self.score,
                "unknown_threshold": self.threshold,
                "target_false_unknown": self.target_false_unknown,
                "calibration_method": self.method_for(method)}
        weak = self._weak(len(labels), info, min_tas, tas, tas_key, strength, min_strength)
        compound_unknown = own_unknown = None
        if open_set:
            flags = self.is_unknown(unknown)
            info["unknown_by"] = "signature"
            if groups is not None and self.pooled.get("sizes"):
                voters = ~weak & self._may_vote(strength)
                compound_unknown, by_compound, pooled = pooled_unknown(
                    unknown, groups, voters, self.pooled)
                flags = np.where(pooled, by_compound, flags)
                info["unknown_by"] = "compound"
                info["pooled_signatures"] = int(pooled.sum())
                own_unknown = unknown
                unknown = call_unknown_scores(own_unknown, groups, voters, self.pooled,
                                              self.threshold)
            labels[flags] = UNKNOWN
            extra.append(UNKNOWN)
        labels[weak] = NO_CALL
        low = None
        min_score = self.min_score if min_score is None else min_score
        if min_score is not None and min_score > 0:
            low = ~weak & (labels != UNKNOWN) & (np.asarray(pred_score) < min_score)
            labels[low] = NO_CALL
            info["min_score"] = float(min_score)
        if weak.any() or {"min_strength", "min_tas", "min_score"} & set(info):
            extra.append(NO_CALL)
        n_unknown = int((labels == UNKNOWN).sum())
        if n_unknown or (labels == NO_CALL).any():
            logger.info("%d of %d signatures called 'unknown', %d 'no call' (weak), %d 'no "
                        "call' (calibrated probability below %s)", n_unknown, len(labels),
                        int(weak.sum()), 0 if low is None else int(low.sum()), min_score)
        return OpenSetCalls(labels=labels, pred_score=np.asarray(pred_score, np.float32),
                            unknown_score=unknown.astype(np.float32), extra=extra, info=info,
                            compound_unknown_score=compound_unknown, weak=weak,
                            signature_unknown_score=(
                                None if own_unknown is None else own_unknown.astype(np.float32)))

    def _may_vote(self, strength) -> np.ndarray | bool:
        """Signatures as strong as those the compound thresholds were fitted on (a lower
        ``min_strength`` in ``predict`` lets weaker ones get a call, not vote)."""
        cut = float(self.pooled.get("min_strength") or 0.0)
        if strength is None or cut <= 0:
            return True
        return np.asarray(strength, np.float64) >= cut

    def _weak(self, n: int, info: dict, min_tas, tas, tas_key: str, strength,
              min_strength) -> np.ndarray:
        """Queries to call ``no call``: TAS below ``min_tas`` (NaN TAS: the call stays) or
        strength below ``min_strength`` (None: this calibration's cut-offs; 0: off); the
        cut-offs applied are recorded in ``info``."""
        weak = np.zeros(n, dtype=bool)
        min_tas = self.min_tas if min_tas is None else min_tas
        if min_tas is not None and min_tas > 0:
            if tas is not None:
                tas = pd.to_numeric(pd.Series(tas), errors="coerce").to_numpy(np.float64)
                weak |= tas < min_tas
                info["min_tas"] = float(min_tas)
            else:
                logger.warning("min_tas=%s but the query has no obs[%r]; no 'no call' flags",
                               min_tas, tas_key)
        min_strength = self.min_strength if min_strength is None else min_strength
        if strength is not None and min_strength is not None and min_strength > 0:
            weak |= np.asarray(strength, np.float64) < min_strength
            info["min_strength"] = float(min_strength)
        return weak

    def _calibrated_confidence(self, query: Query, atlas: Atlas, centres: np.ndarray,
                               method: str) -> np.ndarray:
        """The calibrated top confidence of the ``method`` call of each query."""
        features = None
        if self.method_for(method) == "logistic":
            # the prototype margin is read in the layer the call was made in
            layer, layer_centres = ((query.hidden, atlas.hidden_centres)
                                    if method == "hidden_prototype" else (query.z, centres))
            features = confidence_features(query.scores, layer, layer_centres, query.sims,
                                           query.idx, atlas.codes, wide_k=self.wide_k)
        return self.calibrate_scores(query.scores, method, features)[1]

    def _unknown_score(self, query: Query, atlas: Atlas, centres: np.ndarray) -> np.ndarray:
        """The chosen open-set score of each query (float64)."""
        # the msp threshold was fitted on the calibration's kNN vote, whatever the call
        # predicts with
        votes = None
        if self.score == "msp":
            votes = knn_scores(query.sims[:, :self.k], query.idx[:, :self.k], atlas.codes,
                               len(atlas.classes), weighting=self.weighting)
        return openset_scores(query.z, centres=centres, knn_sims=query.sims, k=self.k,
                              class_scores=votes, energy_scale=self.energy_scale,
                              hidden=query.hidden,
                              hidden_centres=atlas.hidden_centres)[self.score]

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        if not isinstance(data, dict) or "classes" not in data:
            raise MoaspaceError("not a moaspace calibration (no 'classes' entry)")
        fmt = data.get("format_version", CALIBRATION_FORMAT)
        if fmt not in _READABLE_FORMATS:
            raise MoaspaceError(f"calibration format {fmt!r}; this moaspace reads "
                                f"{CALIBRATION_FORMAT}: refit with MoaModel.calibrate")
        names = set(cls.__dataclass_fields__)
        cal = cls(**{k: v for k, v in data.items() if k in names})
        missing = [n for n in OPENSET_SCORES if n not in cal.thresholds]
        if cal.score not in cal.thresholds:
            raise MoaspaceError(f"no threshold for the open-set score {cal.score!r} "
                                f"(thresholds missing: {missing})")
        return cal

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise MoaspaceError(f"{path}: unreadable calibration ({exc})") from exc
        try:
            return cls.from_dict(data)
        except MoaspaceError as exc:
            raise type(exc)(f"{path}: {exc}") from exc
        except TypeError as exc:  # a field of the wrong kind
            raise MoaspaceError(f"{path}: not a valid calibration ({exc})") from exc


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _records(frame: pd.DataFrame) -> list[dict]:
    return _jsonable(frame.to_dict(orient="records"))

