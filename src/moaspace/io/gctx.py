"""Read and write GCTX files (the HDF5 container of the LINCS/CMap releases).

Built on h5py directly: cmapPy is unmaintained and breaks on numpy >= 1.24 and
pandas >= 2, and it loads whole matrices. Here only the requested signatures
and genes are read, block by block, so peak memory stays near the size of the
output even for the 720,216 x 12,328 level-5 beta file (~35 GB).

Layout (GCTX 1.0)::

    /0/DATA/0/matrix   float32, shape (n_columns, n_rows) in the files CMap publishes
    /0/META/ROW/id     row ids (genes, Entrez ids as byte strings)
    /0/META/COL/id     column ids (signatures, ``sig_id``)
    /0/META/ROW/*, /0/META/COL/*   optional metadata fields of the same lengths

Rows are genes and columns are signatures, as in the GCTX spec; the returned
AnnData has signatures as ``obs`` and genes as ``var``. The orientation of the
HDF5 matrix is checked against the id lengths, so a file written the other way
round is read correctly too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from moaspace._utils import atomic_path, preview, require_file
from moaspace.errors import InputError

logger = logging.getLogger(__name__)

MATRIX_PATH = "/0/DATA/0/matrix"
ROW_META = "/0/META/ROW"
COL_META = "/0/META/COL"

# what h5py and the codecs raise for damaged or malformed files
_FILE_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError,
                UnicodeDecodeError)

# Read the signature axis in blocks of at most this many bytes (a full-width
# slab); bounds the temporary memory of a subset read independently of the
# file size.
DEFAULT_BLOCK_BYTES = 64 * 2**20


def _decode(values: np.ndarray, fallback: str | None = None) -> np.ndarray:
    """Decode HDF5 string datasets (bytes) into a numpy array of ``str``.

    Text is UTF-8; with ``fallback`` (e.g. ``"latin-1"``, which older CMap files use for
    the micro sign of ``pert_idose``) a field that is not valid UTF-8 is decoded with it.
    """
    if values.dtype.kind in ("S", "O"):
        try:
            out = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
        except UnicodeDecodeError:
            if fallback is None:
                raise
            out = [v.decode(fallback) if isinstance(v, bytes) else str(v) for v in values]
        return np.asarray([s.strip() for s in out], dtype=object)
    return values


def _read_meta(handle: h5py.File, group: str, path: Path) -> pd.DataFrame:
    if group not in handle or "id" not in handle[group]:
        raise InputError(
            f"{path}: not a GCTX file: missing dataset {group}/id "
            f"(expected groups {MATRIX_PATH}, {ROW_META}/id, {COL_META}/id)"
        )
    grp = handle[group]
    if not isinstance(grp["id"], h5py.Dataset) or grp["id"].ndim != 1:
        raise InputError(f"{path}: {group}/id must be a 1-D dataset of ids")
    try:
        ids = _decode(grp["id"][()])
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {group}/id holds ids that are not UTF-8 text ({exc})") from exc
    meta = {}
    for name, dset in grp.items():
        if name == "id" or not isinstance(dset, h5py.Dataset):
            continue
        values = dset[()]
        if values.shape[:1] != (len(ids),):
            logger.warning("%s: ignoring %s/%s (length differs from id)", path, group, name)
            continue
        try:
            meta[name] = _decode(values)
        except UnicodeDecodeError:
            # metadata (not ids) written by older CMap tools: Latin-1 text
            logger.info("%s: %s/%s is not UTF-8; read as Latin-1", path, group, name)
            meta[name] = _decode(values, fallback="latin-1")
    frame = pd.DataFrame(meta, index=pd.Index(ids.astype(str), name="id"))
    return frame


def read_gctx_meta(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the row and column metadata of a GCTX file without touching the matrix.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.gctx`` file.

    Returns
    -------
    row_meta : pandas.DataFrame
        One row per GCTX row (gene), indexed by the decoded ``/0/META/ROW/id`` as ``str``
        (index name ``"id"``), with one column per other dataset of ``/0/META/ROW`` whose
        length matches the ids (datasets of another length are skipped with a warning).
        Text fields are UTF-8, or Latin-1 where they are not valid UTF-8 (older CMap
        files write the micro sign of ``pert_idose`` so); ids must be UTF-8.
    col_meta : pandas.DataFrame
        The same for the GCTX columns (signatures, ``/0/META/COL``).

    Raises
    ------
    InputError
        If the file is missing or a directory, cannot be opened as HDF5, lacks
        ``/0/META/ROW/id`` or ``/0/META/COL/id``, holds ids that are not a 1-D dataset of
        UTF-8 text, or is otherwise damaged.
    """
    path = require_file(path, "GCTX file")
    try:
        with _open(path) as handle:
            return _read_meta(handle, ROW_META, path), _read_meta(handle, COL_META, path)
    except _FILE_ERRORS as exc:
        raise InputError(
            f"{path}: damaged or not a valid GCTX file ({type(exc).__name__}: {exc})"
        ) from exc


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5/GCTX ({exc})") from exc


