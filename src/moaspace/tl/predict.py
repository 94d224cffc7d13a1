"""MoA calls from embeddings: cosine kNN against an atlas, class prototypes,
top-k tables and compound-level aggregation.

All functions work on plain arrays (any embedding: ours, PCA, raw z-scores),
so the baselines and the model share exactly the same prediction code.

Exact search is a chunked matrix product in torch: the query is processed in
blocks so memory is ``O(chunk x n_ref)`` whatever the number of queries. A
``faiss`` backend (``IndexFlatIP``, exact too) is used when asked for and
installed (``pip install moaspace[faiss]``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import special

from ..errors import InputError, MoaspaceError

logger = logging.getLogger(__name__)

#: how :func:`predict` calls a MoA: distance-weighted cosine kNN vote in the embedding,
#: nearest MoA prototype of the embedding, or nearest MoA prototype of the encoder's last
#: hidden layer (a trained model's only; stored with its atlas)
PREDICTORS = ("knn", "prototype", "hidden_prototype")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def knn_search(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    chunk_size: int = 2048,
    backend: str = "torch",
    normalize: bool = True,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours.

    Returns ``(similarities, indices)`` of shape ``(n_query, k)``, sorted by
    decreasing similarity. ``exclude_self`` drops the match of query ``i`` with
    reference ``i`` (for leave-one-out on the same matrix).
    """
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise InputError(
            f"query {query.shape} and reference {reference.shape} must be 2-D with the same "
            "number of columns"
        )
    n_ref = reference.shape[0]
    k_eff = min(k + int(exclude_self), n_ref)
    if k_eff < 1:
        raise InputError("the reference is empty")
    q = l2_normalize(query) if normalize else np.asarray(query, np.float32)
    r = l2_normalize(reference) if normalize else np.asarray(reference, np.float32)
    if backend == "faiss":
        sims, idx = _faiss_search(q, r, k_eff)
    elif backend == "torch":
        s, i = topk_similarity(torch.from_numpy(np.ascontiguousarray(q)),
                               torch.from_numpy(np.ascontiguousarray(r)), k_eff,
                               chunk_size=chunk_size)
        sims, idx = s.numpy(), i.numpy()
    else:
        raise InputError(f"unknown kNN backend {backend!r}; use 'torch' or 'faiss'")
    if exclude_self:
        sims, idx = _drop_self(sims, idx, k)
    return sims[:, :k], idx[:, :k]


