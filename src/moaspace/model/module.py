"""The network, its losses, the batch sampler, kNN scoring and the LightningModule.

Why the pieces look the way they do:

* :class:`MoaNet` holds the encoder and the loss heads; only its
  ``state_dict`` is saved (``model.pt``), so a model directory loads with
  ``torch.load(weights_only=True)`` and without Lightning.
* Early stopping watches the **macro-F1 of a cosine kNN** predicting the MoA
  of validation compounds from training embeddings: that is the product's
  task (unseen compounds, kNN on the atlas) and, unlike the training loss,
  it goes down when the net starts memorising compounds.
* Under DDP the score is computed on rank 0 over the whole validation set and
  broadcast, so every rank takes the same stopping decision.
* The sampler draws index batches from a row source (an in-memory tensor,
  or an ``.h5ad`` on disk read batch by batch: see :mod:`.data`; per-item
  ``Dataset`` indexing and collation cost more than the MLP itself), is
  seeded by ``(seed, epoch)`` so a resumed run sees the same batches as an
  uninterrupted one, and shards batches across ranks itself.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from sklearn.metrics import f1_score
from torch import nn

from moaspace._core.neighbors import (
    PREDICTORS,
    knn_scores,
    l2_normalize,
    prototypes,
    topk_similarity,
)
from moaspace._utils import atomic_path
from moaspace.errors import InputError, MoaspaceError
from moaspace.model.arcface import ArcFace, count_margins
from moaspace.model.data import RowSource
from moaspace.model.encoder import Encoder

logger = logging.getLogger(__name__)

LOSSES = ("dual_arcface", "arcface_moa", "softmax", "supcon")
SAMPLING = ("none", "compound", "moa")


# ---------------------------------------------------------------------------
# losses and network
# ---------------------------------------------------------------------------
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) on unit embeddings.

    Each anchor is pulled towards all batch members with its label; anchors
    without a positive in the batch are skipped.
    """
    z = z.float()
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not valid.any():
        return z.sum() * 0.0
    per_anchor = log_prob.masked_fill(~pos, 0.0).sum(1)[valid] / n_pos[valid]
    return -per_anchor.mean()


def uses_whitening(config: dict) -> bool:
    """Whether a net built from ``config`` holds the input whitening map: for its input
    (``input_whitening`` ``on``/``auto``) or for the linear view of its prototype layer
    (``linear_view_weight`` > 0). Configs saved before these fields existed: no."""
    return (config.get("input_whitening", "off") != "off"
            or float(config.get("linear_view_weight", 0.0)) > 0)


class MoaNet(nn.Module):
    """Encoder + loss heads; ``embed`` is all that inference needs.

    ``config`` is a plain dict of :class:`~moaspace.model.model.ModelConfig`
    fields, so the same dict from ``config.json`` rebuilds the net.
    """

    def __init__(self, n_genes: int, n_moas: int, n_compounds: int, config: dict,
                 moa_counts=None):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.loss_name = c["loss"]
        if self.loss_name not in LOSSES:
            raise ValueError(f"unknown loss {self.loss_name!r}; choose one of {list(LOSSES)}")
        self.encoder = Encoder(
            n_genes, hidden_dims=c["hidden_dims"], embedding_dim=c["embedding_dim"],
            dropout=c["dropout"], batch_norm=c["batch_norm"], input_dropout=c["input_dropout"],
            input_noise=c["input_noise"], clip=c["clip"],
            whitening=uses_whitening(c), whiten_input=c.get("input_whitening", "off") == "on",
        )
        d = c["embedding_dim"]
        self.moa_head: nn.Module | None = None
        self.compound_head: nn.Module | None = None
        if self.loss_name in ("dual_arcface", "arcface_moa"):
            margins = None
            if c["margin_mode"] == "count" and moa_counts is not None:
                margins = count_margins(moa_counts, c["moa_margin"])
            elif c["margin_mode"] == "count":
                margins = torch.full((n_moas,), float(c["moa_margin"]))  # replaced by load
            self.moa_head = ArcFace(
                d, n_moas, margin=c["moa_margin"], scale=c["scale"],
                sub_centers=c["sub_centers"], easy_margin=c["easy_margin"],
                class_margins=margins,
            )
        if self.loss_name == "dual_arcface":
            self.compound_head = ArcFace(
                d, n_compounds, margin=c["compound_margin"], scale=c["scale"],
                easy_margin=c["easy_margin"],
            )
        if self.loss_name == "softmax":
            self.moa_head = nn.Linear(d, n_moas)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (for ``softmax``: the normalised penultimate layer)."""
        return self.encoder(x)

    def loss(self, x: torch.Tensor, moa: torch.Tensor, compound: torch.Tensor) -> dict:
        """Loss terms for a batch; ``loss`` is the sum that is optimised."""
        c = self.config
        if self.loss_name == "softmax":
            raw = self.encoder.forward_raw(x)
            loss = F.cross_entropy(self.moa_head(raw).float(), moa)
            return {"loss": loss, "loss_moa": loss.detach()}
        z = self.encoder(x)
        if self.loss_name == "supcon":
            loss = supcon_loss(z, moa, c["supcon_temperature"])
            return {"loss": loss, "loss_moa": loss.detach()}
        loss_moa = F.cross_entropy(self.moa_head(z, moa), moa)
        out = {"loss_moa": loss_moa.detach()}
        loss = loss_moa
        if self.compound_head is not None and c["compound_weight"] > 0:
            loss_cpd = F.cross_entropy(self.compound_head(z, compound), compound)
            loss = loss + c["compound_weight"] * loss_cpd
            out["loss_compound"] = loss_cpd.detach()
        out["loss"] = loss
        return out


# ---------------------------------------------------------------------------
# validation metric
# ---------------------------------------------------------------------------
def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in ``y_true`` (wrong predictions still count)."""
    present = np.unique(y_true)
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
LAYERS = ("embedding", "hidden", "prototype")


