"""Pathway enrichment of each MoA's gene ranking: GSEA prerank on local gene sets.

Implementation: gseapy's ``prerank`` (maintained; Rust core, threads rather than
a process pool) on gene sets read from a local ``.gmt`` (MSigDB Hallmark, the default,
and Reactome ship with the package); nothing is downloaded. blitzgsea was tried as a
faster alternative, but its 1.3.54 release crashes with ``processes=1``.

Gene sets are restricted to the genes that were ranked (978 landmarks, or all
12,328) and kept when ``min_size <= overlap <= max_size``; every result row reports
the set's ranked genes (``n_genes``: its landmark genes for a landmark model) and its
size in the library (``set_size``).

Why ``min_size=5``: below five ranked genes one gene is more than a fifth of the set and
its rank alone decides the enrichment score. Five keeps 47 of the 50 Hallmark sets on the
978 landmark genes (the three left out have 1 to 4); ten would drop 12 of them (Notch,
TGF-beta, Wnt, interferon-alpha, reactive oxygen species, MYC targets v2, ..., with 6 to 9
landmark genes each).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd

from moaspace.errors import InputError
from moaspace.io.genesets import load_gene_sets

logger = logging.getLogger(__name__)


def restrict_gene_sets(
    gene_sets: dict[str, list[str]], universe, min_size: int = 5, max_size: int = 500
) -> dict[str, list[str]]:
    """Restrict gene sets to a gene universe and keep those of a usable size.

    Parameters
    ----------
    gene_sets : dict of str to list of str
        Set name -> genes, e.g. from :func:`moaspace.io.read_gmt`.
    universe : iterable
        The genes that were ranked (compared as ``str``).
    min_size : int, default 5
        Minimum number of a set's genes in ``universe`` for the set to be kept.
    max_size : int, default 500
        Maximum number of a set's genes in ``universe`` for the set to be kept.

    Returns
    -------
    dict of str to list of str
        The kept sets, each reduced to its genes in ``universe`` (in set order).
    """
    universe = set(map(str, universe))
    out = {}
    for name, genes in gene_sets.items():
        kept = [g for g in genes if g in universe]
        if min_size <= len(kept) <= max_size:
            out[name] = kept
    return out


def prerank(
    ranking: pd.Series,
    gene_sets: dict[str, list[str]],
    *,
    permutations: int = 1000,
    min_size: int = 5,
    max_size: int = 500,
    seed: int = 0,
    threads: int = 1,
) -> pd.DataFrame:
    """GSEA prerank (gseapy) of one ranking (index: gene symbols, values: scores).

    Missing scores and repeated genes (after the first) are dropped, the gene sets are
    restricted with :func:`restrict_gene_sets`, and the genes are sorted by score,
    largest first; gseapy writes no files or plots.

    Parameters
    ----------
    ranking : pandas.Series
        Scores indexed by gene symbol (the gene names of ``gene_sets``).
    gene_sets : dict of str to list of str
        Set name -> genes.
    permutations : int, default 1000
        Gene-set permutations for the p-values and FDR.
    min_size : int, default 5
        Minimum number of ranked genes of a set tested.
    max_size : int, default 500
        Maximum number of ranked genes of a set tested.
    seed : int, default 0
        Seed of the permutations.
    threads : int, default 1
        Threads used by gseapy.

    Returns
    -------
    pandas.DataFrame
        One row per tested set, sorted by NES (largest first), with columns ``pathway``,
        ``nes``, ``es``, ``pval`` (nominal), ``fdr`` (q-value), ``n_genes`` (ranked genes
        of the set: its landmark genes when the landmarks are ranked), ``set_size`` (genes
        of the set in ``gene_sets``) and ``leading_edge`` (gseapy's leading-edge genes, as
        text).

    Raises
    ------
    InputError
        If no gene set has between ``min_size`` and ``max_size`` ranked genes.
    """
    import gseapy

    ranking = ranking.dropna()
    ranking = ranking[~ranking.index.duplicated()]
    sets = restrict_gene_sets(gene_sets, ranking.index, min_size, max_size)
    if not sets:
        raise InputError(
            f"no gene set has between {min_size} and {max_size} of the {len(ranking)} ranked "
            "genes: are the gene-set genes symbols like the ranking's?"
        )
    # gseapy breaks ties by order: sort explicitly, largest first
    rnk = ranking.sort_values(ascending=False)
    res = gseapy.prerank(rnk=rnk, gene_sets=sets, permutation_num=permutations,
                         min_size=min_size, max_size=max_size, seed=seed, threads=threads,
                         outdir=None, verbose=False, no_plot=True)
    frame = res.res2d
    sizes = {k: len(v) for k, v in sets.items()}
    out = pd.DataFrame({
        "pathway": frame["Term"].astype(str),
        "nes": pd.to_numeric(frame["NES"], errors="coerce"),
        "es": pd.to_numeric(frame["ES"], errors="coerce"),
        "pval": pd.to_numeric(frame["NOM p-val"], errors="coerce"),
        "fdr": pd.to_numeric(frame["FDR q-val"], errors="coerce"),
    })
    out["n_genes"] = out["pathway"].map(sizes)
    out["set_size"] = out["pathway"].map({k: len(v) for k, v in gene_sets.items()})
    out["leading_edge"] = frame["Lead_genes"].astype(str).to_numpy()
    return out.sort_values("nes", ascending=False).reset_index(drop=True)


def enrich_moas(
    importance: pd.DataFrame,
    gene_sets: dict[str, list[str]] | str | os.PathLike | None = None,
    *,
    permutations: int = 1000,
    min_size: int = 5,
    max_size: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """GSEA prerank of every MoA column of a genes x MoAs table (with ``gene_symbol``).

    Each column other than ``gene_symbol`` is a MoA; its values, indexed by the gene
    symbols, are ranked with :func:`prerank`.

    Parameters
    ----------
    importance : pandas.DataFrame
        Genes x MoAs table with a ``gene_symbol`` column, e.g. from
        :func:`gene_importance`.
    gene_sets : dict, str or os.PathLike, optional
        A dict of set name -> gene symbols, a bundled library (``"hallmark"``,
        ``"reactome"``), a path to a ``.gmt``/``.gmt.gz``, or ``None`` (default) for the
        bundled Hallmark (:func:`moaspace.io.genesets.load_gene_sets`).
    permutations : int, default 1000
        Gene-set permutations per MoA (see :func:`prerank`).
    min_size : int, default 5
        Minimum number of ranked genes of a set tested.
    max_size : int, default 500
        Maximum number of ranked genes of a set tested.
    seed : int, default 0
        Seed of the permutations.
    progress : bool, default False
        Show a tqdm progress bar over MoAs.

    Returns
    -------
    pandas.DataFrame
        The :func:`prerank` tables of all MoAs stacked, with a first column ``moa``
        (``moa, pathway, nes, es, pval, fdr, n_genes, set_size, leading_edge``); the mean
        time per MoA, in seconds, is in ``attrs["seconds_per_moa"]``, the library's name in
        ``attrs["gene_sets"]``.

    Raises
    ------
    InputError
        If the table has no ``gene_symbol`` column, the GMT file cannot be read, or a
        MoA's ranking leaves no gene set of a usable size.
    """
    gene_sets, library = load_gene_sets(gene_sets)
    if "gene_symbol" not in importance.columns:
        raise InputError("the importance table needs a gene_symbol column")
    moas = [c for c in importance.columns if c != "gene_symbol"]
    frames, seconds = [], []
    iterator = moas
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(moas, desc="GSEA prerank", unit="MoA")
    for moa in iterator:
        t0 = time.perf_counter()
        ranking = pd.Series(importance[moa].to_numpy(), index=importance["gene_symbol"].astype(str))
        res = prerank(ranking, gene_sets, permutations=permutations, min_size=min_size,
                      max_size=max_size, seed=seed)
        res.insert(0, "moa", moa)
        frames.append(res)
        seconds.append(time.perf_counter() - t0)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["seconds_per_moa"] = float(np.mean(seconds))
    out.attrs["gene_sets"] = library
    return out
