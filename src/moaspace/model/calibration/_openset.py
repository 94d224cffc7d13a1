"""Open-set ("unknown mechanism") scores of queries, and the choice between them.

See the package docstring (:mod:`moaspace.model.calibration`) for what each score
measures and how one is chosen on validation data.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from moaspace._core.neighbors import knn_scores, knn_search, l2_normalize
from moaspace.errors import InputError

#: open-set scores; ``hidden_prototype`` needs a model's last hidden layer (not raw z-scores)
OPENSET_SCORES = ("prototype", "knn", "energy", "msp", "hidden_prototype")


def _prototype_scores(cos: np.ndarray, energy_scale: float) -> dict[str, np.ndarray]:
    """``prototype`` and ``energy`` unknown scores from cosines to the MoA prototypes
    (a prototype left out is ``-inf``): one definition for real and pseudo-unknowns."""
    cos = np.asarray(cos, dtype=np.float64)
    return {"prototype": 1.0 - cos.max(axis=1),
            "energy": -special.logsumexp(energy_scale * cos, axis=1) / energy_scale}


def _hidden_cosines(hidden: np.ndarray, hidden_centres: np.ndarray | None) -> np.ndarray:
    if hidden_centres is None:
        raise InputError("the hidden_prototype score needs hidden_centres (the model's "
                         "hidden_prototypes)")
    hidden = np.asarray(hidden, dtype=np.float32)
    hidden_centres = np.asarray(hidden_centres, dtype=np.float32)
    if hidden.ndim != 2 or hidden.shape[1] != hidden_centres.shape[1]:
        raise InputError(f"hidden activations {hidden.shape} do not match the hidden "
                         f"prototypes {hidden_centres.shape}")
    # the centres are used as stored: unit vectors for the hidden layer alone, and for a
    # prototype layer with a linear view they carry their discriminant's bias term
    # (moaspace.model.prototypes), which normalising would change
    return (l2_normalize(hidden) @ hidden_centres.T).astype(np.float64)


def openset_scores(
    z: np.ndarray,
    *,
    centres: np.ndarray,
    knn_sims: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    k: int = 10,
    class_scores: np.ndarray | None = None,
    energy_scale: float = 30.0,
    backend: str = "torch",
    hidden: np.ndarray | None = None,
    hidden_centres: np.ndarray | None = None,
    hidden_cos: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Unknown scores of queries ``z`` (higher = farther from every known MoA).

    ``centres``: unit MoA prototypes (:func:`moaspace._core.neighbors.prototypes`).
    ``knn_sims``: cosine similarities of each query's nearest atlas
    neighbours, sorted descending (or pass ``reference`` to compute them).
    ``class_scores``: per-class kNN vote shares, for ``msp``.
    ``hidden``, ``hidden_centres``: the queries' last-hidden-layer activations
    and that layer's MoA prototypes (``MoaModel.embed(..., layer="hidden")``,
    ``MoaModel.hidden_prototypes``), for ``hidden_prototype``: one minus the
    cosine to the nearest of them; ``hidden_cos``: those cosines already computed
    (e.g. cross-fitted, :func:`moaspace.model.predictor.crossfit_cosines`).
    Returns a dict over :data:`OPENSET_SCORES` (``msp`` only with
    ``class_scores``, ``hidden_prototype`` only with ``hidden``).
    """
    out = _prototype_scores(l2_normalize(z) @ np.asarray(centres, np.float32).T, energy_scale)
    if hidden_cos is None and hidden is not None:
        hidden_cos = _hidden_cosines(hidden, hidden_centres)
    if hidden_cos is not None:
        out["hidden_prototype"] = 1.0 - np.asarray(hidden_cos, np.float64).max(axis=1)
    if knn_sims is None:
        if reference is None:
            raise InputError("openset_scores needs knn_sims or a reference to search")
        knn_sims, _ = knn_search(z, reference, k, backend=backend)
    out["knn"] = 1.0 - np.asarray(knn_sims)[:, :k].mean(axis=1)
    if class_scores is not None:
        out["msp"] = 1.0 - np.asarray(class_scores).max(axis=1)
    return {name: np.asarray(v, dtype=np.float64) for name, v in out.items()}


def leave_moa_out_scores(
    z: np.ndarray,
    codes: np.ndarray,
    reference: np.ndarray,
    ref_codes: np.ndarray,
    centres: np.ndarray,
    *,
    k: int = 10,
    weighting: str = "distance",
    energy_scale: float = 30.0,
    backend: str = "torch",
    hidden: np.ndarray | None = None,
    hidden_centres: np.ndarray | None = None,
    hidden_cos: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Open-set scores of known queries with their own MoA removed from atlas and prototypes.

    Each query then looks like a signature of an MoA the model has never seen
    (a *pseudo-unknown*), which is how the open-set score is chosen without
    touching the test MoAs. ``codes``: MoA code of each query (>= 0).
    ``hidden``, ``hidden_centres``, ``hidden_cos``: as in :func:`openset_scores`.
    """
    n_classes = len(centres)
    rows = np.arange(len(codes))
    cos = (l2_normalize(z) @ np.asarray(centres, np.float32).T).astype(np.float64)
    cos[rows, codes] = -np.inf  # the query's own MoA is not there
    out = {**_prototype_scores(cos, energy_scale),
           "knn": np.empty(len(codes)), "msp": np.empty(len(codes))}
    if hidden_cos is None and hidden is not None:
        hidden_cos = _hidden_cosines(hidden, hidden_centres)
    if hidden_cos is not None:
        hcos = np.array(hidden_cos, dtype=np.float64)
        hcos[rows, codes] = -np.inf
        out["hidden_prototype"] = 1.0 - hcos.max(axis=1)
    for c in np.unique(codes):
        q = np.flatnonzero(codes == c)
        keep = np.flatnonzero(ref_codes != c)
        if len(keep) == 0:
            raise InputError("leave-own-MoA-out needs atlas signatures of at least two MoAs")
        sims, idx = knn_search(z[q], reference[keep], k, backend=backend)
        out["knn"][q] = 1.0 - sims.mean(axis=1)
        votes = knn_scores(sims, idx, ref_codes[keep], n_classes, weighting=weighting)
        out["msp"][q] = 1.0 - votes.max(axis=1)
    return out



def choose_openset_score(aurocs: dict[str, float]) -> str:
    """The open-set score with the highest validation (pseudo-unknown) AUROC among those in
    ``aurocs`` (NaN counts as lowest; ties: the order of :data:`OPENSET_SCORES`)."""
    return max(aurocs, key=lambda n: (np.nan_to_num(aurocs[n], nan=-1.0),
                                      -OPENSET_SCORES.index(n)))