def layer_widths(net: MoaNet, layers: tuple[str, ...]) -> list[int]:
    """Width of each of ``layers`` of ``net``; an InputError names any unknown layer."""
    bad = [layer for layer in layers if layer not in LAYERS]
    if bad or not layers:
        raise InputError(f"layers must be among {list(LAYERS)}, got {list(layers)}")
    width = {"embedding": net.encoder.embedding_dim, "hidden": net.encoder.hidden_dim,
             "prototype": net.encoder.prototype_dim}
    return [width[layer] for layer in layers]


@torch.no_grad()
def embed_row_source(net: MoaNet, source, idx: np.ndarray, device=None,
                     batch_size: int = 8192, layers: tuple[str, ...] = ("embedding",),
                     out_device=None) -> tuple[torch.Tensor, ...]:
    """Embeddings (float32) of rows ``idx`` of a row source, in eval mode, one tensor per
    entry of ``layers``: ``embedding`` (unit-norm output) and/or ``hidden`` (last hidden
    layer, :meth:`Encoder.hidden <moaspace.model.encoder.Encoder.hidden>`), from one
    forward pass.

    Reads ``batch_size`` rows at a time (fewer when the source is backed and
    reads in chunks); the net's train/eval mode is restored afterwards. Used
    for validation during training (on ``device``) and for the atlas after it
    (``out_device="cpu"``: a whole atlas is not held on a GPU).
    """
    widths = layer_widths(net, layers)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device if device is None else device
    out_device = device if out_device is None else out_device
    batch_size = min(batch_size, source.chunk_rows or batch_size)
    out = [torch.empty((len(idx), w), dtype=torch.float32, device=out_device) for w in widths]
    try:
        for start in range(0, len(idx), batch_size):
            xb = source.rows(idx[start:start + batch_size]).to(device)
            h = net.encoder.hidden(xb)
            # net.embed(x) is normalize(head(hidden(x))) for every loss
            got = {"hidden": h, "embedding": F.normalize(net.encoder.head(h), dim=1)}
            if "prototype" in layers:
                got["prototype"] = net.encoder.prototype_features(xb, hidden=h)
            for o, layer in zip(out, layers, strict=True):
                o[start:start + batch_size] = got[layer].float().to(out_device)
    finally:
        net.train(was_training)
    return tuple(out)


@dataclass
class TrainData:
    """Training data; indices select rows of ``x``.

    ``x`` is a :class:`~moaspace.model.data.RowSource` over all signatures
    (train and val) in the model's gene order, so nothing is copied per split:
    an in-memory tensor, or rows read from disk per batch (backed AnnData).
    ``moa``/``compound`` are class codes (-1 for signatures whose label is not
    a training class).
    """

    x: RowSource
    moa: torch.Tensor
    compound: torch.Tensor
    train_idx: np.ndarray
    val_idx: np.ndarray
    val_ref_idx: np.ndarray


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
        return self.data.x.rows(idx), self.data.moa[idx], self.data.compound[idx]