def topk_similarity(
    query: torch.Tensor, reference: torch.Tensor, k: int, *, chunk_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner products of each query row with the reference rows, in chunks.

    The one exact-search kernel of the package: :func:`knn_search` (numpy in,
    CPU) and the training loop's validation score (tensors on the training
    device) both call it, so validation F1 and ``moaspace predict`` agree.
    Rows must already be unit vectors for cosine similarity. Returns CPU
    tensors ``(similarities, indices)`` of shape ``(n_query, k)``.
    """
    k = int(min(k, reference.shape[0]))
    # bound the block of similarities (chunk x n_ref floats) to ~64 MB whatever the atlas size
    chunk_size = max(1, min(int(chunk_size), (64 << 20) // (4 * max(1, reference.shape[0]))))
    sims = torch.empty((query.shape[0], k), dtype=torch.float32)
    idx = torch.empty((query.shape[0], k), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, query.shape[0], chunk_size):
            block = query[start:start + chunk_size]
            s, i = torch.topk(block @ reference.T, k, dim=1)
            sims[start:start + len(block)] = s.float().cpu()
            idx[start:start + len(block)] = i.cpu()
    return sims, idx


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int):
    rows = np.arange(len(idx))[:, None]
    keep = idx != rows
    # keep the first k non-self entries of each row (order preserved)
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(sims, order, 1)[:, :k], np.take_along_axis(idx, order, 1)[:, :k]


def _faiss_search(q: np.ndarray, r: np.ndarray, k: int):
    try:
        import faiss
    except ImportError as exc:
        raise MoaspaceError(
            "the faiss backend needs faiss: pip install 'moaspace[faiss]' (or faiss-cpu)"
        ) from exc
    index = faiss.IndexFlatIP(r.shape[1])
    index.add(np.ascontiguousarray(r, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
    return sims, idx.astype(np.int64)


def encode_labels(labels: Sequence, classes: Sequence | None = None) -> tuple[np.ndarray, list]:
    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels)) if classes is None else [str(c) for c in classes]
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([lookup.get(x, -1) for x in labels], dtype=np.int64)
    return codes, classes


def knn_scores(
    sims: np.ndarray,
    idx: np.ndarray,
    ref_codes: np.ndarray,
    n_classes: int,
    *,
    weighting: str = "distance",
) -> np.ndarray:
    """Vote of the neighbours into per-class scores that sum to 1 per query.

    ``distance``: weight 1 / (cosine distance + 1e-3), so a near-identical
    neighbour dominates; ``uniform``: plain majority vote.
    """
    if weighting == "distance":
        weights = 1.0 / (np.clip(1.0 - sims, 0.0, None) + 1e-3)
    elif weighting == "uniform":
        weights = np.ones_like(sims)
    else:
        raise InputError(f"unknown weighting {weighting!r}; use 'distance' or 'uniform'")
    scores = np.zeros((len(idx), n_classes), np.float64)
    neighbour_codes = ref_codes[idx]
    valid = neighbour_codes >= 0
    rows = np.repeat(np.arange(len(idx)), idx.shape[1]).reshape(idx.shape)
    np.add.at(scores, (rows[valid], neighbour_codes[valid]), weights[valid])
    total = scores.sum(axis=1, keepdims=True)
    return (scores / np.where(total > 0, total, 1.0)).astype(np.float32)


def knn_predict(
    query: np.ndarray,
    reference: np.ndarray,
    ref_labels: Sequence,
    *,
    k: int = 10,
    weighting: str = "distance",
    classes: Sequence | None = None,
    backend: str = "torch",
    chunk_size: int = 2048,
) -> tuple[np.ndarray, list]:
    """Per-class kNN scores (n_query x n_classes) and the class list."""
    codes, classes = encode_labels(ref_labels, classes)
    sims, idx = knn_search(query, reference, k, backend=backend, chunk_size=chunk_size)
    return knn_scores(sims, idx, codes, len(classes), weighting=weighting), classes


def prototypes(reference: np.ndarray, ref_labels: Sequence, classes: Sequence | None = None):
    """Class centres: the normalised mean of each class's normalised embeddings."""
    codes, classes = encode_labels(ref_labels, classes)
    r = l2_normalize(reference)
    centres = np.zeros((len(classes), r.shape[1]), np.float32)
    np.add.at(centres, codes[codes >= 0], r[codes >= 0])
    return l2_normalize(centres), classes


def prototype_scores(
    query: np.ndarray, centres: np.ndarray, temperature: float = 0.1
) -> np.ndarray:
    """Softmax over cosine similarities to the class centres."""
    logits = l2_normalize(query) @ centres.T / temperature
    return special.softmax(logits, axis=1).astype(np.float32)


