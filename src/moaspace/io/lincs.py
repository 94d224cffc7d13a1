"""Readers for the LINCS 2020 (beta) metadata tables.

The files are tab-separated with a header row: ``siginfo_beta.txt`` (one row
per signature), ``geneinfo_beta.txt`` (one row per gene, ``feature_space`` says
landmark / best inferred / inferred) and ``compoundinfo_beta.txt`` (one row per
compound *and target*: a compound with three targets has three rows).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import pandas as pd

from moaspace._utils import preview, require_file
from moaspace.errors import InputError

logger = logging.getLogger(__name__)

SIGINFO_REQUIRED = ("sig_id", "pert_id", "pert_type", "cell_iname")
GENEINFO_REQUIRED = ("gene_id", "gene_symbol", "feature_space")
COMPOUNDINFO_REQUIRED = ("pert_id", "cmap_name")


def _read_table(path, what: str, required: Iterable[str], dtype=None) -> pd.DataFrame:
    path = require_file(path, what)
    try:
        frame = pd.read_csv(path, sep="\t", dtype=dtype, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot parse {what} as a tab-separated table ({exc})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: {what} lacks required columns {missing}; "
            f"found {preview(frame.columns, 15)}"
        )
    return frame


def _check_unique(frame: pd.DataFrame, column: str, path, what: str) -> None:
    dup = frame[column][frame[column].duplicated()]
    if len(dup):
        raise InputError(f"{path}: duplicated {column} in {what}: {preview(dup.unique())}")


def read_siginfo(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``siginfo_beta.txt`` (one row per signature), indexed by ``sig_id``.

    Parameters
    ----------
    path : str or os.PathLike
        Tab-separated file with a header row and at least the columns ``sig_id``,
        ``pert_id``, ``pert_type`` and ``cell_iname``.

    Returns
    -------
    pandas.DataFrame
        Every column of the file (``sig_id``, ``pert_id``, ``cell_iname`` and
        ``cmap_name`` read as text), indexed by the unique ``sig_id`` (unnamed index; the
        column is kept).

    Raises
    ------
    InputError
        If the file is missing or not a parsable tab-separated table, lacks a required
        column, or has rows with an empty ``sig_id`` (their line numbers are named) or a
        duplicated ``sig_id``.
    """
    frame = _read_table(
        path, "siginfo", SIGINFO_REQUIRED,
        dtype={"sig_id": str, "pert_id": str, "cell_iname": str, "cmap_name": str},
    )
    blank = frame["sig_id"].isna() | (frame["sig_id"].astype(str).str.strip() == "")
    if blank.any():
        lines = [int(i) + 2 for i in frame.index[blank]]  # line 1 is the header
        raise InputError(
            f"{path}: {int(blank.sum())} rows have an empty sig_id (lines {preview(lines)})"
        )
    _check_unique(frame, "sig_id", path, "siginfo")
    frame = frame.set_index("sig_id", drop=False)
    frame.index.name = None
    return frame


def read_geneinfo(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``geneinfo_beta.txt``, indexed by the Entrez ``gene_id`` as string.

    Genes are keyed by id because symbols change between releases (the
    landmark list of 2016 and LINCS 2020 differ for dozens of symbols).

    Parameters
    ----------
    path : str or os.PathLike
        Tab-separated file with a header row and at least the columns ``gene_id``,
        ``gene_symbol`` and ``feature_space`` (``landmark``, ``best inferred`` or
        ``inferred``).

    Returns
    -------
    pandas.DataFrame
        Every column of the file, one row per gene, indexed by the unique, stripped
        ``gene_id`` text (unnamed index; the column is kept).

    Raises
    ------
    InputError
        If the file is missing or not a parsable tab-separated table, lacks a required
        column, or has a duplicated ``gene_id``.
    """
    frame = _read_table(path, "geneinfo", GENEINFO_REQUIRED, dtype={"gene_id": str})
    frame["gene_id"] = frame["gene_id"].str.strip()
    _check_unique(frame, "gene_id", path, "geneinfo")
    frame = frame.set_index("gene_id", drop=False)
    frame.index.name = None
    return frame


def read_compoundinfo(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``compoundinfo_beta.txt`` as published (one row per compound-target pair).

    Parameters
    ----------
    path : str or os.PathLike
        Tab-separated file with a header row and at least the columns ``pert_id`` and
        ``cmap_name``.

    Returns
    -------
    pandas.DataFrame
        Every column of the file as text, with a default integer index; the columns
        ``target``, ``moa``, ``canonical_smiles`` and ``inchi_key`` are added (all NA)
        when absent.

    Raises
    ------
    InputError
        If the file is missing or not a parsable tab-separated table, or lacks
        ``pert_id`` or ``cmap_name``.
    """
    frame = _read_table(path, "compoundinfo", COMPOUNDINFO_REQUIRED, dtype=str)
    for column in ("target", "moa", "canonical_smiles", "inchi_key"):
        if column not in frame.columns:
            frame[column] = pd.NA
    return frame


def compound_targets(compoundinfo: pd.DataFrame) -> dict[str, set[str]]:
    """Map each ``pert_id`` to the set of its target gene symbols (``target`` column).

    Targets may be one per row (as in the beta release) or ``|``- or ``,``-separated
    within a cell; blank and missing targets are skipped.

    Parameters
    ----------
    compoundinfo : pandas.DataFrame
        Table with ``pert_id`` and ``target`` columns, e.g. from
        :func:`read_compoundinfo`.

    Returns
    -------
    dict of str to set of str
        ``pert_id`` -> target gene symbols; compounds without a target are absent.
    """
    out: dict[str, set[str]] = {}
    for pert_id, target in zip(compoundinfo["pert_id"], compoundinfo["target"], strict=True):
        if pd.isna(target) or not str(target).strip():
            continue
        genes = {t.strip() for t in str(target).replace(",", "|").split("|") if t.strip()}
        out.setdefault(str(pert_id), set()).update(genes)
    return out


def landmark_gene_ids(geneinfo: pd.DataFrame) -> list[str]:
    """Return the ids of the genes with ``feature_space == 'landmark'``, in file order.

    Parameters
    ----------
    geneinfo : pandas.DataFrame
        Gene table indexed by gene id with a ``feature_space`` column, e.g. from
        :func:`read_geneinfo`.

    Returns
    -------
    list
        Index values (gene ids) of the rows whose ``feature_space`` is ``landmark``
        (case-insensitive), in table order.
    """
    return geneinfo.index[geneinfo["feature_space"].astype(str).str.lower() == "landmark"].tolist()
