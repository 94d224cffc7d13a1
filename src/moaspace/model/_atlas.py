"""The atlas: embeddings of a model's training signatures, the prototype-layer prototypes
stored with them, the record of which rows those prototypes saw, and the
:class:`~moaspace.model.predictor.MoaPredictor` a saved model calls with.

The word is *atlas* throughout (``atlas.h5ad``, ``MoaModel.atlas``); ``reference`` is its
older name.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._core.neighbors import encode_labels
from moaspace._utils import preview
from moaspace.errors import MoaspaceError
from moaspace.model.module import MoaNet
from moaspace.model.predictor import MoaPredictor, embedding_prototypes, predictor_layer

#: atlas obs columns and the model keys they come from
ATLAS_COLUMNS = (("moa", "moa"), ("pert_id", "compound"), ("cell_iname", "cell"),
                 ("cmap_name", None))


def atlas_anndata(obs: pd.DataFrame, keys: dict, emb: np.ndarray) -> ad.AnnData:
    """The atlas of signatures ``obs`` with embeddings ``emb``: obs ``moa``, ``pert_id``,
    ``cell_iname`` (from the model's keys) and ``cmap_name`` where present."""
    cols = {}
    for name, key in ATLAS_COLUMNS:
        column = keys.get(key) if key is not None else name
        if column in obs.columns:
            cols[name] = pd.Categorical(obs[column].astype(str).to_numpy())
    atlas = ad.AnnData(X=emb, obs=pd.DataFrame(cols, index=obs.index.astype(str)),
                       var=pd.DataFrame(index=[f"z{i}" for i in range(emb.shape[1])]))
    atlas.uns["moaspace"] = {"reference": {"splits": ["train"]}}
    return atlas


def atlas_classes(atlas: ad.AnnData) -> list[str]:
    """The model's MoAs, sorted (the column order of every score matrix): those of the atlas
    signatures, or the list stored with the atlas (``uns["moaspace"]["classes"]``) when the
    model has classes no atlas signature carries (``ModelConfig.multi_moa_classes``: MoAs
    only multi-MoA compounds list)."""
    labelled = sorted(set(atlas.obs["moa"].astype(str)))
    stored = atlas.uns.get("moaspace", {}).get("classes")
    if stored is None:
        return labelled
    stored = sorted(str(c) for c in np.asarray(stored).ravel())
    stray = sorted(set(labelled) - set(stored))
    if stray:
        raise MoaspaceError(f"the atlas has signatures of MoAs {preview(stray)} that are not "
                            "among its stored classes: the atlas was changed after training")
    return stored


def stored_prototypes(atlas: ad.AnnData | None) -> np.ndarray | None:
    """The prototype-layer prototypes stored with the atlas, one row per atlas MoA in sorted
    order; None for a model saved before they existed."""
    if atlas is None:
        return None
    meta = atlas.uns.get("moaspace", {})
    centres = meta.get("hidden_prototypes")
    if centres is None:
        return None
    classes = atlas_classes(atlas)
    names = [str(m) for m in meta.get("hidden_prototype_moas", [])]
    if names != classes:
        raise MoaspaceError(
            f"the atlas's prototypes are for MoAs {preview(names)}, its signatures for "
            f"{preview(classes)}: the atlas was changed after training")
    return np.asarray(centres, dtype=np.float32)


def prototype_rows(atlas: ad.AnnData | None) -> dict:
    """Which rows the stored prototypes were fitted on: ``splits``, ``n_rows`` and, after a
    refit on train + val, ``val_signatures`` and ``val_compounds`` (``{}``: not recorded,
    a model saved before the record existed)."""
    if atlas is None:
        return {}
    record = atlas.uns.get("moaspace", {}).get("prototype_rows", {})
    out = {}
    for key, value in dict(record).items():
        if isinstance(value, np.ndarray | list | tuple):
            out[key] = [str(v) for v in np.asarray(value).ravel()]
        else:
            out[key] = value.item() if hasattr(value, "item") else value
    return out


def predictor_from_atlas(kind: str, atlas: ad.AnnData, net: MoaNet, *, k: int = 10,
                         weighting: str = "distance") -> MoaPredictor:
    """The fitted predictor of ``kind`` of a trained or loaded model: the stored
    prototype-layer prototypes and the encoder's view weights (``hidden_prototype``), or
    the atlas embeddings (``prototype``: their MoA means; ``knn``: the atlas itself)."""
    predictor_layer(kind)  # an InputError for an unknown kind
    classes = atlas_classes(atlas)
    base = MoaPredictor(kind=kind, n_classes=len(classes), k=int(k), weighting=weighting)
    if kind == "hidden_prototype":
        centres = stored_prototypes(atlas)
        if centres is None:
            raise MoaspaceError(
                "this model (saved by an older moaspace) has no prototype-layer prototypes; "
                "use method 'knn' or 'prototype', or retrain")
        enc = net.encoder
        weights = (None if enc.whiten is None
                   else tuple(float(v) for v in enc.view_weights.float().cpu()))
        return MoaPredictor(kind=kind, n_classes=len(classes), centres=centres,
                            view_weights=weights, k=int(k), weighting=weighting)
    emb = np.asarray(atlas.X, dtype=np.float32)
    codes, _ = encode_labels(atlas.obs["moa"].astype(str).to_numpy(), classes)
    if kind == "knn":
        return MoaPredictor(kind=kind, n_classes=len(classes), atlas=emb, atlas_codes=codes,
                            k=int(k), weighting=weighting)
    return MoaPredictor(kind=kind, n_classes=base.n_classes,
                        centres=embedding_prototypes(emb, codes, len(classes)), k=int(k),
                        weighting=weighting)


#: training signatures kept as raw z-scores in the model directory (``raw_atlas.h5ad``): at
#: most this many, and at most RAW_ATLAS_BYTES of float32 (it is built in memory, and a
#: model trained out of core on 12,328 genes must not need the matrix to save)
MAX_RAW_ATLAS = 50_000
RAW_ATLAS_BYTES = 48 * 2**20


def raw_atlas(adata: ad.AnnData, rows: np.ndarray, keys: dict, *,
              max_signatures: int = MAX_RAW_ATLAS, seed: int = 0) -> ad.AnnData:
    """The raw z-scores of training rows ``rows`` (a seeded subsample of at most
    ``max_signatures`` and at most 48 MiB: 12,800 signatures of 978 genes), with obs
    ``pert_id`` and ``moa``: the raw-signature reference that ``score_knockdowns`` compares
    the model with. A backed AnnData is read at the kept rows only."""
    from moaspace.model.data import backed_rows

    max_signatures = min(max_signatures, max(1, RAW_ATLAS_BYTES // (4 * max(1, adata.n_vars))))
    idx = np.asarray(rows)
    if len(idx) > max_signatures:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_signatures, replace=False))
    if adata.isbacked:
        x = backed_rows(adata).rows(idx).numpy()
    else:
        sub = adata.X[idx]
        x = np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=np.float32)
    kept = adata.obs.iloc[idx]
    obs = pd.DataFrame({"pert_id": kept[keys["compound"]].astype(str).to_numpy(),
                        "moa": kept[keys["moa"]].astype(str).to_numpy()},
                       index=kept.index.astype(str))
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