def top_k_table(
    scores: np.ndarray, classes: Sequence, k: int = 5, index: Sequence | None = None
) -> pd.DataFrame:
    """Long table: one row per query and rank with the class and its score."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    classes = np.asarray(classes, dtype=object)
    index = np.arange(len(scores)) if index is None else np.asarray(index)
    return pd.DataFrame(
        {
            "query": np.repeat(index, k),
            "rank": np.tile(np.arange(1, k + 1), len(scores)),
            "moa": classes[order].ravel(),
            "score": np.take_along_axis(scores, order, 1).ravel(),
        }
    )


def aggregate_scores(scores: np.ndarray, groups: Sequence, how: str = "mean") -> pd.DataFrame:
    """Combine the signature-level scores of each group (compound) into one call.

    ``mean`` averages the class scores (soft vote); ``vote`` counts top-1 calls.
    Returns a DataFrame indexed by group with one column per class.
    """
    groups = pd.Index(np.asarray(groups).astype(str))
    frame = pd.DataFrame(scores, index=groups)
    if how == "mean":
        out = frame.groupby(level=0, sort=True).mean()
    elif how == "vote":
        top = np.zeros_like(scores)
        top[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
        out = pd.DataFrame(top, index=groups).groupby(level=0, sort=True).mean()
    else:
        raise InputError(f"unknown aggregation {how!r}; use 'mean' or 'vote'")
    return out


def nearest_compounds(
    idx: np.ndarray, sims: np.ndarray, ref_compounds: np.ndarray, n: int = 3
) -> list[str]:
    """The ``n`` distinct reference compounds nearest to each query, as 'id:sim;...'."""
    out = []
    for row_idx, row_sims in zip(idx, sims, strict=True):
        seen: dict[str, float] = {}
        for j, s in zip(row_idx, row_sims, strict=True):
            c = str(ref_compounds[j])
            if c not in seen:
                seen[c] = float(s)
            if len(seen) == n:
                break
        out.append(";".join(f"{c}:{s:.3f}" for c, s in seen.items()))
    return out


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
    compounds at the end of training; :mod:`moaspace.tl.calibrate`)
    ``moa_pred_score`` is the calibrated probability that the top MoA is
    right (otherwise the raw score, with a warning), ``obs["moa_unknown_score"]``
    the open-set score (higher = farther from every known MoA) and
    ``obs["moa_pred_known"]`` the top known MoA. ``open_set`` (default: on
    when the model is calibrated) sets ``moa_pred`` to ``"unknown"`` above the
    calibrated threshold; ``min_tas`` (default: the calibration's, usually
    off) sets it to ``"no call"`` for signatures with ``obs[tas_key]`` below it.
    ``obsm["moa_scores"]`` stays the raw per-class scores (same argmax).
    """
    adata = adata.copy() if copy else adata
    reference = model.reference
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
    ref_z = np.asarray(reference.X, dtype=np.float32)
    ref_moa = reference.obs["moa"].astype(str).to_numpy()
    classes = sorted(set(ref_moa))
    cal = getattr(model, "calibration", None)
    if method is None:
        method = str(getattr(getattr(model, "config", None), "predictor", "knn"))
    if method not in PREDICTORS:
        raise InputError(f"unknown method {method!r}; use one of {list(PREDICTORS)}")
    hidden = hidden_centres = None
    if method == "hidden_prototype" or (cal is not None and cal.score == "hidden_prototype"):
        # the call and/or the open-set score read the last hidden layer: both layers from
        # one pass
        hidden_centres = getattr(model, "hidden_prototypes", None)
        if hidden_centres is None:
            what = ("method 'hidden_prototype'" if method == "hidden_prototype" else
                    "the calibration's open-set score 'hidden_prototype'")
            raise MoaspaceError(f"{what} needs the model's hidden prototypes, which this model "
                                "(saved by an older moaspace) lacks; use method 'knn' or "
                                "'prototype' and recalibrate with another score, or retrain")
        # the prototype layer: the last hidden layer (stacked with the whitened signature
        # for models that have it; moaspace.model.prototypes)
        z, hidden = model.embed_layers(adata, ("embedding", "prototype"))
    else:
        z = model.embed(adata)
    if k is None:
        k = cal.k if cal is not None else int(getattr(getattr(model, "config", None), "knn_k", 10))
    if weighting is None:
        weighting = cal.weighting if cal is not None else "distance"
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if cal is None and open_set:
        raise MoaspaceError(
            "open-set calls need a calibrated model (calibration.json in the model directory): "
            "retrain, or run model.calibrate(adata_with_val_split) and save; or turn open_set off")
    n_search = max(k, 25, *((cal.k, cal.wide_k) if cal is not None else ()))
    sims, idx = knn_search(z, ref_z, n_search, backend=backend)
    codes, _ = encode_labels(ref_moa, classes)
    centres = None
    if method == "knn":
        scores = knn_scores(sims[:, :k], idx[:, :k], codes, len(classes), weighting=weighting)
    elif method == "prototype":
        centres, _ = prototypes(ref_z, ref_moa, classes)
        scores = prototype_scores(z, centres)
    else:  # the hidden prototypes are in sorted-MoA order, as `classes`
        scores = prototype_scores(hidden, hidden_centres)
    best = scores.argmax(axis=1)
    class_arr = np.asarray(classes, dtype=object)
    labels = class_arr[best]
    pred_score = scores[np.arange(len(best)), best].astype(np.float32)
    info = {"method": method, "k": k, "weighting": weighting, "calibrated": cal is not None}
    extra = []
    if cal is None:
        logger.warning("the model has no calibration (calibration.json missing, e.g. a model "
                       "saved by an older moaspace): moa_pred_score is the uncalibrated %s "
                       "score and no 'unknown' calls are made", method)
    else:
        labels, pred_score, extra = _open_set_calls(
            cal, adata, z, hidden, hidden_centres, scores, sims, idx,
            ref_z, ref_moa, codes, classes, centres, labels, method, k, weighting,
            open_set=open_set is not False, min_tas=min_tas, tas_key=tas_key, info=info)
    adata.obsm["X_moa"] = z
    adata.obsm["moa_scores"] = scores
    adata.uns["moa_classes"] = list(classes)
    adata.obs["moa_pred"] = pd.Categorical(labels, categories=list(classes) + extra)
    adata.obs["moa_pred_score"] = pred_score
    if cal is not None:
        adata.obs["moa_pred_known"] = pd.Categorical(class_arr[best], categories=classes)
    if "pert_id" in reference.obs.columns:
        adata.obs["nearest_compounds"] = nearest_compounds(
            idx, sims, reference.obs["pert_id"].astype(str).to_numpy())
    adata.uns["moa_top_k"] = top_k_table(scores, classes, top_k, index=adata.obs_names)
    adata.uns["moa_predict"] = info
    if compounds_q is not None:
        voting = np.asarray(labels, dtype=object) != NO_CALL_LABEL
        calls = compound_calls(scores, classes, compounds_q, voting=voting)
        if cal is not None:  # mean unknown score, share of 'unknown' calls (voting rows)
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
        adata.uns["moa_compound_calls"] = calls
    return adata


