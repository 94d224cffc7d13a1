"""MoA sets: parsing the ``obs["moa_set"]`` convention and the metrics of compounds with
several MoAs.

A compound's MoA set is written as its MoAs sorted and joined by ``|``
(``"a|b"``; one MoA: ``"a"``); NaN, None or ``""`` is the empty set (no MoA known).
``obs["moa"]`` holds the MoA of single-MoA compounds only (NaN for the others), so the
single-label metrics and the set metrics below never read the same column.

Every function taking ``true_sets`` also takes the ``|``-joined strings themselves. The
metrics score only rows whose true set is non-empty (a row without a known MoA has
nothing to hit); each returns NaN when no row is left. Plain numpy/pandas; nothing here
imports another moaspace layer but ``errors``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from moaspace.errors import InputError

SEP = "|"


def _parse_one(value) -> frozenset:
    if value is None:
        return frozenset()
    if isinstance(value, frozenset | set | list | tuple):
        return frozenset(str(v).strip() for v in value if str(v).strip())
    if not isinstance(value, str):
        if pd.isna(value):
            return frozenset()
        value = str(value)
    return frozenset(part.strip() for part in value.split(SEP) if part.strip())


def has_label(values: pd.Series) -> np.ndarray:
    """Bool per row: a label is there (not NaN/None and not blank). The one test of a
    present ``moa`` (a single MoA) or ``moa_set`` that prepare, split, the model,
    evaluate and the benchmark share."""
    return (values.notna() & (values.astype(str).str.strip() != "")).to_numpy()


def parse_moa_sets(values: Iterable) -> list[frozenset]:
    """MoA sets from ``|``-joined strings.

    Parameters
    ----------
    values : iterable
        A ``moa_set`` column (or any iterable) of ``|``-joined MoA names; NaN, None, ``""``
        and blank parts give the empty set; names are stripped of surrounding blanks.
        Sets, lists and tuples of names are taken as they are.

    Returns
    -------
    list of frozenset of str
        One set per value, in order.
    """
    return [_parse_one(v) for v in values]


def moa_sort_key(moa: str) -> tuple[str, str]:
    """The order of the MoAs in a ``|``-joined set: case-insensitive, ties by the exact
    text (as the Drug Repurposing Hub writes its entries: ``insulin sensitizer|PPAR
    receptor agonist``)."""
    return (moa.casefold(), moa)


def join_moa_set(moas: Iterable[str]) -> str:
    """A MoA set as its sorted, ``|``-joined names (``""`` for no MoA).

    Parameters
    ----------
    moas : iterable of str
        MoA names (duplicates are dropped).

    Returns
    -------
    str
        E.g. ``join_moa_set({"b", "a"}) == "a|b"``; sorted by :func:`moa_sort_key`, as
        ``prepare`` writes ``obs["moa_set"]``.

    Raises
    ------
    InputError
        If a name contains ``|`` (it would read back as two MoAs).
    """
    names = sorted({str(m) for m in moas}, key=moa_sort_key)
    bad = [m for m in names if SEP in m]
    if bad:
        raise InputError(f"MoA names {bad} contain {SEP!r}, the separator of MoA sets")
    return SEP.join(names)


def multi_moa_mask(true_sets: Sequence[frozenset]) -> np.ndarray:
    """Rows whose set holds two MoAs or more.

    Parameters
    ----------
    true_sets : sequence of frozenset or str
        MoA sets (:func:`parse_moa_sets`, or ``|``-joined strings).

    Returns
    -------
    numpy.ndarray of bool
        One entry per set.
    """
    return np.array([len(s) > 1 for s in parse_moa_sets(true_sets)], dtype=bool)


def _scored(true_sets) -> np.ndarray:
    return np.array([len(s) > 0 for s in true_sets], dtype=bool)


def top1_in_set(pred: Sequence, true_sets: Sequence[frozenset]) -> float:
    """Share of rows whose single call is one of its true MoAs.

    Parameters
    ----------
    pred : sequence of str, length n
        Each row's top-1 call (``"unknown"``, NaN or a MoA outside the set: a miss).
    true_sets : sequence of frozenset, length n
        True MoA sets (:func:`parse_moa_sets`); rows with an empty set are left out.

    Returns
    -------
    float
        In [0, 1]; NaN when no row has a true MoA.
    """
    _same_length(pred, true_sets, "pred")
    true_sets = parse_moa_sets(true_sets)
    hits = [str(p) in t for p, t in zip(pred, true_sets, strict=True) if t]
    return float(np.mean(hits)) if hits else float("nan")


def top_k_sets(scores: np.ndarray, classes: Sequence, k: int) -> list[frozenset]:
    """The ``k`` highest-scoring classes of each row (ties: column order; ``k`` capped at
    the number of classes).

    Parameters
    ----------
    scores : numpy.ndarray, shape (n, n_classes)
        Per-class scores, higher = more likely.
    classes : sequence of str, length n_classes
        Class names of the columns.
    k : int
        Classes per row (at least 1).

    Returns
    -------
    list of frozenset of str
    """
    scores = np.asarray(scores)
    names = np.asarray([str(c) for c in classes], dtype=object)
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise InputError(f"scores of shape {scores.shape} do not match {len(names)} classes")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, len(names))]
    return [frozenset(names[row]) for row in top]


def recall_at_k(scores: np.ndarray, classes: Sequence, true_sets: Sequence[frozenset],
                k: int = 3) -> float:
    """Mean over rows of the share of a row's true MoAs among its ``k`` best-scored classes.

    A row with true set T and top-k classes K scores ``|T & K| / |T|``; a true MoA that
    is not one of ``classes`` (never trained on) is never in K, so it counts as a miss.
    With ``|T| > k`` a row cannot reach 1. Ties are broken by column order.

    Parameters
    ----------
    scores : numpy.ndarray, shape (n, n_classes)
        Per-class scores, higher = more likely.
    classes : sequence of str, length n_classes
        Class names of the columns of ``scores``.
    true_sets : sequence of frozenset, length n
        True MoA sets; rows with an empty set are left out.
    k : int, default 3
        Classes per row that count (capped at ``n_classes``).

    Returns
    -------
    float
        In [0, 1]; NaN when no row has a true MoA.
    """
    _same_length(scores, true_sets, "scores")
    true_sets = parse_moa_sets(true_sets)
    top = top_k_sets(scores, classes, k)
    shares = [len(t & kk) / len(t) for kk, t in zip(top, true_sets, strict=True) if t]
    return float(np.mean(shares)) if shares else float("nan")


def set_f1(pred_sets: Sequence[frozenset], true_sets: Sequence[frozenset]) -> float:
    """Mean over rows of the F1 of the predicted set against the true set.

    Row F1 = ``2 |P & T| / (|P| + |T|)``: 0 for an empty prediction.

    Parameters
    ----------
    pred_sets : sequence of frozenset, length n
        Predicted MoA sets (``|``-joined strings are parsed).
    true_sets : sequence of frozenset, length n
        True MoA sets; rows with an empty set are left out.

    Returns
    -------
    float
        In [0, 1]; NaN when no row has a true MoA.
    """
    _same_length(pred_sets, true_sets, "pred_sets")
    pred_sets, true_sets = parse_moa_sets(pred_sets), parse_moa_sets(true_sets)
    f1 = [2 * len(p & t) / (len(p) + len(t))
          for p, t in zip(pred_sets, true_sets, strict=True) if t]
    return float(np.mean(f1)) if f1 else float("nan")


def set_metrics(true_sets: Sequence[frozenset], scores: np.ndarray, classes: Sequence, *,
                pred: Sequence | None = None, pred_sets: Sequence | None = None,
                k: int = 3) -> dict:
    """Top-1 hit in the true set, recall@k and set F1 of one set of calls.

    Parameters
    ----------
    true_sets : sequence of frozenset, length n
        True MoA sets (:func:`parse_moa_sets`); rows with an empty set are left out.
    scores : numpy.ndarray, shape (n, n_classes)
        Per-class scores ranking the MoAs of each row (recall@k).
    classes : sequence of str, length n_classes
        Class names of the columns of ``scores``.
    pred : sequence of str, optional
        Each row's top-1 call; default None: the argmax of ``scores``.
    pred_sets : sequence, optional
        Each row's predicted MoA set (sets or ``|``-joined strings); default None:
        ``{top-1}``.
    k : int, default 3
        Classes of recall@k.

    Returns
    -------
    dict
        ``n`` (rows with a true MoA), ``top1_in_set``, ``recall_at_{k}``, ``set_f1``.
    """
    if pred is None:
        pred = [next(iter(s)) for s in top_k_sets(scores, classes, 1)]
    pred = [str(p) for p in pred]
    if pred_sets is None:
        pred_sets = [frozenset([p]) for p in pred]
    true_sets = parse_moa_sets(true_sets)
    return {"n": int(_scored(true_sets).sum()),
            "top1_in_set": top1_in_set(pred, true_sets),
            f"recall_at_{k}": recall_at_k(scores, classes, true_sets, k),
            "set_f1": set_f1(pred_sets, true_sets)}


def sets_by_group(true_sets: Sequence[frozenset], groups: Sequence) -> pd.Series:
    """One MoA set per group (compound): the union of its rows' sets.

    Parameters
    ----------
    true_sets : sequence of frozenset, length n
        Each row's MoA set.
    groups : sequence, length n
        Each row's group (compared as ``str``).

    Returns
    -------
    pandas.Series of frozenset
        Indexed by group, sorted (the order of
        :func:`moaspace._core.neighbors.aggregate_scores`).
    """
    _same_length(groups, true_sets, "groups")
    true_sets = parse_moa_sets(true_sets)
    out: dict[str, frozenset] = {}
    for g, s in zip(np.asarray(groups).astype(str), true_sets, strict=True):
        out[g] = out.get(g, frozenset()) | s
    return pd.Series(out, dtype=object).sort_index()


def _same_length(values, true_sets, name: str) -> None:
    if len(values) != len(true_sets):
        raise InputError(f"{name} has {len(values)} rows, true_sets {len(true_sets)}")
