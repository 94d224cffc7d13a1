"""The MoA prototypes of a trained network's prototype layer, fitted block by block.

``MoaModel.train`` fits them on the training rows of each candidate (to score it on
validation), again on the kept network (the atlas's ``hidden_prototypes``) and, with
``refit_prototypes``, once more on train + val rows. See :mod:`moaspace.model.prototypes`
for the stacked hidden/whitened layer and its view weights.
"""

from __future__ import annotations

import numpy as np
import torch

from moaspace.model.data import RowSource
from moaspace.model.module import MoaNet, embed_row_source, macro_f1
from moaspace.model.prototypes import (
    ViewSums,
    fit_view_weights,
    stacked_prototypes,
    unit_rows,
    view_scores,
)
from moaspace.model.train._data import TrainData


def _views(net: MoaNet, source: RowSource, idx: np.ndarray, block: int = 8192):
    """Yield ``(positions, hidden, whitened)`` for blocks of rows ``idx`` (eval mode)."""
    enc = net.encoder
    block = min(block, source.chunk_rows or block)  # a backed source reads in chunks
    for start in range(0, len(idx), block):
        rows = idx[start:start + block]
        with torch.no_grad():
            x = source.rows(rows).float()
            hidden = enc.hidden(x).numpy()
            whitened = enc.whiten(enc._clip(x)).numpy() if enc.whiten is not None else None
        yield slice(start, start + len(rows)), hidden, whitened


def fit_prototypes(net: MoaNet, data: TrainData, rows: np.ndarray, n_moas: int,
                   linear_view_weight: float,
                   weights_from: np.ndarray | None = None) -> np.ndarray:
    """MoA prototypes of ``net``'s prototype layer over ``rows``, one row per MoA code.

    With a linear view (:mod:`moaspace.model.prototypes`) its weights are fitted on
    a sample of ``rows`` (or of ``weights_from`` when given, leaving the fitted
    weights alone) and set on the encoder; ``linear_view_weight`` is the prior weight
    of the linear view (``ModelConfig.linear_view_weight``).
    """
    enc = net.encoder
    net.eval()
    codes = data.moa.numpy()
    if enc.whiten is None:
        sums = np.zeros((n_moas, enc.hidden_dim))
        for pos, hidden, _ in _views(net, data.x, rows):
            np.add.at(sums, codes[rows[pos]], unit_rows(hidden))
        return unit_rows(sums).astype(np.float32)
    sums = ViewSums(n_moas, enc.hidden_dim, enc.n_genes)
    for pos, hidden, whitened in _views(net, data.x, rows):
        sums.add(hidden, whitened, codes[rows[pos]])
    centres = sums.centres()
    if weights_from is None:
        sample = rows
        if len(sample) > 20_000:  # the spreads need no more
            sample = np.sort(np.random.default_rng(0).choice(rows, 20_000, replace=False))
        parts = [(h, w) for _, h, w in _views(net, data.x, sample)]
        s_hidden, s_whitened = view_scores(np.vstack([h for h, _ in parts]),
                                           np.vstack([w for _, w in parts]), centres)
        weights = fit_view_weights(s_hidden, s_whitened, linear_view_weight)
        enc.view_weights.copy_(torch.tensor(weights, dtype=enc.view_weights.dtype))
    weights = tuple(float(v) for v in enc.view_weights)
    return stacked_prototypes(centres, weights)


def prototype_val_f1(net: MoaNet, data: TrainData, centres: np.ndarray) -> float:
    """Validation macro-F1 of the nearest of ``centres`` (:func:`fit_prototypes`)."""
    if len(data.val_idx) == 0:
        return float("nan")
    feats = embed_row_source(net, data.x, data.val_idx, batch_size=8192,
                             layers=("prototype",), out_device="cpu")[0].numpy()
    pred = (feats @ centres.T).argmax(axis=1)
    return macro_f1(data.moa[data.val_idx].numpy(), pred)