def _open_set_calls(cal, adata, z, hidden, hidden_centres, scores, sims, idx, ref_z, ref_moa,
                    codes, classes, centres, labels, method, k, weighting, *, open_set, min_tas,
                    tas_key, info):
    """Calibrated score, unknown score and the abstentions of :func:`predict`
    (``codes``: class code of every atlas signature)."""
    from .calibrate import NO_CALL, UNKNOWN, confidence_features, openset_scores

    if list(cal.classes) != list(classes):
        raise MoaspaceError("the calibration was fitted for other MoAs than the atlas holds; "
                            "refit it with model.calibrate")
    if k != cal.k or weighting != cal.weighting:
        logger.warning("calibration was fitted for k=%d, weighting=%r; scores with k=%d, %r "
                       "may be miscalibrated", cal.k, cal.weighting, k, weighting)
    if centres is None:
        centres, _ = prototypes(ref_z, ref_moa, classes)
    features = None
    if cal.method_for(method) == "logistic":
        # the prototype margin is read in the layer the call was made in
        layer, layer_centres = ((hidden, hidden_centres) if method == "hidden_prototype"
                                else (z, centres))
        features = confidence_features(scores, layer, layer_centres, sims, idx, codes,
                                       wide_k=cal.wide_k)
    _, pred_score = cal.calibrate_scores(scores, method, features)
    # the msp threshold was fitted on the calibration's kNN vote, whatever this call predicts with
    votes = None
    if cal.score == "msp":
        votes = knn_scores(sims[:, :cal.k], idx[:, :cal.k], codes, len(classes),
                           weighting=cal.weighting)
    unknown = openset_scores(z, centres=centres, knn_sims=sims, k=cal.k, class_scores=votes,
                             energy_scale=cal.energy_scale, hidden=hidden,
                             hidden_centres=hidden_centres)[cal.score]
    adata.obs["moa_unknown_score"] = unknown.astype(np.float32)
    labels = np.asarray(labels, dtype=object).copy()
    extra = []
    info.update({"open_set": bool(open_set), "unknown_score": cal.score,
                 "unknown_threshold": cal.threshold,
                 "target_false_unknown": cal.target_false_unknown,
                 "calibration_method": cal.method_for(method)})
    if open_set:
        labels[cal.is_unknown(unknown)] = UNKNOWN
        extra.append(UNKNOWN)
    min_tas = cal.min_tas if min_tas is None else min_tas
    if min_tas is not None and min_tas > 0:
        if tas_key in adata.obs.columns:
            tas = pd.to_numeric(adata.obs[tas_key], errors="coerce").to_numpy(np.float64)
            labels[tas < min_tas] = NO_CALL  # NaN TAS: not compared, the call stays
            extra.append(NO_CALL)
            info["min_tas"] = float(min_tas)
        else:
            logger.warning("min_tas=%s but the query has no obs[%r]; no 'no call' flags",
                           min_tas, tas_key)
    n_unknown = int((labels == UNKNOWN).sum())
    n_nocall = int((labels == NO_CALL).sum())
    if n_unknown or n_nocall:
        logger.info("%d of %d signatures called 'unknown', %d 'no call' (low TAS)",
                    n_unknown, len(labels), n_nocall)
    return labels, np.asarray(pred_score, np.float32), extra


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


#: label of a compound none of whose signatures may vote (= moaspace.tl.calibrate.NO_CALL)
NO_CALL_LABEL = "no call"


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
    pred = np.where(silent, NO_CALL_LABEL, classes[best] if len(classes) else NO_CALL_LABEL)
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