def _positions(
    index: pd.Index, wanted: Sequence[str] | None, path: Path, what: str
) -> np.ndarray | None:
    """Map requested ids to positions in the file; None means 'all, in file order'."""
    if wanted is None:
        return None
    wanted = pd.Index([str(w) for w in wanted])
    if wanted.has_duplicates:
        dup = wanted[wanted.duplicated()].unique()
        raise InputError(f"{path}: duplicated {what} ids requested: {preview(dup)}")
    pos = index.get_indexer(wanted)
    missing = wanted[pos < 0]
    if len(missing):
        raise InputError(
            f"{path}: {len(missing)} requested {what} ids are not in the file: {preview(missing)}"
        )
    return pos.astype(np.int64)


def _runs(sorted_pos: np.ndarray, n_cols: int, block_bytes: int, itemsize: int):
    """Split sorted positions into batches whose covering slab fits ``block_bytes``.

    Yields (start, stop) index pairs into ``sorted_pos``. A batch covers the
    rows ``sorted_pos[start] .. sorted_pos[stop-1]`` of the file.
    """
    max_rows = max(1, block_bytes // max(1, n_cols * itemsize))
    start = 0
    n = len(sorted_pos)
    while start < n:
        first = sorted_pos[start]
        # all positions within the next max_rows file rows
        stop = int(np.searchsorted(sorted_pos, first + max_rows, side="left"))
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def read_gctx(
    path: str | os.PathLike,
    rids: Sequence[str] | None = None,
    cids: Sequence[str] | None = None,
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    check_finite: bool = True,
    progress: bool = False,
    dtype: np.dtype | type = np.float32,
) -> ad.AnnData:
    """Read a subset of a GCTX file into an AnnData (signatures x genes).

    Only the selected signatures are read, in increasing file order and in
    blocks, then placed at their requested position: peak memory is the output
    plus one block. All genes of each selected signature are read and the requested
    genes picked from them. The orientation of the stored matrix is told from the id lengths (a
    square matrix is taken as published, signatures first).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.gctx`` file.
    rids : sequence of str, optional
        Row ids to read (genes, e.g. Entrez ids as strings; converted with ``str``), in
        the order wanted in ``var``. ``None`` (default) reads all rows in file order.
    cids : sequence of str, optional
        Column ids to read (signatures, ``sig_id``), in the order wanted in
        ``obs``. ``None`` (default) reads all columns in file order.
    block_bytes : int, default ``DEFAULT_BLOCK_BYTES`` (64 MiB)
        Upper bound, in bytes, on the temporary slab read at once along the signature
        axis (at least one signature is read per block).
    check_finite : bool, default True
        Raise :class:`~moaspace.errors.InputError` naming the signatures that
        contain NaN or inf.
    progress : bool, default False
        Show a tqdm progress bar over blocks.
    dtype : numpy dtype or type, default numpy.float32
        dtype of the returned ``X``.

    Returns
    -------
    anndata.AnnData
        ``X`` of shape (n_signatures, n_genes) and dtype ``dtype``; ``obs`` holds the
        column metadata of the selected signatures and ``var`` the row metadata of the
        selected genes (as in :func:`read_gctx_meta`, index unnamed), in the requested
        order.

    Raises
    ------
    InputError
        If the file is missing, damaged or not GCTX (no ``/0/DATA/0/matrix``, a matrix
        that is not numeric and 2-D, or whose shape matches neither the ids nor their
        transpose), the file holds duplicated ids, requested ids are duplicated or not in
        the file, ``rids`` is empty, or (with ``check_finite``) a selected signature
        holds NaN or inf.
    """
    path = require_file(path, "GCTX file")
    try:
        return _read_gctx(path, rids, cids, block_bytes, check_finite, progress, dtype)
    except _FILE_ERRORS as exc:
        raise InputError(
            f"{path}: damaged or not a valid GCTX file ({type(exc).__name__}: {exc})"
        ) from exc


def _read_gctx(path, rids, cids, block_bytes, check_finite, progress, dtype) -> ad.AnnData:
    with _open(path) as handle:
        if MATRIX_PATH not in handle:
            raise InputError(f"{path}: not a GCTX file: missing dataset {MATRIX_PATH}")
        row_meta = _read_meta(handle, ROW_META, path)
        col_meta = _read_meta(handle, COL_META, path)
        for meta, what in ((row_meta, "row"), (col_meta, "column")):
            if meta.index.has_duplicates:
                dup = meta.index[meta.index.duplicated()].unique()
                raise InputError(f"{path}: duplicated {what} ids in the file: {preview(dup)}")
        dset = handle[MATRIX_PATH]
        if not isinstance(dset, h5py.Dataset) or dset.dtype.kind not in "fiu":
            raise InputError(f"{path}: {MATRIX_PATH} must be a numeric dataset")
        n_row, n_col = len(row_meta), len(col_meta)
        if dset.ndim != 2:
            raise InputError(f"{path}: {MATRIX_PATH} has {dset.ndim} dimensions, expected 2")
        if dset.shape == (n_col, n_row):
            # as published; a square matrix cannot be told apart and is taken so too
            sig_axis = 0
        elif dset.shape == (n_row, n_col):
            sig_axis = 1
        else:
            raise InputError(
                f"{path}: matrix shape {dset.shape} matches neither "
                f"(columns={n_col}, rows={n_row}) nor its transpose"
            )

        gene_pos = _positions(row_meta.index, rids, path, "row (gene)")
        sig_pos = _positions(col_meta.index, cids, path, "column (signature)")
        if sig_pos is None:
            sig_pos = np.arange(n_col, dtype=np.int64)
        if gene_pos is not None and len(gene_pos) == 0:
            raise InputError(f"{path}: empty gene (row id) selection")
        n_genes_out = n_row if gene_pos is None else len(gene_pos)
        # Full rows are read (HDF5 chunks span whole rows in the published
        # files), then the genes are picked in the order asked for.
        gene_is_identity = gene_pos is None or np.array_equal(gene_pos, np.arange(n_row))
        out = np.empty((len(sig_pos), n_genes_out), dtype=dtype)

        order = np.argsort(sig_pos, kind="stable")
        sorted_pos = sig_pos[order]
        batches = list(_runs(sorted_pos, n_row, block_bytes, dset.dtype.itemsize))
        iterator = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc=f"reading {path.name}", unit="block")
        for start, stop in iterator:
            first, last = int(sorted_pos[start]), int(sorted_pos[stop - 1])
            local = sorted_pos[start:stop] - first
            if sig_axis == 0:
                slab = dset[first : last + 1, :]
            else:
                slab = dset[:, first : last + 1].T
            block = slab[local]
            if not gene_is_identity:
                block = block[:, gene_pos]
            if check_finite and not np.isfinite(block).all():
                bad_rows = np.where(~np.isfinite(block).all(axis=1))[0]
                bad_ids = col_meta.index[sorted_pos[start:stop][bad_rows]]
                raise InputError(
                    f"{path}: NaN or inf values in {len(bad_ids)} signatures "
                    f"of this block: {preview(bad_ids)}"
                )
            out[order[start:stop]] = block

    obs = col_meta.iloc[sig_pos].copy()
    obs.index.name = None
    var = row_meta if gene_pos is None else row_meta.iloc[gene_pos]
    var = var.copy()
    var.index.name = None
    return ad.AnnData(X=out, obs=obs, var=var)


