"""The rows :meth:`MoaModel.calibrate <moaspace.model.MoaModel.calibrate>` fits on: held-out
signatures of known MoAs, checked (split column, compounds, no atlas signatures)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._core.strength import signature_strength
from moaspace._utils import preview
from moaspace.errors import InputError
from moaspace.model._crossfit import crossfit_rows, labelled_train_compounds, resolve_folds
from moaspace.model.data import InMemoryRows
from moaspace.model.predictor import crossfit_cosines

logger = logging.getLogger("moaspace.model.model")  # the log lines of MoaModel.calibrate


def calibration_rows(model, adata: ad.AnnData, split: str | None) -> ad.AnnData:
    """``adata``'s rows with ``obs[split_key] == split`` (all rows for None), refused
    when the MoA, split or compound column is missing, when no row is selected, or
    when a row is a signature of the training atlas; compounds shared with the atlas
    get a warning."""
    moa_key, split_key = model.keys["moa"], model.keys["split"]
    if moa_key not in adata.obs.columns:
        raise InputError(f"obs[{moa_key!r}] is missing: calibration needs the true MoAs")
    rows = np.ones(adata.n_obs, dtype=bool)
    if split is not None:
        if split_key not in adata.obs.columns:
            raise InputError(f"obs[{split_key!r}] is missing; pass split=None to calibrate "
                             "on all rows (held-out compounds only)")
        rows = (adata.obs[split_key].astype(str) == split).to_numpy()
        if not rows.any():
            raise InputError(f"no rows with obs[{split_key!r}] == {split!r} to calibrate on "
                             "(a split without validation compounds cannot be calibrated)")
    compound_key = model.keys["compound"]
    if compound_key not in adata.obs.columns:
        raise InputError(f"obs[{compound_key!r}] is missing: calibration folds are grouped "
                         "by compound")
    sub = adata[rows]
    # a backed view is fine: embed() streams its rows in chunks
    from moaspace.model._predict import atlas_signatures

    ref_obs = model.atlas.obs
    compounds = sub.obs[compound_key].astype(str)
    same = atlas_signatures(sub.obs_names, compounds.to_numpy(), ref_obs)
    if same.any():
        # their nearest neighbour is themselves: every score would look certain
        raise InputError(
            f"{int(same.sum())} calibration signatures are in the training atlas, e.g. "
            f"{preview(sorted(sub.obs_names[same].astype(str)), 3)}; calibrate on held-out "
            "compounds (the validation split, or new compounds)")
    if "pert_id" in ref_obs.columns:
        seen = sorted(set(compounds) & set(ref_obs["pert_id"].astype(str)))
        if seen:
            logger.warning(
                "%d of the %d calibration compounds are also in the training atlas (e.g. "
                "%s): their signatures find their own compound among the neighbours, so "
                "the calibrated scores and the unknown threshold fit known compounds, "
                "not new ones", len(seen), compounds.nunique(), preview(seen, 3))
    return sub


def calibration_cosines(model, adata: ad.AnnData, sub: ad.AnnData) -> np.ndarray:
    """Prototype-layer cosines of the calibration rows ``sub`` (rows of ``adata``), from
    prototypes that never saw them.

    Rows the stored prototypes were fitted on (after ``refit_prototypes``: the validation
    signatures) are cross-fitted as ``train()`` does (each fold of validation compounds
    scored by prototypes of the training rows and the other folds) when ``adata`` holds
    every row the prototypes saw; otherwise they are refused: their scores would be
    in-sample and every calibrated probability too confident.
    """
    prototypes = model.predictor_of("hidden_prototype")
    record = model.prototype_rows
    seen = set(record.get("val_signatures", []))
    names = sub.obs_names.astype(str)
    compound_key = model.keys["compound"]
    overlap = np.asarray(names.isin(seen)) & np.asarray(
        sub.obs[compound_key].astype(str).isin(set(record.get("val_compounds", []))))
    if not overlap.any():
        return prototypes.cosines(model.embed(sub, layer="prototype"))
    have = adata.obs_names.astype(str)
    atlas_names = model.atlas.obs_names.astype(str)
    if not (overlap.all() and atlas_names.isin(have).all() and pd.Index(sorted(seen)).isin(
            have).all()):
        raise InputError(
            f"{int(overlap.sum())} calibration signatures are rows the model's prototypes "
            f"were fitted on (refit on train + val), e.g. "
            f"{preview(sorted(names[overlap]), 3)}, and the data lack the other rows they "
            "saw to cross-fit them: their scores would be in-sample. Calibrate on compounds "
            "the model never saw, pass the whole training AnnData (train and val splits), "
            "or train with refit_prototypes=False")
    logger.info("the %d calibration signatures were seen by the prototypes (refit on train + "
                "val): scoring them by cross-fitting", len(names))
    pos = pd.Series(np.arange(adata.n_obs), index=have)
    train_rows = pos.reindex(atlas_names).to_numpy()
    val_rows = pos.reindex(sorted(seen)).to_numpy()
    multi = _training_multi_rows(model, adata)
    rows = np.concatenate([train_rows, val_rows] + ([] if multi is None else [multi[0]]))
    x = np.zeros((adata.n_obs, len(model.genes)), dtype=np.float32)  # rows needed only
    x[rows] = model.align_genes(adata[rows])
    code = {m: i for i, m in enumerate(model.moas)}
    codes = adata.obs[model.keys["moa"]].astype(str).map(code).fillna(-1).astype(int).to_numpy()
    groups = adata.obs[compound_key].astype(str).to_numpy()[val_rows]
    cos, _ = crossfit_cosines(model.net, InMemoryRows(x), codes, train_rows, val_rows, groups,
                              len(model.moas), prototypes.view_weights, multi=multi)
    return pd.DataFrame(cos, index=pd.Index(sorted(seen))).reindex(names).to_numpy(np.float32)


def _training_multi_rows(model, adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray] | None:
    """With ``multi_moa_classes``: the multi-MoA training rows of ``adata`` (the whole
    training AnnData; the rows :func:`~moaspace.model.train.loss_rows` gave the losses)
    and their bool MoA sets, which the prototypes also averaged."""
    if not model.config.multi_moa_classes:
        return None
    from moaspace.model.train._data import loss_rows, multi_moa_sets

    obs, keys = adata.obs, model.keys
    train = (obs[keys["split"]].astype(str) == "train").to_numpy() \
        if keys["split"] in obs.columns else np.zeros(len(obs), dtype=bool)
    multi, _ = loss_rows(obs, train, keys, list(model.moas), model.config)
    return multi_moa_sets(obs, multi, keys, list(model.moas))


def calibrate_after_training(model, result, opts=None) -> None:
    """The last step of ``MoaModel.train``: calibrated scores and the 'unknown' threshold
    on the validation compounds; with ``refit_prototypes`` the prototypes are then refitted over train + val, and the
    validation rows are scored for the calibration by cross-fitting (each fold of
    validation compounds by prototypes fitted on the training rows and the other
    folds), so no calibration row is scored by prototypes that saw it. With
    ``config.calibration_folds`` (and ``opts``, the run's trainer settings) the rows of fold
    models join the validation rows of the confidence map (:mod:`moaspace.model._crossfit`)."""
    data = result.data
    if not len(data.val_idx):
        model.calibration = None
        logger.warning("no validation signatures: the model is not calibrated (no 'unknown' "
                       "calls; call model.calibrate(adata) with a 'val' split to add it)")
        return
    net, val = model._require_net(), data.val_idx
    obs = model.adata.obs.iloc[val]
    groups = obs[model.keys["compound"]].astype(str).to_numpy()
    train_prototypes = model.predictor_of("hidden_prototype")
    if model.config.refit_prototypes:
        hidden_cos, folds = crossfit_cosines(
            net, data.x, data.moa.numpy(), data.train_idx, val, groups, len(model.moas),
            train_prototypes.view_weights, multi=data.prototype_multi())
        scored_by = f"cross-fitted: {len(folds)} folds of validation compounds"
    else:
        hidden_cos = train_prototypes.cosines(train_prototypes.features(net, data.x, val))
        scored_by = "prototypes of the training rows"
    strength = np.concatenate([
        signature_strength(data.x.rows(val[i:i + 256]).numpy(), model.config.clip)
        for i in range(0, len(val), 256)])  # small blocks: a backed run's memory
    crossfit, setting = None, model.config.calibration_folds
    folds = resolve_folds(setting, len(val), labelled_train_compounds(model, result))
    if folds and opts is not None:
        logger.info("calibration_folds=%r: %d fold models for the confidence map", setting,
                    folds)
        crossfit = crossfit_rows(model, result, opts, np.asarray(hidden_cos), folds)
    model._fit_calibration(model._embed_source(data.x, val)[0],
                          obs[model.keys["moa"]].astype(str).to_numpy(), model._tas(obs),
                          groups=groups, hidden_cos=hidden_cos, strength=strength,
                          crossfit=crossfit)
    model.calibration.validation["scored_by"] = scored_by
    model.calibration.validation["calibration_folds"] = {
        "setting": setting, "folds": folds if crossfit is not None else 0}
    if model.config.refit_prototypes:
        # the MoA centres from every labelled signature the network may see, as the
        # classical baselines are fitted on train + val (the network is not retrained)
        rows = np.union1d(data.train_idx, val)
        refit = model._fit_hidden_prototypes(data, rows, train_prototypes.view_weights)
        model._set_prototypes(refit, {
            "splits": ["train", "val"], "n_rows": len(rows),
            "val_signatures": [str(n) for n in obs.index],
            "val_compounds": sorted(set(groups))})
        model.train_info["prototype_rows"] = "train+val"
