"""Training data: the rows a run reads, the batch sampler and how both are built.

The sampler draws index batches from a row source (an in-memory tensor, or an ``.h5ad``
on disk read batch by batch: see :mod:`moaspace.model.data`; per-item ``Dataset``
indexing and collation cost more than the MLP itself), is seeded by ``(seed, epoch)`` so
a resumed run sees the same batches as an uninterrupted one, and shards batches across
ranks itself.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from moaspace._core.sets import has_label, parse_moa_sets
from moaspace._utils import preview
from moaspace.errors import InputError
from moaspace.model._config import SAMPLING, ModelConfig
from moaspace.model.data import InMemoryRows, RowSource, backed_rows

logger = logging.getLogger(__name__)

#: |value| above which a "z-score" is almost surely not one (raw counts, a unit error)
IMPLAUSIBLE_Z = 1000.0


def data_fingerprint(adata: ad.AnnData, split_key: str = "split") -> str:
    """SHA-1 of ``adata``'s shape, signature ids, gene ids and ``obs[split_key]`` labels.

    Identifies the training data cheaply (no pass over ``X``) so a resumed
    run refuses a different data set or split.
    """
    h = hashlib.sha1()
    h.update(repr(tuple(adata.shape)).encode())
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update(b"\0")
    h.update("\n".join(map(str, adata.var_names)).encode())
    if split_key in adata.obs.columns:
        h.update(b"\0")
        h.update("\n".join(adata.obs[split_key].astype(str)).encode())
    return h.hexdigest()


def warn_if_not_zscores(largest: float, what: str) -> None:
    """Log a warning when ``largest`` (the largest |value| seen) cannot be a z-score."""
    if largest > IMPLAUSIBLE_Z:
        logger.warning("%s holds values up to %.3g in magnitude: L1000 z-scores lie within a "
                       "few tens; such values are clipped at +-%s by the encoder and their "
                       "calls are unreliable (are these raw expression values?)", what,
                       largest, "10")


def dense_rows(x, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` (all when None) of a dense or sparse matrix as C-ordered float32."""
    x = x if rows is None else x[rows]
    if sp.issparse(x):
        x = x.toarray()
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


