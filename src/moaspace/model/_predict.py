"""Calls of a trained model: embed a query, vote against the atlas, calibrate, abstain."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from moaspace._core.labels import NO_CALL, UNKNOWN
from moaspace._core.neighbors import (
    PREDICTORS,
    aggregate_scores,
    encode_labels,
    knn_search,
    nearest_compounds,
    top_k_table,
)
from moaspace.errors import InputError, MoaspaceError
from moaspace.model._atlas import atlas_classes
from moaspace.model._genes import stream_layers
from moaspace.model.calibration import Atlas, OpenSetCalls, Query
from moaspace.model.calibration._classwise import set_labels, sets_at

logger = logging.getLogger(__name__)


#: how :func:`predict` makes its ``unknown`` calls: per compound (pooled) or per signature
UNKNOWN_BY = ("compound", "signature")


def predict(
    model,
    adata,
    *,
    k: int | None = None,
    predictor: str | None = None,
    weighting: str | None = None,
    top_k: int = 5,
    compound_key: str | None = "model",
    backend: str = "torch",
    copy: bool = True,
    open_set: bool | None = None,
    min_tas: float | None = None,
    tas_key: str = "tas",
    key_added: str = "moa",
    method: str | None = None,
    min_strength: float | None = None,
    unknown_by: str = "compound",
    min_score: float | None = None,
):
    """Embed ``adata`` with a trained model and call MoAs with its predictor.

    Writes, scanpy-style, with ``key_added`` (default ``"moa"``) naming every output:
    ``obsm["X_moa"]`` (embedding), ``obsm["moa_scores"]`` (per-MoA scores, columns in
    ``uns["moa"]["classes"]``), ``obs["moa_pred"]``, ``obs["moa_pred_score"]``,
    ``obs["nearest_compounds"]`` and ``uns["moa"]``: ``params`` (the settings of the
    call), ``classes``, ``top_k`` (a long table of the top MoAs of each signature) and,
    with compounds, ``compound_calls`` (one row per compound: the mean of its
    signatures' scores). Read the tables with :func:`prediction_table`; a second call
    with another ``key_added`` keeps the first one's outputs.

    ``predictor``: ``knn`` (distance-weighted cosine kNN, k configurable), ``prototype``
    (nearest MoA prototype of the embedding) or ``hidden_prototype`` (nearest MoA
    prototype of the prototype layer); None (default): the model's
    ``config.predictor``, the one its training early-stopped on and its calibration
    fitted (:class:`~moaspace.model.predictor.MoaPredictor`). ``k`` and ``weighting``
    (of the kNN vote, and of the nearest compounds and open-set scores for every
    predictor) default to those the calibration was fitted for (else the model's
    ``knn_k``, 10, and ``distance``), so that the calibrated score matches the vote it
    reads.

    With a calibrated model (``model.calibration``, fitted on the validation
    compounds at the end of training; :mod:`moaspace.model.calibration`)
    ``moa_pred_score`` is the calibrated probability that the top MoA is
    right (otherwise the raw score, with a warning), ``obs["moa_unknown_score"]``
    the open-set score of the call (higher = farther from every known MoA; where a
    compound decides, its score on the per-signature threshold's scale, so that it is
    above the threshold exactly where the call is ``"unknown"``; the signature's own
    score is then ``obs["moa_unknown_score_signature"]``) and
    ``obs["moa_pred_known"]`` the top known MoA. ``open_set`` (default: on
    when the model is calibrated) sets ``moa_pred`` to ``"unknown"`` above the
    calibrated threshold; ``min_tas`` (default: the calibration's, usually
    off) sets it to ``"no call"`` for signatures with ``obs[tas_key]`` below it, and
    ``min_strength`` (default: the calibration's, chosen on validation; 0: off) for
    signatures whose z-score strength ``obs["moa_strength"]`` (root mean square of the
    clipped z-scores) is below it: weak signatures get no MoA rather than the most inert
    class's; ``min_score`` (default: the calibration's, chosen on validation; 0: off) sets
    it to ``"no call"`` where the calibrated probability that the top MoA is right is
    below it (such a signature still votes for its compound, which is then called on
    its own calibrated probability against the same cut-off). ``obsm["moa_scores"]``
    stays the raw per-class scores (same argmax);
    ``obsm["moa_proba"]`` holds calibrated per-MoA probabilities (is this MoA one of the
    compound's?) and ``obs["moa_pred_set"]`` the prediction set: the top call and every
    MoA whose probability reaches the calibrated set threshold, ``|``-separated ("" for
    'unknown' and 'no call'); the compound table has its own ``moa_pred_set``.

    Parameters
    ----------
    model : MoaModel
        A trained or loaded model.
    adata : anndata.AnnData
        Query signatures (``X`` z-scores, ``var_names`` gene ids; in memory or backed).
    k : int, optional
        Neighbours of the kNN vote (default: the calibration's, else ``knn_k``).
    predictor : {"knn", "prototype", "hidden_prototype"}, optional
        The predictor (default: ``config.predictor``).
    weighting : {"distance", "uniform"}, optional
        Weights of the kNN vote (default: the calibration's, else ``distance``).
    top_k : int, default 5
        MoAs per signature in the ``top_k`` table.
    compound_key : str or None, default "model"
        ``obs`` column for compound-level calls (and the per-compound ``unknown`` calls of
        ``unknown_by``): ``"model"``, the compound column the model was trained with (its
        key registry); None: no compound calls, each signature called on its own.
    backend : {"torch", "faiss"}, default "torch"
        Exact cosine neighbour search (faiss when installed).
    copy : bool, default True
        Return a new AnnData and leave ``adata`` untouched (True), or write into
        ``adata`` and return it (False).
    open_set : bool, optional
        Call ``"unknown"`` above the calibrated threshold (default: on when calibrated).
    min_tas : float, optional
        ``"no call"`` below this TAS (default: the calibration's, usually off).
    tas_key : str, default "tas"
        ``obs`` column of the TAS.
    min_strength : float, optional
        ``"no call"`` below this signature strength (default: the calibration's; 0: off).
    min_score : float, optional
        ``"no call"`` where ``moa_pred_score`` is below it (default: the calibration's;
        0: off); ``moa_pred_known`` keeps the top MoA.
    unknown_by : {"compound", "signature"}, default "compound"
        ``compound``: the signatures of one compound (``compound_key``) that get a call are
        called ``"unknown"`` together when their mean open-set score
        (``obs["moa_unknown_score_compound"]``) passes the calibrated threshold for that
        many signatures; a compound with one such signature, a query without compounds
        or a calibration without these thresholds falls back to ``signature``: each
        signature against its own threshold.
    key_added : str, default "moa"
        Prefix of every output (``obsm[f"X_{key_added}"]``, ``obs[f"{key_added}_pred"]``,
        ``uns[key_added]``, ...).
    method : str, optional
        Deprecated name of ``predictor``.

    Returns
    -------
    anndata.AnnData
        The query with the fields above.
    """
    predictor = _deprecated_method(predictor, method)
    if unknown_by not in UNKNOWN_BY:
        raise InputError(f"unknown_by must be one of {list(UNKNOWN_BY)}, got {unknown_by!r}")
    if compound_key == "model":
        compound_key = model.keys["compound"]
    adata = adata.copy() if copy else adata
    atlas_ad = model.atlas
    compounds_q = _query_compounds(adata, atlas_ad, compound_key)
    ref_z = np.asarray(atlas_ad.X, dtype=np.float32)
    ref_moa = atlas_ad.obs["moa"].astype(str).to_numpy()
    classes = atlas_classes(atlas_ad)
    cal = getattr(model, "calibration", None)
    method = _resolve_method(model, predictor)
    z, hidden, prototype_layer, strength = _embed(model, adata, method, cal)
    k, weighting = _resolve_knn(model, cal, k, weighting)
    fitted = (prototype_layer if method == "hidden_prototype"
              else model.predictor_of(method, k=k, weighting=weighting))
    if cal is None and open_set:
        raise MoaspaceError(
            "open-set calls need a calibrated model (calibration.json in the model directory): "
            "retrain, or run model.calibrate(adata_with_val_split) and save; or turn open_set off")
    n_search = max(k, 25, *((cal.k, cal.wide_k) if cal is not None else ()))
    sims, idx = knn_search(z, ref_z, n_search, backend=backend)
    codes, _ = encode_labels(ref_moa, classes)
    atlas = Atlas(ref_z=ref_z, ref_moa=ref_moa, codes=codes, classes=classes,
                  hidden_centres=None if prototype_layer is None else prototype_layer.centres)
    scores, atlas = _class_scores(fitted, z, hidden, sims, idx, atlas)
    query = Query(z=z, scores=scores, sims=sims, idx=idx, hidden=hidden)
    info = {"predictor": method, "k": k, "weighting": weighting,
            "calibrated": cal is not None, "compound_key": compound_key or ""}
    if cal is None:
        logger.warning("the model has no calibration (calibration.json missing, e.g. a model "
                       "saved by an older moaspace): moa_pred_score is the uncalibrated %s "
                       "score and no 'unknown' calls are made", method)
        calls = _closed_set_calls(scores, classes)
    else:
        calls = cal.open_set_calls(
            query, atlas, method, k, weighting, open_set=open_set is not False, min_tas=min_tas,
            tas=adata.obs[tas_key] if tas_key in adata.obs.columns else None, tas_key=tas_key,
            strength=strength, min_strength=min_strength, min_score=min_score,
            groups=(adata.obs[compound_key].to_numpy(dtype=object)  # NaN ids stay missing
                    if compounds_q is not None and unknown_by == "compound" else None))
        info.update(calls.info)
    names = output_names(key_added)
    _write_calls(adata, atlas_ad, query, classes, calls, info, top_k=top_k, key_added=key_added)
    adata.obs[names["strength"]] = strength
    _write_sets(adata, scores, classes, calls.labels, cal, method, names)
    if compounds_q is not None:
        # weak signatures do not vote; uncertain ones do (the mean may be sure)
        voting = (calls.labels != NO_CALL) if calls.weak is None else ~calls.weak
        table = _compound_level(adata, scores, classes, compounds_q, calls.labels, voting,
                                cal=cal, method=method, unknown_column=(
                                    names["unknown_signature"]
                                    if calls.signature_unknown_score is not None
                                    else names["unknown"]),
                                score_column=names["score"], min_score=info.get("min_score"))
        _compound_sets(table, scores, classes, compounds_q, voting, cal, method)
        adata.uns[key_added]["compound_calls"] = table.reset_index(drop=True)
    return adata


def write_predictions(result, out, *, top_k_csv=None, compounds_csv=None,
                      key: str = "moa") -> dict:
    """Write a :func:`predict` result to ``out`` (``.h5ad``, its tables inside
    ``uns[key]``) and, when paths are given, its tables as CSV files: all files appear, or
    none (each is written to a temporary name and renamed). A compound table at
    ``compounds_csv`` left by an earlier prediction is removed when this one has none.

    Parameters
    ----------
    result : anndata.AnnData
        The output of :func:`predict`.
    out : str or os.PathLike
        The ``.h5ad`` to write.
    top_k_csv, compounds_csv : str or os.PathLike, optional
        Where to write the ``top_k`` and ``compound_calls`` tables as CSV.
    key : str, default "moa"
        The prediction's ``key_added``.

    Returns
    -------
    dict
        The paths written (``h5ad``, ``top_k``, ``compound_calls``).
    """
    from contextlib import ExitStack
    from pathlib import Path

    from moaspace._utils import atomic_path
    from moaspace.pp._prepare import write_h5ad

    written = {}
    tables = {"top_k": (prediction_table(result, "top_k", key), top_k_csv),
              "compound_calls": (prediction_table(result, "compound_calls", key), compounds_csv)}
    with ExitStack() as stack:
        for name, (table, path) in tables.items():
            if table is not None and path is not None:
                tmp = stack.enter_context(atomic_path(Path(path)))
                table.to_csv(tmp, index=False)
                written[name] = Path(path)
        written["h5ad"] = write_h5ad(result, out)  # renamed first; the tables follow
    if compounds_csv is not None and "compound_calls" not in written \
            and Path(compounds_csv).is_file():
        Path(compounds_csv).unlink()
        logger.info("removed %s (an earlier prediction's compound table)", compounds_csv)
    return written


def _deprecated_method(predictor: str | None, method: str | None) -> str | None:
    if method is None:
        return predictor
    import warnings

    warnings.warn("predict(method=...) is deprecated: use predictor=...", DeprecationWarning,
                  stacklevel=3)
    if predictor is not None and predictor != method:
        raise InputError(f"predictor={predictor!r} and method={method!r} disagree")
    return method


def output_names(key_added: str = "moa") -> dict[str, str]:
    """Where :func:`predict` writes each output for ``key_added``."""
    return {"embedding": f"X_{key_added}", "scores": f"{key_added}_scores",
            "pred": f"{key_added}_pred", "score": f"{key_added}_pred_score",
            "known": f"{key_added}_pred_known", "unknown": f"{key_added}_unknown_score",
            "unknown_compound": f"{key_added}_unknown_score_compound",
            "unknown_signature": f"{key_added}_unknown_score_signature",
            "proba": f"{key_added}_proba", "set": f"{key_added}_pred_set",
            "strength": f"{key_added}_strength",
            "nearest": ("nearest_compounds" if key_added == "moa"
                        else f"{key_added}_nearest_compounds")}


#: the tables :func:`predict` stores in ``uns[key_added]``
PREDICTION_TABLES = ("top_k", "compound_calls")


def prediction_table(adata, table: str = "compound_calls", key: str = "moa"):
    """A table :func:`predict` stored with its calls.

    Parameters
    ----------
    adata : anndata.AnnData
        The result of :func:`predict` (in memory, or read back from ``.h5ad``).
    table : {"compound_calls", "top_k"}, default "compound_calls"
        ``compound_calls``: one row per compound, indexed by compound; ``top_k``: the top
        MoAs of each signature (long format).
    key : str, default "moa"
        The ``key_added`` of the prediction.

    Returns
    -------
    pandas.DataFrame or None
        A copy of the table; None when the prediction has none (no compounds).
    """
    if table not in PREDICTION_TABLES:
        raise InputError(f"table must be one of {list(PREDICTION_TABLES)}, got {table!r}")
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or "params" not in entry:
        raise InputError(f"uns[{key!r}] holds no moaspace prediction (run tl.predict with "
                         f"key_added={key!r})")
    frame = entry.get(table)
    if frame is None:
        return None
    frame = pd.DataFrame(frame).copy()
    if table == "compound_calls":
        frame.index = frame["compound"].astype(str).to_numpy()
    return frame


def _query_compounds(adata, reference, compound_key: str | None) -> np.ndarray | None:
    """The query's compounds (None without a ``compound_key`` column); warns when query
    signatures are themselves in the atlas."""
    compounds_q = (adata.obs[compound_key].astype(str).to_numpy()
                   if compound_key and compound_key in adata.obs.columns else None)
    key = compound_key if compounds_q is not None else "pert_id"  # compound_key=None: no
    in_atlas = atlas_signatures(  # compound calls, but the compound still tells rows apart
        adata.obs_names,
        adata.obs[key].astype(str).to_numpy() if key in adata.obs.columns else None,
        reference.obs)
    if in_atlas.any():
        logger.warning(
            "%d of %d query signatures are in the training atlas (e.g. %s): each finds itself "
            "as nearest neighbour, so their calls and scores say nothing about new signatures",
            int(in_atlas.sum()), adata.n_obs, list(adata.obs_names[in_atlas][:3]))
    return compounds_q


def _resolve_method(model, method: str | None) -> str:
    """``method``, else the model's ``config.predictor`` (``knn`` for a model without one)."""
    if method is None:
        method = str(getattr(getattr(model, "config", None), "predictor", "knn"))
    if method not in PREDICTORS:
        raise InputError(f"unknown predictor {method!r}; use one of {list(PREDICTORS)}")
    return method


def _embed(model, adata, method: str, cal):
    """``(embedding, prototype layer, prototype-layer predictor, strength)`` of the queries,
    in one pass over them; the prototype layer and its predictor are None unless the call
    or the calibration's open-set score reads the prototype layer."""
    if not (method == "hidden_prototype"
            or (cal is not None and cal.score == "hidden_prototype")):
        (z,), strength = stream_layers(model, adata, ("embedding",), strength=True)
        return z, None, None, strength
    if getattr(model, "hidden_prototypes", None) is None:
        what = ("method 'hidden_prototype'" if method == "hidden_prototype" else
                "the calibration's open-set score 'hidden_prototype'")
        raise MoaspaceError(f"{what} needs the model's prototype-layer prototypes, which this "
                            "model (saved by an older moaspace) lacks; use method 'knn' or "
                            "'prototype' and recalibrate with another score, or retrain")
    # the prototype layer: the last hidden layer (stacked with the whitened signature for
    # models that have it; moaspace.model.prototypes)
    (z, layer), strength = stream_layers(model, adata, ("embedding", "prototype"), strength=True)
    return z, layer, model.predictor_of("hidden_prototype"), strength


def _resolve_knn(model, cal, k: int | None, weighting: str | None) -> tuple[int, str]:
    """``k`` and ``weighting``, by default the calibration's (else the model's ``knn_k``,
    10, and ``distance``)."""
    if k is None:
        k = cal.k if cal is not None else int(getattr(getattr(model, "config", None), "knn_k", 10))
    if weighting is None:
        weighting = cal.weighting if cal is not None else "distance"
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    return k, weighting


def _class_scores(predictor, z: np.ndarray, layer: np.ndarray | None, sims: np.ndarray,
                  idx: np.ndarray, atlas: Atlas) -> tuple[np.ndarray, Atlas]:
    """The per-class scores of the ``predictor``'s call (the same
    :meth:`~moaspace.model.predictor.MoaPredictor.class_scores` that training validated),
    and the atlas (with its embedding's prototypes where the call computed them)."""
    if predictor.kind == "hidden_prototype":
        return predictor.class_scores(layer), atlas
    if predictor.kind == "prototype":
        atlas = replace(atlas, centres=predictor.centres)
    return predictor.class_scores(z, sims, idx), atlas


def _closed_set_calls(scores: np.ndarray, classes: Sequence) -> OpenSetCalls:
    """An uncalibrated model's calls: the top MoA and its raw score, no unknown score."""
    best = scores.argmax(axis=1)
    return OpenSetCalls(labels=np.asarray(classes, dtype=object)[best],
                        pred_score=scores[np.arange(len(best)), best].astype(np.float32),
                        unknown_score=None, extra=[], info={})


def _write_calls(adata, atlas, query: Query, classes: list[str], calls: OpenSetCalls,
                 info: dict, *, top_k: int, key_added: str) -> None:
    """Write the embedding, the scores, the calls and the prediction's settings to ``adata``
    under the names of ``key_added`` (:func:`output_names`)."""
    names = output_names(key_added)
    scores = query.scores
    if calls.unknown_score is not None:
        adata.obs[names["unknown"]] = calls.unknown_score
    if calls.compound_unknown_score is not None:
        adata.obs[names["unknown_compound"]] = calls.compound_unknown_score.astype(np.float32)
    if calls.signature_unknown_score is not None:
        adata.obs[names["unknown_signature"]] = calls.signature_unknown_score
    adata.obsm[names["embedding"]] = query.z
    adata.obsm[names["scores"]] = scores
    adata.obs[names["pred"]] = pd.Categorical(calls.labels,
                                              categories=list(classes) + calls.extra)
    adata.obs[names["score"]] = calls.pred_score
    if info["calibrated"]:
        adata.obs[names["known"]] = pd.Categorical(
            np.asarray(classes, dtype=object)[scores.argmax(axis=1)], categories=classes)
    if "pert_id" in atlas.obs.columns:
        adata.obs[names["nearest"]] = nearest_compounds(
            query.idx, query.sims, atlas.obs["pert_id"].astype(str).to_numpy())
    top = top_k_table(scores, classes, top_k, index=adata.obs_names.astype(str))
    top.index = top.index.astype(str)
    adata.uns[key_added] = {"params": info, "classes": list(classes), "top_k": top}


def _write_sets(adata, scores: np.ndarray, classes: list[str], labels: np.ndarray, cal,
                method: str, names: dict) -> None:
    """``obsm[proba]``: calibrated per-MoA probabilities (where the calibration has a
    per-MoA map); ``obs[set]``: the prediction set, the top call and every MoA whose
    probability reaches the calibrated set threshold ("" for 'unknown' and 'no call';
    the top call alone without a per-MoA map)."""
    abstain = np.isin(np.asarray(labels, dtype=object), [UNKNOWN, NO_CALL])
    fitted = None if cal is None else cal.class_probabilities(scores, method)
    if fitted is not None:
        adata.obsm[names["proba"]] = fitted[0]
    adata.obs[names["set"]] = set_labels(_sets(scores, fitted), classes, abstain).astype(str)


def _sets(scores: np.ndarray, fitted: tuple | None) -> np.ndarray:
    """Bool prediction sets of per-MoA ``scores`` from ``(probabilities, threshold)``
    (:meth:`Calibration.class_probabilities`); the top call alone without them."""
    proba, threshold = fitted if fitted is not None else (np.zeros_like(scores), np.inf)
    return sets_at(proba, scores, threshold)


def _compound_sets(table: pd.DataFrame, scores: np.ndarray, classes: list[str],
                   compounds_q: np.ndarray, voting: np.ndarray, cal, method: str) -> None:
    """``moa_pred_set`` of the compound table: the compound-level per-MoA map on the mean
    scores of its ``voting`` signatures, else the signature map; "" where the compound is
    'unknown' or 'no call'."""
    means = aggregate_scores(np.asarray(scores)[voting],
                             np.asarray(compounds_q).astype(str)[voting], how="mean")
    means = means.reindex(table.index.astype(str)).to_numpy()
    silent = np.isnan(means).all(axis=1)
    means = np.nan_to_num(means, nan=0.0)
    fitted = None
    if cal is not None:
        fitted = (cal.class_probabilities(means, method, level="compound")
                  or cal.class_probabilities(means, method))
    abstain = silent | table["moa_pred"].isin([UNKNOWN, NO_CALL]).to_numpy()
    table["moa_pred_set"] = set_labels(_sets(means, fitted), classes, abstain).astype(str)


def _compound_level(adata, scores: np.ndarray, classes: list[str], compounds_q: np.ndarray,
                    labels: np.ndarray, voting: np.ndarray, *, cal, method: str,
                    unknown_column: str = "moa_unknown_score",
                    score_column: str = "moa_pred_score",
                    min_score: float | None = None) -> pd.DataFrame:
    """Compound calls (:func:`compound_calls` of the ``voting`` signatures: not weak).

    For a calibrated model ``moa_pred_score`` is the calibrated probability that the
    compound's call is right (its one voting signature's, or the calibration's compound
    map of its mean scores;
    ``mean_score`` keeps the raw mean), ``unknown_score`` the share of its voting
    signatures called 'unknown' (so it agrees with their calls: above 0.5 the compound
    is 'unknown') and ``mean_unknown_distance`` their mean open-set score. A called
    compound whose calibrated probability is below ``min_score`` is 'no call'
    (``moa_pred_known`` keeps its top MoA)."""
    confidence = None if cal is None else (lambda m: cal.compound_confidence(m, method))
    calls = compound_calls(scores, classes, compounds_q, voting=voting, confidence=confidence)
    if cal is not None:
        # one voting signature: the compound's call is that signature's, and so is its
        # calibrated probability (no compound map was fitted on such compounds)
        own = pd.Series(adata.obs[score_column].to_numpy(np.float64), index=compounds_q)[voting]
        own = own[~own.index.duplicated(keep=False)]
        single = calls.index.isin(own.index) & (calls["n_voting"] == 1).to_numpy()
        calls.loc[single, "moa_pred_score"] = own.reindex(calls.index[single]).to_numpy()
        by = pd.DataFrame({"score": adata.obs[unknown_column].to_numpy(np.float64),
                           "unknown": np.asarray(labels == UNKNOWN, dtype=np.float64)},
                          index=compounds_q)[voting].groupby(level=0).mean().reindex(
                              calls.index)
        calls["unknown_score"] = by["unknown"].to_numpy()
        calls["share_unknown"] = by["unknown"].to_numpy()
        calls["mean_unknown_distance"] = by["score"].to_numpy()
        # a compound is 'unknown' when most of its signatures are: averaging over
        # doses/cells makes the call steadier than any single signature's
        calls["moa_pred_known"] = calls["moa_pred"]
        calls.loc[calls["share_unknown"] > 0.5, "moa_pred"] = UNKNOWN
        if min_score:
            unsure = (~calls["moa_pred"].isin([UNKNOWN, NO_CALL])
                      & (calls["moa_pred_score"] < min_score))
            calls.loc[unsure, "moa_pred"] = NO_CALL
    return calls


def atlas_signatures(names: Sequence, compounds: Sequence | None, reference_obs: pd.DataFrame,
                     compound_key: str = "pert_id") -> np.ndarray:
    """Which query signatures are themselves in the atlas (bool per query).

    A query is an atlas signature when its name is an atlas name and, where both
    know compounds, its compound is that atlas signature's compound too (plain
    names such as "0", "1", ... recur across unrelated datasets).
    """
    names = pd.Index(np.asarray(names).astype(str))
    atlas_names = reference_obs.index.astype(str)
    same = np.asarray(names.isin(atlas_names))
    if same.any() and compounds is not None and compound_key in reference_obs.columns:
        ref_compound = pd.Series(reference_obs[compound_key].astype(str).to_numpy(),
                                 index=atlas_names)
        ref_compound = ref_compound[~ref_compound.index.duplicated()]
        same[same] = (ref_compound.reindex(names[same]).to_numpy()
                      == np.asarray(compounds).astype(str)[same])
    return same


def compound_calls(scores: np.ndarray, classes: Sequence, compounds: Sequence,
                   voting: np.ndarray | None = None, confidence=None) -> pd.DataFrame:
    """One MoA call per compound: mean of its signatures' scores (soft vote).

    ``voting`` (bool per signature, default all): signatures that take part, e.g.
    not those flagged 'no call' for a low TAS; a compound none of whose
    signatures vote is called ``"no call"`` (score NaN). ``n_signatures`` counts
    all of a compound's signatures, ``n_voting`` those that voted. ``confidence``:
    a function of the compounds' mean score matrix giving ``moa_pred_score`` (a
    calibrated probability); without it ``moa_pred_score`` is the top mean score, which
    ``mean_score`` always holds.
    """
    compounds = np.asarray(compounds).astype(str)
    voting = np.ones(len(compounds), bool) if voting is None else np.asarray(voting, bool)
    if len(voting) != len(compounds) or len(scores) != len(compounds):
        raise InputError("scores, compounds and voting must have one entry per signature")
    classes = np.asarray(classes, dtype=object)
    every = np.unique(compounds)
    agg = aggregate_scores(np.asarray(scores)[voting], compounds[voting], how="mean")
    values = agg.reindex(every).to_numpy()
    silent = np.isnan(values).all(axis=1) if values.size else np.ones(len(every), bool)
    best = np.where(silent, 0, np.nan_to_num(values, nan=-np.inf).argmax(axis=1))
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), axis=1, kind="stable")[:, :3]
    pred = np.where(silent, NO_CALL, classes[best] if len(classes) else NO_CALL)
    score = np.where(silent, np.nan, values[np.arange(len(best)), best] if values.size else np.nan)
    mean_score = score
    if confidence is not None and (~silent).any():
        calibrated = np.full(len(every), np.nan)
        calibrated[~silent] = confidence(values[~silent])
        score = calibrated
    counts = pd.Series(compounds).value_counts()
    n_voting = pd.Series(compounds[voting]).value_counts()
    return pd.DataFrame(
        {
            "compound": every,
            "n_signatures": counts.reindex(every).to_numpy(),
            "n_voting": n_voting.reindex(every).fillna(0).astype(int).to_numpy(),
            "moa_pred": pred,
            "moa_pred_score": score,
            "mean_score": mean_score,
            "top3": ["" if q else ";".join(classes[o]) for q, o in zip(silent, order, strict=True)],
        }
    ).set_index("compound", drop=False).rename_axis(None)
