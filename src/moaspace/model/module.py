"""The network and its losses (scvi-tools' *module*): :class:`MoaNet`, the supervised
contrastive loss, the validation metric and the forward pass over a row source.

:class:`MoaNet` holds the encoder and the loss heads; only its ``state_dict`` is saved
(``model.pt``), so a model directory loads with ``torch.load(weights_only=True)`` and
without Lightning. The Lightning training plan that optimises it, the batch sampler and
the checkpoints are in :mod:`moaspace.model.train`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from moaspace.errors import InputError
from moaspace.model.arcface import ArcFace, count_margins
from moaspace.model.encoder import Encoder

#: the losses :class:`MoaNet` can optimise (``ModelConfig.loss``)
LOSSES = ("dual_arcface", "arcface_moa", "softmax", "supcon")


# ---------------------------------------------------------------------------
# losses and network
# ---------------------------------------------------------------------------
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) of unit embeddings ``z`` with integer
    ``labels`` at ``temperature``.

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

    ``config`` is a plain dict of :class:`~moaspace.model._config.ModelConfig`
    fields, so the same dict from ``config.json`` rebuilds the net.

    Parameters
    ----------
    n_genes, n_moas, n_compounds : int
        Input width and the class counts of the MoA head and of the compound head
        (the latter built for ``loss="dual_arcface"`` only).
    config : dict
        ``ModelConfig`` fields.
    moa_counts : array-like, optional
        Training signatures per MoA, for ``margin_mode="count"`` (smaller margins for
        common MoAs).
    """

    def __init__(self, n_genes: int, n_moas: int, n_compounds: int, config: dict,
                 moa_counts=None):
        super().__init__()
        self.config = dict(config)
        self.n_moas = int(n_moas)
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

    def loss(self, x: torch.Tensor, moa: torch.Tensor, compound: torch.Tensor,
             moa_sets: torch.Tensor | None = None) -> dict:
        """Loss terms for a batch of inputs ``x`` with ``moa`` and ``compound`` label codes
        (-1: none); ``moa_sets``: optional bool ``(n, n_moas)`` MoA sets of multi-MoA rows
        (all False elsewhere). ``loss`` is the sum that is optimised.

        A row without a MoA code or set adds to the compound loss only; a row without a
        compound code to the MoA loss only. A batch of single-MoA rows that all have a
        compound computes exactly what it did before multi-MoA and unlabelled rows.
        """
        c = self.config
        single = moa >= 0
        multi = (moa_sets.any(dim=1) & ~single) if moa_sets is not None else None
        everything = bool(single.all()) and (multi is None or not bool(multi.any()))
        if not everything and not bool(single.any()) and self.loss_name in ("softmax", "supcon"):
            zero = sum(p.sum() for p in self.parameters()) * 0.0  # keeps a gradient path
            return {"loss": zero, "loss_moa": zero.detach()}
        if self.loss_name == "softmax":
            raw = self.encoder.forward_raw(x[single])
            loss = F.cross_entropy(self.moa_head(raw).float(), moa[single])
            return {"loss": loss, "loss_moa": loss.detach()}
        z = self.encoder(x)
        if self.loss_name == "supcon":
            loss = supcon_loss(z[single], moa[single], c["supcon_temperature"])
            return {"loss": loss, "loss_moa": loss.detach()}
        if everything:
            loss_moa = F.cross_entropy(self.moa_head(z, moa), moa)
        else:
            loss_moa = self._partial_moa_loss(z, moa, single, multi, moa_sets)
        out = {"loss_moa": loss_moa.detach()}
        loss = loss_moa
        if self.compound_head is not None and c["compound_weight"] > 0:
            has = compound >= 0
            if bool(has.all()):
                loss_cpd = F.cross_entropy(self.compound_head(z, compound), compound)
            elif bool(has.any()):
                loss_cpd = F.cross_entropy(self.compound_head(z[has], compound[has]),
                                           compound[has])
            else:
                loss_cpd = z.sum() * 0.0
            loss = loss + c["compound_weight"] * loss_cpd
            out["loss_compound"] = loss_cpd.detach()
        out["loss"] = loss
        return out

    def _partial_moa_loss(self, z, moa, single, multi, moa_sets) -> torch.Tensor:
        """Mean ArcFace MoA loss over the rows with a MoA: single-MoA rows by their code,
        multi-MoA rows by :meth:`ArcFace.multi_positive_loss`; zero (with a gradient
        path) for a batch without any."""
        total = z.sum() * 0.0
        n = int(single.sum())
        if n:
            total = total + F.cross_entropy(self.moa_head(z[single], moa[single]), moa[single],
                                            reduction="sum")
        if multi is not None and bool(multi.any()):
            total = total + self.moa_head.multi_positive_loss(z[multi], moa_sets[multi]).sum()
            n += int(multi.sum())
        return total / max(n, 1)


# ---------------------------------------------------------------------------
# validation metric
# ---------------------------------------------------------------------------
def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 of integer labels ``y_pred`` against ``y_true``, over the classes present in
    ``y_true`` (wrong predictions still count)."""
    present = np.unique(y_true)
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


# ---------------------------------------------------------------------------
# embedding rows
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
                     out_device=None, view_weights: tuple[float, float] | None = None
                     ) -> tuple[torch.Tensor, ...]:
    """Embeddings (float32) of rows ``idx`` of a row source, in eval mode, one tensor per
    entry of ``layers``: ``embedding`` (unit-norm output), ``hidden`` (last hidden
    layer, :meth:`Encoder.hidden <moaspace.model.encoder.Encoder.hidden>`) and/or
    ``prototype`` (the prototype layer, with ``view_weights`` when given), from one
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
                got["prototype"] = net.encoder.prototype_features(
                    xb, hidden=h, view_weights=view_weights)
            for o, layer in zip(out, layers, strict=True):
                o[start:start + batch_size] = got[layer].float().to(out_device)
    finally:
        net.train(was_training)
    return tuple(out)
