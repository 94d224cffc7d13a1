"""How hard a simulated (or real) dataset is before any model: raw-signature kNN on
unseen compounds."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

__all__ = ["raw_knn_difficulty"]


def raw_knn_difficulty(
    adata: ad.AnnData,
    k: int = 10,
    n_splits: int = 5,
    seed: int = 0,
    label: str = "moa",
    group: str = "pert_id",
) -> dict:
    """Raw-signature cosine kNN on unseen compounds (a difficulty check, not a model).

    What it measures is how separable the MoAs are in the raw z-scores: the accuracy a
    model-free nearest-neighbour rule reaches on compounds it has not seen, next to the
    majority-class rate (the floor). It says nothing about probabilities (it is not a
    confidence calibration).

    Compounds are split into ``n_splits`` folds (grouped by ``group``,
    stratified by ``label``); each held-out signature gets the majority MoA of
    its ``k`` most cosine-similar training signatures (ties: larger summed
    similarity). Returns signature-level accuracy and macro-F1 averaged over
    folds, compound-level accuracy (majority vote of a compound's
    signatures), and the majority-class rate.

    Parameters
    ----------
    adata : anndata.AnnData
        Prepared signatures (``X`` z-scores) with ``obs[label]`` and ``obs[group]``.
    k : int, default 10
        Neighbours per vote.
    n_splits : int, default 5
        Folds over the compounds.
    seed : int, default 0
        Seeds the fold assignment.
    label, group : str
        ``obs`` columns of the class (MoA) and of the grouping unit (compound).

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``compound_accuracy`` and ``majority_rate``.
    """
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedGroupKFold

    x = np.asarray(adata.X, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y_str = adata.obs[label].astype(str).to_numpy()
    classes, y = np.unique(y_str, return_inverse=True)
    groups = adata.obs[group].astype(str).to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    accs, f1s, caccs = [], [], []
    for train, test in splitter.split(x, y, groups):
        sims = x[test] @ x[train].T
        kk = min(k, len(train))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        votes = np.zeros((len(test), len(classes)))
        score = np.zeros((len(test), len(classes)))
        rows = np.repeat(np.arange(len(test)), kk)
        np.add.at(votes, (rows, y[train][top].ravel()), 1.0)
        np.add.at(score, (rows, y[train][top].ravel()), np.take_along_axis(sims, top, 1).ravel())
        pred = np.argmax(votes + 1e-6 * score, axis=1)
        accs.append(float(np.mean(pred == y[test])))
        f1s.append(
            float(
                f1_score(y[test], pred, average="macro", labels=np.unique(y[test]), zero_division=0)
            )
        )
        frame = pd.DataFrame({"g": groups[test], "p": pred, "y": y[test]})
        cmaj = frame.groupby("g").agg(
            p=("p", lambda s: s.value_counts().index[0]), y=("y", "first")
        )
        caccs.append(float(np.mean(cmaj["p"] == cmaj["y"])))
    counts = pd.Series(y_str).value_counts()
    return {
        "k": k,
        "n_splits": n_splits,
        "accuracy": float(np.mean(accs)),
        "macro_f1": float(np.mean(f1s)),
        "compound_accuracy": float(np.mean(caccs)),
        "accuracy_folds": accs,
        "majority_rate": float(counts.iloc[0] / counts.sum()),
        "n_signatures": int(adata.n_obs),
        "n_compounds": len(set(groups)),
        "n_moas": len(classes),
    }
