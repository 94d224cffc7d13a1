"""MoA calls from embeddings: cosine kNN against an atlas, class prototypes,
top-k tables and compound-level aggregation.

All functions work on plain arrays (any embedding: ours, PCA, raw z-scores),
so the baselines and the model share exactly the same prediction code.

Exact search is a chunked matrix product in torch: the query is processed in
blocks so memory is ``O(chunk x n_ref)`` whatever the number of queries. A
``faiss`` backend (``IndexFlatIP``, exact too) is used when asked for and
installed (``pip install moaspace[faiss]``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import special

from moaspace.errors import InputError, MoaspaceError

logger = logging.getLogger(__name__)

#: how :func:`predict` calls a MoA: distance-weighted cosine kNN vote in the embedding,
#: nearest MoA prototype of the embedding, or nearest MoA prototype of the encoder's last
#: hidden layer (a trained model's only; stored with its atlas)
PREDICTORS = ("knn", "prototype", "hidden_prototype")


def l2_normalize(x: np.ndarray, eps: float = 1e-12, dtype=np.float32) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero), as ``dtype``."""
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def knn_search(
    query: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    chunk_size: int = 2048,
    backend: str = "torch",
    normalize: bool = True,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours.

    Returns ``(similarities, indices)`` of shape ``(n_query, k)``, sorted by
    decreasing similarity. ``exclude_self`` drops the match of query ``i`` with
    reference ``i`` (for leave-one-out on the same matrix).
    """
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise InputError(
            f"query {query.shape} and reference {reference.shape} must be 2-D with the same "
            "number of columns"
        )
    n_ref = reference.shape[0]
    k_eff = min(k + int(exclude_self), n_ref)
    if k_eff < 1:
        raise InputError("the reference is empty")
    q = l2_normalize(query) if normalize else np.asarray(query, np.float32)
    r = l2_normalize(reference) if normalize else np.asarray(reference, np.float32)
    if backend == "faiss":
        sims, idx = _faiss_search(q, r, k_eff)
    elif backend == "torch":
        s, i = topk_similarity(torch.from_numpy(np.ascontiguousarray(q)),
                               torch.from_numpy(np.ascontiguousarray(r)), k_eff,
                               chunk_size=chunk_size)
        sims, idx = s.numpy(), i.numpy()
    else:
        raise InputError(f"unknown kNN backend {backend!r}; use 'torch' or 'faiss'")
    if exclude_self:
        sims, idx = _drop_self(sims, idx, k)
    return sims[:, :k], idx[:, :k]


def topk_similarity(
    query: torch.Tensor, reference: torch.Tensor, k: int, *, chunk_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner products of each query row with the reference rows, in chunks.

    The one exact-search kernel of the package: :func:`knn_search` (numpy in,
    CPU) and the training loop's validation score (tensors on the training
    device) both call it, so validation F1 and ``moaspace predict`` agree.
    Rows must already be unit vectors for cosine similarity. Returns CPU
    tensors ``(similarities, indices)`` of shape ``(n_query, k)``.
    """
    k = int(min(k, reference.shape[0]))
    # bound the block of similarities (chunk x n_ref floats) to ~64 MB whatever the atlas size
    chunk_size = max(1, min(int(chunk_size), (64 << 20) // (4 * max(1, reference.shape[0]))))
    sims = torch.empty((query.shape[0], k), dtype=torch.float32)
    idx = torch.empty((query.shape[0], k), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, query.shape[0], chunk_size):
            block = query[start:start + chunk_size]
            s, i = torch.topk(block @ reference.T, k, dim=1)
            sims[start:start + len(block)] = s.float().cpu()
            idx[start:start + len(block)] = i.cpu()
    return sims, idx


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int):
    rows = np.arange(len(idx))[:, None]
    keep = idx != rows
    # keep the first k non-self entries of each row (order preserved)
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(sims, order, 1)[:, :k], np.take_along_axis(idx, order, 1)[:, :k]


def _faiss_search(q: np.ndarray, r: np.ndarray, k: int):
    try:
        import faiss
    except ImportError as exc:
        raise MoaspaceError(
            "the faiss backend needs faiss: pip install 'moaspace[faiss]' (or faiss-cpu)"
        ) from exc
    index = faiss.IndexFlatIP(r.shape[1])
    index.add(np.ascontiguousarray(r, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
    return sims, idx.astype(np.int64)


def encode_labels(labels: Sequence, classes: Sequence | None = None) -> tuple[np.ndarray, list]:
    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels)) if classes is None else [str(c) for c in classes]
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([lookup.get(x, -1) for x in labels], dtype=np.int64)
    return codes, classes


def knn_scores(
    sims: np.ndarray,
    idx: np.ndarray,
    ref_codes: np.ndarray,
    n_classes: int,
    *,
    weighting: str = "distance",
) -> np.ndarray:
    """Vote of the neighbours into per-class scores that sum to 1 per query.

    ``distance``: weight 1 / (cosine distance + 1e-3), so a near-identical
    neighbour dominates; ``uniform``: plain majority vote.
    """
    if weighting == "distance":
        weights = 1.0 / (np.clip(1.0 - sims, 0.0, None) + 1e-3)
    elif weighting == "uniform":
        weights = np.ones_like(sims)
    else:
        raise InputError(f"unknown weighting {weighting!r}; use 'distance' or 'uniform'")
    scores = np.zeros((len(idx), n_classes), np.float64)
    neighbour_codes = ref_codes[idx]
    valid = neighbour_codes >= 0
    rows = np.repeat(np.arange(len(idx)), idx.shape[1]).reshape(idx.shape)
    np.add.at(scores, (rows[valid], neighbour_codes[valid]), weights[valid])
    total = scores.sum(axis=1, keepdims=True)
    return (scores / np.where(total > 0, total, 1.0)).astype(np.float32)


def knn_predict(
    query: np.ndarray,
    reference: np.ndarray,
    ref_labels: Sequence,
    *,
    k: int = 10,
    weighting: str = "distance",
    classes: Sequence | None = None,
    backend: str = "torch",
    chunk_size: int = 2048,
) -> tuple[np.ndarray, list]:
    """Per-class kNN scores (n_query x n_classes) and the class list."""
    codes, classes = encode_labels(ref_labels, classes)
    sims, idx = knn_search(query, reference, k, backend=backend, chunk_size=chunk_size)
    return knn_scores(sims, idx, codes, len(classes), weighting=weighting), classes


def prototypes(reference: np.ndarray, ref_labels: Sequence, classes: Sequence | None = None):
    """Class centres: the normalised mean of each class's normalised embeddings."""
    codes, classes = encode_labels(ref_labels, classes)
    r = l2_normalize(reference)
    centres = np.zeros((len(classes), r.shape[1]), np.float32)
    np.add.at(centres, codes[codes >= 0], r[codes >= 0])
    return l2_normalize(centres), classes


def prototype_scores(
    query: np.ndarray, centres: np.ndarray, temperature: float = 0.1
) -> np.ndarray:
    """Softmax over cosine similarities to the class centres."""
    return cosine_softmax(l2_normalize(query) @ centres.T, temperature).astype(np.float32)


def cosine_softmax(cos: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Row-wise softmax of cosines to class centres over ``temperature`` (the scores of
    :func:`prototype_scores`, from cosines already computed); dtype follows ``cos``."""
    return special.softmax(np.asarray(cos) / temperature, axis=1)


def top_k_table(
    scores: np.ndarray, classes: Sequence, k: int = 5, index: Sequence | None = None
) -> pd.DataFrame:
    """Long table: one row per query and rank with the class and its score."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    classes = np.asarray(classes, dtype=object)
    index = np.arange(len(scores)) if index is None else np.asarray(index)
    return pd.DataFrame(
        {
            "query": np.repeat(index, k),
            "rank": np.tile(np.arange(1, k + 1), len(scores)),
            "moa": classes[order].ravel(),
            "score": np.take_along_axis(scores, order, 1).ravel(),
        }
    )


def aggregate_scores(scores: np.ndarray, groups: Sequence, how: str = "mean") -> pd.DataFrame:
    """Combine the signature-level scores of each group (compound) into one call.

    ``mean`` averages the class scores (soft vote); ``vote`` counts top-1 calls.
    Returns a DataFrame indexed by group with one column per class.
    """
    groups = pd.Index(np.asarray(groups).astype(str))
    frame = pd.DataFrame(scores, index=groups)
    if how == "mean":
        out = frame.groupby(level=0, sort=True).mean()
    elif how == "vote":
        top = np.zeros_like(scores)
        top[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
        out = pd.DataFrame(top, index=groups).groupby(level=0, sort=True).mean()
    else:
        raise InputError(f"unknown aggregation {how!r}; use 'mean' or 'vote'")
    return out


def nearest_compounds(
    idx: np.ndarray, sims: np.ndarray, ref_compounds: np.ndarray, n: int = 3
) -> list[str]:
    """The ``n`` distinct reference compounds nearest to each query, as 'id:sim;...'."""
    out = []
    for row_idx, row_sims in zip(idx, sims, strict=True):
        seen: dict[str, float] = {}
        for j, s in zip(row_idx, row_sims, strict=True):
            c = str(ref_compounds[j])
            if c not in seen:
                seen[c] = float(s)
            if len(seen) == n:
                break
        out.append(";".join(f"{c}:{s:.3f}" for c, s in seen.items()))
    return out
