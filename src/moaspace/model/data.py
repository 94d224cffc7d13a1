"""Row sources: where training and embedding read signature rows from.

Training, validation and the atlas only ever need *rows* of the signature
matrix, selected by index. A row source hides whether those rows live in
memory or on disk:

* :class:`InMemoryRows` wraps a float32 tensor (sharing the AnnData's own
  array when it is already a C-contiguous float32 ``ndarray``, so a 100k x
  12,328 matrix is not copied). Indexing is exactly what training did before
  row sources existed, so in-memory results are unchanged bit for bit.
* :class:`BackedRows` reads rows from an ``.h5ad`` opened with
  ``anndata.read_h5ad(path, backed="r")`` (dense or CSR/CSC ``X`` in HDF5),
  or from any array-like with ``shape`` and integer row slicing
  (``np.memmap``, zarr, an ``h5py.Dataset``). Only the requested rows are
  read (sorted, duplicates once, as contiguous slices or sorted selections,
  then put back in the requested order), so memory is bounded by the batch,
  never by the file: training works on data larger than RAM.

Both give ``rows(idx) -> torch.float32 tensor`` in the order of ``idx``.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["BackedRows", "InMemoryRows", "RowSource", "backed_rows"]

#: bytes per read when streaming over a backed matrix (NaN scan, embedding): 4,289 rows
#: of 978 landmarks, 340 of 12,328 genes. Embedding is row-wise, so on CPU the smaller
#: batches give the same embeddings bit for bit as in-memory 8,192-row batches
CHUNK_BYTES = 16 * 2**20
#: largest span read at once when the asked rows have small gaps (the gaps are dropped)
SCRATCH_BYTES = 4 * 2**20
#: rows per h5py fancy-index read (its selection cost grows faster than linearly)
FANCY_ROWS = 512


class RowSource:
    """Interface: ``len(source)``, ``source.n_vars``, ``source.rows(idx)``.

    ``chunk_rows`` is how many rows a streaming pass (NaN scan, embedding)
    should read at once; ``None`` means "no constraint" (in memory).
    """

    chunk_rows: int | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def n_vars(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.n_vars)

    def rows(self, idx) -> torch.Tensor:
        """Rows ``idx`` (any order, repeats allowed) as a float32 ``(len(idx), n_vars)`` tensor."""
        raise NotImplementedError


class InMemoryRows(RowSource):
    """Rows of an in-memory float32 tensor (or ndarray, shared without a copy)."""

    def __init__(self, x: torch.Tensor | np.ndarray):
        self.x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        if self.x.ndim != 2 or self.x.dtype != torch.float32:
            raise ValueError(f"expected a 2-d float32 matrix, got {self.x.dtype} {tuple(self.x.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_vars(self) -> int:
        return int(self.x.shape[1])

    def rows(self, idx) -> torch.Tensor:
        return self.x[torch.as_tensor(idx, dtype=torch.long)]


class BackedRows(RowSource):
    """Rows read on demand from a disk-backed matrix.

    Parameters
    ----------
    x
        ``h5py.Dataset`` (dense), anndata's backed sparse dataset, or any
        array-like with ``shape`` and ``x[start:stop]`` row slicing
        (``np.memmap``, zarr).
    obs, var
        Optional row / column positions into ``x`` (a view of a backed
        AnnData): row ``i`` of this source is ``x[obs[i], var]``.
    max_gap, max_slices
        Rows that are at most ``max_gap`` apart are read in one slice (the
        rows in between are read and dropped). When that still needs more
        than ``max_slices`` slices (a shuffled batch) and ``x`` supports it
        (HDF5, ndarray, anndata's sparse datasets), the rows are read with one
        sorted fancy-index selection instead, which h5py does 3-4x faster than
        many small slices.
    chunk_bytes
        Memory budget of one streaming read (sets :attr:`chunk_rows`).

    The source pickles (for ``ddp_spawn``) when ``x`` is an HDF5 dataset: it
    keeps the file name and reopens the file read-only in the new process.
    """

    def __init__(self, x, obs: np.ndarray | None = None, var: np.ndarray | None = None, *,
                 max_gap: int = 4, max_slices: int = 8, chunk_bytes: int = CHUNK_BYTES):
        self._x = x
        self._file = None
        self._h5 = _h5_location(x)
        self.obs = None if obs is None else np.asarray(obs, dtype=np.int64)
        self.var = None if var is None else np.asarray(var, dtype=np.int64)
        n_rows, n_cols = (int(s) for s in x.shape)
        self._n_obs = n_rows if self.obs is None else len(self.obs)
        self._n_vars = n_cols if self.var is None else len(self.var)
        if self.var is not None and np.array_equal(self.var, np.arange(n_cols)):
            self.var = None
        self.max_gap = int(max_gap)
        self.max_slices = int(max_slices)
        self.chunk_rows = max(1, int(chunk_bytes) // max(1, 4 * self._n_vars))

    def __len__(self) -> int:
        return self._n_obs

    @property
    def n_vars(self) -> int:
        return self._n_vars

    # --- pickling: HDF5 handles cannot cross processes ----------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        if self._h5 is not None:
            state["_x"] = None
            state["_file"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def x(self):
        if self._x is None:
            import h5py

            filename, name = self._h5
            self._file = h5py.File(filename, "r")
            node = self._file[name]
            if isinstance(node, h5py.Group):  # CSR / CSC written by anndata
                import anndata as ad

                node = ad.io.sparse_dataset(node)
            self._x = node
        return self._x

    # --- reading ---------------------------------------------------------------
    def rows(self, idx) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self._n_obs):
            raise IndexError(f"row index out of range for {self._n_obs} rows")
        file_rows = idx if self.obs is None else self.obs[idx]
        # sorted, unique rows for the file; `inverse` puts them back in the asked order
        uniq, inverse = np.unique(file_rows, return_inverse=True)
        block = self._read_sorted(uniq)
        if len(uniq) != len(idx) or not np.array_equal(uniq, file_rows):
            block = block[inverse.reshape(-1)]
        return torch.from_numpy(block)

    def _read_sorted(self, uniq: np.ndarray) -> np.ndarray:
        """Rows ``uniq`` (sorted, unique file rows) into one new float32 array.

        Writes straight into the output where it can (``h5py``'s
        ``read_direct``), so a read needs about its own size in memory.
        """
        out = np.empty((len(uniq), self._n_vars), dtype=np.float32)
        if not len(uniq):
            return out
        x = self.x
        direct = self.var is None and _is_h5_dataset(x)
        breaks = np.flatnonzero(np.diff(uniq) > self.max_gap + 1) + 1
        if len(breaks) >= self.max_slices and _fancy_rows(x):
            # scattered rows (a shuffled batch): selection reads beat many slices; h5py's
            # selection cost grows faster than linearly, hence pieces of FANCY_ROWS
            for a in range(0, len(uniq), FANCY_ROWS):
                sel = uniq[a:a + FANCY_ROWS]
                if direct:
                    x.read_direct(out, sel, np.s_[a:a + len(sel)])
                else:
                    out[a:a + len(sel)] = self._columns(x[sel])
            return out
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(uniq)]])
        for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
            lo, hi = int(uniq[s]), int(uniq[e - 1]) + 1
            if hi - lo == e - s:  # contiguous
                if direct:
                    x.read_direct(out, np.s_[lo:hi], np.s_[s:e])
                else:
                    out[s:e] = self._columns(x[lo:hi])
            else:  # small gaps: read spans of at most SCRATCH_BYTES, keep the asked rows
                span = max(1, SCRATCH_BYTES // max(1, 4 * int(x.shape[1])))
                while s < e:
                    b = s + int(np.searchsorted(uniq[s:e], uniq[s] + span))
                    lo, hi = int(uniq[s]), int(uniq[b - 1]) + 1
                    block = x[lo:hi]
                    rel = uniq[s:b] - lo
                    if (self.var is None and isinstance(block, np.ndarray)
                            and block.dtype == np.float32):
                        np.take(block, rel, axis=0, out=out[s:b])
                    else:
                        out[s:b] = self._columns(block[rel])
                    s = b
        return out

    def _columns(self, block) -> np.ndarray:
        if self.var is not None:
            block = block[:, self.var]
        if sp.issparse(block):
            block = block.toarray()
        return np.asarray(block)


def _is_h5_dataset(x) -> bool:
    import h5py

    return isinstance(x, h5py.Dataset)


def _fancy_rows(x) -> bool:
    """Whether ``x[sorted_int_array]`` reads just those rows in one call."""
    return _is_h5_dataset(x) or isinstance(x, np.ndarray) or hasattr(x, "group")


def _h5_location(x) -> tuple[str, str] | None:
    """(file name, dataset path) of an HDF5-backed matrix, else ``None``."""
    import h5py

    if isinstance(x, h5py.Dataset):
        return os.fspath(x.file.filename), x.name
    group = getattr(x, "group", None)  # anndata's backed sparse dataset
    if isinstance(group, h5py.Group):
        return os.fspath(group.file.filename), group.name
    return None


def backed_rows(adata, **kwargs) -> BackedRows:
    """:class:`BackedRows` over the ``X`` of an AnnData opened with ``backed="r"``.

    Views of a backed AnnData (``adata[:, genes]``) are read through their
    row and column positions, so a gene subset is not loaded into memory
    either (``adata[:, genes].X`` would load the whole subset).
    """
    import h5py

    if not adata.isbacked:
        raise ValueError("backed_rows needs an AnnData opened with backed='r'")
    if not adata.file.is_open:
        adata.file.open()
    x = adata.file["X"]
    if isinstance(x, h5py.Group):
        import anndata as ad

        x = ad.io.sparse_dataset(x)
    obs = var = None
    if adata.is_view:
        n_obs, n_vars = (int(s) for s in x.shape)
        obs = np.arange(n_obs)[adata._oidx]
        var = np.arange(n_vars)[adata._vidx]
    return BackedRows(x, obs, var, **kwargs)
