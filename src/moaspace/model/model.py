"""``MoaModel``: the user-facing model (scvi-tools style).

>>> model = MoaModel(adata, embedding_dim=128)          # adata has obs["split"]
>>> model.train(max_epochs=40, seed=0, model_dir="run")  # early stops on val macro-F1
>>> model.save("run")
>>> model = MoaModel.load("run")
>>> z = model.embed(query)                               # genes reordered / checked

Underneath, as in scvi-tools: :mod:`moaspace.model.module` (the network ``MoaNet`` and
its losses), :mod:`moaspace.model.train` (the Lightning training plan, checkpoints, early
stopping, best-epoch averaging and the raw/whitened candidates),
:mod:`moaspace.model._config` (``ModelConfig``) and :mod:`moaspace.model._save` (the
model directory: ``model.pt``, ``atlas.h5ad``, ``calibration.json``, ``config.json``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from moaspace.errors import InputError, MoaspaceError
from moaspace.model._atlas import (
    atlas_anndata,
    atlas_classes,
    predictor_from_atlas,
    prototype_rows,
    raw_atlas,
    stored_prototypes,
)
from moaspace.model._calibrate import (
    calibrate_after_training,
    calibration_cosines,
    calibration_rows,
)
from moaspace.model._config import CONFIG_DIGEST, ModelConfig, _check_config, config_digest
from moaspace.model._genes import aligned_rows, gene_positions, query_strength, stream_layers
from moaspace.model._keys import ModelKeys, check_training_data, split_labels
from moaspace.model._save import (
    ATLAS_FILE,
    CALIBRATION_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    load_model,
    save_model,
)
from moaspace.model.data import RowSource, backed_rows
from moaspace.model.module import MoaNet, embed_row_source
from moaspace.model.predictor import MoaPredictor, fit_predictor
from moaspace.model.train import (
    INPUT_CANDIDATES,
    TrainData,
    TrainInputs,
    TrainResult,
    data_fingerprint,
    log_training,
    loss_compounds,
    multi_moa_classes,
    quiet_lightning,
    run_options,
    run_training,
    single_moa_rows,
)

__all__ = [
    "ATLAS_FILE",
    "CALIBRATION_FILE",
    "CHECKPOINT",
    "CONFIG_DIGEST",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "INPUT_CANDIDATES",
    "MODEL_FILE",
    "MoaModel",
    "ModelConfig",
    "_check_config",
    "config_digest",
    "data_fingerprint",
]

logger = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.ckpt"


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
    moa_set_key
        obs column of the ``|``-separated MoA sets of multi-MoA compounds (their
        ``moa_key`` missing); default ``f"{moa_key}_set"``. Optional in the data.
    **hyperparams
        Fields of :class:`ModelConfig` (e.g. ``embedding_dim=128``,
        ``loss="softmax"``, ``input_dropout=0.3``).
    """

    def __init__(self, adata: ad.AnnData | None, *, moa_key: str = "moa",
                 compound_key: str = "pert_id", cell_key: str = "cell_iname",
                 split_key: str = "split", moa_set_key: str | None = None, **hyperparams):
        self.config = ModelConfig.from_kwargs(hyperparams)
        self.keys = {"moa": moa_key, "compound": compound_key, "cell": cell_key,
                     "split": split_key, "moa_set": moa_set_key or f"{moa_key}_set"}
        self.adata = adata
        self.net: MoaNet | None = None
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.best_val_f1: float | None = None
        self.train_info: dict = {}
        self._atlas: ad.AnnData | None = None
        self.max_missing_fraction = 0.1
        self.calibration = None  # moaspace.model.calibration.Calibration, fitted on the val split
        self.raw_atlas_path: Path | None = None  # raw_atlas.h5ad of a loaded model
        if adata is None:  # used by load()
            return
        check_training_data(adata, self.key_registry)
        self.genes = [str(g) for g in adata.var_names]
        self.gene_symbols = (
            adata.var["gene_symbol"].astype(str).tolist() if "gene_symbol" in adata.var else []
        )
        self._split = split_labels(adata, self.key_registry)
        obs = adata.obs
        train = self._split == "train"
        single = train & single_moa_rows(obs, moa_key)
        self.moas = sorted(obs.loc[single, moa_key].astype(str).unique().tolist())
        if self.config.multi_moa_classes:
            self.moas = sorted(set(self.moas) | multi_moa_classes(obs, train & ~single,
                                                                  self.keys["moa_set"]))
        self.compounds = loss_compounds(obs, train, self.keys, self.moas, self.config)
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

    @property
    def key_registry(self) -> ModelKeys:
        """The obs columns this model was trained with (saved in ``config.json``)."""
        return ModelKeys.from_dict(self.keys)

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
        progress_bar
            Show Lightning's progress bar.
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
        opts = run_options(
            max_epochs=max_epochs, batch_size=batch_size, accelerator=accelerator,
            devices=devices, strategy=strategy, seed=seed, patience=patience,
            progress_bar=progress_bar, callbacks=callbacks, precision=precision,
            model_dir=model_dir, resume=resume)
        inputs = TrainInputs(adata=self.adata, split=self._split, keys=dict(self.keys),
                             genes=list(self.genes), moas=list(self.moas),
                             compounds=list(self.compounds), config=self.config,
                             fingerprint=self.fingerprint)
        deterministic_before = torch.are_deterministic_algorithms_enabled()
        try:
            with quiet_lightning():
                result = run_training(inputs, opts)  # data, candidates, the best kept
        finally:
            torch.use_deterministic_algorithms(deterministic_before)
        self._install(result)
        self._build_atlas(result)  # the kept network's prototypes and the atlas
        calibrate_after_training(self, result, opts)  # calibrated scores, 'unknown', refit
        log_training(result)
        return {"best_epoch": self.best_epoch, "best_val_f1": self.best_val_f1,
                "epochs": len(self.history), "history": self.history,
                "averaged_epochs": self.train_info["averaged_epochs"],
                "final_val_f1": self.train_info["final_val_f1"]}

    def _install(self, result: TrainResult) -> None:
        """Take a training run's network, frozen config and record."""
        self.net, self.config = result.net, result.config
        self.history = list(result.history)
        self.best_epoch, self.best_val_f1 = result.best_epoch, result.best_val_f1
        self.train_info = dict(result.info)

    def _build_atlas(self, result: TrainResult) -> None:
        """The atlas (embeddings of the training rows) and the prototype-layer prototypes
        over the training rows (the kept predictor's own when it is ``hidden_prototype``;
        the open-set score reads them whatever the predictor)."""
        data = result.data
        emb = self._embed_source(data.x, data.train_idx)[0]
        self._atlas = self._atlas_anndata(data.train_idx, emb)
        if self.config.multi_moa_classes:
            # classes that only multi-MoA compounds (not in the atlas) carry
            self._atlas.uns["moaspace"]["classes"] = list(self.moas)
        prototypes = result.predictor
        if prototypes.kind != "hidden_prototype":
            prototypes = self._fit_hidden_prototypes(data, data.train_idx)
        self._set_prototypes(prototypes, {"splits": ["train"], "n_rows": len(data.train_idx)})

    def _fit_hidden_prototypes(self, data: TrainData, rows: np.ndarray,
                               view_weights=None) -> MoaPredictor:
        return fit_predictor("hidden_prototype", self._require_net(), data.x, data.moa.numpy(),
                             rows, len(self.moas), beta=self.config.linear_view_weight,
                             view_weights=view_weights, multi=data.prototype_multi())

    def _set_prototypes(self, prototypes: MoaPredictor, rows: dict) -> None:
        """Store prototype-layer prototypes in the atlas, their view weights in the encoder
        (which ``embed(layer="prototype")`` and ``explain`` read), and which rows they saw."""
        enc = self._require_net().encoder
        if prototypes.view_weights is not None:
            enc.view_weights.copy_(torch.tensor(prototypes.view_weights,
                                                dtype=enc.view_weights.dtype))
        self._atlas.uns["moaspace"].update(hidden_prototypes=prototypes.centres,
                                           hidden_prototype_moas=list(self.moas),
                                           prototype_rows=rows)

    # -------------------------------------------------------------- inference
    def predict(self, adata: ad.AnnData, **kwargs) -> ad.AnnData:
        """MoA calls for ``adata``: :func:`moaspace.tl.predict` with this model.

        Parameters
        ----------
        adata : anndata.AnnData
            Query signatures.
        **kwargs
            Options of :func:`moaspace.tl.predict` (``k``, ``method``, ``copy``, ...).

        Returns
        -------
        anndata.AnnData
            A new AnnData with the calls, unless ``copy=False``.
        """
        from moaspace.model._predict import predict

        return predict(self, adata, **kwargs)

    @property
    def module(self) -> MoaNet:
        """The trained network (scvi-tools' *module*); MoaspaceError when untrained."""
        return self._require_net()

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

        Parameters
        ----------
        adata : anndata.AnnData
            Query signatures, ``var_names`` gene ids.
        max_missing_fraction : float, optional
            Largest share of the model's genes that may be missing (default: the
            model's, 0.1).

        Returns
        -------
        numpy.ndarray
            float32 ``(n_obs, n_genes)`` in the model's gene order.
        """
        pos = gene_positions(self, adata, max_missing_fraction)
        source = backed_rows(adata) if adata.isbacked else None
        x = np.zeros((adata.n_obs, len(self.genes)), dtype=np.float32)
        step = (source.chunk_rows if source is not None else None) or 50_000
        for start in range(0, adata.n_obs, step):
            x[start:start + step] = aligned_rows(self, adata, pos, start, start + step, source)
        if not np.isfinite(x).all():
            raise InputError("the query has NaN/inf values; drop or impute them first")
        return x


    @torch.no_grad()
    def embed(self, adata: ad.AnnData, batch_size: int = 8192,
              max_missing_fraction: float | None = None, layer: str = "embedding") -> np.ndarray:
        """Unit-norm embeddings ``(n_obs, embedding_dim)`` of ``adata``'s signatures.

        Streams ``batch_size`` rows at a time, so a backed AnnData
        (``read_h5ad(path, backed="r")``) is embedded without loading ``X``.
        ``layer="hidden"``: the last hidden layer's activations instead
        (``(n_obs, hidden_dim)``, not normalised); ``layer="prototype"``: the
        prototype layer (that layer stacked with the whitened signature), which the
        default predictor ``hidden_prototype`` and its open-set score read.

        Parameters
        ----------
        adata : anndata.AnnData
            Signatures (in memory or backed).
        batch_size : int, default 8192
            Rows per forward pass.
        max_missing_fraction : float, optional
            See :meth:`align_genes`.
        layer : {"embedding", "hidden", "prototype"}, default "embedding"
            Which layer to return.

        Returns
        -------
        numpy.ndarray
            float32, one row per signature.
        """
        return self.embed_layers(adata, (layer,), batch_size, max_missing_fraction)[0]

    def embed_layers(self, adata: ad.AnnData, layers: tuple[str, ...] = ("embedding", "hidden"),
                     batch_size: int = 8192,
                     max_missing_fraction: float | None = None) -> tuple[np.ndarray, ...]:
        """One array per entry of ``layers``, all from one pass over ``adata``.

        Parameters
        ----------
        adata : anndata.AnnData
            Signatures (in memory or backed).
        layers : tuple of str, default ("embedding", "hidden")
            Layer names of :meth:`embed` (``embedding``, ``hidden``, ``prototype``).
        batch_size : int, default 8192
            Rows per forward pass.
        max_missing_fraction : float, optional
            See :meth:`align_genes`.

        Returns
        -------
        tuple of numpy.ndarray
            One float32 array per layer, in the order asked.
        """
        return stream_layers(self, adata, tuple(layers), batch_size, max_missing_fraction)[0]

    def _embed_source(self, source: RowSource, idx: np.ndarray, batch_size: int = 8192,
                      layers: tuple[str, ...] = ("embedding",)) -> tuple[np.ndarray, ...]:
        """``layers`` of rows ``idx`` of a row source, read ``batch_size`` rows at a time."""
        net = self._require_net()
        return tuple(t.numpy() for t in embed_row_source(
            net, source, idx, batch_size=batch_size, layers=layers, out_device="cpu"))

    def predictor_of(self, kind: str | None = None, *, k: int | None = None,
                     weighting: str = "distance") -> MoaPredictor:
        """The fitted :class:`~moaspace.model.predictor.MoaPredictor` of ``kind`` (default:
        ``config.predictor``, the one training validated and ``predict`` calls with).

        Parameters
        ----------
        kind : {"knn", "prototype", "hidden_prototype"}, optional
            The predictor.
        k : int, optional
            Neighbours of the kNN vote (default ``config.knn_k``).
        weighting : {"distance", "uniform"}, default "distance"
            Weights of the kNN vote.

        Returns
        -------
        MoaPredictor
        """
        kind = self.config.predictor if kind is None else kind
        return predictor_from_atlas(kind, self.atlas, self._require_net(),
                                    k=self.config.knn_k if k is None else k,
                                    weighting=weighting)

    @property
    def predictor(self) -> MoaPredictor:
        """The predictor ``predict`` calls with (:meth:`predictor_of` of ``config.predictor``)."""
        return self.predictor_of()

    @property
    def prototype_rows(self) -> dict:
        """Which rows the stored prototype-layer prototypes saw (``splits``, ``n_rows``;
        after a refit on train + val also ``val_signatures`` and ``val_compounds``)."""
        return prototype_rows(self._atlas)

    @property
    def hidden_prototypes(self) -> np.ndarray | None:
        """Prototype-layer MoA prototypes, one row per MoA in sorted order (None for a
        model saved before they existed). Kept for older code: use
        ``model.predictor_of("hidden_prototype").centres``."""
        return stored_prototypes(self._atlas)

    def _atlas_anndata(self, idx: np.ndarray, emb: np.ndarray) -> ad.AnnData:
        return atlas_anndata(self.adata.obs.iloc[idx], self.keys, emb)

    @property
    def atlas(self) -> ad.AnnData:
        """Embeddings of the training signatures (X) with obs ``moa``, ``pert_id``,
        ``cell_iname``, and the prototype-layer prototypes in ``uns["moaspace"]``.

        The kNN predictor searches it; it holds the training split only, so scores on
        validation/test are not leaky.
        """
        if self._atlas is None:
            raise MoaspaceError("no atlas yet: train or load the model first")
        return self._atlas

    @property
    def raw_atlas(self) -> ad.AnnData | None:
        """Raw z-scores of (up to 50,000) training signatures with obs ``pert_id`` and
        ``moa``: the raw-signature reference of ``score_knockdowns``. From the training
        data, or ``raw_atlas.h5ad`` of a loaded model (None when it has none)."""
        if self.adata is not None and self._atlas is not None:
            rows = self.adata.obs_names.get_indexer(self._atlas.obs_names)
            return raw_atlas(self.adata, rows[rows >= 0], self.keys)
        if self.raw_atlas_path is None:
            return None
        from moaspace.pp._prepare import read_h5ad

        return read_h5ad(self.raw_atlas_path)

    @property
    def reference(self) -> ad.AnnData:
        """Deprecated name of :attr:`atlas` (removed after 0.2)."""
        import warnings

        warnings.warn("MoaModel.reference is deprecated: use MoaModel.atlas",
                      DeprecationWarning, stacklevel=2)
        return self.atlas

    # ------------------------------------------------------------ calibration
    def _tas(self, obs: pd.DataFrame, tas_key: str = "tas") -> np.ndarray | None:
        if tas_key not in obs.columns:
            return None
        return pd.to_numeric(obs[tas_key], errors="coerce").to_numpy(np.float64)

    def _fit_calibration(self, z: np.ndarray, labels: np.ndarray, tas: np.ndarray | None,
                         **kwargs):
        """Fit ``self.calibration`` on rows with embeddings ``z`` (``hidden_cos``: their
        prototype-layer cosines, or None: no prototype-layer predictor or score)."""
        from moaspace.model.calibration import fit_calibration

        atlas = self.atlas
        self.calibration = fit_calibration(
            z, labels, np.asarray(atlas.X, dtype=np.float32),
            atlas.obs["moa"].astype(str).to_numpy(), classes=atlas_classes(atlas),
            k=self.config.knn_k, tas=tas, **kwargs)
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
        score (``score="auto"``: ``hidden_prototype`` when the model has hidden
        prototypes, else as ``"pseudo_unknown"``: best AUROC against
        leave-own-MoA-out pseudo-unknowns) and its threshold for ``target_false_unknown``, and
        stores ``min_tas`` (no call below it; None: off; the TAS column is
        ``obs[tas_key]``, used for the accuracy-vs-TAS curve) and chooses
        ``min_strength`` and ``min_score``, the ``no call`` cut-offs on the z-scores'
        own strength and on the calibrated probability of the call
        (:mod:`moaspace.model.calibration._strength`). ``save()`` writes it
        to ``calibration.json``. See :mod:`moaspace.model.calibration`.
        """
        self._require_net()
        sub = calibration_rows(self, adata, split)  # held-out rows of known MoAs, checked
        moa_key, compounds = self.keys["moa"], sub.obs[self.keys["compound"]].astype(str)
        z = self.embed(sub)
        # scores of prototypes that never saw these rows (cross-fitted where they did)
        hidden_cos = (None if self.hidden_prototypes is None
                      else calibration_cosines(self, adata, sub))
        return self._fit_calibration(
            z, sub.obs[moa_key].astype(str).to_numpy(),
            self._tas(sub.obs, tas_key),
            groups=compounds.to_numpy(), hidden_cos=hidden_cos,
            target_false_unknown=target_false_unknown, method=method, score=score,
            min_tas=min_tas, strength=query_strength(self, sub))

    # ------------------------------------------------------------ persistence
    def save(self, model_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``model.pt``, ``atlas.h5ad`` and (last) ``config.json`` atomically.

        ``overwrite=False`` refuses a directory that already holds a saved
        model; checkpoints in it are left alone. See :mod:`moaspace.model._save`.

        Parameters
        ----------
        model_dir : str or os.PathLike
            The model directory (created if needed).
        overwrite : bool, default False
            Replace a model already saved there.

        Returns
        -------
        pathlib.Path
            ``model_dir``.
        """
        return save_model(self, Path(model_dir), overwrite=overwrite)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, *, max_missing_fraction: float = 0.1,
             map_location: str | torch.device = "cpu") -> MoaModel:
        """Load a saved model directory (checks versions and file checksums)."""
        return load_model(cls, Path(model_dir), max_missing_fraction=max_missing_fraction,
                          map_location=map_location)

    def __repr__(self) -> str:
        state = "untrained" if self.net is None else f"best val F1 {self.best_val_f1}"
        n_genes = len(getattr(self, "genes", []))
        return (f"MoaModel({n_genes} genes, {len(getattr(self, 'moas', []))} MoAs, "
                f"loss={self.config.loss!r}, {state})")