def write_gctx(
    path: str | os.PathLike,
    X: np.ndarray,
    sig_ids: Sequence[str],
    gene_ids: Sequence[str],
    *,
    row_meta: pd.DataFrame | None = None,
    col_meta: pd.DataFrame | None = None,
    transposed: bool = False,
    chunk_rows: int = 256,
    compression: str | None = None,
) -> Path:
    """Write a signatures x genes matrix as GCTX, in the layout CMap publishes.

    ``X`` has one row per signature (``sig_ids``) and one column per gene
    (``gene_ids``). The HDF5 matrix is stored (signatures, genes) like the
    LINCS files; ``transposed=True`` stores (genes, signatures) instead, which
    some third-party writers produce (used to test the reader's orientation
    check). ``X`` may be a numpy array or an h5py/numpy-memmap-like object that
    supports row slicing; it is written in chunks. The file is written to a
    temporary name and renamed, so a crash never leaves a partial ``.gctx``.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.gctx`` file; an existing file is replaced.
    X : array-like, shape (n_signatures, n_genes)
        The values, stored as float32.
    sig_ids : sequence of str
        Signature ids, one per row of ``X`` (converted with ``str``; must be unique),
        written to ``/0/META/COL/id``.
    gene_ids : sequence of str
        Gene ids, one per column of ``X`` (converted with ``str``; must be unique),
        written to ``/0/META/ROW/id``.
    row_meta : pandas.DataFrame, optional
        Gene metadata, one dataset of ``/0/META/ROW`` per column, its rows in the order
        of ``gene_ids`` (written by position; the index is ignored). Text columns are
        stored as UTF-8 byte strings. Default None: ids only.
    col_meta : pandas.DataFrame, optional
        Signature metadata (``/0/META/COL``), its rows in the order of ``sig_ids``.
    transposed : bool, default False
        Store the matrix as (genes, signatures) instead of (signatures, genes).
    chunk_rows : int, default 256
        Signatures per HDF5 chunk; ``16 * chunk_rows`` signatures are written at a time.
    compression : str, optional
        h5py compression filter of the matrix (e.g. ``"gzip"``); default None: none.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If the shape of ``X`` does not match the numbers of ids, ids are duplicated, a
        metadata column is named ``id``, or ``path`` exists and is not a regular file.
    MoaspaceError
        If the output directory cannot be created or is not writable.
    """
    path = Path(path)
    sig_ids = [str(s) for s in sig_ids]
    gene_ids = [str(g) for g in gene_ids]
    if X.shape != (len(sig_ids), len(gene_ids)):
        raise InputError(
            f"{path}: matrix shape {X.shape} does not match "
            f"{len(sig_ids)} signature ids x {len(gene_ids)} gene ids"
        )
    for ids, what in ((sig_ids, "signature"), (gene_ids, "gene")):
        idx = pd.Index(ids)
        if idx.has_duplicates:
            raise InputError(
                f"{path}: duplicated {what} ids: {preview(idx[idx.duplicated()].unique())}"
            )
    for meta in (row_meta, col_meta):
        if meta is not None and "id" in map(str, meta.columns):
            raise InputError(f"{path}: a metadata column may not be named 'id' (the ids)")
    n_sig, n_gene = len(sig_ids), len(gene_ids)
    shape = (n_gene, n_sig) if transposed else (n_sig, n_gene)
    chunks = (min(n_gene, 978), min(n_sig, chunk_rows)) if transposed else (
        min(n_sig, chunk_rows), n_gene
    )
    if 0 in shape:
        chunks = None
    with atomic_path(path, suffix=".gctx.tmp") as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["version"] = "GCTX1.0"
            dset = handle.create_dataset(
                MATRIX_PATH, shape=shape, dtype=np.float32, chunks=chunks,
                compression=compression,
            )
            step = max(1, chunk_rows * 16)
            for start in range(0, n_sig, step):
                block = np.asarray(X[start : start + step], dtype=np.float32)
                if transposed:
                    dset[:, start : start + len(block)] = block.T
                else:
                    dset[start : start + len(block)] = block
            _write_meta(handle, ROW_META, gene_ids, row_meta)
            _write_meta(handle, COL_META, sig_ids, col_meta)
    return path


def _encode(values) -> np.ndarray:
    """Text as UTF-8 byte strings (what CMap writes for ASCII, and what the reader decodes)."""
    out = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]
    return np.asarray(out, dtype="S") if out else np.asarray([], dtype="S1")


def _write_meta(handle: h5py.File, group: str, ids: list[str], meta: pd.DataFrame | None):
    grp = handle.require_group(group)
    grp.create_dataset("id", data=_encode(ids))
    if meta is None:
        return
    for column in meta.columns:
        values = meta[column].to_numpy()
        if values.dtype.kind in ("O", "U", "S"):
            values = _encode(values)
        grp.create_dataset(str(column), data=values)
