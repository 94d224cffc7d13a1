"""Calls of a trained model: embed a query, vote against the atlas, calibrate, abstain."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from moaspace._core.labels import NO_CALL
from moaspace._core.neighbors import (
    PREDICTORS,
    aggregate_scores,
    encode_labels,
    knn_scores,
    knn_search,
    nearest_compounds,
    prototype_scores,
    prototypes,
    top_k_table,
)
from moaspace.errors import InputError, MoaspaceError
from moaspace.model.calibration import Atlas, OpenSetCalls, Query

logger = logging.getLogger(__name__)


def predict(
    model,
    adata,
    *,
    k: int | None = None,
    method: str | None = None,
    weighting: str | None = None,
    top_k: int = 5,
    compound_key: str | None = "pert_id",
    backend: str = "torch",
    copy: bool = True,
    open_set: bool | None = None,
    min_tas: float | None = None,
    tas_key: str = "tas",
):
    """Embed ``adata`` with a trained model and call MoAs against its training atlas.

    Writes ``obsm["X_moa"]`` (embedding), ``obsm["moa_scores"]`` (per-MoA
    scores, columns in ``uns["moa_classes"]``), ``obs["moa_pred"]``,
    ``obs["moa_pred_score"]``, ``obs["nearest_compounds"]`` and a top-k table
    in ``uns["moa_top_k"]``. With a ``compound_key`` column present, compound-
    level calls (mean of the signature scores) go to ``uns["moa_compound_calls"]``.

    ``method``: ``knn`` (distance-weighted cosine kNN, k configurable),
    ``prototype`` (nearest MoA centre of the embedding) or ``hidden_prototype``
    (nearest MoA centre of the encoder's last hidden layer; the model's
    ``hidden_prototypes``); None (default): the model's ``config.predictor``,
    the predictor its training early-stopped on (``hidden_prototype`` for new
    models, ``knn`` for models saved before it existed). ``k`` and
    ``weighting`` (of the kNN vote, and of the nearest compounds and open-set
    scores for every method) default to those the calibration was fitted for
    (else the model's ``knn_k``, 10, and ``distance``), so that the calibrated
    score matches the vote it reads.

    With a calibrated model (``model.calibration``, fitted on the validation
    compounds at the end of training; :mod:`moaspace.model.calibration`)
    ``moa_pred_score`` is the calibrated probability that the top MoA is
    right (otherwise the raw score, with a warning), ``obs["moa_unknown_score"]``
    the open-set score (higher = farther from every known MoA) and
    ``obs["moa_pred_known"]`` the top known MoA. ``open_set`` (default: on
    when the model is calibrated) sets ``moa_pred`` to ``"unknown"`` above the
    calibrated threshold; ``min_tas`` (default: the calibration's, usually
    off) sets it to ``"no call"`` for signatures with ``obs[tas_key]`` below it.
    ``obsm["moa_scores"]`` stays the raw per-class scores (same argmax).

    Parameters
    ----------
    model : MoaModel
        A trained or loaded model.
    adata : anndata.AnnData
        Query signatures (``X`` z-scores, ``var_names`` gene ids; in memory or backed).
    k : int, optional
        Neighbours of the kNN vote (default: the calibration's, else ``knn_k``).
    method : {"knn", "prototype", "hidden_prototype"}, optional
        The predictor (default: ``config.predictor``).
    weighting : {"distance", "uniform"}, optional
        Weights of the kNN vote (default: the calibration's, else ``distance``).
    top_k : int, default 5
        MoAs per signature in ``uns["moa_top_k"]``.
    compound_key : str or None, default "pert_id"
        ``obs`` column for compound-level calls (None: none).
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

    Returns
    -------
    anndata.AnnData
        The query with the fields above.
    """
    adata = adata.copy() if copy else adata
    reference = model.reference
    compounds_q = _query_compounds(adata, reference, compound_key)
    ref_z = np.asarray(reference.X, dtype=np.float32)
    ref_moa = reference.obs["moa"].astype(str).to_numpy()
    classes = sorted(set(ref_moa))
    cal = getattr(model, "calibration", None)
    method = _resolve_method(model, method)
    z, hidden, hidden_centres = _embed(model, adata, method, cal)
    k, weighting = _resolve_knn(model, cal, k, weighting)
    if cal is None and open_set:
        raise MoaspaceError(
            "open-set calls need a calibrated model (calibration.json in the model directory): "
            "retrain, or run model.calibrate(adata_with_val_split) and save; or turn open_set off")
    n_search = max(k, 25, *((cal.k, cal.wide_k) if cal is not None else ()))
    sims, idx = knn_search(z, ref_z, n_search, backend=backend)
    codes, _ = encode_labels(ref_moa, classes)
    atlas = Atlas(ref_z=ref_z, ref_moa=ref_moa, codes=codes, classes=classes,
                  hidden_centres=hidden_centres)
    scores, atlas = _class_scores(method, z, hidden, sims, idx, atlas, k, weighting)
    query = Query(z=z, scores=scores, sims=sims, idx=idx, hidden=hidden)
    info = {"method": method, "k": k, "weighting": weighting, "calibrated": cal is not None}
    if cal is None:
        logger.warning("the model has no calibration (calibration.json missing, e.g. a model "
                       "saved by an older moaspace): moa_pred_score is the uncalibrated %s "
                       "score and no 'unknown' calls are made", method)
        calls = _closed_set_calls(scores, classes)
    else:
        calls = cal.open_set_calls(
            query, atlas, method, k, weighting, open_set=open_set is not False, min_tas=min_tas,
            tas=adata.obs[tas_key] if tas_key in adata.obs.columns else None, tas_key=tas_key)
        info.update(calls.info)
    _write_calls(adata, reference, query, classes, calls, info, top_k=top_k)
    if compounds_q is not None:
        adata.uns["moa_compound_calls"] = _compound_level(
            adata, scores, classes, compounds_q, calls.labels, calibrated=cal is not None)
    return adata


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
        raise InputError(f"unknown method {method!r}; use one of {list(PREDICTORS)}")
    return method


def _embed(model, adata, method: str, cal):
    """``(embedding, hidden activations, hidden prototypes)`` of the queries; the last two
    are None unless the call or the calibration's open-set score reads the hidden layer."""
    if not (method == "hidden_prototype"
            or (cal is not None and cal.score == "hidden_prototype")):
        return model.embed(adata), None, None
    # the call and/or the open-set score read the last hidden layer: both layers from one pass
    hidden_centres = getattr(model, "hidden_prototypes", None)
    if hidden_centres is None:
        what = ("method 'hidden_prototype'" if method == "hidden_prototype" else
                "the calibration's open-set score 'hidden_prototype'")
        raise MoaspaceError(f"{what} needs the model's hidden prototypes, which this model "
                            "(saved by an older moaspace) lacks; use method 'knn' or "
                            "'prototype' and recalibrate with another score, or retrain")
    # the prototype layer: the last hidden layer (stacked with the whitened signature for
    # models that have it; moaspace.model.prototypes)
    z, hidden = model.embed_layers(adata, ("embedding", "prototype"))
    return z, hidden, hidden_centres


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


def _class_scores(method: str, z: np.ndarray, hidden: np.ndarray | None, sims: np.ndarray,
                  idx: np.ndarray, atlas: Atlas, k: int,
                  weighting: str) -> tuple[np.ndarray, Atlas]:
    """The per-class scores of the ``method`` call, and the atlas (with its embedding's
    prototypes where the call computed them)."""
    if method == "knn":
        scores = knn_scores(sims[:, :k], idx[:, :k], atlas.codes, len(atlas.classes),
                            weighting=weighting)
    elif method == "prototype":
        centres, _ = prototypes(atlas.ref_z, atlas.ref_moa, atlas.classes)
        atlas = replace(atlas, centres=centres)
        scores = prototype_scores(z, centres)
    else:  # the hidden prototypes are in sorted-MoA order, as `classes`
        scores = prototype_scores(hidden, atlas.hidden_centres)
    return scores, atlas


def _closed_set_calls(scores: np.ndarray, classes: Sequence) -> OpenSetCalls:
    """An uncalibrated model's calls: the top MoA and its raw score, no unknown score."""
    best = scores.argmax(axis=1)
    return OpenSetCalls(labels=np.asarray(classes, dtype=object)[best],
                        pred_score=scores[np.arange(len(best)), best].astype(np.float32),
                        unknown_score=None, extra=[], info={})


def _write_calls(adata, reference, query: Query, classes: list[str], calls: OpenSetCalls,
                 info: dict, *, top_k: int) -> None:
    """Write the embedding, the scores, the calls and the prediction's settings to ``adata``."""
    scores = query.scores
    if calls.unknown_score is not None:
        adata.obs["moa_unknown_score"] = calls.unknown_score
    adata.obsm["X_moa"] = query.z
    adata.obsm["moa_scores"] = scores
    adata.uns["moa_classes"] = list(classes)
    adata.obs["moa_pred"] = pd.Categorical(calls.labels, categories=list(classes) + calls.extra)
    adata.obs["moa_pred_score"] = calls.pred_score
    if info["calibrated"]:
        adata.obs["moa_pred_known"] = pd.Categorical(
            np.asarray(classes, dtype=object)[scores.argmax(axis=1)], categories=classes)
    if "pert_id" in reference.obs.columns:
        adata.obs["nearest_compounds"] = nearest_compounds(
            query.idx, query.sims, reference.obs["pert_id"].astype(str).to_numpy())
    adata.uns["moa_top_k"] = top_k_table(scores, classes, top_k, index=adata.obs_names)
    adata.uns["moa_predict"] = info


def _compound_level(adata, scores: np.ndarray, classes: list[str], compounds_q: np.ndarray,
                    labels: np.ndarray, *, calibrated: bool) -> pd.DataFrame:
    """Compound calls (:func:`compound_calls` of the signatures not flagged 'no call'); for
    a calibrated model with the mean unknown score and the share of 'unknown' calls."""
    voting = np.asarray(labels, dtype=object) != NO_CALL
    calls = compound_calls(scores, classes, compounds_q, voting=voting)
    if calibrated:  # mean unknown score, share of 'unknown' calls (voting rows)
        by = pd.DataFrame({"score": adata.obs["moa_unknown_score"].to_numpy(np.float64),
                           "unknown": np.asarray(labels == "unknown", dtype=np.float64)},
                          index=compounds_q)[voting].groupby(level=0).mean().reindex(
                              calls.index)
        calls["unknown_score"] = by["score"].to_numpy()
        calls["share_unknown"] = by["unknown"].to_numpy()
        # a compound is 'unknown' when most of its signatures are: averaging over
        # doses/cells makes the call steadier than any single signature's
        calls["moa_pred_known"] = calls["moa_pred"]
        calls.loc[calls["share_unknown"] > 0.5, "moa_pred"] = "unknown"
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
                   voting: np.ndarray | None = None) -> pd.DataFrame:
    """One MoA call per compound: mean of its signatures' scores (soft vote).

    ``voting`` (bool per signature, default all): signatures that take part, e.g.
    not those flagged 'no call' for a low TAS; a compound none of whose
    signatures vote is called ``"no call"`` (score NaN). ``n_signatures`` counts
    all of a compound's signatures, ``n_voting`` those that voted.
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
    counts = pd.Series(compounds).value_counts()
    n_voting = pd.Series(compounds[voting]).value_counts()
    return pd.DataFrame(
        {
            "compound": every,
            "n_signatures": counts.reindex(every).to_numpy(),
            "n_voting": n_voting.reindex(every).fillna(0).astype(int).to_numpy(),
            "moa_pred": pred,
            "moa_pred_score": score,
            "top3": ["" if q else ";".join(classes[o]) for q, o in zip(silent, order, strict=True)],
        }
    ).set_index("compound", drop=False).rename_axis(None)
