"""The MoA predictor: the one rule that calls MoAs, fitted, scored and cross-fitted here.

Everything that talks about "the model's calls" goes through a :class:`MoaPredictor`:

* the training plan early-stops on :meth:`MoaPredictor.macro_f1` of a predictor fitted on
  the training rows each epoch;
* the input candidates (raw or whitened input) are chosen by it;
* ``predict`` calls with it (:meth:`MoaPredictor.class_scores`);
* the calibration maps its scores (for the stacked prototypes, scores of validation
  rows the prototypes never saw: :func:`crossfit_cosines`);
* ``explain`` attributes :meth:`MoaPredictor.torch_scores`.

Three kinds (``ModelConfig.predictor``):

``hidden_prototype`` (default)
    Nearest MoA prototype in the *prototype layer*: the last hidden layer stacked with
    the within-class whitened signature, weighted by the fitted ``view_weights``
    (:mod:`moaspace.model.prototypes`). The name is kept from when the layer was the
    hidden layer alone (models without whitening still use only that).
``prototype``
    Nearest MoA prototype of the unit embedding.
``knn``
    Distance-weighted cosine kNN vote among the fitted rows' embeddings (the atlas).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from moaspace._core.neighbors import (
    PREDICTORS,
    knn_scores,
    knn_search,
    l2_normalize,
    prototype_scores,
    prototypes,
)
from moaspace.errors import InputError
from moaspace.model.data import RowSource
from moaspace.model.module import MoaNet, embed_row_source, macro_f1
from moaspace.model.prototypes import (
    ViewSums,
    fit_view_weights,
    stacked_prototypes,
    view_scores,
)

__all__ = ["PREDICTORS", "MoaPredictor", "crossfit_cosines", "fit_predictor", "predictor_layer"]

#: rows on which the view weights are fitted (the spreads need no more)
VIEW_WEIGHT_SAMPLE = 20_000


def predictor_layer(kind: str) -> str:
    """The layer of the network a predictor of ``kind`` reads (:data:`moaspace.model.module.LAYERS`)."""
    if kind not in PREDICTORS:
        raise InputError(f"predictor must be one of {list(PREDICTORS)}, got {kind!r}")
    return "prototype" if kind == "hidden_prototype" else "embedding"


@dataclass(frozen=True)
class MoaPredictor:
    """A fitted MoA predictor.

    Parameters
    ----------
    kind : {"knn", "prototype", "hidden_prototype"}
        The rule (see the module docstring).
    n_classes : int
        Number of MoAs (columns of the scores, in the model's sorted MoA order).
    centres : numpy.ndarray, optional
        ``(n_classes, width)`` prototypes in the predictor's layer (prototype kinds).
    view_weights : tuple of float, optional
        ``(a_h, a_w)`` of the prototype layer (``hidden_prototype`` with whitening).
    atlas, atlas_codes : numpy.ndarray, optional
        Embeddings and MoA codes of the fitted rows (``knn``).
    k : int, default 10
        Neighbours of the kNN vote.
    weighting : {"distance", "uniform"}, default "distance"
        Weights of the kNN vote.
    """

    kind: str
    n_classes: int
    centres: np.ndarray | None = None
    view_weights: tuple[float, float] | None = None
    atlas: np.ndarray | None = None
    atlas_codes: np.ndarray | None = None
    k: int = 10
    weighting: str = "distance"

    @property
    def layer(self) -> str:
        """The network layer this predictor reads."""
        return predictor_layer(self.kind)

    def features(self, net: MoaNet, source: RowSource, idx: np.ndarray,
                 device=None) -> np.ndarray:
        """The predictor's layer for rows of a row source (float32, eval mode).

        Parameters
        ----------
        net : MoaNet
            The trained network.
        source : RowSource
            Signatures in the model's gene order.
        idx : numpy.ndarray
            Rows of ``source`` to read.
        device : torch.device, optional
            Where the forward pass runs (default: the network's device).

        Returns
        -------
        numpy.ndarray
            ``(len(idx), width)`` float32.
        """
        return embed_row_source(net, source, idx, device, layers=(self.layer,),
                                out_device="cpu", view_weights=self.view_weights)[0].numpy()

    def cosines(self, features: np.ndarray) -> np.ndarray:
        """Cosine of each row of the layer to each MoA prototype (prototype kinds).

        Parameters
        ----------
        features : numpy.ndarray
            Rows of the predictor's layer (:meth:`features`).

        Returns
        -------
        numpy.ndarray
            ``(n, n_classes)``.
        """
        return l2_normalize(features) @ self.centres.T

    def class_scores(self, features: np.ndarray, sims: np.ndarray | None = None,
                     idx: np.ndarray | None = None) -> np.ndarray:
        """Per-MoA scores (rows sum to one): softmax of the prototype cosines, or the kNN
        vote shares.

        Parameters
        ----------
        features : numpy.ndarray
            Rows of the predictor's layer (:meth:`features`).
        sims, idx : numpy.ndarray, optional
            ``knn``: the rows' nearest atlas rows, most similar first, when already
            searched (at least ``k`` of them).

        Returns
        -------
        numpy.ndarray
            ``(n, n_classes)``, columns in the model's sorted MoA order.
        """
        if self.kind != "knn":
            return prototype_scores(features, self.centres)
        if sims is None:
            sims, idx = knn_search(features, self.atlas, self.k)
        return knn_scores(sims[:, :self.k], idx[:, :self.k], self.atlas_codes, self.n_classes,
                          weighting=self.weighting)

    def macro_f1(self, net: MoaNet, source: RowSource, idx: np.ndarray,
                 truth: np.ndarray) -> float:
        """Macro-F1 of this predictor's top call on rows of a row source.

        Parameters
        ----------
        net : MoaNet
            The trained network.
        source : RowSource
            Signatures in the model's gene order.
        idx : numpy.ndarray
            Rows to call.
        truth : numpy.ndarray
            Their true MoA codes.

        Returns
        -------
        float
            Macro-F1 over the MoAs present in ``truth`` (NaN without rows).
        """
        if len(idx) == 0:
            return float("nan")
        pred = self.class_scores(self.features(net, source, idx)).argmax(axis=1)
        return macro_f1(np.asarray(truth), pred)

    def torch_scores(self, net: MoaNet, x: torch.Tensor) -> torch.Tensor:
        """Differentiable pre-softmax scores: the prototype cosines that
        :meth:`class_scores` turns into a softmax (what ``explain`` attributes). Not
        defined for ``knn``, whose vote has no gradient.

        Parameters
        ----------
        net : MoaNet
            The trained network (in eval mode for inference).
        x : torch.Tensor
            Signatures in the model's gene order.

        Returns
        -------
        torch.Tensor
            ``(n, n_classes)``.
        """
        if self.kind == "knn":
            raise InputError("the kNN vote has no gradient: explain a prototype predictor")
        enc = net.encoder
        if self.kind == "hidden_prototype":
            feats = enc.prototype_features(x, view_weights=self.view_weights)
        else:
            feats = enc(x)
        feats = torch.nn.functional.normalize(feats.float(), dim=1)
        return feats @ torch.as_tensor(self.centres, dtype=feats.dtype, device=feats.device).T


def _views(net: MoaNet, source: RowSource, idx: np.ndarray, block: int = 8192):
    """Yield ``(positions, hidden, whitened)`` for blocks of rows ``idx`` (eval mode);
    ``whitened`` is None for a network without whitening."""
    enc = net.encoder
    was_training = net.training
    net.eval()
    block = min(block, source.chunk_rows or block)  # a backed source reads in chunks
    device = next(net.parameters()).device
    try:
        for start in range(0, len(idx), block):
            rows = idx[start:start + block]
            with torch.no_grad():
                x = source.rows(rows).float().to(device)
                hidden = enc.hidden(x).float().cpu().numpy()
                whitened = (enc.whiten(enc._clip(x)).float().cpu().numpy()
                            if enc.whiten is not None else None)
            yield slice(start, start + len(rows)), hidden, whitened
    finally:
        net.train(was_training)


def view_sums(net: MoaNet, source: RowSource, codes: np.ndarray, rows: np.ndarray,
              n_classes: int, keep: list | None = None,
              multi: tuple[np.ndarray, np.ndarray] | None = None) -> ViewSums:
    """Per-MoA sums of the unit views of rows ``rows`` (``codes``: MoA code of every row
    of ``source``); ``keep``: a list that receives each block's ``(hidden, whitened)``;
    ``multi``: ``(rows, sets)``, multi-MoA rows of ``source`` and their bool ``(n,
    n_classes)`` MoA sets, each row added to every class of its set
    (``ModelConfig.multi_moa_classes``)."""
    enc = net.encoder
    sums = ViewSums(n_classes, enc.hidden_dim, enc.n_genes if enc.whiten is not None else None)
    for pos, hidden, whitened in _views(net, source, rows):
        sums.add(hidden, whitened, codes[rows[pos]])
        if keep is not None:
            keep.append((hidden, whitened))
    if multi is not None and len(multi[0]):
        multi_rows, sets = np.asarray(multi[0]), np.asarray(multi[1], dtype=bool)
        for pos, hidden, whitened in _views(net, source, multi_rows):
            member, code = np.nonzero(sets[pos])
            sums.add(hidden[member], None if whitened is None else whitened[member], code)
    return sums


def _fit_view_weights(net: MoaNet, source: RowSource, rows: np.ndarray, sums: ViewSums,
                      beta: float, parts: list | None = None) -> tuple[float, float]:
    """The view weights on ``rows`` (a seeded sample of at most VIEW_WEIGHT_SAMPLE);
    ``parts``: the views of all ``rows`` when already computed (fewer rows than that)."""
    if not parts:
        sample = rows
        if len(sample) > VIEW_WEIGHT_SAMPLE:
            sample = np.sort(np.random.default_rng(0).choice(rows, VIEW_WEIGHT_SAMPLE,
                                                             replace=False))
        parts = [(h, w) for _, h, w in _views(net, source, sample)]
    s_hidden, s_whitened = view_scores(np.vstack([h for h, _ in parts]),
                                       np.vstack([w for _, w in parts]), sums.centres())
    # float32 round trip: the weights the encoder's buffer will hold, bit for bit
    weights = np.asarray(fit_view_weights(s_hidden, s_whitened, beta), dtype=np.float32)
    return float(weights[0]), float(weights[1])


def fit_predictor(kind: str, net: MoaNet, source: RowSource, codes: np.ndarray,
                  rows: np.ndarray, n_classes: int, *, beta: float = 0.5, k: int = 10,
                  weighting: str = "distance",
                  view_weights: tuple[float, float] | None = None,
                  multi: tuple[np.ndarray, np.ndarray] | None = None) -> MoaPredictor:
    """Fit a predictor of ``kind`` on rows ``rows`` of ``source``.

    Parameters
    ----------
    kind : {"knn", "prototype", "hidden_prototype"}
        The rule.
    net : MoaNet
        The trained network (left unchanged: the view weights are the predictor's).
    source : RowSource
        All signatures in the model's gene order.
    codes : numpy.ndarray
        MoA code of every row of ``source`` (-1: none).
    rows : numpy.ndarray
        The rows to fit on (their codes must be >= 0).
    n_classes : int
        Number of MoAs.
    beta : float, default 0.5
        Prior weight of the whitened view (``ModelConfig.linear_view_weight``).
    k, weighting
        The kNN vote's settings.
    view_weights : tuple of float, optional
        Keep these view weights instead of fitting them (a refit on more rows).
    multi : tuple of numpy.ndarray, optional
        ``hidden_prototype`` only: multi-MoA rows and their MoA sets, averaged into every
        class of their set (:func:`view_sums`; ``TrainData.prototype_multi``).

    Returns
    -------
    MoaPredictor
    """
    codes = np.asarray(codes)
    rows = np.asarray(rows)
    base = MoaPredictor(kind=kind, n_classes=int(n_classes), k=int(k), weighting=weighting)
    if kind == "hidden_prototype":
        # the weights' sample is every row up to VIEW_WEIGHT_SAMPLE: one pass serves both
        keep = [] if view_weights is None and len(rows) <= VIEW_WEIGHT_SAMPLE else None
        sums = view_sums(net, source, codes, rows, n_classes, keep=keep, multi=multi)
        if sums.whitened is not None and view_weights is None:
            view_weights = _fit_view_weights(net, source, rows, sums, beta, parts=keep)
        return prototype_predictor(base, sums, view_weights)
    emb = base.features(net, source, rows)
    if kind == "knn":
        return replace(base, atlas=emb, atlas_codes=codes[rows])
    return replace(base, centres=embedding_prototypes(emb, codes[rows], n_classes))


def prototype_predictor(base: MoaPredictor, sums: ViewSums,
                        view_weights: tuple[float, float] | None) -> MoaPredictor:
    """A ``hidden_prototype`` predictor from per-MoA view sums."""
    weights = view_weights if sums.whitened is not None else None
    return replace(base, centres=stacked_prototypes(sums.centres(), weights),
                   view_weights=weights)


def embedding_prototypes(emb: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit mean of each MoA's unit embeddings (zero rows for MoAs without rows): the
    shared :func:`moaspace._core.neighbors.prototypes`, by MoA code."""
    return prototypes(emb, np.asarray(codes), list(range(n_classes)))[0]


def crossfit_cosines(net: MoaNet, source: RowSource, codes: np.ndarray, train_rows: np.ndarray,
                     val_rows: np.ndarray, groups: np.ndarray, n_classes: int,
                     view_weights: tuple[float, float] | None, *, n_folds: int = 5,
                     seed: int = 0, multi: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Prototype-layer cosines of the validation rows, each scored by prototypes fitted on
    the training rows and the *other* validation folds (``hidden_prototype``).

    The prototypes a refit model ships are fitted on train + val; calibrating them on the
    validation rows they were fitted on would calibrate in-sample scores. Each fold of
    validation compounds (``groups``) is instead scored by prototypes that never saw it,
    fitted on nearly the same rows as the shipped ones. ``multi``: as for
    :func:`fit_predictor` (training rows).

    Returns
    -------
    cosines : numpy.ndarray
        ``(len(val_rows), n_classes)``, in the order of ``val_rows``.
    folds : list of numpy.ndarray
        Positions (into ``val_rows``) of each fold.
    """
    groups = np.asarray(groups).astype(str)
    names = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_group = {names[g]: i % n_folds for i, g in enumerate(order)}
    fold = np.array([fold_of_group[g] for g in groups], dtype=np.int64)
    folds = [np.flatnonzero(fold == f) for f in range(min(n_folds, len(names)))]
    train_sums = view_sums(net, source, codes, train_rows, n_classes, multi=multi)
    fold_sums = [view_sums(net, source, codes, val_rows[f], n_classes) for f in folds]
    base = MoaPredictor(kind="hidden_prototype", n_classes=int(n_classes))
    base = replace(base, view_weights=view_weights if train_sums.whitened is not None else None)
    out = np.zeros((len(val_rows), n_classes), dtype=np.float32)
    for f, positions in enumerate(folds):
        sums = train_sums
        for g, other in enumerate(fold_sums):
            if g != f:
                sums = sums + other
        fitted = prototype_predictor(base, sums, base.view_weights)
        out[positions] = fitted.cosines(fitted.features(net, source, val_rows[positions]))
    return out, folds
