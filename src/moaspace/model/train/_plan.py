"""The Lightning training plan (scvi-tools' *TrainingPlan*): :class:`MoaTrainingPlan`.

* Early stopping watches the **macro-F1 of the model's predictor** on validation
  compounds (kNN vote, or nearest MoA prototype of the embedding or of the last hidden
  layer; :class:`~moaspace.model.train._callbacks.BestEpochs`).
* Under DDP the score is computed on rank 0 over the whole validation set and
  broadcast, so every rank takes the same stopping decision.
* Batches come from :class:`~moaspace.model.train._data.IndexBatchSampler`, seeded by
  ``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

from moaspace._core.neighbors import PREDICTORS
from moaspace.errors import InputError
from moaspace.model.module import MoaNet
from moaspace.model.predictor import MoaPredictor, fit_predictor
from moaspace.model.train._callbacks import BestEpochs
from moaspace.model.train._data import IndexBatchSampler, TrainData, _IndexDataset


def _lr_lambda(warmup: int, total: int, floor: float = 0.01):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


class MoaTrainingPlan(BestEpochs, L.LightningModule):
    """The training plan: trains a :class:`~moaspace.model.module.MoaNet`, scores
    validation macro-F1 of its predictor, stops early (:class:`BestEpochs`).

    The weights of the ``average_best`` epochs with the best validation F1 are
    kept (CPU copies) and, at the end of training, averaged into the final
    weights; with ``average_best=1`` the single best epoch is restored. Training
    history and early-stopping state are the module's ``extra_state``, so they
    travel with the ``state_dict`` (into checkpoints, and back from ``ddp_spawn``
    workers).

    Parameters
    ----------
    net : MoaNet
        The network to optimise.
    data : TrainData or None
        The rows to train and validate on (None: a module rebuilt for its weights only).
    lr, weight_decay : float
        AdamW learning rate and weight decay.
    warmup_epochs : float
        Linear warm-up before the cosine decay.
    batch_size : int
        Batch size per process.
    seed : int
        Seeds batches and the validation subsample.
    sampling : {"none", "compound", "moa"}
        How batches are drawn (see :class:`~moaspace.model.ModelConfig`).
    knn_k : int
        Neighbours of the kNN predictor's validation score.
    patience : int
        Epochs without an improvement of ``min_delta`` before stopping.
    min_delta : float, default 1e-4
        Smallest validation macro-F1 gain that counts as an improvement.
    meta : dict, optional
        Written into every checkpoint (data fingerprint, config) and checked on resume.
    predictor : {"knn", "prototype", "hidden_prototype"}, default "knn"
        The predictor whose validation macro-F1 drives early stopping
        (:mod:`moaspace.model.predictor`).
    average_best : int, default 1
        Number of best epochs whose weights are averaged.
    n_classes : int, optional
        Number of MoAs (default: the network's).
    linear_view_weight : float, default 0.5
        Prior weight of the whitened view of the prototype layer.
    """

    def __init__(self, net: MoaNet, data: TrainData | None, *, lr: float, weight_decay: float,
                 warmup_epochs: float, batch_size: int, seed: int, sampling: str,
                 knn_k: int, patience: int, min_delta: float = 1e-4,
                 meta: dict | None = None, predictor: str = "knn", average_best: int = 1,
                 n_classes: int | None = None, linear_view_weight: float = 0.5):
        super().__init__()
        self.net = net
        self.data = data
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.warmup_epochs = float(warmup_epochs)
        self.batch_size, self.seed, self.sampling = int(batch_size), int(seed), sampling
        self.knn_k, self.patience, self.min_delta = int(knn_k), int(patience), float(min_delta)
        if predictor not in PREDICTORS:
            raise InputError(f"predictor must be one of {list(PREDICTORS)}, got {predictor!r}")
        self.predictor = predictor
        self.n_classes = int(n_classes if n_classes is not None else net.n_moas)
        self.linear_view_weight = float(linear_view_weight)
        if int(average_best) < 1:
            raise InputError(f"average_best must be >= 1, got {average_best}")
        self.average_best = int(average_best)
        self.history: list[dict] = []
        self._init_best_epochs()
        self._epoch_losses: list[torch.Tensor] = []
        self.meta = dict(meta or {})

    # --- state that must survive checkpoints and spawn ----------------------
    def get_extra_state(self):
        return {
            "history": self.history, "best_f1": float(self.best_f1),
            "best_epoch": int(self.best_epoch), "bad_epochs": int(self.bad_epochs),
            "stopped_early": bool(self.stopped_early),
            "averaged_epochs": [int(e) for e in self.averaged_epochs],
        }

    def set_extra_state(self, state) -> None:
        self.history = [dict(h) for h in state["history"]]
        self.best_f1 = float(state["best_f1"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        self.averaged_epochs = [int(e) for e in state.get("averaged_epochs", [])]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["moaspace"] = {
            **self.meta,
            "best_state": self._best_state,
            "top_states": self._top_states,
            "torch_rng": torch.get_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("moaspace", {})
        self._best_state = extra.get("best_state")
        self._top_states = list(extra.get("top_states") or [])
        if extra.get("torch_rng") is not None:
            # dropout / input noise continue exactly where the interrupted run stopped
            torch.set_rng_state(extra["torch_rng"])

    # --- data / optimisation --------------------------------------------------
    def train_dataloader(self):
        d = self.data
        groups = None
        # the losses' rows: single-MoA training rows, plus multi-MoA and unlabelled ones
        rows = d.loss_idx
        if self.sampling == "compound":
            groups = d.compound[rows].numpy()
        elif self.sampling == "moa":
            groups = d.moa[rows].numpy()  # -1: the rows without one MoA, one group
        sampler = IndexBatchSampler(
            rows, self.batch_size, self.seed, self.sampling, groups,
            rank=self.global_rank, world_size=self.trainer.world_size,
        )
        return torch.utils.data.DataLoader(
            _IndexDataset(d), batch_size=None, sampler=sampler, num_workers=0,
        )

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.net.parameters():
            # biases and BN scales: weight decay on them only hurts
            (no_decay if p.ndim < 2 else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, int(self.trainer.max_epochs or 1)))
        warmup = max(1, int(self.warmup_epochs * per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        out = self.net.loss(*batch)  # x, moa, compound (and the MoA sets of multi-MoA rows)
        self.log("loss", out["loss"].detach(), prog_bar=True, on_step=True, on_epoch=False)
        self._epoch_losses.append(out["loss"].detach())
        return out["loss"]

    # --- validation + early stopping -----------------------------------------
    def fit_predictor(self, rows: np.ndarray | None = None) -> MoaPredictor:
        """The model's predictor fitted on ``rows`` of the training data (default: the
        validation reference, the training rows or a seeded subsample of them)."""
        d = self.data
        rows = d.val_ref_idx if rows is None else rows
        return fit_predictor(self.predictor, self.net, d.x, d.moa.numpy(), rows,
                             self.n_classes, beta=self.linear_view_weight, k=self.knn_k,
                             multi=d.prototype_multi())

    def validation_f1(self, predictor: MoaPredictor | None = None) -> float:
        """Validation macro-F1 of the predictor ``predict`` uses, fitted on the training
        rows (:meth:`fit_predictor`): the same :class:`~moaspace.model.predictor.MoaPredictor`
        code scores the epochs here, chooses the input candidate and makes ``predict``'s
        calls, so the epoch kept is the best one for the predictor actually used."""
        d = self.data
        if len(d.val_idx) == 0:
            return float("nan")
        predictor = self.fit_predictor() if predictor is None else predictor
        return predictor.macro_f1(self.net, d.x, d.val_idx, d.moa[d.val_idx].numpy())

    def on_train_epoch_end(self) -> None:
        f1 = self.validation_f1() if self.global_rank == 0 else 0.0
        f1 = float(self.trainer.strategy.broadcast(f1, src=0))
        losses = self._epoch_losses
        mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        self._epoch_losses = []
        epoch = int(self.current_epoch)
        self.history.append({"epoch": epoch, "loss": mean_loss, "val_f1": f1})
        if not math.isnan(f1):
            # identical on all ranks (broadcast): the mean over ranks is the value itself
            self.log("val_f1", f1, prog_bar=True, on_epoch=True, sync_dist=True)
            self._offer_top_state(f1, epoch)
        self._early_stopping(f1, epoch)

    def on_train_end(self) -> None:
        self.restore_best()


class MoaModule(MoaTrainingPlan):
    """Deprecated name of :class:`MoaTrainingPlan` (scvi-tools calls the network the
    *module*; here that is :class:`~moaspace.model.module.MoaNet`). Removed after 0.2.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`MoaTrainingPlan`.
    """

    def __init__(self, *args, **kwargs):
        import warnings

        warnings.warn("moaspace.model.MoaModule is deprecated: use MoaTrainingPlan",
                      DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)
