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
    """Read ``siginfo_beta.txt``; indexed by ``sig_id`` (unique)."""
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
    """Read ``geneinfo_beta.txt``; indexed by the Entrez ``gene_id`` as string.

    Genes are keyed by id because symbols change between releases (the
    landmark list of 2016 and LINCS 2020 differ for dozens of symbols).
    """
    frame = _read_table(path, "geneinfo", GENEINFO_REQUIRED, dtype={"gene_id": str})
    frame["gene_id"] = frame["gene_id"].str.strip()
    _check_unique(frame, "gene_id", path, "geneinfo")
    frame = frame.set_index("gene_id", drop=False)
    frame.index.name = None
    return frame


def read_compoundinfo(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``compoundinfo_beta.txt`` as published (one row per compound-target pair)."""
    frame = _read_table(path, "compoundinfo", COMPOUNDINFO_REQUIRED, dtype=str)
    for column in ("target", "moa", "canonical_smiles", "inchi_key"):
        if column not in frame.columns:
            frame[column] = pd.NA
    return frame


def compound_targets(compoundinfo: pd.DataFrame) -> dict[str, set[str]]:
    """Map ``pert_id`` -> set of target gene symbols (from the ``target`` column).

    Targets may be one per row (as in the beta release) or ``|``-separated.
    """
    out: dict[str, set[str]] = {}
    for pert_id, target in zip(compoundinfo["pert_id"], compoundinfo["target"], strict=True):
        if pd.isna(target) or not str(target).strip():
            continue
        genes = {t.strip() for t in str(target).replace(",", "|").split("|") if t.strip()}
        out.setdefault(str(pert_id), set()).update(genes)
    return out


def landmark_gene_ids(geneinfo: pd.DataFrame) -> list[str]:
    """Gene ids with ``feature_space == 'landmark'``, in file order."""
    return geneinfo.index[geneinfo["feature_space"].astype(str).str.lower() == "landmark"].tolist()
