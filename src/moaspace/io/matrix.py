"""Expression matrices in the formats users hold: GCTX, GCT (1.2 / 1.3) text, TSV / CSV.

:func:`open_matrix` returns a :class:`MatrixSource` with the same two-step
interface for every format: the ids first (:attr:`MatrixSource.genes`,
:attr:`MatrixSource.signatures`), so metadata can be checked and filtered
before any value is read, then :meth:`MatrixSource.read` for a subset.

* ``.gctx`` (HDF5) is read lazily, block by block (:mod:`moaspace.io.gctx`): the
  35 GB level-5 release is never loaded whole.
* ``.gct``, ``.tsv``, ``.txt``, ``.csv`` (optionally ``.gz``) are text and are
  parsed whole: text matrices are small (a 720,216 x 978 text file would be
  ~3 GB; convert such a file to GCTX first).

Orientation: the GCT/GCTX convention is genes in rows and signatures in
columns, but TSV/CSV exports come either way. A text matrix is oriented by
its ids: the axis whose labels are known gene ids (``gene_ids``) is the gene
axis. Without known gene ids, a GCT keeps its convention and a TSV/CSV whose
column labels are all integers (Entrez ids) has genes in columns.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import preview, require_file
from moaspace.errors import InputError
from moaspace.io.gctx import read_gctx, read_gctx_meta

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".gct", ".tsv", ".txt", ".csv")
MATRIX_SUFFIXES = (".gctx", ".h5", *TEXT_SUFFIXES)


def matrix_format(path: str | os.PathLike) -> str:
    """``gctx``, ``gct`` or ``table`` from the file name (``.gz`` allowed on text)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".gctx", ".h5")):
        return "gctx"
    if name.endswith(".gct"):
        return "gct"
    if name.endswith((".tsv", ".txt", ".csv")):
        return "table"
    raise InputError(f"{path}: unknown matrix format; expected one of {list(MATRIX_SUFFIXES)} "
                     "(text formats may end in .gz)")


@dataclass
class MatrixSource:
    """Ids of a matrix on disk and a reader for any subset of it.

    ``genes`` and ``signatures`` are string indexes. For GCTX files ``frame``
    is None and :meth:`read` streams the subset from the file; for text files
    ``frame`` holds the whole matrix, signatures in rows. ``col_meta`` and
    ``row_meta`` hold a GCT 1.3 file's signature and gene metadata (text, indexed
    like ``signatures`` and ``genes``; None for other text formats and for GCTX, whose
    :func:`~moaspace.io.read_gctx` returns its metadata with the values).
    """

    path: Path
    format: str
    genes: pd.Index
    signatures: pd.Index
    frame: pd.DataFrame | None = None
    transposed: bool = False
    col_meta: pd.DataFrame | None = None
    row_meta: pd.DataFrame | None = None

    def read(self, rids: Sequence[str], cids: Sequence[str], *, progress: bool = False
             ) -> ad.AnnData:
        """Signatures ``cids`` x genes ``rids`` as AnnData (float32), in the order given."""
        if self.frame is None:
            return read_gctx(self.path, rids=list(rids), cids=list(cids), progress=progress)
        block = self.frame.loc[list(cids), list(rids)]
        x = block.to_numpy(dtype=np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise InputError(f"{self.path}: {int(bad.sum())} signatures hold NaN/inf or "
                             f"non-numeric values, e.g. {preview(block.index[bad], 5)}")
        return ad.AnnData(X=x, obs=pd.DataFrame(index=block.index.astype(str)),
                          var=pd.DataFrame(index=block.columns.astype(str)))


def _open_text(path: Path, encoding: str = "utf-8"):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors="strict")
    return open(path, encoding=encoding)


def _strip_ids(index: pd.Index, path: Path, axis: str) -> pd.Index:
    index = pd.Index([str(i).strip() for i in index])
    if index.has_duplicates:
        raise InputError(f"{path}: duplicated {axis} ids: {preview(index[index.duplicated()])}")
    if (index == "").any():
        raise InputError(f"{path}: some {axis} ids are empty")
    return index


