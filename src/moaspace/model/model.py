"""``MoaModel``: the user-facing model (scvi-tools style).

>>> model = MoaModel(adata, embedding_dim=128)          # adata has obs["split"]
>>> model.train(max_epochs=40, seed=0, model_dir="run")  # early stops on val kNN macro-F1
>>> model.save("run")
>>> model = MoaModel.load("run")
>>> z = model.embed(query)                               # genes reordered / checked

A model directory holds ``model.pt`` (the ``state_dict``, loadable with
``torch.load(weights_only=True)``), ``atlas.h5ad`` (embeddings of the training
signatures with their MoA / compound / cell labels, the kNN reference) and
``config.json`` (hyper-parameters, gene order, class lists, data fingerprint,
training history, checksums of the other files) and, for a model with
validation data, ``calibration.json`` (calibrated scores and the 'unknown'
threshold; :mod:`moaspace.model.calibration`). ``config.json`` is written last and lists the other files' SHA-1, so a save interrupted half-way
is detected at load instead of pairing new weights with an old atlas.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from moaspace._core.neighbors import PREDICTORS
from moaspace._utils import atomic_path, atomic_write_text, preview
from moaspace._version import __version__
from moaspace.errors import InputError, MoaspaceError
from moaspace.model.data import InMemoryRows, RowSource, backed_rows
from moaspace.model.module import (
    LOSSES,
    SAMPLING,
    MoaModule,
    MoaNet,
    TrainData,
    embed_row_source,
    layer_widths,
    macro_f1,
    save_torch,
)
from moaspace.model.prototypes import (
    ViewSums,
    fit_view_weights,
    stacked_prototypes,
    unit_rows,
    view_scores,
)
from moaspace.model.training import (
    RunOptions,
    config_meta,
    fit_candidate,
    single_signature_compounds,
)
from moaspace.model.whitening import MAX_WHITENING_GENES, fit_whitening

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, ATLAS_FILE = "model.pt", "config.json", "atlas.h5ad"
CALIBRATION_FILE = "calibration.json"
#: entry of config.json holding the SHA-1 of the rest of it
CONFIG_DIGEST = "config_sha1"  # optional (moaspace.model.calibration); older dirs lack it
CHECKPOINT = Path("checkpoints") / "last.ckpt"
#: networks ``input_whitening="auto"`` trains and chooses between: raw, then whitened input
INPUT_CANDIDATES = ("off", "on")


@dataclass
class ModelConfig:
    """Hyper-parameters of the network, loss and optimiser.

    Defaults were chosen by validation macro-F1 of a kNN on held-out
    compounds of simulated data (``moaspace.datasets._simulate``, 11k-22k
    signatures, 24-28 MoAs, two compound splits). The differences between
    settings were small (about 0.02 macro-F1): dropout 0.5 with input dropout
    0.3 was best or tied on every split, a lower learning rate (3e-4) was
    similar but slower, and compound-balanced sampling, per-class margins,
    sub-centres, a smaller embedding, weight decay 0.01, ``softmax`` and
    ``supcon`` did not beat the defaults. Under these defaults the best epoch
    comes within 3-20 epochs, so ``max_epochs=50`` with ``patience=10``
    converges.

    ``predictor`` is how ``predict`` calls a MoA by default and what early
    stopping scores on validation (``knn``, ``prototype`` or
    ``hidden_prototype``, see :data:`moaspace._core.neighbors.PREDICTORS`). The
    default, the nearest MoA prototype of the last hidden layer, beat the kNN
    vote in the embedding on test macro-F1 of the same trained models in all 6
    split x seed cases of the README benchmark (+0.004 to +0.040, with either
    kind of early stopping): the margin losses squeeze each MoA
    onto its centre in the normalised embedding, which throws away some of
    what the layer before still tells apart. Models saved before this field
    existed load with ``knn``, what they were early-stopped on.

    ``average_best``: the final weights are the mean of the weights of the
    ``average_best`` epochs with the best validation macro-F1 (1: the single
    best epoch). Validation on a few held-out compounds is noisy, so the best
    single epoch is partly luck; on unseen compounds of the default simulation
    (6 seeds, hidden-prototype predictor, 30 epochs kept and scored afterwards)
    the mean of the best 5 scored +0.005 test macro-F1 over the best epoch on
    average (higher in 4 of 6 seeds, by at most 0.0012 lower in the others;
    +0.002 on the unseen cell line, 3 seeds), the mean of the best 3 about the
    same. Costs ``average_best`` CPU copies of the weights during training.
    Models saved before this field existed load with 1.

    ``compound_weight`` weighs the compound ArcFace loss against the MoA loss.
    It is 1.0, the two losses counted alike, because that is what builds the
    hierarchy: at 0.1 (the default before) the compound loss barely changed the
    space (same-compound share of the 10 nearest test neighbours 0.376 vs 0.381
    for the MoA-only ablation), while at 1.0 a known compound's own centre is
    the nearest of 365 for 37% of its signatures in an unseen cell line (20% at
    0.1) and same-compound mAP among test signatures rises from 0.359 to 0.416.
    Macro-F1 is level between the two (6 seeds: -0.003 +/- 0.006 on unseen
    compounds, +0.001 +/- 0.010 on an unseen cell line; validation flat). The
    cost is on the MoA side of transfer: weak CRISPR knockdowns (simulator
    ``knockdown_scale`` 0.2, three worlds) find their expected MoA in the top 5
    for 87% of genes against 91% at 0.1, and the open-set Brier score is 0.104
    against 0.100; 0.1 is the better choice when only MoA calls matter.
    Models saved before this changed keep their own value in ``config.json``.
    """

    hidden_dims: tuple[int, ...] = (1024, 512)
    embedding_dim: int = 256
    dropout: float = 0.5
    batch_norm: bool = True
    input_dropout: float = 0.3
    input_noise: float = 0.0
    clip: float | None = 10.0
    loss: str = "dual_arcface"
    moa_margin: float = 0.25
    compound_margin: float = 0.1
    compound_weight: float = 1.0
    scale: float = 30.0
    sub_centers: int = 1
    easy_margin: bool = False
    margin_mode: str = "fixed"
    supcon_temperature: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    sampling: str = "none"
    knn_k: int = 10
    predictor: str = "hidden_prototype"
    average_best: int = 5
    input_whitening: str = "auto"
    whitening_shrinkage: float = 0.5
    linear_view_weight: float = 0.5
    refit_prototypes: bool = True
    val_max_reference: int = 30_000
    val_max_queries: int = 20_000
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.loss not in LOSSES:
            raise MoaspaceError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.sampling not in SAMPLING:
            raise MoaspaceError(f"sampling must be one of {list(SAMPLING)}, got {self.sampling!r}")
        if self.predictor not in PREDICTORS:
            raise MoaspaceError(f"predictor must be one of {list(PREDICTORS)}, "
                                f"got {self.predictor!r}")
        if int(self.average_best) < 1:
            raise MoaspaceError(f"average_best must be >= 1, got {self.average_best}")
        self.average_best = int(self.average_best)
        if self.input_whitening not in ("auto", "on", "off"):
            raise MoaspaceError(f"input_whitening must be 'auto', 'on' or 'off', "
                                f"got {self.input_whitening!r}")
        for name in ("whitening_shrinkage", "linear_view_weight"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise MoaspaceError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.margin_mode not in ("fixed", "count"):
            raise MoaspaceError(f"margin_mode must be 'fixed' or 'count', got {self.margin_mode!r}")
        for name in ("moa_margin", "compound_margin"):
            value = getattr(self, name)
            if not 0 <= value < math.pi / 2:
                raise MoaspaceError(f"{name} is in radians and must be in [0, pi/2), got {value}")
        if self.embedding_dim < 2 or any(h < 1 for h in self.hidden_dims):
            raise MoaspaceError("embedding_dim must be >= 2 and hidden_dims positive")

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise MoaspaceError(
                f"unknown model hyper-parameters {unknown}; known: {sorted(names - {'extra'})}"
            )
        return cls(**kwargs)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hidden_dims"] = list(self.hidden_dims)
        return out


def config_digest(config: dict) -> str:
    """SHA-1 of ``config.json``'s content without its own digest (canonical JSON): a
    reordered gene list or an edited class list no longer matches the weights."""
    body = {k: v for k, v in config.items() if k != CONFIG_DIGEST}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_config(config: dict, path: Path) -> None:
    """Types and uniqueness of the entries a model is rebuilt from; a clear error per entry."""
    def fail(what: str):
        raise MoaspaceError(f"{path}: {what}; the file was edited or damaged (save the model "
                            "again)")

    for name in ("model", "keys", "files"):
        if name in config and not isinstance(config[name], dict):
            fail(f"'{name}' must be an object, found {type(config[name]).__name__}")
    for name in ("genes", "moas", "compounds", "gene_symbols"):
        value = config.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"'{name}' must be a list of strings")
    for name in ("genes", "moas", "compounds"):
        values = pd.Index(config[name])
        if values.has_duplicates:
            fail(f"'{name}' lists {preview(values[values.duplicated()].unique())} more than once")
    for name in ("keys", "files"):
        bad = [k for k, v in config.get(name, {}).items() if not isinstance(v, str)]
        if bad:
            fail(f"'{name}' entries {preview(bad)} are not strings")
    digest = config.get(CONFIG_DIGEST)
    if digest is not None and digest != config_digest(config):
        fail("its content does not match its checksum (config_sha1)")


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(adata: ad.AnnData, split_key: str = "split") -> str:
    """SHA-1 of shape, signature ids, gene ids and split labels.

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


