"""Lightning callbacks and checkpoint IO, early stopping and best-epoch averaging.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file and renames it, so a
  kill never leaves a torn file; :class:`LastCheckpoint` writes ``last.ckpt`` every epoch
  (the file ``--resume`` continues from).
* :class:`BestEpochs` is the training plan's early stopping and best-epoch averaging: it
  watches the validation macro-F1 of the model's predictor (the product's task, unseen
  compounds; unlike the training loss, it goes down when the net starts memorising
  compounds), keeps CPU copies of the ``average_best`` best epochs' weights and at the
  end of training loads their mean (or the best epoch) into the network.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from moaspace._utils import atomic_path
from moaspace.model._save import save_torch

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file and rename, so SIGKILL never leaves a torn file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path, suffix=".ckpt.tmp") as tmp:
            save_torch(checkpoint, tmp, path)


class LastCheckpoint(Checkpoint):
    """Save ``last.ckpt`` at the end of every epoch.

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass so Lightning
    runs it *after* the module's ``on_train_epoch_end``, i.e. with this
    epoch's validation score and early-stopping state included.
    """

    def __init__(self, path):
        self.path = str(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


class BestEpochs:
    """Early stopping and best-epoch averaging, mixed into the training plan
    (:class:`~moaspace.model.train.MoaTrainingPlan`).

    The host sets ``net``, ``patience``, ``min_delta`` and ``average_best`` and the state
    below (:meth:`_init_best_epochs`); the state is part of the host's ``extra_state`` and
    checkpoints, so a resumed run stops and averages as an uninterrupted one.
    """

    def _init_best_epochs(self) -> None:
        """The state before the first validation."""
        self.best_f1 = -1.0
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped_early = False
        self._best_state: dict | None = None
        # the average_best best epochs so far: {"f1", "epoch", "state"}, best first
        self._top_states: list[dict] = []
        self.averaged_epochs: list[int] = []

    def _early_stopping(self, f1: float, epoch: int) -> None:
        """Record epoch ``epoch``'s validation score ``f1`` (NaN: no validation data, every
        epoch counts as an improvement); stop the trainer after ``patience`` epochs
        without an improvement of more than ``min_delta``."""
        improved = math.isnan(f1) or f1 > self.best_f1 + self.min_delta
        if improved:
            self.best_f1 = f1 if not math.isnan(f1) else self.best_f1
            self.best_epoch = epoch
            self.bad_epochs = 0
            top = self._top_states
            if top and top[0]["epoch"] == epoch:
                # _offer_top_state already copied this epoch: share it (one copy in memory
                # and in checkpoints, which store a shared tensor once)
                self._best_state = top[0]["state"]
            else:
                self._best_state = self._state_copy()
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                logger.info("early stopping at epoch %d: best val macro-F1 %.4f at epoch %d",
                            epoch, self.best_f1, self.best_epoch)
                self.stopped_early = True
                self.trainer.should_stop = True

    def _state_copy(self) -> dict:
        """A CPU copy of the network's current weights and buffers."""
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def _offer_top_state(self, f1: float, epoch: int) -> None:
        """Keep this epoch's weights if they are among the ``average_best`` best so far."""
        if self.average_best < 2:
            return
        top = self._top_states
        if len(top) >= self.average_best and f1 <= top[-1]["f1"]:
            return
        top.append({"f1": float(f1), "epoch": int(epoch), "state": self._state_copy()})
        # best first; among equal scores the earlier epoch (stable sort keeps it first)
        top.sort(key=lambda t: -t["f1"])
        del top[self.average_best:]

    def averaged_state(self) -> dict | None:
        """Mean of the kept epochs' weights (and BatchNorm running statistics).

        Why: validation macro-F1 on a few held-out compounds is noisy, so the single
        best epoch is partly chosen by chance; the best few epochs of one run lie in
        one basin, and their mean is usually as good or better on new data
        (checkpoint averaging, as in stochastic weight averaging; measured: see
        ``ModelConfig.average_best`` and ``docs/benchmarks.md``). Integer buffers
        (BatchNorm's batch counter) come from the best epoch. None when fewer than two
        epochs are kept.
        """
        top = self._top_states
        if len(top) < 2:
            return None
        first = top[0]["state"]
        out = {}
        for key, value in first.items():
            if value.is_floating_point():
                out[key] = torch.stack([t["state"][key].float() for t in top]).mean(0).to(
                    value.dtype)
            else:
                out[key] = value.clone()
        return out

    def restore_best(self) -> None:
        """Load the final weights: the average of the ``average_best`` best epochs, or the
        best epoch (no-op before the first validation)."""
        averaged = self.averaged_state()  # None unless average_best > 1 kept >= 2 epochs
        if averaged is not None:
            self.net.load_state_dict(averaged)
            self.averaged_epochs = sorted(t["epoch"] for t in self._top_states)
        elif self._best_state is not None:
            self.net.load_state_dict(copy.deepcopy(self._best_state))
            self.averaged_epochs = []
