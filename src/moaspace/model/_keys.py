"""The key registry (in the manner of scvi-tools' ``AnnDataManager``): the obs columns a
model was trained with, saved in ``config.json`` (``"keys"``) and used by ``predict``,
``calibrate``, ``evaluate`` and ``explain`` to read and check a query.

A model trained with ``compound_key="broad_id"`` groups a query's compound calls by
``obs["broad_id"]``, not by a hard-coded ``pert_id``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import preview
from moaspace.errors import InputError

logger = logging.getLogger("moaspace.model.model")  # the log lines of MoaModel


@dataclass(frozen=True)
class ModelKeys:
    """obs columns of a model's data.

    Parameters
    ----------
    moa, compound, cell, split : str
        Columns of the MoA label, the compound id, the cell line and the split.
    moa_set : str
        Column of the ``|``-separated MoA sets of multi-MoA compounds (``moa`` missing
        there); optional in the data.
    """

    moa: str = "moa"
    compound: str = "pert_id"
    cell: str = "cell_iname"
    split: str = "split"
    moa_set: str = "moa_set"

    @classmethod
    def from_dict(cls, keys: dict) -> ModelKeys:
        """From ``config.json``'s ``"keys"`` (missing entries: the defaults)."""
        return cls(**{k: str(v) for k, v in keys.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def require(self, adata: ad.AnnData, *names: str, what: str) -> None:
        """InputError naming the registered columns among ``names`` (``moa``, ``compound``,
        ...) that ``adata.obs`` lacks, and what needs them."""
        missing = [getattr(self, n) for n in names if getattr(self, n) not in adata.obs]
        if missing:
            raise InputError(f"{what} needs obs columns {missing}, which the model was trained "
                             f"with (obs has {preview(adata.obs.columns)})")

    def column(self, adata: ad.AnnData, name: str) -> str | None:
        """The registered column ``name`` when ``adata.obs`` has it, else None."""
        key = getattr(self, name)
        return key if key in adata.obs.columns else None


def check_training_data(adata: ad.AnnData, keys: ModelKeys) -> None:
    """InputError for training data without its MoA or compound column, empty, or with
    duplicated gene ids."""
    keys.require(adata, "moa", "compound", what="training")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"empty AnnData ({adata.n_obs} x {adata.n_vars})")
    if adata.var_names.has_duplicates:
        dup = adata.var_names[adata.var_names.duplicated()]
        raise InputError(f"duplicated gene ids in var_names: {preview(dup)}")


def split_labels(adata: ad.AnnData, keys: ModelKeys) -> np.ndarray:
    """``train``/``val``/... per signature: the split column, or (without one) 10% of the
    compounds carved as validation (seed 0) with a warning."""
    key = keys.split
    if key in adata.obs.columns:
        labels = adata.obs[key].astype(str).to_numpy()
        if not (labels == "train").any():
            raise InputError(f"obs[{key!r}] has no 'train' signatures")
        if not (labels == "val").any():
            logger.warning(
                "obs[%r] has no 'val' signatures: no early stopping, the last epoch is kept",
                key)
        return labels
    from moaspace._core.labels import majority_moa, stratified_pick

    logger.warning(
        "obs[%r] is missing: carving 10%% of the compounds (seed 0) as validation and "
        "training on everything else; run moaspace.pp.split for a test set", key)
    obs = pd.DataFrame({"pert_id": adata.obs[keys.compound].astype(str).values,
                        "moa": adata.obs[keys.moa].astype(str).values})
    val = stratified_pick(majority_moa(obs), 0.1, np.random.default_rng(0), 1, 3)
    return np.where(obs["pert_id"].isin(val), "val", "train").astype(object)
