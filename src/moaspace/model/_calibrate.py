"""The rows :meth:`MoaModel.calibrate <moaspace.model.MoaModel.calibrate>` fits on: held-out
signatures of known MoAs, checked (split column, compounds, no atlas signatures)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

from moaspace._utils import preview
from moaspace.errors import InputError

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

    ref_obs = model.reference.obs
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
