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
    ):
        super().__init__()
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
        """Activations of the last hidden layer, ``(n, hidden_dim)``.

        The margin losses pull the normalised output of every training MoA onto
        its class centre, which also pulls a signature of an unseen MoA onto
        some known centre; the layer before keeps more of what sets it apart,
        so the open-set score ``hidden_prototype`` reads it
        (:func:`moaspace.tl.calibrate.openset_scores`).
        """
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        return self.body(self.input_dropout(x))

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before normalisation (what a softmax classifier head sees)."""
        return self.head(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding, shape ``(n, embedding_dim)``."""
        return F.normalize(self.forward_raw(x), dim=1)
