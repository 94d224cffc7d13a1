"""Classification, retrieval and hierarchy metrics (scikit-learn where it has them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
    silhouette_score,
)

from moaspace._core.neighbors import knn_search, l2_normalize


def top_k_accuracy(y_true_codes: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the ``k`` highest scores.

    Ties are broken by column order (stable sort). A true code that is not a column of
    ``scores`` (e.g. ``-1`` for a class never trained on) is never a hit.

    Parameters
    ----------
    y_true_codes : numpy.ndarray of int, shape (n,)
        Column index in ``scores`` of each row's true class.
    scores : numpy.ndarray, shape (n, n_classes)
        Per-class scores, higher = more likely.
    k : int
        Number of top-scoring classes that count; capped at ``n_classes``.

    Returns
    -------
    float
        Top-k accuracy in [0, 1] (NaN for no rows).
    """
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y_true_codes)[:, None]).any(axis=1).mean())


def classification_metrics(
    y_true: Sequence, scores: np.ndarray, classes: Sequence
) -> dict:
    """Accuracy, macro/weighted F1, top-3/5 accuracy and per-class P/R/F1 of argmax calls.

    Each row is called as its highest-scoring class. Labels of ``y_true`` outside
    ``classes`` count as errors (a class never seen in training cannot be predicted) and
    are kept in macro-F1's label set. The F1 averages run over the labels present in
    ``y_true``; undefined precision, recall or F1 count as 0.

    Parameters
    ----------
    y_true : sequence, length n
        True label of each row (compared as ``str``).
    scores : numpy.ndarray, shape (n, n_classes)
        Per-class scores, higher = more likely.
    classes : sequence, length n_classes
        Class names of the columns of ``scores`` (compared as ``str``).

    Returns
    -------
    dict
        ``n`` (rows), ``accuracy``, ``macro_f1``, ``weighted_f1``, ``top3_accuracy``,
        ``top5_accuracy`` (floats in [0, 1]) and ``per_moa``: for each label of ``y_true``
        (sorted), ``{"precision", "recall", "f1", "support"}``.
    """
    classes = [str(c) for c in classes]
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(classes, dtype=object)[scores.argmax(axis=1)].astype(str)
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([lookup.get(y, -1) for y in y_true])
    labels = sorted(set(y_true))  # macro over the classes present in the truth
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted",
                                      zero_division=0)),
        "top3_accuracy": top_k_accuracy(codes, scores, 3),
        "top5_accuracy": top_k_accuracy(codes, scores, 5),
        "per_moa": {
            label: {"precision": float(pi), "recall": float(ri), "f1": float(fi),
                    "support": int(si)}
            for label, pi, ri, fi, si in zip(labels, p, r, f, s, strict=True)
        },
    }


def neighbour_label_shares(
    embedding: np.ndarray, labels: dict[str, Sequence], k: int = 10
) -> dict[str, float]:
    """Mean share of each point's k nearest neighbours (itself excluded) with the same label.

    On a hierarchical space: same-compound share > 0 and same-MoA share higher
    still, both far above chance.
    """
    _, idx = knn_search(embedding, embedding, k, exclude_self=True)
    out = {}
    for name, values in labels.items():
        values = np.asarray(values).astype(str)
        out[name] = float((values[idx] == values[:, None]).mean())
    return out


def silhouette(
    embedding: np.ndarray, labels: Sequence, *, max_n: int = 5000, seed: int = 0
) -> float:
    """Cosine silhouette (subsampled to ``max_n`` points for speed); nan with fewer than 2
    labels, or when every point has a label of its own (e.g. compounds of consensus data,
    one signature each: a silhouette needs a cluster with two points)."""
    labels = np.asarray(labels).astype(str)
    if len(set(labels)) < 2 or len(labels) < 3 or len(set(labels)) >= len(labels):
        return float("nan")
    rng = np.random.default_rng(seed)
    if len(labels) > max_n:
        pick = rng.choice(len(labels), max_n, replace=False)
        embedding, labels = embedding[pick], labels[pick]
        if not 2 <= len(set(labels)) < len(labels):
            return float("nan")
    return float(silhouette_score(l2_normalize(embedding), labels, metric="cosine"))


def retrieval_map(
    query: np.ndarray, query_labels: Sequence, reference: np.ndarray | None = None,
    ref_labels: Sequence | None = None, *, max_n: int = 2000, seed: int = 0,
) -> float:
    """Mean average precision of retrieving same-label items by cosine similarity.

    Each query ranks the reference items by cosine similarity; its average precision is
    that of the items sharing its label. Without a reference, items are retrieved among
    the queries themselves (self excluded): e.g. a held-out compound's other signatures.
    Queries with no item of their label are skipped.

    Parameters
    ----------
    query : numpy.ndarray, shape (n_query, d)
        Query embeddings.
    query_labels : sequence, length n_query
        Label of each query (compared as ``str``).
    reference : numpy.ndarray, shape (n_ref, d), optional
        Items to retrieve; default None: the queries themselves.
    ref_labels : sequence, length n_ref, optional
        Labels of ``reference``; needed when it is given.
    max_n : int, default 2000
        At most this many queries (a seeded random subsample) are scored.
    seed : int, default 0
        Seed of that subsample.

    Returns
    -------
    float
        Mean average precision in [0, 1]; NaN when no query has an item of its label.
    """
    q_labels = np.asarray(query_labels).astype(str)
    rng = np.random.default_rng(seed)
    pick = np.arange(len(q_labels))
    if len(pick) > max_n:
        pick = np.sort(rng.choice(len(pick), max_n, replace=False))
    same_set = reference is None
    if same_set:
        reference, r_labels = query, q_labels
    else:
        r_labels = np.asarray(ref_labels).astype(str)
    sims = l2_normalize(query[pick]) @ l2_normalize(reference).T
    aps = []
    for row, i in enumerate(pick):
        relevant = r_labels == q_labels[i]
        s = sims[row]
        if same_set:
            mask = np.ones(len(r_labels), bool)
            mask[i] = False
            relevant, s = relevant[mask], s[mask]
        if relevant.any():
            aps.append(average_precision_score(relevant, s))
    return float(np.mean(aps)) if aps else float("nan")
