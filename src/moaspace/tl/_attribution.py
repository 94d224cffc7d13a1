"""Per-MoA gene importance by integrated gradients (captum) on the trained model.

The score explained for MoA ``c`` is the cosine between a signature's
embedding and the MoA's direction in the latent space: the ArcFace MoA head's
class centre when the model has one (so no extra classifier is trained), else
the MoA prototype (normalised mean of the atlas embeddings of that MoA).

Baseline: the all-zero signature. Level-5 values are z-scores against
controls, so zero means "unperturbed": attributions say how each gene's
deviation from the unperturbed state moves the signature towards the MoA.
Attributions are averaged per MoA over its correctly predicted signatures
(signed and absolute means); the convergence delta of IG (sum of attributions
vs. score difference) is reported.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch import nn

from moaspace.errors import InputError, MoaspaceError

logger = logging.getLogger(__name__)


class MoaScore(nn.Module):
    """x -> cosine of the embedding to each MoA direction (n x n_moas)."""

    def __init__(self, encoder: nn.Module, directions: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("directions", nn.functional.normalize(directions.float(), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) @ self.directions.T


def moa_directions(model) -> tuple[torch.Tensor, list[str], str]:
    """Return the MoA directions in a trained model's latent space and their source.

    With an ArcFace MoA head (``moa_head`` with ``weight`` and ``cosine``) the directions
    are its class centres (with several sub-centres per class, the mean of the class's
    normalised sub-centres); otherwise the MoA prototypes, the mean atlas embedding
    (``model.reference``) of each MoA. They are not normalised here (:class:`MoaScore`
    normalises them).

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained or loaded model.

    Returns
    -------
    directions : torch.Tensor, shape (n_moas, latent_dim)
        One float32 row per MoA, in the order of ``model.moas``.
    moas : list of str
        ``list(model.moas)``.
    source : str
        ``"arcface_head"`` or ``"prototype"``.

    Raises
    ------
    MoaspaceError
        If the model is not trained.
    """
    net = model._require_net()
    head = getattr(net, "moa_head", None)
    if head is not None and hasattr(head, "weight") and hasattr(head, "cosine"):
        weight = head.weight.detach().float()
        k = getattr(head, "sub_centers", 1)
        if k > 1:  # one direction per class: the mean of its sub-centres
            weight = nn.functional.normalize(weight, dim=1).view(len(model.moas), k, -1).mean(1)
        return weight, list(model.moas), "arcface_head"
    ref = model.reference
    labels = ref.obs["moa"].astype(str).to_numpy()
    z = torch.from_numpy(np.asarray(ref.X, dtype=np.float32))
    centres = torch.stack([z[labels == m].mean(0) for m in model.moas])
    return centres, list(model.moas), "prototype"


def gene_importance(
    model,
    adata: ad.AnnData,
    *,
    moas: list[str] | None = None,
    moa_key: str = "moa",
    only_correct: bool = True,
    max_per_moa: int = 200,
    n_steps: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Integrated gradients of each MoA's score with respect to the input genes.

    The score of MoA ``c`` is the cosine between a signature's embedding and ``c``'s
    direction (:func:`moa_directions`); the baseline is the all-zero signature. For each
    MoA at most ``max_per_moa`` of its signatures (a seeded subsample) are attributed and
    their attributions averaged; a MoA without signatures to explain is skipped with a
    warning.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    adata : anndata.AnnData
        Signatures (z-scores), aligned to the model's genes with ``model.align_genes``.
    moas : list of str, optional
        MoAs to explain; default None: all of the model's MoAs.
    moa_key : str, default "moa"
        ``obs`` column holding the true MoA of each signature.
    only_correct : bool, default True
        Explain only the signatures whose highest-scoring direction is their true MoA;
        False: all signatures of the MoA.
    max_per_moa : int, default 200
        Maximum number of signatures attributed per MoA.
    n_steps : int, default 32
        Integration steps of integrated gradients.
    batch_size : int, default 64
        Signatures per attribution batch.
    seed : int, default 0
        Seed of the per-MoA subsample.
    progress : bool, default False
        Show a tqdm progress bar over MoAs.

    Returns
    -------
    signed : pandas.DataFrame, shape (n_genes, 1 + n_explained_moas)
        Mean signed attribution per gene (rows, indexed by ``model.genes``) and explained
        MoA (columns), after a first ``gene_symbol`` column (the gene ids when the model
        has no symbols).
    absolute : pandas.DataFrame
        Same layout: the mean absolute attribution.
    info : pandas.DataFrame
        One row per explained MoA (indexed by MoA) with ``moa``, ``n_signatures``,
        ``mean_abs_delta`` (mean |convergence delta| of IG) and ``mean_score`` (mean
        score of the attributed signatures); ``info.attrs["direction_source"]`` is the
        source returned by :func:`moa_directions`.

    Raises
    ------
    InputError
        If ``obs`` has no ``moa_key`` column, ``moas`` names a MoA the model does not
        know, or the signatures cannot be aligned to the model's genes.
    MoaspaceError
        If the model is not trained, or no MoA had signatures to explain.
    """
    from captum.attr import IntegratedGradients

    if moa_key not in adata.obs.columns:
        raise InputError(f"obs has no column {moa_key!r} (the MoA of each signature)")
    net = model._require_net()
    net.eval()
    x_all = model.align_genes(adata)
    labels = adata.obs[moa_key].astype(str).to_numpy()
    directions, classes, source = moa_directions(model)
    scorer = MoaScore(net.encoder, directions).eval()
    with torch.no_grad():
        scores = scorer(torch.from_numpy(x_all)).numpy()
    predicted = np.asarray(classes)[scores.argmax(1)]
    wanted = classes if moas is None else list(moas)
    unknown = sorted(set(wanted) - set(classes))
    if unknown:
        raise InputError(f"MoAs not known to the model: {unknown}")
    ig = IntegratedGradients(scorer)
    rng = np.random.default_rng(seed)
    signed, absolute, info = {}, {}, []
    iterator = wanted
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(wanted, desc="integrated gradients", unit="MoA")
    for moa in iterator:
        rows = labels == moa
        if only_correct:
            rows &= predicted == moa
        idx = np.flatnonzero(rows)
        if len(idx) == 0:
            logger.warning("MoA %r: no %ssignatures to explain; skipped", moa,
                           "correctly predicted " if only_correct else "")
            continue
        if len(idx) > max_per_moa:
            idx = np.sort(rng.choice(idx, max_per_moa, replace=False))
        target = classes.index(moa)
        attrs, deltas = [], []
        for start in range(0, len(idx), batch_size):
            xb = torch.from_numpy(x_all[idx[start:start + batch_size]])
            a, d = ig.attribute(xb, baselines=torch.zeros_like(xb), target=target,
                                n_steps=n_steps, return_convergence_delta=True)
            attrs.append(a.detach().numpy())
            deltas.append(d.detach().abs().numpy())
        a = np.concatenate(attrs)
        signed[moa] = a.mean(0)
        absolute[moa] = np.abs(a).mean(0)
        info.append({"moa": moa, "n_signatures": len(idx),
                     "mean_abs_delta": float(np.concatenate(deltas).mean()),
                     "mean_score": float(scores[idx, target].mean())})
    if not signed:
        raise MoaspaceError("no MoA had signatures to explain (none predicted correctly?)")
    genes = pd.Index(model.genes)
    symbols = (model.gene_symbols if len(model.gene_symbols) == len(model.genes)
               else list(model.genes))
    out_signed = pd.DataFrame(signed, index=genes)
    out_abs = pd.DataFrame(absolute, index=genes)
    for frame in (out_signed, out_abs):
        frame.insert(0, "gene_symbol", symbols)
    info_frame = pd.DataFrame(info).set_index("moa", drop=False).rename_axis(None)
    info_frame.attrs["direction_source"] = source
    return out_signed, out_abs, info_frame


def top_genes(importance: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """Long table of the ``n`` genes with the largest |attribution| per MoA.

    Parameters
    ----------
    importance : pandas.DataFrame
        Genes x MoAs table with a ``gene_symbol`` column, indexed by gene id, as returned
        by :func:`gene_importance`.
    n : int, default 20
        Genes kept per MoA.

    Returns
    -------
    pandas.DataFrame
        One row per (MoA, gene) with columns ``moa``, ``rank`` (1 = largest
        |attribution|), ``gene_id``, ``gene_symbol`` and ``attribution`` (the table's
        signed value).
    """
    rows = []
    for moa in [c for c in importance.columns if c != "gene_symbol"]:
        col = importance[moa]
        for rank, gene in enumerate(col.abs().sort_values(ascending=False).index[:n], 1):
            rows.append({"moa": moa, "rank": rank, "gene_id": gene,
                         "gene_symbol": importance.loc[gene, "gene_symbol"],
                         "attribution": float(col[gene])})
    return pd.DataFrame(rows)