# ---------------------------------------------------------------------------
# Lightning
# ---------------------------------------------------------------------------
def save_torch(obj, target, path) -> None:
    """``torch.save`` with one clear error when the file cannot be written (a full disk
    makes torch raise a RuntimeError from its zip writer, not an OSError)."""
    try:
        torch.save(obj, target)
    except (OSError, RuntimeError) as exc:
        raise MoaspaceError(f"cannot write {path}: {exc} (is the disk full?)") from exc


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


def _lr_lambda(warmup: int, total: int, floor: float = 0.01):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


class MoaModule(L.LightningModule):
    """Trains a :class:`MoaNet`, scores validation macro-F1 of its predictor, stops early.

    The weights of the ``average_best`` epochs with the best validation F1 are
    kept (CPU copies) and, at the end of training, averaged into the final
    weights; with ``average_best=1`` the single best epoch is restored. Training
    history and early-stopping state are the module's ``extra_state``, so they
    travel with the ``state_dict`` (into checkpoints, and back from ``ddp_spawn``
    workers).
    """

    def __init__(self, net: MoaNet, data: TrainData | None, *, lr: float, weight_decay: float,
                 warmup_epochs: float, batch_size: int, seed: int, sampling: str,
                 knn_k: int, patience: int, min_delta: float = 1e-4,
                 meta: dict | None = None, predictor: str = "knn", average_best: int = 1):
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
        if int(average_best) < 1:
            raise InputError(f"average_best must be >= 1, got {average_best}")
        self.average_best = int(average_best)
        self.history: list[dict] = []
        self.best_f1 = -1.0
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped_early = False
        self._best_state: dict | None = None
        # the average_best best epochs so far: {"f1", "epoch", "state"}, best first
        self._top_states: list[dict] = []
        self.averaged_epochs: list[int] = []
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
        if self.sampling == "compound":
            groups = d.compound[d.train_idx].numpy()
        elif self.sampling == "moa":
            groups = d.moa[d.train_idx].numpy()
        sampler = IndexBatchSampler(
            d.train_idx, self.batch_size, self.seed, self.sampling, groups,
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
        x, moa, compound = batch
        out = self.net.loss(x, moa, compound)
        self.log("loss", out["loss"].detach(), prog_bar=True, on_step=True, on_epoch=False)
        self._epoch_losses.append(out["loss"].detach())
        return out["loss"]

    # --- validation + early stopping -----------------------------------------
    def embed_rows(self, idx: np.ndarray, batch: int = 8192) -> torch.Tensor:
        """Embed rows of the training data in eval mode (BN running stats, no dropout)."""
        return embed_row_source(self.net, self.data.x, idx, self.device, batch)[0]

    def validation_f1(self) -> float:
        """Validation macro-F1 of the predictor ``predict`` uses (``self.predictor``):
        validation signatures against the training rows, as ``moaspace predict`` calls
        them (kNN vote, or nearest MoA prototype of the embedding or of the last hidden
        layer). Early stopping reads it, so the epoch kept is the best one for the
        predictor actually used."""
        d = self.data
        if len(d.val_idx) == 0:
            return float("nan")
        ref_codes = d.moa[d.val_ref_idx].numpy()
        truth = d.moa[d.val_idx].numpy()
        if self.predictor == "knn":
            n_classes = int(d.moa.max()) + 1
            ref = self.embed_rows(d.val_ref_idx)
            query = self.embed_rows(d.val_idx)
            # the same search and vote as moaspace.tl.predict (what `moaspace predict` does)
            sims, idx = topk_similarity(query, ref, self.knn_k)
            scores = knn_scores(sims.numpy(), idx.numpy(), ref_codes, n_classes)
            return macro_f1(truth, scores.argmax(1))
        layer = "hidden" if self.predictor == "hidden_prototype" else "embedding"
        ref, query = (embed_row_source(self.net, d.x, rows, self.device, layers=(layer,),
                                       out_device="cpu")[0].numpy()
                      for rows in (d.val_ref_idx, d.val_idx))
        # the MoA centres predict() calls with (only MoAs that have reference rows)
        centres, classes = prototypes(ref, ref_codes)
        best = (l2_normalize(query) @ centres.T).argmax(axis=1)
        return macro_f1(truth, np.asarray(classes, dtype=np.int64)[best])

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
        (checkpoint averaging, as in stochastic weight averaging; measured in
        :class:`~moaspace.model.model.ModelConfig`). Integer buffers (BatchNorm's batch counter)
        come from the best epoch. None when fewer than two epochs are kept.
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

    def on_train_end(self) -> None:
        self.restore_best()
