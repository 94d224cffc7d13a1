"""Query genes against a model's training genes: positions (with the missing-gene rules)
and rows in the model's gene order."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._core.strength import signature_strength
from moaspace._utils import preview
from moaspace.errors import InputError
from moaspace.model.data import InMemoryRows, RowSource, backed_rows
from moaspace.model.module import layer_widths
from moaspace.model.train import dense_rows, warn_if_not_zscores

logger = logging.getLogger("moaspace.model.model")  # the log lines of MoaModel's gene checks


def gene_positions(model, adata: ad.AnnData, max_missing_fraction: float | None) -> np.ndarray:
    """Column of each model gene in ``adata`` (-1: missing); checks and logs as documented."""
    limit = model.max_missing_fraction if max_missing_fraction is None else max_missing_fraction
    # ' 16' is gene 16: ids padded with whitespace (a spreadsheet export) still match
    query = pd.Index(adata.var_names.astype(str).str.strip())
    if query.has_duplicates:
        raise InputError(f"duplicated gene ids in var_names: {preview(query[query.duplicated()])}")
    genes = pd.Index(model.genes)
    pos = query.get_indexer(genes)
    missing = genes[pos < 0]
    if len(missing):
        frac = len(missing) / len(genes)
        if frac > limit:
            hint = ""
            if model.gene_symbols and query.isin(model.gene_symbols).mean() > 0.5:
                hint = " (the query's var_names look like gene symbols; use Entrez ids)"
            raise InputError(
                f"{len(missing)} of the model's {len(genes)} genes ({frac:.1%}) are missing "
                f"from the query (limit {limit:.0%}): {preview(missing)}{hint}"
            )
        logger.warning(
            "%d of %d model genes are missing from the query; filled with 0: %s",
            len(missing), len(genes), preview(missing),
        )
    extra = len(query) - int((pos >= 0).sum())
    if extra:
        logger.info("%d query genes are not used by the model; ignored", extra)
    return pos


def aligned_rows(model, adata: ad.AnnData, pos: np.ndarray, start: int, stop: int,
                 source: RowSource | None = None) -> np.ndarray:
    """Rows ``start:stop`` of ``adata`` in the model's gene order (missing genes 0)."""
    stop = min(stop, adata.n_obs)
    if source is not None:  # backed: read just these rows
        block = source.rows(np.arange(start, stop)).numpy()
    else:
        block = dense_rows(adata.X[start:stop])
    x = np.zeros((stop - start, len(model.genes)), dtype=np.float32)
    have = pos >= 0
    x[:, have] = block[:, pos[have]]
    return x


def query_strength(model, adata: ad.AnnData) -> np.ndarray:
    """z-score strength of each signature of ``adata`` over ``model``'s genes, clipped as
    the network clips (:func:`moaspace._core.strength.signature_strength`): what
    ``no call`` reads, in ``predict`` and in ``model.calibrate``."""
    return stream_layers(model, adata, (), strength=True)[1]


def stream_layers(model, adata: ad.AnnData, layers: tuple[str, ...], batch_size: int = 8192,
                  max_missing_fraction: float | None = None, *,
                  strength: bool = False) -> tuple[tuple[np.ndarray, ...], np.ndarray | None]:
    """One pass over ``adata`` (in memory or backed, ``batch_size`` rows at a time) in the
    model's gene order: the network's ``layers`` (:meth:`MoaModel.embed_layers`) and, with
    ``strength``, each signature's strength, so a large query is read once for both."""
    layers = tuple(layers)
    widths = layer_widths(model._require_net(), layers) if layers else []
    pos = gene_positions(model, adata, max_missing_fraction)
    source = backed_rows(adata) if adata.isbacked else None
    if source is not None:
        batch_size = min(batch_size, source.chunk_rows)
    out = tuple(np.zeros((adata.n_obs, w), dtype=np.float32) for w in widths)
    strengths = np.empty(adata.n_obs, dtype=np.float64) if strength else None
    largest = 0.0
    for start in range(0, adata.n_obs, batch_size):
        x = aligned_rows(model, adata, pos, start, start + batch_size, source)
        if not np.isfinite(x).all():
            raise InputError("the query has NaN/inf values; drop or impute them first")
        largest = max(largest, float(np.abs(x).max(initial=0.0)))
        if strengths is not None:
            strengths[start:start + len(x)] = signature_strength(x, model.config.clip)
        if layers:
            got = model._embed_source(InMemoryRows(x), np.arange(len(x)), layers=layers)
            for o, g in zip(out, got, strict=True):
                o[start:start + batch_size] = g
    if layers:
        warn_if_not_zscores(largest, "the query")
    return out, strengths
