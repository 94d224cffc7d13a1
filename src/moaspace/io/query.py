"""Read the query a user brings (GCT, GCTX, TSV, CSV or ``.h5ad``) into one AnnData.

:func:`read_query` is the one reader of query signatures: ``moaspace predict``, ``moaspace
prepare`` without a MoA table and the query service (``moaspace serve``) all call it, so a
file gives the same matrix, the same gene ids and the same metadata everywhere.

* **Formats**, told by the file name (``.gz`` allowed on text): ``.h5ad``, ``.gctx``/``.h5``,
  ``.gct`` (1.2 / 1.3), ``.tsv``/``.txt`` (tab) and ``.csv``. A name without a known suffix
  is told by its first bytes (:func:`sniff_format`).
* **Metadata.** The column metadata of a GCT 1.3 / GCTX file go to ``obs`` (numbers as
  numbers, ``na`` as missing); text is UTF-8, or Latin-1 where it is not valid UTF-8 (older
  CMap files write the micro sign of ``pert_idose`` so; R's ``<b5>`` escapes in GCT text are
  turned back into the character). CMap's ``pert_iname`` and ``cell_id`` are copied to
  moaspace's ``cmap_name`` and ``cell_iname``.
* **Genes** become Entrez ids: from the rows' ``pr_gene_id`` field where the file has one,
  else probe ids of the landmark table (``200814_at`` -> ``5720``) are mapped through the
  bundled table; other ids are kept as they are. The model's checks (missing genes, gene
  symbols instead of ids, NaN) stay with the model (``MoaModel.align_genes``).
* **Limits** for untrusted files (the service): ``max_bytes`` caps the bytes a file may
  decompress to (gzip text) or hold in its HDF5 datasets (``.h5ad``, ``.gctx``, whose
  chunks may be compressed), so a small upload cannot expand into gigabytes. ``.h5ad`` files
  are read with anndata, which loads no pickles.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from moaspace._utils import preview, require_file
from moaspace.errors import InputError
from moaspace.io.gctx import read_gctx
from moaspace.io.matrix import open_matrix

logger = logging.getLogger(__name__)

#: file name endings :func:`read_query` reads (text ones also with ``.gz``)
QUERY_SUFFIXES = (".h5ad", ".gctx", ".h5", ".gct", ".tsv", ".txt", ".csv")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
#: CMap column fields copied to moaspace's names (the originals are kept)
OBS_ALIASES = {"pert_iname": "cmap_name", "cell_id": "cell_iname"}
_MISSING = ("", "na", "NA", "nan", "NaN", "-666")
_R_ESCAPE = re.compile(r"<([89a-f][0-9a-f])>")


def query_format(path: str | os.PathLike) -> str | None:
    """``h5ad``, ``gctx``, ``gct`` or ``table`` from a file name; None for another name."""
    name = Path(path).name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith((".gctx", ".h5")):
        return "gctx"
    name = name.removesuffix(".gz")
    if name.endswith(".gct"):
        return "gct"
    if name.endswith((".tsv", ".txt", ".csv")):
        return "table"
    return None


def sniff_format(head: bytes) -> str:
    """A file name ending for content without a usable name, from its first bytes.

    Parameters
    ----------
    head : bytes
        The first bytes of the file (a few kB: the first line of a text matrix).

    Returns
    -------
    str
        ``.h5`` (HDF5: GCTX or ``.h5ad``, told apart by :func:`read_query`), ``.gct``,
        ``.tsv`` or ``.csv``, with ``.gz`` appended for gzip data (whose content is not
        looked into further: ``.tsv.gz`` unless its name says otherwise).

    Raises
    ------
    InputError
        If the bytes are empty or look like neither HDF5, gzip nor text.
    """
    if not head:
        raise InputError("the file is empty")
    if head.startswith(HDF5_MAGIC):
        return ".h5"
    if head.startswith(GZIP_MAGIC):
        return ".tsv.gz"
    if b"\x00" in head:
        raise InputError("the file is neither text, gzip nor HDF5 (GCTX / .h5ad)")
    text = head.decode("latin-1")
    if text.startswith(("#1.2", "#1.3")):
        return ".gct"
    first = text.splitlines()[0] if text.strip() else ""
    return ".tsv" if first.count("\t") >= first.count(",") else ".csv"


def read_query(path: str | os.PathLike, *, gene_ids: Iterable[str] | None = None,
               max_bytes: int | None = None, fmt: str | None = None) -> ad.AnnData:
    """Read query signatures from a GCT, GCTX, TSV, CSV or ``.h5ad`` file (module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    gene_ids : iterable of str, optional
        Gene ids the caller knows (e.g. a model's genes), used with the landmark table's
        Entrez and probe ids to tell the gene axis of a TSV/CSV from its signature axis.
    max_bytes : int, optional
        Refuse a file that decompresses to, or whose HDF5 datasets hold, more bytes than
        this (default None: no limit).
    fmt : {"h5ad", "gctx", "gct", "table"}, optional
        The format; default None: from the file name, else from the first bytes.

    Returns
    -------
    anndata.AnnData
        ``X`` (signatures x genes; float32 for text and GCTX, as stored for ``.h5ad``),
        ``obs`` the column metadata (indexed by signature id), ``var_names`` Entrez gene
        ids where the file says how to get them, with the file's own row ids in
        ``var["row_id"]`` when they differ and its other row fields kept.

    Raises
    ------
    InputError
        If the file is missing, empty, of an unknown or mixed-up format, damaged, over
        ``max_bytes``, holds non-numeric, NaN or inf values (text and GCTX), non-float
        values (``.h5ad``), duplicated ids, or two rows that map to the same Entrez id.
    """
    path = Path(path)
    fmt = fmt or query_format(path)
    if path.is_dir():
        raise InputError(f"{path}: cannot read as {'.' + fmt if fmt else 'a query'} "
                         "(a directory, expected a file)")
    path = require_file(path, "query file")
    fmt = fmt or _sniffed(path)
    known = _known_genes(gene_ids)
    if fmt == "h5ad":
        _check_hdf5_size(path, max_bytes, "h5ad")
        adata = _read_h5ad(path)
    elif fmt == "gctx":
        _check_hdf5_size(path, max_bytes, "gctx")
        adata = read_gctx(path)
    elif fmt in ("gct", "table"):
        _check_text_size(path, max_bytes)
        adata = _read_text(path, known)
    else:
        raise InputError(f"{path}: unknown query format {fmt!r}; expected one of "
                         f"{list(QUERY_SUFFIXES)}")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"{path}: no signatures or no genes ({adata.n_obs} x {adata.n_vars})")
    adata.var = _entrez_var(adata.var, adata.var_names, path)
    adata.var_names = adata.var.index
    if fmt != "h5ad":  # an AnnData's obs are the user's own: kept as they are
        adata.obs = tidy_obs(adata.obs, parse_numbers=fmt == "gct")
    logger.info("%s: %d query signatures x %d genes (%s)", path, adata.n_obs, adata.n_vars, fmt)
    return adata


def query_from_matrix(values, genes: Sequence, signatures: Sequence | None = None,
                      obs: dict | pd.DataFrame | None = None, *, source: str = "matrix"
                      ) -> ad.AnnData:
    """An in-memory matrix (e.g. a JSON request) as :func:`read_query` returns a file.

    Parameters
    ----------
    values : array-like, shape (n_signatures, n_genes)
        The z-scores; numbers only.
    genes : sequence
        One gene id per column (Entrez, or landmark probe ids: mapped as in
        :func:`read_query`).
    signatures : sequence, optional
        One id per row (default ``"0"``, ``"1"``, ...).
    obs : dict or pandas.DataFrame, optional
        Signature metadata, one value per row for each column.
    source : str, default "matrix"
        How error messages name the input.

    Returns
    -------
    anndata.AnnData
        Float32 ``X`` with ``obs`` and ``var`` as :func:`read_query` makes them.

    Raises
    ------
    InputError
        If the values are not a 2-D numeric array, or its shape does not match the ids and
        metadata, or ids are duplicated or empty.
    """
    try:
        x = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: values must be a 2-D array of numbers ({exc})") from None
    if x.ndim != 2 or 0 in x.shape:
        raise InputError(f"{source}: values must be a non-empty 2-D array, got shape {x.shape}")
    genes = [str(g).strip() for g in genes]
    sigs = [str(s) for s in (signatures if signatures is not None else range(len(x)))]
    if x.shape != (len(sigs), len(genes)):
        raise InputError(f"{source}: values have shape {x.shape}, but there are {len(sigs)} "
                         f"signature ids and {len(genes)} gene ids")
    for ids, what in ((pd.Index(genes), "gene"), (pd.Index(sigs), "signature")):
        if ids.has_duplicates:
            raise InputError(f"{source}: duplicated {what} ids: "
                             f"{preview(ids[ids.duplicated()].unique())}")
        if (ids == "").any():
            raise InputError(f"{source}: some {what} ids are empty")
    try:
        meta = pd.DataFrame(obs if obs is not None else {}, index=pd.Index(sigs))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: obs must hold one value per signature ({exc})") from None
    adata = ad.AnnData(X=x, obs=meta, var=pd.DataFrame(index=pd.Index(genes)))
    adata.var = _entrez_var(adata.var, adata.var_names, source)
    adata.var_names = adata.var.index
    adata.obs = tidy_obs(adata.obs, parse_numbers=False)
    return adata


@functools.lru_cache(maxsize=1)
def landmark_table() -> pd.DataFrame:
    """The bundled landmark table (``pr_gene_id``, ``pr_gene_symbol``, ``probe_id``, ...),
    all text."""
    from importlib import resources

    with resources.as_file(resources.files("moaspace.resources") / "landmark_genes.csv") as p:
        table = pd.read_csv(p, dtype=str, keep_default_na=False)
    return table.apply(lambda col: col.str.strip())


def _known_genes(gene_ids: Iterable[str] | None) -> pd.Index:
    table = landmark_table()
    known = [*table["pr_gene_id"], *table["probe_id"]]
    if gene_ids is not None:
        known.extend(str(g) for g in gene_ids)
    return pd.Index(known).unique()


def _sniffed(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    suffix = sniff_format(head)
    if suffix == ".h5":
        with h5py.File(path, "r") as handle:
            return "gctx" if "0" in handle else "h5ad"
    return "gct" if suffix == ".gct" else "table"


def _check_text_size(path: Path, max_bytes: int | None) -> None:
    """Plain text: its size; gzip: streamed until ``max_bytes`` would be passed."""
    if max_bytes is None:
        return
    if not path.name.lower().endswith(".gz"):
        if path.stat().st_size > max_bytes:
            raise InputError(f"{path}: larger than the limit of {max_bytes:,} bytes")
        return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(f"{path}: decompresses to more than the limit of "
                                     f"{max_bytes:,} bytes (refused)")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: damaged gzip data ({type(exc).__name__}: {exc})") from exc


def _check_hdf5_size(path: Path, max_bytes: int | None, what: str) -> None:
    """The bytes the file's datasets hold once decompressed, before any is read."""
    if max_bytes is None:
        return
    total = 0

    def add(_name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            total += int(np.prod(obj.shape, dtype=np.float64)) * obj.dtype.itemsize

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(add)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: cannot open as HDF5 ({what}) ({exc})") from exc
    if total > max_bytes:
        raise InputError(f"{path}: its datasets hold {total:,} bytes once decompressed, over "
                         f"the limit of {max_bytes:,} (refused)")


def _read_h5ad(path: Path) -> ad.AnnData:
    """An ``.h5ad`` (no pickles: anndata never unpickles) whose ``X`` is floating-point."""
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for corrupt files
        raise InputError(f"{path}: cannot read as .h5ad ({type(exc).__name__}: {exc})") from exc
    dtype = getattr(adata.X, "dtype", None)
    if adata.X is None or dtype is None or not np.issubdtype(dtype, np.floating):
        raise InputError(f"{path}: X must hold floating-point z-scores (found {dtype})")
    return adata


def _read_text(path: Path, known: pd.Index) -> ad.AnnData:
    source = open_matrix(path, gene_ids=known)
    adata = source.read(source.genes, source.signatures)
    if source.col_meta is not None:
        adata.obs = source.col_meta.reindex(adata.obs_names).rename_axis(None)
    if source.row_meta is not None:
        adata.var = source.row_meta.reindex(adata.var_names).rename_axis(None)
    return adata


def _entrez_var(var: pd.DataFrame, names: pd.Index, source) -> pd.DataFrame:
    """``var`` indexed by Entrez ids: ``pr_gene_id`` where the file has it, else landmark
    probe ids mapped through the bundled table; the file's ids kept in ``row_id``."""
    names = pd.Index([str(n).strip() for n in names])
    if "pr_gene_id" in var.columns:
        entrez = var["pr_gene_id"].astype(str).str.strip()
        entrez = entrez.where(~entrez.isin(_MISSING), names.to_series(index=names))
        how = "their pr_gene_id field"
    else:
        table = landmark_table()
        probes = pd.Series(table["pr_gene_id"].to_numpy(), index=table["probe_id"].to_numpy())
        n_probe = int(names.isin(probes.index).sum())
        if n_probe <= int(names.isin(table["pr_gene_id"]).sum()):
            return var
        entrez = pd.Series(names.map(probes.to_dict().get), index=names)
        entrez = entrez.fillna(names.to_series(index=names))
        how = f"the landmark table's probe ids ({n_probe} of {len(names)} rows)"
    entrez = pd.Index(entrez.astype(str).to_numpy())
    if entrez.equals(names):
        return var
    if entrez.has_duplicates:
        dup = entrez[entrez.duplicated()].unique()
        raise InputError(f"{source}: rows map to duplicated Entrez ids: {preview(dup)}")
    logger.info("%s: rows matched to Entrez gene ids by %s", source, how)
    var = var.copy()
    var.insert(0, "row_id", names.to_numpy())
    var.index = entrez
    return var


def tidy_obs(obs: pd.DataFrame, *, parse_numbers: bool = True) -> pd.DataFrame:
    """Column metadata as ``obs``: text as ``str`` (R's ``<b5>`` escapes decoded, ``na``
    empty), CMap's ``pert_iname``/``cell_id`` copied to ``cmap_name``/``cell_iname``; a
    field named ``id`` (the ids again) or ``_index`` is dropped.

    Parameters
    ----------
    obs : pandas.DataFrame
        Signature metadata as read (text or numbers).
    parse_numbers : bool, default True
        Turn text fields that hold only numbers (and ``na``) into numbers (GCT text has
        no types); ids such as ``0042`` would lose their zeros, so not for typed sources.

    Returns
    -------
    pandas.DataFrame
        A new frame with the same index.
    """
    out = pd.DataFrame(index=pd.Index(obs.index.astype(str)))
    for column in obs.columns:
        name = str(column)
        if name in ("id", "_index"):
            continue
        values = obs[column]
        if values.dtype.kind in "biuf":
            out[name] = values.to_numpy()
            continue
        text = values.astype("string").fillna("").astype(str).str.strip()
        text = text.str.replace(_R_ESCAPE, lambda m: chr(int(m.group(1), 16)), regex=True)
        missing = text.isin(_MISSING)
        if parse_numbers:
            number = pd.to_numeric(text.where(~missing), errors="coerce")
            if bool((number.notna() | missing).all()) and number.notna().any():
                out[name] = number.to_numpy()
                continue
        out[name] = text.where(~missing, "").to_numpy()
    for cmap, ours in OBS_ALIASES.items():
        if cmap in out.columns and ours not in out.columns:
            out[ours] = out[cmap]
    return out