#: |value| above which a "z-score" is almost surely not one (raw counts, a unit error)
IMPLAUSIBLE_Z = 1000.0


def _warn_if_not_zscores(largest: float, what: str) -> None:
    if largest > IMPLAUSIBLE_Z:
        logger.warning("%s holds values up to %.3g in magnitude: L1000 z-scores lie within a "
                       "few tens; such values are clipped at +-%s by the encoder and their "
                       "calls are unreliable (are these raw expression values?)", what,
                       largest, "10")


def _dense_rows(x, rows: np.ndarray | None = None) -> np.ndarray:
    x = x if rows is None else x[rows]
    if sp.issparse(x):
        x = x.toarray()
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's banner lines and the 'few workers' hint for in-memory data."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
             "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.distributed")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
        try:
            yield
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)


class MoaModel:
    """Hierarchical MoA embedding of L1000 signatures.

    Parameters
    ----------
    adata
        Signatures x genes (z-scores) with obs columns ``moa_key``,
        ``compound_key`` and ``split_key`` (``train``/``val``/...; see
        :func:`moaspace.pp._split.split`). Without a split column a
        validation set is carved by compound (10%, seed 0) with a warning
        and everything else is training data. May be opened with
        ``anndata.read_h5ad(path, backed="r")`` (also a gene subset view of
        it): ``X`` then stays on disk and training, validation and the atlas
        read rows batch by batch (:mod:`moaspace.model.data`), for data larger
        than memory.
    moa_key, compound_key, cell_key, split_key
        obs column names.
    **hyperparams
        Fields of :class:`ModelConfig` (e.g. ``embedding_dim=128``,
        ``loss="softmax"``, ``input_dropout=0.3``).
    """

    def __init__(self, adata: ad.AnnData | None, *, moa_key: str = "moa",
                 compound_key: str = "pert_id", cell_key: str = "cell_iname",
                 split_key: str = "split", **hyperparams):
        self.config = ModelConfig.from_kwargs(hyperparams)
        self.keys = {"moa": moa_key, "compound": compound_key, "cell": cell_key,
                     "split": split_key}
        self.adata = adata
        self.net: MoaNet | None = None
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.best_val_f1: float | None = None
        self.train_info: dict = {}
        self._reference: ad.AnnData | None = None
        self.max_missing_fraction = 0.1
        self.calibration = None  # moaspace.model.calibration.Calibration, fitted on the val split
        if adata is None:  # used by load()
            return
        self._check_adata(adata)
        self.genes = [str(g) for g in adata.var_names]
        self.gene_symbols = (
            adata.var["gene_symbol"].astype(str).tolist() if "gene_symbol" in adata.var else []
        )
        self._split = self._split_labels(adata)
        obs = adata.obs
        train = self._split == "train"
        self.moas = sorted(obs.loc[train, moa_key].astype(str).unique().tolist())
        self.compounds = sorted(obs.loc[train, compound_key].astype(str).unique().tolist())
        if len(self.moas) < 2:
            raise InputError(
                f"the training split has {len(self.moas)} MoA(s); a classifier needs at least two"
            )
        from moaspace._core.labels import NO_CALL, UNKNOWN

        reserved = [m for m in self.moas if m.strip().lower() in (UNKNOWN, NO_CALL, "")]
        if reserved:
            # predict() writes these labels where it abstains; a class of that name (or an
            # empty one) would be indistinguishable from an abstention
            raise InputError(
                f"obs[{moa_key!r}] has MoA labels {reserved} that name no mechanism (or clash "
                f"with predict's {UNKNOWN!r} / {NO_CALL!r} calls): drop or relabel those rows")
        self.fingerprint = data_fingerprint(adata, split_key)

    # ------------------------------------------------------------------ input
    def _check_adata(self, adata: ad.AnnData) -> None:
        missing = [k for k in (self.keys["moa"], self.keys["compound"]) if k not in adata.obs]
        if missing:
            raise InputError(
                f"obs columns {missing} are missing (obs has {preview(adata.obs.columns)})"
            )
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise InputError(f"empty AnnData ({adata.n_obs} x {adata.n_vars})")
        if adata.var_names.has_duplicates:
            dup = adata.var_names[adata.var_names.duplicated()]
            raise InputError(f"duplicated gene ids in var_names: {preview(dup)}")

    def _split_labels(self, adata: ad.AnnData) -> np.ndarray:
        key = self.keys["split"]
        if key in adata.obs.columns:
            labels = adata.obs[key].astype(str).to_numpy()
            if not (labels == "train").any():
                raise InputError(f"obs[{key!r}] has no 'train' signatures")
            if not (labels == "val").any():
                logger.warning(
                    "obs[%r] has no 'val' signatures: no early stopping, the last epoch is kept",
                    key,
                )
            return labels
        from moaspace._core.labels import majority_moa, stratified_pick

        logger.warning(
            "obs[%r] is missing: carving 10%% of the compounds (seed 0) as validation and "
            "training on everything else; run moaspace.pp._split.split for a test set", key,
        )
        obs = pd.DataFrame({"pert_id": adata.obs[self.keys["compound"]].astype(str).values,
                            "moa": adata.obs[self.keys["moa"]].astype(str).values})
        val = stratified_pick(majority_moa(obs), 0.1, np.random.default_rng(0), 1, 3)
        return np.where(obs["pert_id"].isin(val), "val", "train").astype(object)

    def _training_data(self, seed: int) -> TrainData:
        adata = self.adata
        moa_code = {m: i for i, m in enumerate(self.moas)}
        cpd_code = {c: i for i, c in enumerate(self.compounds)}
        moa = adata.obs[self.keys["moa"]].astype(str).map(moa_code).fillna(-1).astype(int)
        cpd = adata.obs[self.keys["compound"]].astype(str).map(cpd_code).fillna(-1).astype(int)
        moa, cpd = moa.to_numpy(), cpd.to_numpy()
        train_idx = np.flatnonzero(self._split == "train")
        val_idx = np.flatnonzero((self._split == "val") & (moa >= 0))
        n_unknown = int(((self._split == "val") & (moa < 0)).sum())
        if n_unknown:
            logger.info("%d validation signatures have a MoA absent from training; not scored",
                        n_unknown)
        used = np.union1d(train_idx, val_idx)
        source: RowSource
        if adata.isbacked:
            # out of core (read_h5ad(..., backed="r")): rows are read from the file per batch
            source = backed_rows(adata)
        else:
            x = adata.X
            if not (isinstance(x, np.ndarray) and x.dtype == np.float32
                    and x.flags.c_contiguous):
                # sparse or float64: one dense float32 copy (test rows stay zero)
                x = np.zeros((adata.n_obs, adata.n_vars), dtype=np.float32)
                for start in range(0, len(used), 50_000):
                    rows = used[start:start + 50_000]
                    x[rows] = _dense_rows(adata.X, rows)
            # else: share adata.X (no copy: 12,328 genes x 100k signatures is ~5 GB)
            source = InMemoryRows(x)
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
        _warn_if_not_zscores(largest, "the training data")
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} signatures have NaN/inf values, e.g. "
                f"{preview(adata.obs_names[used[bad]], 5)}; drop or impute them first"
            )
        rng = np.random.default_rng(seed)
        c = self.config
        ref_idx = train_idx
        if len(ref_idx) > c.val_max_reference:
            ref_idx = np.sort(rng.choice(ref_idx, c.val_max_reference, replace=False))
        if len(val_idx) > c.val_max_queries:
            val_idx = np.sort(rng.choice(val_idx, c.val_max_queries, replace=False))
        return TrainData(
            x=source, moa=torch.from_numpy(moa.astype(np.int64)),
            compound=torch.from_numpy(cpd.astype(np.int64)), train_idx=train_idx,
            val_idx=val_idx, val_ref_idx=ref_idx,
        )

    def _build_net(self, moa_counts=None, input_whitening: str | None = None) -> MoaNet:
        config = self.config.to_dict()
        if input_whitening is not None:  # a candidate of input_whitening="auto"
            config["input_whitening"] = input_whitening
        return MoaNet(len(self.genes), len(self.moas), len(self.compounds), config,
                      moa_counts=moa_counts)

    # ------------------------------------------------------------------ train
    def train(
        self,
        max_epochs: int = 50,
        batch_size: int = 256,
        *,
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        seed: int = 0,
        resume: bool = False,
        model_dir: str | os.PathLike | None = None,
        patience: int = 10,
        progress_bar: bool = True,
        callbacks: list | None = None,
        precision: str | None = None,
    ) -> dict:
        """Train with early stopping on validation macro-F1 (of ``config.predictor``); keep
        the mean weights of the ``config.average_best`` best epochs.

        Parameters
        ----------
        max_epochs, batch_size
            Upper bound on epochs; batch size per process.
        accelerator, devices, strategy
            Passed to :class:`lightning.Trainer` (e.g. ``strategy="ddp"``,
            ``devices=2``). Mixed precision (``16-mixed``) is used on CUDA only.
        seed
            Seeds weights, batches, dropout and the validation subsample; on
            CPU the run is repeatable (deterministic algorithms are on).
        resume
            Continue from ``model_dir/checkpoints/last.ckpt`` (written every
            epoch) after an interruption; the data and hyper-parameters must
            be the same. Without a checkpoint training starts afresh.
        model_dir
            Where checkpoints go; ``None`` disables checkpointing.
        patience
            Epochs without a validation improvement before stopping.
        callbacks
            Extra Lightning callbacks.
        precision
            Lightning precision; default ``16-mixed`` on CUDA, ``32-true`` otherwise.

        Returns
        -------
        Summary dict: ``best_epoch``, ``best_val_f1`` (of the best single epoch),
        ``epochs``, ``history``, ``averaged_epochs`` (the epochs whose weights were
        averaged; empty when one epoch was kept) and ``final_val_f1`` (validation
        macro-F1 of the weights kept).
        """
        if self.adata is None:
            raise MoaspaceError("this model was loaded without data; it can embed but not train")
        if max_epochs < 1 or batch_size < 2:
            raise MoaspaceError("max_epochs must be >= 1 and batch_size >= 2")
        if resume and model_dir is None:
            raise MoaspaceError("resume=True needs model_dir (where the checkpoints are)")
        use_cuda = accelerator in ("gpu", "cuda") or (
            accelerator == "auto" and torch.cuda.is_available()
        )
        if precision is None:
            precision = "16-mixed" if use_cuda else "32-true"
        deterministic_before = torch.are_deterministic_algorithms_enabled()
        try:
            with _quiet_lightning():
                data, whitening = self._prepare_training(seed)
                opts = RunOptions(
                    max_epochs=max_epochs, batch_size=batch_size, accelerator=accelerator,
                    devices=devices, strategy=strategy, seed=seed, patience=patience,
                    progress_bar=progress_bar, callbacks=list(callbacks or []),
                    precision=precision, deterministic=not use_cuda,
                    model_dir=Path(model_dir) if model_dir is not None else None,
                    resume=resume, meta=config_meta(self.fingerprint, self.config.to_dict()))
                module, world_size = self._train_candidates(data, whitening, opts)
        finally:
            torch.use_deterministic_algorithms(deterministic_before)
        self._finish_training(module, data, world_size, opts)
        return {"best_epoch": self.best_epoch, "best_val_f1": self.best_val_f1,
                "epochs": len(self.history), "history": self.history,
                "averaged_epochs": self.train_info["averaged_epochs"],
                "final_val_f1": self.train_info["final_val_f1"]}

    def _prepare_training(self, seed: int):
        """Training data; the compound loss off for one signature per compound; the input
        whitening map (None when not used)."""
        data = self._training_data(seed)
        c = self.config
        self._notes = {}
        if c.loss == "dual_arcface" and single_signature_compounds(
                data.compound[data.train_idx].numpy()):
            # the compound loss would only tell each training signature from all others
            logger.info("every training compound has one signature: the compound loss has "
                        "nothing to learn and is switched off (loss 'arcface_moa')")
            c.loss = "arcface_moa"
            self._notes["compound_loss"] = "off: one signature per training compound"
        whitening = None
        wanted = c.input_whitening != "off" or c.linear_view_weight > 0
        if wanted and len(self.genes) > MAX_WHITENING_GENES:
            logger.info("%d genes: no input whitening (a %d x %d matrix); the model uses the "
                        "raw input and the hidden-layer prototypes", len(self.genes),
                        len(self.genes), len(self.genes))
            c.input_whitening, c.linear_view_weight = "off", 0.0
            self._notes["input_whitening"] = f"off: more than {MAX_WHITENING_GENES} genes"
        elif wanted:
            moa = data.moa[data.train_idx].numpy()
            whitening = fit_whitening(data.x, data.train_idx, moa,
                                      shrinkage=c.whitening_shrinkage, seed=seed)
        return data, whitening

    def _train_candidates(self, data: TrainData, whitening, opts: RunOptions):
        """Train one network per input candidate; keep the one whose prototype predictor
        scores the best validation macro-F1 (the first on a tie)."""
        c = self.config
        names = list(INPUT_CANDIDATES) if c.input_whitening == "auto" else [c.input_whitening]
        moa_counts = np.bincount(data.moa[data.train_idx].numpy(), minlength=len(self.moas))
        best = None
        scores = {}
        import lightning as L

        for name in names:
            # every candidate starts from the same seed: the raw-input network is the one a
            # single-candidate run trains, initial weights and batches alike
            L.seed_everything(opts.seed, workers=True, verbose=False)
            net = self._build_net(moa_counts, input_whitening=name)
            if whitening is not None:
                net.encoder.whiten.set(whitening)
            module, world_size = fit_candidate(net, data, opts, config=c, candidate=name,
                                               n_candidates=len(names))
            module.net.cpu().eval()
            self.net = module.net
            self._fit_prototypes(data, rows=data.train_idx)
            scores[name] = self._prototype_val_f1(data)
            logger.info("candidate input %r: validation macro-F1 of the prototype predictor "
                        "%.4f", name, scores[name])
            if best is None or scores[name] > best[0] + 1e-12:
                best = (scores[name], name, module, world_size)
        _, chosen, module, world_size = best
        self._notes["input_candidates"] = scores
        if len(names) > 1:
            logger.info("kept the network with %s input (validation macro-F1 %s)",
                        "whitened" if chosen == "on" else "raw",
                        ", ".join(f"{n}: {v:.4f}" for n, v in scores.items()))
        self._notes["input_whitening"] = chosen
        c.input_whitening = chosen
        return module, world_size

    def _finish_training(self, module: MoaModule, data: TrainData, world_size: int,
                         opts: RunOptions) -> None:
        """Record the kept run, build the atlas, calibrate on val, refit the prototypes."""
        # validation macro-F1 of the weights kept: an average of epochs is new and scored once
        # more; the best epoch's own weights were scored during training
        if module.averaged_epochs:
            final_val_f1 = module.validation_f1()
        else:
            final_val_f1 = module.best_f1 if module.best_f1 >= 0 else float("nan")
        self.net = module.net.cpu().eval()
        module.data = None
        self.history = list(module.history)
        self.best_epoch = int(module.best_epoch)
        self.best_val_f1 = float(module.best_f1) if module.best_f1 >= 0 else None
        self.train_info = {
            "max_epochs": int(opts.max_epochs), "batch_size": int(opts.batch_size),
            "seed": int(opts.seed), "patience": int(opts.patience),
            "precision": opts.precision, "epochs_run": len(self.history),
            "stopped_early": bool(module.stopped_early),
            "n_train": len(data.train_idx), "n_val": len(data.val_idx),
            "world_size": int(world_size),
            "averaged_epochs": list(module.averaged_epochs),
            "final_val_f1": None if math.isnan(final_val_f1) else float(final_val_f1),
            "loss": self.config.loss, **self._notes,
        }
        # the kept network's prototypes (train rows), the atlas and the calibration
        centres = self._fit_prototypes(data, rows=data.train_idx)
        emb = self._embed_source(data.x, data.train_idx)[0]
        self._reference = self._build_reference(data.train_idx, data, emb)
        self._reference.uns["moaspace"].update(hidden_prototypes=centres,
                                               hidden_prototype_moas=list(self.moas))
        if len(data.val_idx):  # calibrated scores and the 'unknown' threshold, on val compounds
            z_val, p_val = self._embed_source(data.x, data.val_idx,
                                              layers=("embedding", "prototype"))
            val = self._build_reference(data.val_idx, data, z_val)
            self._fit_calibration(np.asarray(val.X), val.obs["moa"].astype(str).to_numpy(),
                                  self._tas(self.adata.obs.iloc[data.val_idx]),
                                  groups=val.obs["pert_id"].astype(str).to_numpy(),
                                  hidden=p_val)
            if self.config.refit_prototypes:
                # the MoA centres from every labelled signature the network may see, as the
                # classical baselines are fitted on train + val (the network is not retrained)
                rows = np.union1d(data.train_idx, data.val_idx)
                self._reference.uns["moaspace"]["hidden_prototypes"] = self._fit_prototypes(
                    data, rows=rows, weights_from=data.train_idx)
                self.train_info["prototype_rows"] = "train+val"
        else:
            self.calibration = None
            logger.warning("no validation signatures: the model is not calibrated (no 'unknown' "
                           "calls; call model.calibrate(adata) with a 'val' split to add it)")
        logger.info(
            "trained %d epochs; best val macro-F1 %s at epoch %d%s",
            len(self.history),
            "n/a" if self.best_val_f1 is None else f"{self.best_val_f1:.4f}", self.best_epoch,
            f"; kept the mean of epochs {module.averaged_epochs} (val macro-F1 "
            f"{final_val_f1:.4f})" if module.averaged_epochs else "",
        )

    # -------------------------------------------------------------- inference
    def predict(self, adata: ad.AnnData, **kwargs) -> ad.AnnData:
        """MoA calls for ``adata``: :func:`moaspace.tl.predict` with this model (the keyword
        arguments are its options); returns a new AnnData unless ``copy=False``."""
        from moaspace.model._predict import predict

        return predict(self, adata, **kwargs)

    def _require_net(self) -> MoaNet:
        if self.net is None:
            raise MoaspaceError("the model is not trained: call .train() or MoaModel.load()")
        return self.net

    def align_genes(self, adata: ad.AnnData, max_missing_fraction: float | None = None):
        """Query matrix in the model's gene order (rows = signatures).

        Genes are matched by ``var_names`` (Entrez ids). Missing genes are
        filled with 0 (the z-score of an unperturbed gene) with a warning when
        they are at most ``max_missing_fraction`` of the model's genes;
        otherwise :class:`InputError` names them.
        """
        pos = self._gene_positions(adata, max_missing_fraction)
        source = backed_rows(adata) if adata.isbacked else None
        x = np.zeros((adata.n_obs, len(self.genes)), dtype=np.float32)
        step = (source.chunk_rows if source is not None else None) or 50_000
        for start in range(0, adata.n_obs, step):
            x[start:start + step] = self._aligned_rows(adata, pos, start, start + step, source)
        if not np.isfinite(x).all():
            raise InputError("the query has NaN/inf values; drop or impute them first")
        return x

    def _gene_positions(self, adata: ad.AnnData, max_missing_fraction: float | None) -> np.ndarray:
        """Column of each model gene in ``adata`` (-1: missing); checks and logs as documented."""
        limit = self.max_missing_fraction if max_missing_fraction is None else max_missing_fraction
        # ' 16' is gene 16: ids padded with whitespace (a spreadsheet export) still match
        query = pd.Index(adata.var_names.astype(str).str.strip())
        if query.has_duplicates:
            raise InputError(f"duplicated gene ids in var_names: {preview(query[query.duplicated()])}")
        genes = pd.Index(self.genes)
        pos = query.get_indexer(genes)
        missing = genes[pos < 0]
        if len(missing):
            frac = len(missing) / len(genes)
            if frac > limit:
                hint = ""
                if self.gene_symbols and query.isin(self.gene_symbols).mean() > 0.5:
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

    def _aligned_rows(self, adata: ad.AnnData, pos: np.ndarray, start: int, stop: int,
                      source: RowSource | None = None) -> np.ndarray:
        """Rows ``start:stop`` of ``adata`` in the model's gene order (missing genes 0)."""
        stop = min(stop, adata.n_obs)
        if source is not None:  # backed: read just these rows
            block = source.rows(np.arange(start, stop)).numpy()
        else:
            block = _dense_rows(adata.X[start:stop])
        x = np.zeros((stop - start, len(self.genes)), dtype=np.float32)
        have = pos >= 0
        x[:, have] = block[:, pos[have]]
        return x

    @torch.no_grad()
    def embed(self, adata: ad.AnnData, batch_size: int = 8192,
              max_missing_fraction: float | None = None, layer: str = "embedding") -> np.ndarray:
        """Unit-norm embeddings ``(n_obs, embedding_dim)`` of ``adata``'s signatures.

        Streams ``batch_size`` rows at a time, so a backed AnnData
        (``read_h5ad(path, backed="r")``) is embedded without loading ``X``.
        ``layer="hidden"``: the last hidden layer's activations instead
        (``(n_obs, hidden_dim)``, not normalised), which the open-set score
        ``hidden_prototype`` reads.
        """
        return self.embed_layers(adata, (layer,), batch_size, max_missing_fraction)[0]

    def embed_layers(self, adata: ad.AnnData, layers: tuple[str, ...] = ("embedding", "hidden"),
                     batch_size: int = 8192,
                     max_missing_fraction: float | None = None) -> tuple[np.ndarray, ...]:
        """One array per entry of ``layers`` (``embedding``, ``hidden``; see :meth:`embed`),
        all from one pass over ``adata``."""
        layers = tuple(layers)
        widths = layer_widths(self._require_net(), layers)
        pos = self._gene_positions(adata, max_missing_fraction)
        source = backed_rows(adata) if adata.isbacked else None
        if source is not None:
            batch_size = min(batch_size, source.chunk_rows)
        out = tuple(np.zeros((adata.n_obs, w), dtype=np.float32) for w in widths)
        largest = 0.0
        for start in range(0, adata.n_obs, batch_size):
            x = self._aligned_rows(adata, pos, start, start + batch_size, source)
            if not np.isfinite(x).all():
                raise InputError("the query has NaN/inf values; drop or impute them first")
            largest = max(largest, float(np.abs(x).max(initial=0.0)))
            got = self._embed_source(InMemoryRows(x), np.arange(len(x)), layers=layers)
            for o, g in zip(out, got, strict=True):
                o[start:start + batch_size] = g
        _warn_if_not_zscores(largest, "the query")
        return out

    def _embed_source(self, source: RowSource, idx: np.ndarray, batch_size: int = 8192,
                      layers: tuple[str, ...] = ("embedding",)) -> tuple[np.ndarray, ...]:
        """``layers`` of rows ``idx`` of a row source, read ``batch_size`` rows at a time."""
        net = self._require_net()
        return tuple(t.numpy() for t in embed_row_source(
            net, source, idx, batch_size=batch_size, layers=layers, out_device="cpu"))

    def _views(self, source: RowSource, idx: np.ndarray, block: int = 8192):
        """Yield ``(positions, hidden, whitened)`` for blocks of rows ``idx`` (eval mode)."""
        enc = self._require_net().encoder
        block = min(block, source.chunk_rows or block)  # a backed source reads in chunks
        for start in range(0, len(idx), block):
            rows = idx[start:start + block]
            with torch.no_grad():
                x = source.rows(rows).float()
                hidden = enc.hidden(x).numpy()
                whitened = enc.whiten(enc._clip(x)).numpy() if enc.whiten is not None else None
            yield slice(start, start + len(rows)), hidden, whitened

    def _fit_prototypes(self, data: TrainData, rows: np.ndarray,
                        weights_from: np.ndarray | None = None) -> np.ndarray:
        """MoA prototypes of the prototype layer over ``rows``, block by block.

        With a linear view (:mod:`moaspace.model.prototypes`) its weights are fitted on
        a sample of ``rows`` (or of ``weights_from`` when given, leaving the fitted
        weights alone) and set on the encoder. Returns the prototypes in ``self.moas``
        order and keeps them for :meth:`_prototype_val_f1`.
        """
        enc = self._require_net().encoder
        self.net.eval()
        codes = data.moa.numpy()
        if enc.whiten is None:
            sums = np.zeros((len(self.moas), enc.hidden_dim))
            for pos, hidden, _ in self._views(data.x, rows):
                np.add.at(sums, codes[rows[pos]], unit_rows(hidden))
            self._train_prototypes = unit_rows(sums).astype(np.float32)
            return self._train_prototypes
        sums = ViewSums(len(self.moas), enc.hidden_dim, enc.n_genes)
        for pos, hidden, whitened in self._views(data.x, rows):
            sums.add(hidden, whitened, codes[rows[pos]])
        centres = sums.centres()
        if weights_from is None:
            sample = rows
            if len(sample) > 20_000:  # the spreads need no more
                sample = np.sort(np.random.default_rng(0).choice(rows, 20_000, replace=False))
            parts = [(h, w) for _, h, w in self._views(data.x, sample)]
            s_hidden, s_whitened = view_scores(np.vstack([h for h, _ in parts]),
                                               np.vstack([w for _, w in parts]), centres)
            weights = fit_view_weights(s_hidden, s_whitened, self.config.linear_view_weight)
            enc.view_weights.copy_(torch.tensor(weights, dtype=enc.view_weights.dtype))
        weights = tuple(float(v) for v in enc.view_weights)
        self._train_prototypes = stacked_prototypes(centres, weights)
        return self._train_prototypes

    def _prototype_val_f1(self, data: TrainData) -> float:
        """Validation macro-F1 of the nearest prototype of :meth:`_fit_prototypes`."""
        if len(data.val_idx) == 0:
            return float("nan")
        feats = self._embed_source(data.x, data.val_idx, layers=("prototype",))[0]
        pred = (feats @ self._train_prototypes.T).argmax(axis=1)
        return macro_f1(data.moa[data.val_idx].numpy(), pred)

    @property
    def hidden_prototypes(self) -> np.ndarray | None:
        """MoA prototypes of the last hidden layer, one row per atlas MoA in sorted order
        (the order of ``predict``'s classes); stored with the atlas with their MoA names.
        None for a model saved before they existed."""
        if self._reference is None:
            return None
        meta = self._reference.uns.get("moaspace", {})
        centres = meta.get("hidden_prototypes")
        if centres is None:
            return None
        classes = sorted(set(self._reference.obs["moa"].astype(str)))
        names = [str(m) for m in meta.get("hidden_prototype_moas", [])]
        if names != classes:
            raise MoaspaceError(
                f"the atlas's hidden prototypes are for MoAs {preview(names)}, its signatures "
                f"for {preview(classes)}: the atlas was changed after training")
        return np.asarray(centres, dtype=np.float32)

    def _build_reference(self, idx: np.ndarray, data: TrainData,
                         emb: np.ndarray | None = None) -> ad.AnnData:
        if emb is None:
            emb = self._embed_source(data.x, idx)[0]
        obs = self.adata.obs.iloc[idx]
        cols = {}
        for name, key in (("moa", self.keys["moa"]), ("pert_id", self.keys["compound"]),
                          ("cell_iname", self.keys["cell"]), ("cmap_name", "cmap_name")):
            if key in obs.columns:
                cols[name] = pd.Categorical(obs[key].astype(str).to_numpy())
        ref = ad.AnnData(
            X=emb, obs=pd.DataFrame(cols, index=obs.index.astype(str)),
            var=pd.DataFrame(index=[f"z{i}" for i in range(emb.shape[1])]),
        )
        ref.uns["moaspace"] = {"reference": {"splits": ["train"]}}
        return ref

    @property
    def reference(self) -> ad.AnnData:
        """Embeddings of the training signatures (X) with obs ``moa``, ``pert_id``, ``cell_iname``.

        This is the atlas a kNN predictor searches; it holds the training
        split only, so scores on validation/test are not leaky.
        """
        if self._reference is None:
            raise MoaspaceError("no reference yet: train or load the model first")
        return self._reference

    # ------------------------------------------------------------ calibration
    def _tas(self, obs: pd.DataFrame, tas_key: str = "tas") -> np.ndarray | None:
        if tas_key not in obs.columns:
            return None
        return pd.to_numeric(obs[tas_key], errors="coerce").to_numpy(np.float64)

    def _fit_calibration(self, z: np.ndarray, labels: np.ndarray, tas: np.ndarray | None,
                         hidden: np.ndarray | None = None, **kwargs):
        """``hidden``: the rows' last-hidden-layer activations, or None (no hidden score)."""
        from moaspace.model.calibration import fit_calibration

        ref = self.reference
        self.calibration = fit_calibration(
            z, labels, np.asarray(ref.X, dtype=np.float32), ref.obs["moa"].astype(str).to_numpy(),
            classes=sorted(set(ref.obs["moa"].astype(str))), k=self.config.knn_k, tas=tas,
            hidden=hidden, hidden_centres=None if hidden is None else self.hidden_prototypes,
            **kwargs)
        return self.calibration

    def calibrate(self, adata: ad.AnnData, *, split: str | None = "val",
                  target_false_unknown: float = 0.05, method: str = "auto",
                  score: str = "auto", min_tas: float | None = None, tas_key: str = "tas"):
        """(Re)fit the calibration on held-out signatures of known MoAs; returns it.

        Uses the rows of ``adata`` with ``obs[split_key] == split`` (all rows
        when ``split`` is None); they must be compounds absent from the
        training atlas (the validation compounds ``train()`` held out are
        right). Fits a map of the scores to the probability that the call is
        right (``method="auto"``: of isotonic, temperature, logistic and none, the
        lowest out-of-fold Brier score, chosen separately for each predictor;
        prototype predictors always get a fitted map) so that ``moa_pred_score`` is a probability, picks the open-set
        score (``score="auto"``: best AUROC against leave-own-MoA-out
        pseudo-unknowns, ``hidden_prototype`` included when the model has hidden
        prototypes) and its threshold for ``target_false_unknown``, and
        stores ``min_tas`` (no call below it; None: off; the TAS column is
        ``obs[tas_key]``, used for the accuracy-vs-TAS curve). ``save()`` writes it
        to ``calibration.json``. See :mod:`moaspace.model.calibration`.
        """
        self._require_net()
        moa_key, split_key = self.keys["moa"], self.keys["split"]
        if moa_key not in adata.obs.columns:
            raise InputError(f"obs[{moa_key!r}] is missing: calibration needs the true MoAs")
        rows = np.ones(adata.n_obs, dtype=bool)
        if split is not None:
            if split_key not in adata.obs.columns:
                raise InputError(f"obs[{split_key!r}] is missing; pass split=None to calibrate "
                                 "on all rows (held-out compounds only)")
            rows = (adata.obs[split_key].astype(str) == split).to_numpy()
            if not rows.any():
                raise InputError(f"no rows with obs[{split_key!r}] == {split!r} to calibrate on "
                                 "(a split without validation compounds cannot be calibrated)")
        compound_key = self.keys["compound"]
        if compound_key not in adata.obs.columns:
            raise InputError(f"obs[{compound_key!r}] is missing: calibration folds are grouped "
                             "by compound")
        sub = adata[rows]
        # a backed view is fine: embed() streams its rows in chunks
        from moaspace.model._predict import atlas_signatures

        ref_obs = self.reference.obs
        compounds = sub.obs[compound_key].astype(str)
        same = atlas_signatures(sub.obs_names, compounds.to_numpy(), ref_obs)
        if same.any():
            # their nearest neighbour is themselves: every score would look certain
            raise InputError(
                f"{int(same.sum())} calibration signatures are in the training atlas, e.g. "
                f"{preview(sorted(sub.obs_names[same].astype(str)), 3)}; calibrate on held-out "
                "compounds (the validation split, or new compounds)")
        if "pert_id" in ref_obs.columns:
            seen = sorted(set(compounds) & set(ref_obs["pert_id"].astype(str)))
            if seen:
                logger.warning(
                    "%d of the %d calibration compounds are also in the training atlas (e.g. "
                    "%s): their signatures find their own compound among the neighbours, so "
                    "the calibrated scores and the unknown threshold fit known compounds, "
                    "not new ones", len(seen), compounds.nunique(), preview(seen, 3))
        if self.hidden_prototypes is None:
            z, hidden = self.embed(sub), None
        else:
            z, hidden = self.embed_layers(sub, ("embedding", "prototype"))
        return self._fit_calibration(
            z, sub.obs[moa_key].astype(str).to_numpy(),
            self._tas(sub.obs, tas_key),
            groups=compounds.to_numpy(), hidden=hidden,
            target_false_unknown=target_false_unknown, method=method, score=score,
            min_tas=min_tas)

    # ------------------------------------------------------------ persistence
    def _config_json(self, files: dict) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "moaspace_version": __version__,
            "torch_version": torch.__version__,
            "model": self.config.to_dict(),
            "keys": self.keys,
            "genes": self.genes,
            "gene_symbols": self.gene_symbols,
            "moas": self.moas,
            "compounds": self.compounds,
            "data_fingerprint": self.fingerprint,
            "train": self.train_info,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val_f1": self.best_val_f1,
            "moa_margins": (
                self.net.moa_head.margins.tolist()
                if self.net is not None and hasattr(self.net.moa_head, "margins") else None
            ),
            "files": files,
        }

    def save(self, model_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``model.pt``, ``atlas.h5ad`` and (last) ``config.json`` atomically.

        ``overwrite=False`` refuses a directory that already holds a saved
        model; checkpoints in it are left alone.
        """
        from moaspace.pp._prepare import write_h5ad

        self._require_net()
        model_dir = Path(model_dir)
        if (model_dir / CONFIG_FILE).exists() and not overwrite:
            raise MoaspaceError(f"{model_dir} already holds a model; pass overwrite=True")
        model_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(model_dir / MODEL_FILE, suffix=".pt.tmp") as tmp, open(tmp, "wb") as fh:
            # a file object: the zip records are named 'archive/...', not after the temp name
            save_torch({k: v.cpu() for k, v in self.net.state_dict().items()}, fh,
                       model_dir / MODEL_FILE)
        # pandas >= 3 stores strings as StringArray, which anndata writes only on request
        allow = (ad.settings.override(allow_write_nullable_strings=True)
                 if hasattr(ad.settings, "allow_write_nullable_strings")
                 else contextlib.nullcontext())
        with allow:
            write_h5ad(self.reference, model_dir / ATLAS_FILE)
        names = [MODEL_FILE, ATLAS_FILE]
        if self.calibration is not None:
            self.calibration.save(model_dir / CALIBRATION_FILE)
            names.append(CALIBRATION_FILE)
        elif (model_dir / CALIBRATION_FILE).exists():
            (model_dir / CALIBRATION_FILE).unlink()  # stale: from a model saved here before
        files = {name: _sha1_file(model_dir / name) for name in names}
        config = self._config_json(files)
        config[CONFIG_DIGEST] = config_digest(config)
        atomic_write_text(model_dir / CONFIG_FILE, json.dumps(config, indent=1))
        logger.info("saved model to %s", model_dir)
        return model_dir

    @classmethod
    def load(cls, model_dir: str | os.PathLike, *, max_missing_fraction: float = 0.1,
             map_location: str | torch.device = "cpu") -> MoaModel:
        """Load a saved model directory (checks versions and file checksums)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise MoaspaceError(f"model directory not found: {model_dir}")
        for name in (CONFIG_FILE, MODEL_FILE, ATLAS_FILE):
            if not (model_dir / name).is_file():
                raise MoaspaceError(f"{model_dir}: {name} is missing; not a saved moaspace model")
        try:
            config = json.loads((model_dir / CONFIG_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise MoaspaceError(f"{model_dir / CONFIG_FILE}: unreadable ({exc})") from exc
        if not isinstance(config, dict):
            raise MoaspaceError(f"{model_dir / CONFIG_FILE}: expected a JSON object, "
                                f"found {type(config).__name__}")
        fmt = config.get("format_version")
        if fmt != FORMAT_VERSION:
            raise MoaspaceError(
                f"{model_dir} has model format {fmt!r} (written by moaspace "
                f"{config.get('moaspace_version', '?')}); this moaspace {__version__} reads "
                f"format {FORMAT_VERSION}: retrain or use a matching moaspace version"
            )
        missing = [k for k in ("model", "keys", "genes", "moas", "compounds") if k not in config]
        if missing:
            raise MoaspaceError(f"{model_dir / CONFIG_FILE}: entries {missing} are missing; "
                                "not a complete moaspace model (save it again)")
        _check_config(config, model_dir / CONFIG_FILE)
        if CONFIG_DIGEST not in config:
            logger.warning("%s has no checksum of its own (saved by an older moaspace): an "
                           "edit to it cannot be detected", model_dir / CONFIG_FILE)
        for name, digest in config.get("files", {}).items():
            if not (model_dir / name).is_file():
                raise MoaspaceError(f"{model_dir}: {name} is listed in config.json but missing")
            if _sha1_file(model_dir / name) != digest:
                raise MoaspaceError(
                    f"{model_dir / name} does not match config.json (an interrupted save?); "
                    "save the model again"
                )
        keys = {f"{k}_key": v for k, v in config["keys"].items()}
        hyperparams = dict(config["model"])
        # saved before `predictor` existed: trained and early-stopped for the kNN vote
        hyperparams.setdefault("predictor", "knn")
        # saved before `average_best` existed: the single best epoch was kept
        hyperparams.setdefault("average_best", 1)
        # saved before input whitening and the linear view: raw input, hidden prototypes
        hyperparams.setdefault("input_whitening", "off")
        hyperparams.setdefault("linear_view_weight", 0.0)
        hyperparams.setdefault("refit_prototypes", False)
        model = cls(None, **hyperparams, **keys)
        model.genes = list(config["genes"])
        model.gene_symbols = list(config.get("gene_symbols", []))
        model.moas = list(config["moas"])
        model.compounds = list(config["compounds"])
        model.fingerprint = config.get("data_fingerprint")
        model.history = list(config.get("history", []))
        model.best_epoch = config.get("best_epoch")
        model.best_val_f1 = config.get("best_val_f1")
        model.train_info = dict(config.get("train", {}))
        model.max_missing_fraction = float(max_missing_fraction)
        net = model._build_net()
        try:
            state = torch.load(model_dir / MODEL_FILE, map_location=map_location,
                               weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:
            raise MoaspaceError(f"{model_dir / MODEL_FILE}: cannot load weights ({exc})") from exc
        model.net = net.eval()
        from moaspace.pp._prepare import read_h5ad

        model._reference = read_h5ad(model_dir / ATLAS_FILE)
        if CALIBRATION_FILE in config.get("files", {}):
            from moaspace.model.calibration import Calibration

            model.calibration = Calibration.load(model_dir / CALIBRATION_FILE)
        else:
            logger.info("%s has no calibration (saved by an older moaspace?): predictions will "
                        "use uncalibrated scores and make no 'unknown' calls", model_dir)
        return model

    def __repr__(self) -> str:
        state = "untrained" if self.net is None else f"best val F1 {self.best_val_f1}"
        n_genes = len(getattr(self, "genes", []))
        return (f"MoaModel({n_genes} genes, {len(getattr(self, 'moas', []))} MoAs, "
                f"loss={self.config.loss!r}, {state})")
