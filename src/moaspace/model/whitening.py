"""Within-class whitening of the input signatures, and the linear view it gives.

Why: L1000 genes are co-regulated, so signatures of unrelated compounds share
large correlated programmes (proliferation, stress) that carry little MoA
information and dominate cosine similarities of raw z-scores. Shrinkage LDA is
strong on such data because it measures distances after dividing out the
within-class covariance. :func:`fit_whitening` estimates that covariance from
the training signatures (residuals around their MoA means), shrinks it towards a
scaled identity and returns the symmetric (ZCA) whitening matrix, so whitened
coordinates stay aligned with the genes (input dropout still drops "genes", and
attributions still read per gene).

The estimate streams the rows in chunks and uses at most ``max_rows`` of them
(a seeded random subset), so 300,000 training signatures cost no more than
100,000. For more than ``MAX_WHITENING_GENES`` genes (all 12,328 genes: a
600 MB matrix) whitening is not fitted; the model then trains on the raw input.

Measured on the real consensus signatures (5-fold CV, 3 seeds) and the default
simulator (3 seeds, both splits), shrinkage from 0.3 to 0.8 gave the same
nearest-centroid macro-F1 within 0.01-0.02 on every data set; 0.5 sits in the
middle of that plateau (``docs/model.md``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from moaspace.model.data import RowSource

logger = logging.getLogger(__name__)

#: above this many genes the p x p whitening matrix is not fitted
MAX_WHITENING_GENES = 4000


def fit_whitening(source: RowSource, rows: np.ndarray, codes: np.ndarray, *,
                  shrinkage: float = 0.5, max_rows: int = 100_000, seed: int = 0,
                  chunk: int = 8192, clip: float | None = None) -> dict[str, np.ndarray]:
    """Mean, per-gene scale and ZCA matrix whitening the within-class covariance.

    ``rows``: the training rows of ``source``; ``codes``: their class (MoA) codes.
    The covariance of the residuals ``x - mean(class)`` is computed on genes scaled to
    unit residual variance, shrunk as ``(1 - shrinkage) * C + shrinkage * mean(diag C) * I``
    and inverted as ``V diag(s ** -1/2) V^T``. Apply as ``((x - mean) / scale) @ matrix``.
    ``clip``: clip the z-scores at ``+-clip`` first, as the encoder does before it whitens
    (``ModelConfig.clip``). Fitted on unclipped values, a gene that reaches z-scores far
    beyond the clip in one class (TSC22D3/GILZ at 12-40 in glucocorticoid agonists) gets a
    class mean and scale the clipped inputs never reach, and its whitened coordinate in that
    class's prototype can even change sign.
    """
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    rows, codes = np.asarray(rows), np.asarray(codes)
    if len(rows) > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_rows, replace=False))
        rows, codes = rows[pick], codes[pick]
    p = source.n_vars
    n_classes = int(codes.max()) + 1
    gram = np.zeros((p, p), dtype=np.float64)
    sums = np.zeros((n_classes, p), dtype=np.float64)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    step = source.chunk_rows or chunk
    for start in range(0, len(rows), step):
        x = source.rows(rows[start:start + step]).numpy().astype(np.float64)
        if clip is not None:
            # estimated on what it is applied to: the encoder whitens clipped z-scores
            np.clip(x, -clip, clip, out=x)
        gram += x.T @ x
        np.add.at(sums, codes[start:start + step], x)
    n = float(len(rows))
    present = counts > 0
    class_means = sums[present] / counts[present, None]
    # residual scatter: sum x x^T - sum_k n_k m_k m_k^T
    scatter = gram - (class_means * counts[present, None]).T @ class_means
    cov = scatter / max(1.0, n - present.sum())
    scale = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    corr = cov / np.outer(scale, scale)
    eigval, eigvec = np.linalg.eigh(corr)
    eigval = np.clip(eigval, 0.0, None)
    shrunk = (1 - shrinkage) * eigval + shrinkage * eigval.mean()
    matrix = (eigvec / np.sqrt(np.clip(shrunk, 1e-8, None))) @ eigvec.T
    mean = sums.sum(axis=0) / n
    logger.info("input whitening fitted on %d training signatures (%d genes, shrinkage %.2f)",
                len(rows), p, shrinkage)
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32),
            "matrix": matrix.astype(np.float32)}


class InputWhitening(torch.nn.Module):
    """A fixed (not trained) affine map ``((x - mean) / scale) @ matrix``; buffers only,
    so it is saved in ``model.pt`` with the network. Identity until :meth:`set`."""

    def __init__(self, n_genes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("scale", torch.ones(n_genes))
        self.register_buffer("matrix", torch.eye(n_genes))

    def set(self, fitted: dict[str, np.ndarray]) -> None:
        for name in ("mean", "scale", "matrix"):
            getattr(self, name).copy_(torch.as_tensor(fitted[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.scale) @ self.matrix