def _read_gct(path: Path, encoding: str = "utf-8"
              ) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """GCT 1.2 / 1.3 text: rows are genes, columns signatures. Returns the values (genes x
    signatures, text), the gene metadata and the signature metadata (GCT 1.3; else None)."""
    with _open_text(path, encoding) as fh:
        version = fh.readline().strip()
        dims = fh.readline().rstrip("\n").split("\t")
        if version not in ("#1.2", "#1.3"):
            raise InputError(f"{path}: not a GCT file (first line {version[:20]!r}; expected "
                             "'#1.2' or '#1.3')")
        try:
            n_row, n_col = int(dims[0]), int(dims[1])
            n_rmeta = int(dims[2]) if version == "#1.3" else 1
            n_cmeta = int(dims[3]) if version == "#1.3" else 0
        except (IndexError, ValueError):
            got = " ".join(dims)[:60]
            raise InputError(f"{path}: line 2 must hold the GCT dimensions, got {got!r}"
                             ) from None
        frame = pd.read_csv(fh, sep="\t", header=0, index_col=0, dtype=str, na_filter=False)
    # GCT 1.3: column-metadata rows follow the header; then one row per gene
    col_meta = frame.iloc[:n_cmeta, n_rmeta:].T if n_cmeta else None
    row_meta = frame.iloc[n_cmeta:, :n_rmeta] if version == "#1.3" else None
    frame = frame.iloc[n_cmeta:]
    frame = frame.iloc[:, n_rmeta:]
    if frame.shape != (n_row, n_col):
        raise InputError(f"{path}: the header says {n_row} rows x {n_col} columns, the file "
                         f"holds {frame.shape[0]} x {frame.shape[1]} (truncated or malformed)")
    return frame, row_meta, col_meta


def _read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    name = path.name.lower().removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    try:
        frame = pd.read_csv(path, sep=sep, header=0, index_col=0, dtype=str, na_filter=False,
                            encoding=encoding)
    except UnicodeDecodeError:
        raise
    except (ValueError, pd.errors.ParserError, EOFError, OSError) as exc:
        raise InputError(f"{path}: cannot read as a {'CSV' if sep == ',' else 'tab-separated'} "
                         f"matrix ({type(exc).__name__}: {exc})") from exc
    if frame.shape[1] == 0:
        raise InputError(f"{path}: no data columns (is the separator right? .csv files are "
                         "comma-separated, .tsv/.txt tab-separated)")
    return frame


def _numeric(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = frame.apply(pd.to_numeric, errors="coerce")
    bad = out.isna() & (frame != "")
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        value = frame.iat[row, col]
        what = ("NaN or missing" if str(value).strip().lower() in ("nan", "na", "n/a", "null")
                else "non-numeric")
        raise InputError(f"{path}: {what} value {value!r} at row {frame.index[row]!r}, column "
                         f"{frame.columns[col]!r} ({int(bad.to_numpy().sum())} such cells)")
    return out.astype(np.float32)


def _genes_in_columns(frame: pd.DataFrame, gene_ids: Iterable[str] | None, gct: bool) -> bool:
    if gene_ids is not None:
        known = pd.Index([str(g) for g in gene_ids])
        in_rows = int(frame.index.isin(known).sum())
        in_cols = int(frame.columns.isin(known).sum())
        if in_rows or in_cols:
            return in_cols > in_rows
    if gct:
        return False
    return bool(all(str(c).strip().isdigit() for c in frame.columns))


def open_matrix(path: str | os.PathLike, *, gene_ids: Iterable[str] | None = None
                ) -> MatrixSource:
    """Open a matrix (GCTX, GCT, TSV, CSV; see the module docstring) and read its ids.

    ``gene_ids``: known gene ids (e.g. geneinfo's, or the landmark genes'), used to
    tell the gene axis of a text matrix from the signature axis. Text is UTF-8, or
    Latin-1 where it is not valid UTF-8 (older CMap files write the micro sign so).
    """
    path = require_file(path, "expression matrix")
    fmt = matrix_format(path)
    if fmt == "gctx":
        row_meta, col_meta = read_gctx_meta(path)
        return MatrixSource(path, fmt, row_meta.index.astype(str), col_meta.index.astype(str))
    try:
        try:
            frame, row_meta, col_meta = _read_text(path, fmt, "utf-8")
        except UnicodeDecodeError:
            logger.info("%s: not UTF-8 text; read as Latin-1", path)
            frame, row_meta, col_meta = _read_text(path, fmt, "latin-1")
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    genes_in_cols = _genes_in_columns(frame, gene_ids, fmt == "gct")
    if genes_in_cols:  # a GCT's column metadata then describes the genes
        col_meta, row_meta = row_meta, col_meta
    frame = frame if genes_in_cols else frame.T
    frame.index = _strip_ids(frame.index, path, "signature")
    frame.columns = _strip_ids(frame.columns, path, "gene")
    frame = _numeric(frame, path)
    for meta, ids in ((col_meta, frame.index), (row_meta, frame.columns)):
        if meta is not None:
            meta.index = ids
    logger.info("%s: %d signatures x %d genes (%s, %s)", path, frame.shape[0], frame.shape[1],
                fmt, "genes in columns" if genes_in_cols else "genes in rows")
    return MatrixSource(path, fmt, frame.columns, frame.index, frame=frame,
                        transposed=genes_in_cols, col_meta=col_meta, row_meta=row_meta)


def _read_text(path: Path, fmt: str, encoding: str):
    """(values, gene metadata, signature metadata) of a GCT or TSV/CSV text matrix."""
    if fmt == "gct":
        return _read_gct(path, encoding)
    return _read_table(path, encoding), None, None
