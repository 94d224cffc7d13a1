"""MLP encoder: signature (genes) -> L2-normalised embedding.

Normalising the output puts every signature on the unit sphere, so cosine
similarity is the only geometry: it is what ArcFace's angular margins act on
and what the kNN predictor searches. Input dropout / Gaussian noise exist
because a network of this size memorises training compounds; corrupting the
input forces it to rely on many genes at once, which is what transfers to
unseen compounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from moaspace.model.whitening import InputWhitening


class Encoder(nn.Module):
    """``n_genes -> hidden_dims... -> embedding_dim`` with ReLU, optional BN/dropout.

    Parameters
    ----------
    n_genes
        Input width (978 landmarks or 12,328 genes).
    hidden_dims
        Widths of the hidden layers (default 1024, 512).
    embedding_dim
        Output width (default 256).
    dropout
        Dropout after each hidden activation.
    batch_norm
        Batch normalisation before each hidden activation.
    input_dropout
        Dropout on the genes (training only).
    input_noise
        Standard deviation of Gaussian noise added to the input z-scores
        (training only).
    clip
        Clip input z-scores to ``[-clip, clip]`` (``None``: no clipping): a few
        extreme z-scores otherwise dominate the first layer.
    whitening
        Hold a fixed within-class whitening map of the input
        (:class:`~moaspace.model.whitening.InputWhitening`, fitted by the model
        before training) and the linear view it gives to the prototype layer.
    whiten_input
        Feed the whitened signature (clipped again at ``clip``) to the MLP instead
        of the raw z-scores.
    """

    def __init__(
        self,
        n_genes: int,
        hidden_dims: Sequence[int] = (1024, 512),
        embedding_dim: int = 256,
        dropout: float = 0.1,
        batch_norm: bool = True,
        input_dropout: float = 0.0,
        input_noise: float = 0.0,
        clip: float | None = 10.0,
        whitening: bool = False,
        whiten_input: bool = False,
    ):
        super().__init__()
        if whiten_input and not whitening:
            raise ValueError("whiten_input needs whitening")
        self.whiten = InputWhitening(int(n_genes)) if whitening else None
        self.whiten_input = bool(whiten_input)
        if whitening:
            # prototype-layer weights of the hidden and the linear view (see prototype_features);
            # (1, 0) until the model fits them: the prototype layer is then the hidden layer
            self.register_buffer("view_weights", torch.tensor([1.0, 0.0]))
        self.n_genes = int(n_genes)
        self.embedding_dim = int(embedding_dim)
        self.input_noise = float(input_noise)
        self.clip = clip
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        layers: list[nn.Module] = []
        width = self.n_genes
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, int(hidden), bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(hidden)))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(hidden)
        self.body = nn.Sequential(*layers)
        self.hidden_dim = int(width)
        self.head = nn.Linear(width, self.embedding_dim)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the last hidden layer for inputs ``x``, ``(n, hidden_dim)``.

        The margin losses pull the normalised output of every training MoA onto
        its class centre, which also pulls a signature of an unseen MoA onto
        some known centre; the layer before keeps more of what sets it apart,
        so the open-set score ``hidden_prototype`` reads it
        (:func:`moaspace.model.calibration.openset_scores`).
        """
        x = self._clip(x)
        if self.whiten_input:
            x = self._clip(self.whiten(x))
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        return self.body(self.input_dropout(x))

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.clip is None else x.clamp(-self.clip, self.clip)

    @property
    def prototype_dim(self) -> int:
        """Width of :meth:`prototype_features`."""
        return self.hidden_dim + (self.n_genes + 1 if self.whiten is not None else 0)

    def prototype_features(self, x: torch.Tensor, hidden: torch.Tensor | None = None,
                           view_weights: tuple[float, float] | None = None) -> torch.Tensor:
        """The layer the MoA prototypes live in: unit rows, one dot product per MoA.

        Without whitening it is the normalised last hidden layer. With it, the
        normalised hidden layer and the normalised whitened signature are stacked,
        weighted by ``view_weights`` ``(a_h, a_w)``, plus a constant
        ``sqrt(a_w)``: against a prototype ``[sqrt(a_h) c_h, sqrt(a_w) m, -sqrt(a_w)
        |m|^2 / 2]`` the dot product is ``a_h cos(h, c_h) + a_w (w.m - |m|^2 / 2)``,
        the hidden layer's cosine plus the nearest-centroid discriminant of the
        whitened signature on the sphere (:mod:`moaspace.model.prototypes`).
        ``a_h + 2 a_w = 1`` keeps every row at unit norm. ``hidden``: the activations
        of ``x`` if already computed; ``view_weights``: ``(a_h, a_w)`` to use instead of
        the stored ones (a predictor being fitted during training, which leaves the
        stored weights alone).
        """
        h = self.hidden(x) if hidden is None else hidden
        h = F.normalize(h.float(), dim=1)
        if self.whiten is None:
            return h
        weights = self.view_weights if view_weights is None else torch.as_tensor(
            view_weights, dtype=torch.float32, device=x.device)
        a_h, a_w = weights.float().clamp_min(0).sqrt()
        w = F.normalize(self.whiten(self._clip(x)).float(), dim=1)
        ones = torch.ones((len(x), 1), dtype=w.dtype, device=w.device)
        return torch.cat([a_h * h, a_w * w, a_w * ones], dim=1)

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before normalisation (what a softmax classifier head sees)."""
        return self.head(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding of inputs ``x``, shape ``(n, embedding_dim)``."""
        return F.normalize(self.forward_raw(x), dim=1)
