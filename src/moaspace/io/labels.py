"""Compound -> MoA tables (e.g. the Huang et al. label table used by the reference).

Accepted: CSV/TSV or the original ``.xlsx`` (whose first row is a title, so
the header is found automatically). Column names are matched case-insensitively
among common spellings: ``pert_id``/``BRD-ID``/``drugbank_id`` for the compound,
``moa``/``MOA`` for the mechanism, ``cmap_name``/``Drug name`` for the name
(optional).

A MoA cell holding several mechanisms separated by ``|`` (the Drug Repurposing
Hub's convention, e.g. ``"EGFR inhibitor|HER2 inhibitor"``) gives the compound
no single label. By default (``multi_moa="drop"``) such compounds are dropped with a
log line; with ``multi_moa="keep"`` (what :func:`moaspace.pp.prepare` reads) every
compound keeps the set of its MoAs (:func:`moa_set_string`), the union over its rows.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from moaspace._utils import preview, require_file
from moaspace.errors import InputError

logger = logging.getLogger(__name__)

ID_COLUMNS = ("pert_id", "brd-id", "brd_id", "brd id", "broad_id", "compound_id",
              "drugbank_id", "perturbagen", "compound")
MOA_COLUMNS = ("moa", "mechanism", "mechanism_of_action")
NAME_COLUMNS = ("cmap_name", "drug name", "drug_name", "pert_iname", "name")
#: separator of the MoAs of a compound in a MoA cell and in ``obs["moa_set"]``
MOA_SEP = "|"
MULTI_MOA = ("keep", "drop")


def moa_set_string(moas) -> str | None:
    """The ``|``-joined, sorted set of MoAs (``obs["moa_set"]``), or None when empty.

    Each item may itself hold ``|``-separated MoAs; parts are stripped and empty ones
    skipped. Sorted case-insensitively (ties by the exact text), as the Drug Repurposing
    Hub writes its entries, so ``{"PPAR receptor agonist", "insulin sensitizer"}`` gives
    ``"insulin sensitizer|PPAR receptor agonist"``.
    """
    parts = {part.strip() for item in moas if isinstance(item, str)
             for part in item.split(MOA_SEP)}
    parts.discard("")
    # the order of moaspace._core.sets.moa_sort_key (io sits below _core: not imported)
    return MOA_SEP.join(sorted(parts, key=lambda m: (m.casefold(), m))) if parts else None


def _find(columns, options) -> str | None:
    lower = {str(c).strip().lower(): c for c in columns}
    for option in options:
        if option in lower:
            return lower[option]
    return None


def _load(path) -> pd.DataFrame:
    suffix = "".join(path.suffixes).lower()
    try:
        if suffix.endswith((".xlsx", ".xls")):
            try:
                frame = pd.read_excel(path, header=0, dtype=str)
                if _find(frame.columns, ID_COLUMNS) is None:
                    frame = pd.read_excel(path, header=1, dtype=str)  # title row first
            except Exception as exc:  # zipfile/openpyxl/xlrd raise many types
                raise InputError(
                    f"{path}: cannot read MoA table ({type(exc).__name__}: {exc})"
                ) from exc
            return frame
        sep = "\t" if suffix.endswith((".tsv", ".txt", ".tsv.gz", ".txt.gz")) else ","
        return pd.read_csv(path, sep=sep, dtype=str)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: cannot read MoA table ({exc})") from exc


def read_moa_table(path: str | os.PathLike, *, multi_moa: str = "drop") -> pd.DataFrame:
    """Read a compound -> MoA table (CSV, TSV or ``.xlsx``).

    Column names are matched case-insensitively among common spellings (see the module
    docstring); cells are stripped, and rows without a compound id or a MoA are dropped.

    With ``multi_moa="drop"`` (default) compounds whose MoA cell holds several
    ``|``-separated MoAs are dropped with a log line; a compound listed twice with the
    same MoA is kept once, with different MoAs it is an error (the label would be
    ambiguous). With ``multi_moa="keep"`` a compound's MoAs are the union over its rows
    and cells (``a|b`` cells split): ``moa_set`` holds them (:func:`moa_set_string`) and
    ``moa`` is missing when there are several.

    Parameters
    ----------
    path : str or os.PathLike
        ``.tsv``/``.txt`` (tab-separated, optionally ``.gz``), ``.xlsx``/``.xls`` (header
        on the first or, after a title row, the second row) or any other name, read as
        comma-separated.
    multi_moa : {"drop", "keep"}, default "drop"
        What becomes of compounds with several MoAs (above).

    Returns
    -------
    pandas.DataFrame
        One row per compound, indexed by ``pert_id`` (unnamed index), with string columns
        ``pert_id``, ``moa`` (missing for a compound with several MoAs), ``moa_set``
        (every MoA, ``|``-joined, sorted; equal to ``moa`` for a single MoA) and
        ``cmap_name`` (NA when the table has no name column; the first one given).

    Raises
    ------
    InputError
        If the file is missing or cannot be parsed, lacks a compound-id or MoA column, has
        no row with both a compound id and a (single, for ``"drop"``) MoA, gives a compound
        several MoAs on different rows (``"drop"``), or ``multi_moa`` is invalid.
    """
    if multi_moa not in MULTI_MOA:
        raise InputError(f"multi_moa must be one of {list(MULTI_MOA)}, got {multi_moa!r}")
    path = require_file(path, "MoA table")
    frame = _load(path)
    id_col = _find(frame.columns, ID_COLUMNS)
    moa_col = _find(frame.columns, MOA_COLUMNS)
    missing = [n for n, c in (("pert_id (or BRD-ID)", id_col), ("moa", moa_col)) if c is None]
    if missing:
        raise InputError(
            f"{path}: MoA table lacks required columns {missing}; found {preview(frame.columns)}"
        )
    name_col = _find(frame.columns, NAME_COLUMNS)
    out = pd.DataFrame(
        {
            "pert_id": frame[id_col].astype("string").str.strip(),
            "moa": frame[moa_col].astype("string").str.strip(),
            "cmap_name": frame[name_col].astype("string").str.strip() if name_col else pd.NA,
        }
    )
    out = out.dropna(subset=["pert_id", "moa"])
    out = out[(out["pert_id"] != "") & (out["moa"] != "")]
    out = _single_moas(out, path) if multi_moa == "drop" else _moa_sets(out, path)
    out = out.set_index("pert_id", drop=False)
    out.index.name = None
    return out


def _single_moas(out: pd.DataFrame, path) -> pd.DataFrame:
    """``multi_moa="drop"``: rows with one MoA, one row per compound (conflicts raise)."""
    multi = out["moa"].str.contains(MOA_SEP, regex=False)
    if multi.any():
        logger.info("%s: %d compounds with several '|'-separated MoAs dropped (no single label), "
                    "e.g. %s", path, int(multi.sum()), preview(out.loc[multi, "pert_id"], 3))
        out = out[~multi]
    if out.empty:
        raise InputError(f"{path}: MoA table has no rows with both a compound id and a "
                         "single MoA")
    out = out.drop_duplicates(subset=["pert_id", "moa"])
    conflict = out["pert_id"][out["pert_id"].duplicated()]
    if len(conflict):
        raise InputError(
            f"{path}: compounds with more than one MoA: {preview(conflict.unique())}"
        )
    return out.assign(moa_set=out["moa"])[["pert_id", "moa", "moa_set", "cmap_name"]]


def _moa_sets(out: pd.DataFrame, path) -> pd.DataFrame:
    """``multi_moa="keep"``: one row per compound with the union of its MoAs."""
    grouped = out.groupby("pert_id", sort=False)
    sets = grouped["moa"].agg(lambda s: moa_set_string(s.astype(str)))
    sets = sets.dropna()
    if sets.empty:
        raise InputError(f"{path}: MoA table has no rows with both a compound id and a MoA")
    names = grouped["cmap_name"].first()
    moa_set = sets.astype("string")
    single = moa_set.where(~moa_set.str.contains(MOA_SEP, regex=False))
    n_multi = int(single.isna().sum())
    if n_multi:
        logger.info("%s: %d compounds with several MoAs (a '|'-separated cell or several rows), "
                    "e.g. %s", path, n_multi, preview(moa_set.index[single.isna()], 3))
    return pd.DataFrame({"pert_id": moa_set.index.astype("string"), "moa": single.to_numpy(),
                         "moa_set": moa_set.to_numpy(),
                         "cmap_name": names.reindex(moa_set.index).to_numpy()})