@dataclass
class TrainData:
    """Training data; indices select rows of ``x``.

    ``x`` is a :class:`~moaspace.model.data.RowSource` over all signatures
    (train and val) in the model's gene order, so nothing is copied per split:
    an in-memory tensor, or rows read from disk per batch (backed AnnData).
    ``moa``/``compound`` are class codes (-1 for signatures whose label is not
    a training class). ``train_idx``: training rows with one MoA (what prototypes,
    whitening and the atlas are fitted on); ``loss_idx``: every row the losses train on,
    which adds multi-MoA rows (``multi_row`` indexes their row of ``moa_sets``) and rows
    of unlabelled compounds (compound loss only).
    """

    x: RowSource
    moa: torch.Tensor
    compound: torch.Tensor
    train_idx: np.ndarray
    val_idx: np.ndarray
    val_ref_idx: np.ndarray
    loss_idx: np.ndarray | None = None
    multi_row: torch.Tensor | None = None
    moa_sets: torch.Tensor | None = None
    multi_prototypes: bool = False

    def __post_init__(self):
        if self.loss_idx is None:
            self.loss_idx = self.train_idx

    def prototype_multi(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(rows, sets)``: the multi-MoA training rows and their bool MoA sets, which the
        prototype-layer prototypes also average (``ModelConfig.multi_moa_classes``); None
        otherwise."""
        if not self.multi_prototypes or self.moa_sets is None:
            return None
        rows = np.flatnonzero(self.multi_row.numpy() >= 0)
        return rows, self.moa_sets[self.multi_row[rows]].numpy()

    def batch_moa_sets(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Bool ``(len(idx), n_moas)`` MoA sets of rows ``idx`` (all False for rows that
        are not multi-MoA); None when the data have no multi-MoA rows."""
        if self.moa_sets is None:
            return None
        pos = self.multi_row[idx]
        out = torch.zeros((len(idx), self.moa_sets.shape[1]), dtype=torch.bool)
        has = pos >= 0
        out[has] = self.moa_sets[pos[has]]
        return out


class IndexBatchSampler:
    """Yields lists of row indices: one epoch of batches for this rank.

    ``sampling``: ``none`` (a permutation), ``compound`` (each compound equally
    likely, with replacement; stops compounds with many signatures from
    dominating) or ``moa`` (each MoA equally likely). The order depends only on
    ``(seed, epoch)``; batches are dealt round-robin to ``world_size`` ranks,
    which all get the same number of batches.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, sampling: str = "none",
                 groups: np.ndarray | None = None, rank: int = 0, world_size: int = 1):
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sampling = sampling
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.p = None
        if sampling != "none":
            assert groups is not None
            _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
            w = 1.0 / counts[inverse]
            self.p = w / w.sum()
        n = len(self.indices)
        bs = self.batch_size
        n_batches = n // bs + (1 if n % bs >= max(2, bs // 2) or n < bs else 0)
        self.n_batches = max(1, n_batches // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.indices)
        if self.p is None:
            order = self.indices[rng.permutation(n)]
        else:
            order = self.indices[rng.choice(n, size=n, replace=True, p=self.p)]
        bs = self.batch_size
        batches = [order[i:i + bs] for i in range(0, n, bs)]
        if len(batches) > 1 and len(batches[-1]) < max(2, bs // 2):
            batches = batches[:-1]
        for b in batches[self.rank::self.world_size][: self.n_batches]:
            yield b.tolist()


class _IndexDataset(torch.utils.data.Dataset):
    """``dataset[list_of_indices]`` returns the whole batch at once."""

    def __init__(self, data: TrainData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data.x)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        sets = self.data.batch_moa_sets(idx)
        if sets is None:
            return self.data.x.rows(idx), self.data.moa[idx], self.data.compound[idx]
        return self.data.x.rows(idx), self.data.moa[idx], self.data.compound[idx], sets


def single_moa_rows(obs: pd.DataFrame, moa_key: str) -> np.ndarray:
    """Bool per row: the row has one MoA (``obs[moa_key]`` present and not empty)."""
    return has_label(obs[moa_key])


def multi_moa_classes(obs: pd.DataFrame, rows: np.ndarray, moa_set_key: str) -> set[str]:
    """The MoAs that the ``|``-separated ``obs[moa_set_key]`` of rows ``rows`` (bool) list
    (``ModelConfig.multi_moa_classes``: they become classes)."""
    if moa_set_key not in obs.columns or not np.any(rows):
        return set()
    return set().union(*parse_moa_sets(obs[moa_set_key][np.asarray(rows, dtype=bool)]))


def moa_set_codes(obs: pd.DataFrame, moa_set_key: str, moas: list[str]) -> list[list[int]]:
    """Per row, the codes in ``moas`` of the ``|``-separated ``obs[moa_set_key]`` (empty
    lists without the column, for missing sets and for MoAs that are not classes)."""
    if moa_set_key not in obs.columns:
        return [[] for _ in range(len(obs))]
    code = {m: i for i, m in enumerate(moas)}
    return [sorted(code[m] for m in moa_set if m in code)
            for moa_set in parse_moa_sets(obs[moa_set_key])]


def multi_moa_sets(obs: pd.DataFrame, multi: np.ndarray, keys: dict,
                   moas: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, sets)``: the positions of the rows ``multi`` (bool) and their bool
    ``(n, len(moas))`` MoA sets over ``moas``."""
    codes = moa_set_codes(obs, keys.get("moa_set", "moa_set"), moas)
    rows = np.flatnonzero(multi)
    sets = np.zeros((len(rows), len(moas)), dtype=bool)
    for i, r in enumerate(rows):
        sets[i, codes[r]] = True
    return rows, sets


def loss_rows(obs: pd.DataFrame, train: np.ndarray, keys: dict, moas: list[str],
              config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(multi, unlabelled)`` bool per row: training rows without one MoA that a loss uses.

    ``multi``: multi-MoA rows with at least one MoA among ``moas``
    (``config.use_multi_moa``: the MoA loss, and the compound loss when their compound
    has two or more training signatures). ``unlabelled``: the other training rows
    without one MoA whose compound has two or more training signatures
    (``config.use_unlabelled``: the compound loss only).
    """
    no_moa = train & ~single_moa_rows(obs, keys["moa"])
    sets = moa_set_codes(obs, keys.get("moa_set", "moa_set"), moas)
    has_known = np.array([len(c) > 0 for c in sets], dtype=bool)
    multi = no_moa & has_known & bool(config.use_multi_moa)
    cpd = obs[keys["compound"]].astype(str).to_numpy()
    counts = pd.Series(cpd[train]).value_counts()
    several = np.isin(cpd, counts.index[counts >= 2].to_numpy())
    unlabelled = no_moa & ~has_known & several & bool(config.use_unlabelled)
    return multi, unlabelled


def loss_compounds(obs: pd.DataFrame, train: np.ndarray, keys: dict, moas: list[str],
                   config: ModelConfig) -> list[str]:
    """The compound classes: every single-MoA training compound, and the compounds of
    multi-MoA and unlabelled rows (:func:`loss_rows`) with two or more training
    signatures."""
    cpd = obs[keys["compound"]].astype(str).to_numpy()
    single = train & single_moa_rows(obs, keys["moa"])
    multi, unlabelled = loss_rows(obs, train, keys, moas, config)
    counts = pd.Series(cpd[train]).value_counts()
    several = set(counts.index[counts >= 2])
    extra = {c for c in cpd[multi | unlabelled] if c in several}
    return sorted(set(cpd[single]) | extra)


def training_data(adata: ad.AnnData, split: np.ndarray, keys: dict, moas: list[str],
                  compounds: list[str], config: ModelConfig, seed: int) -> TrainData:
    """The :class:`TrainData` of a model's AnnData: class codes of ``moas``/``compounds``
    (-1 for other labels), single-MoA train rows, the rows the losses use
    (:func:`loss_rows`), scored val rows (``split``), every used row checked for
    NaN/inf, and the validation reference/queries subsampled to
    ``config.val_max_reference``/``config.val_max_queries`` (seeded by ``seed``)."""
    obs = adata.obs
    moa_code = {m: i for i, m in enumerate(moas)}
    cpd_code = {c: i for i, c in enumerate(compounds)}
    single = single_moa_rows(obs, keys["moa"])
    moa = obs[keys["moa"]].astype(str).map(moa_code).fillna(-1).astype(int).to_numpy()
    moa[~single] = -1
    cpd = obs[keys["compound"]].astype(str).map(cpd_code).fillna(-1).astype(int).to_numpy()
    train = split == "train"
    train_idx = np.flatnonzero(train & (moa >= 0))
    multi, unlabelled = loss_rows(obs, train, keys, moas, config)
    cpd[train & ~single & ~(multi | unlabelled)] = -1  # rows no loss uses
    loss_idx = np.union1d(train_idx, np.flatnonzero(multi | unlabelled))
    multi_row = moa_sets = None
    if multi.any():
        rows, sets = multi_moa_sets(obs, multi, keys, moas)
        multi_row = torch.full((len(obs),), -1, dtype=torch.long)
        multi_row[torch.from_numpy(rows)] = torch.arange(len(rows))
        moa_sets = torch.from_numpy(sets)
    if len(loss_idx) > len(train_idx):
        logger.info("training also on %d multi-MoA and %d unlabelled signatures (%d compound "
                    "classes)", int(multi.sum()), int(unlabelled.sum()), len(compounds))
    val_idx = np.flatnonzero((split == "val") & (moa >= 0))
    n_unknown = int(((split == "val") & (moa < 0)).sum())
    if n_unknown:
        logger.info("%d validation signatures have no MoA among the training classes; "
                    "not scored", n_unknown)
    used = np.union1d(loss_idx, val_idx)
    source = _row_source(adata, used)
    _check_rows(source, used, adata.obs_names)
    rng = np.random.default_rng(seed)
    ref_idx = train_idx
    if len(ref_idx) > config.val_max_reference:
        ref_idx = np.sort(rng.choice(ref_idx, config.val_max_reference, replace=False))
    if len(val_idx) > config.val_max_queries:
        val_idx = np.sort(rng.choice(val_idx, config.val_max_queries, replace=False))
    return TrainData(
        x=source, moa=torch.from_numpy(moa.astype(np.int64)),
        compound=torch.from_numpy(cpd.astype(np.int64)), train_idx=train_idx,
        val_idx=val_idx, val_ref_idx=ref_idx, loss_idx=loss_idx, multi_row=multi_row,
        moa_sets=moa_sets, multi_prototypes=bool(config.multi_moa_classes),
    )


def _row_source(adata: ad.AnnData, used: np.ndarray) -> RowSource:
    """All of ``adata``'s rows as a row source; only rows ``used`` need to be filled."""
    if adata.isbacked:
        # out of core (read_h5ad(..., backed="r")): rows are read from the file per batch
        return backed_rows(adata)
    x = adata.X
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32
            and x.flags.c_contiguous):
        # sparse or float64: one dense float32 copy (test rows stay zero)
        x = np.zeros((adata.n_obs, adata.n_vars), dtype=np.float32)
        for start in range(0, len(used), 50_000):
            rows = used[start:start + 50_000]
            x[rows] = dense_rows(adata.X, rows)
    # else: share adata.X (no copy: 12,328 genes x 100k signatures is ~5 GB)
    return InMemoryRows(x)


def _check_rows(source: RowSource, used: np.ndarray, obs_names) -> None:
    """InputError naming signatures with NaN/inf values; warn about implausible z-scores."""
    bad = np.zeros(len(used), dtype=bool)
    largest = 0.0
    # streamed, one chunk in memory at a time (the NaN flags do not depend on its size)
    step = source.chunk_rows or max(1, 64 * 2**20 // (4 * source.n_vars))
    for start in range(0, len(used), step):
        rows = used[start:start + step]
        block = source.rows(rows).numpy()
        # numpy's isfinite makes no float temporaries (torch's does: a backed run's RSS)
        bad[start:start + step] = ~np.isfinite(block).all(axis=1)
        finite = block[~bad[start:start + step]]
        largest = max(largest, float(np.abs(finite).max(initial=0.0)))
    warn_if_not_zscores(largest, "the training data")
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} signatures have NaN/inf values, e.g. "
            f"{preview(obs_names[used[bad]], 5)}; drop or impute them first"
        )
