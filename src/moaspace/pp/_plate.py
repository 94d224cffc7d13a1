"""Level 3 -> level 4: robust z-scores of each gene against a plate's controls.

CMap's level-4 signatures are robust z-scores of each gene relative to a
reference population on the same plate: ``z = (x - median) / (1.4826 * MAD)``.
The reference is either the vehicle (DMSO) wells or the whole plate
population. A floor on the MAD stops genes with almost constant expression
from producing huge z-scores (CMap uses a floor in the same spirit).
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import preview
from moaspace.errors import InputError

logger = logging.getLogger(__name__)

MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its SD


def zscore_plate(
    adata: ad.AnnData,
    *,
    reference: str = "vehicle",
    control_key: str = "pert_type",
    control_values: tuple[str, ...] = ("ctl_vehicle",),
    plate_key: str | None = None,
    min_mad: float = 0.1,
    clip: float | None = 10.0,
    copy: bool = True,
) -> ad.AnnData:
    """Robust z-score each gene against the controls of its plate.

    Parameters
    ----------
    adata
        Level-3 expression (wells x genes, log2 scale).
    reference
        ``"vehicle"``: median/MAD of the control wells (``obs[control_key]`` in
        ``control_values``); ``"plate"``: of all wells of the plate.
    plate_key
        ``obs`` column naming the plate; ``None`` treats all wells as one plate.
    min_mad
        Floor on the scaled MAD (in the units of ``X``).
    clip
        Clip z-scores to +-clip as the level-5 files are; ``None`` keeps them.
    copy
        Return a new AnnData and leave the input untouched (``True``), or edit the
        input in place (``False``). Default: ``True``.

    Returns
    -------
    The AnnData with the z-scores in ``X`` and ``uns["moaspace"]["zscore_plate"]`` set:
    with ``copy=True`` a new AnnData (the input is untouched); with ``copy=False``
    ``adata`` itself, edited in place.
    """
    if reference not in ("vehicle", "plate"):
        raise InputError(f"reference must be 'vehicle' or 'plate', got {reference!r}")
    X = np.asarray(adata.X, dtype=np.float64)
    if not np.isfinite(X).all():
        bad = adata.obs_names[~np.isfinite(X).all(axis=1)]
        raise InputError(f"NaN/inf in level-3 expression of wells {preview(bad)}")
    plates = (
        pd.Series("all", index=adata.obs_names)
        if plate_key is None
        else adata.obs[plate_key].astype(str)
    )
    if reference == "vehicle":
        if control_key not in adata.obs.columns:
            raise InputError(f"obs has no column {control_key!r} to find the control wells")
        is_ctl = adata.obs[control_key].astype(str).isin(control_values).to_numpy()
    else:
        is_ctl = np.ones(adata.n_obs, dtype=bool)
    Z = np.empty_like(X, dtype=np.float32)
    for plate in pd.unique(plates):
        in_plate = (plates == plate).to_numpy()
        ref = X[in_plate & is_ctl]
        if len(ref) < 3:
            raise InputError(
                f"plate {plate!r}: only {len(ref)} reference wells ({reference}); need >= 3"
            )
        median = np.median(ref, axis=0)
        mad = MAD_TO_SD * np.median(np.abs(ref - median), axis=0)
        n_floor = int((mad < min_mad).sum())
        if n_floor:
            logger.info("plate %s: MAD floored at %.3g for %d genes", plate, min_mad, n_floor)
        mad = np.maximum(mad, min_mad)
        Z[in_plate] = ((X[in_plate] - median) / mad).astype(np.float32)
    if clip is not None:
        np.clip(Z, -clip, clip, out=Z)
    out = adata.copy() if copy else adata
    out.X = Z
    out.uns.setdefault("moaspace", {})["zscore_plate"] = {
        "reference": reference, "control_values": list(control_values), "min_mad": min_mad,
        "clip": clip,
    }
    return out
