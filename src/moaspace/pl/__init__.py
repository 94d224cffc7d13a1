"""Plots that return matplotlib Figures (usable in notebooks, like scanpy's ``pl``).

Nothing here writes files or calls ``plt.show()``: callers decide.
"""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # headless by default; notebooks still render returned Figures

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["confusion", "crispr_map", "embedding_2d", "latent_map", "per_moa_f1"]


def _palette(n: int):
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def embedding_2d(z: np.ndarray, method: str = "pca", seed: int = 0,
                 fit_on: np.ndarray | None = None):
    """2-D coordinates of an embedding by PCA (default) or UMAP (if installed).

    Returns ``(coords, transform)`` where ``transform`` maps new points (PCA only).
    """
    from sklearn.decomposition import PCA

    if method == "umap":
        try:
            import umap
        except ImportError:
            logger.warning("umap-learn is not installed; using PCA")
            method = "pca"
        else:
            reducer = umap.UMAP(random_state=seed, metric="cosine")
            return reducer.fit_transform(z), None
    pca = PCA(n_components=2, random_state=seed).fit(z if fit_on is None else fit_on)
    return pca.transform(z), pca.transform


def latent_map(
    z: np.ndarray, moa, compound=None, *, method: str = "pca", max_points: int = 6000,
    label_compounds: int = 12, seed: int = 0, title: str = "Latent space (held-out signatures)",
):
    """Signatures coloured by MoA; compound centres drawn as labelled dots (sub-clusters)."""
    moa = np.asarray(moa).astype(str)
    rng = np.random.default_rng(seed)
    keep = np.arange(len(moa))
    if len(keep) > max_points:
        keep = np.sort(rng.choice(keep, max_points, replace=False))
    coords, _ = embedding_2d(z[keep], method=method, seed=seed)
    moa_k = moa[keep]
    classes = sorted(set(moa_k))
    colors = dict(zip(classes, _palette(len(classes)), strict=True))
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    for c in classes:
        m = moa_k == c
        ax.scatter(coords[m, 0], coords[m, 1], s=6, alpha=0.55, color=colors[c], label=c,
                   linewidths=0)
    if compound is not None:
        comp = np.asarray(compound).astype(str)[keep]
        centres = pd.DataFrame(coords).groupby(comp).mean()
        sizes = pd.Series(comp).value_counts()
        ax.scatter(centres[0], centres[1], s=22, facecolors="none", edgecolors="black",
                   linewidths=0.6, label="compound centre")
        for cpd in sizes.index[:label_compounds]:
            ax.annotate(cpd, centres.loc[cpd].to_numpy(), fontsize=6, alpha=0.8)
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.set_title(title)
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    fig.tight_layout()
    return fig


def confusion(y_true, y_pred, classes=None, *, normalize: bool = True):
    """Row-normalised confusion matrix (true MoA in rows)."""
    from sklearn.metrics import confusion_matrix

    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    classes = sorted(set(y_true) | set(y_pred)) if classes is None else list(classes)
    cm = confusion_matrix(y_true, y_pred, labels=classes).astype(float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.32 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(classes)), classes, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted MoA")
    ax.set_ylabel("true MoA")
    fig.colorbar(im, ax=ax, shrink=0.7, label="share of true MoA" if normalize else "count")
    ax.set_title("Confusion matrix (held-out signatures)")
    fig.tight_layout()
    return fig


def per_moa_f1(metrics: dict):
    """Horizontal bars of per-MoA F1 (from :func:`moaspace.tl.evaluate.evaluate`)."""
    per = pd.DataFrame(metrics["per_moa"]).T.sort_values("f1")
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.25 * len(per)))
    ax.barh(per.index, per["f1"], color="tab:blue")
    ax.axvline(metrics["macro_f1"], color="tab:red", ls="--", label="macro-F1")
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (held-out signatures)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def crispr_map(drug_z: np.ndarray, drug_moa, kd_z: np.ndarray, kd_expected, *,
               kd_labels=None, seed: int = 0, max_points: int = 5000):
    """Knockdowns placed on the drug embedding map, coloured by their expected MoA."""
    drug_moa = np.asarray(drug_moa).astype(str)
    rng = np.random.default_rng(seed)
    keep = np.arange(len(drug_moa))
    if len(keep) > max_points:
        keep = np.sort(rng.choice(keep, max_points, replace=False))
    coords, transform = embedding_2d(drug_z[keep], seed=seed)
    kd_xy = transform(kd_z)
    classes = sorted(set(drug_moa[keep]))
    colors = dict(zip(classes, _palette(len(classes)), strict=True))
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    for c in classes:
        m = drug_moa[keep] == c
        ax.scatter(coords[m, 0], coords[m, 1], s=5, alpha=0.25, color=colors[c], linewidths=0)
    expected = np.asarray(kd_expected).astype(str)
    for c in sorted(set(expected)):
        m = expected == c
        color = colors.get(c, (0.3, 0.3, 0.3, 1.0))
        ax.scatter(kd_xy[m, 0], kd_xy[m, 1], s=40, marker="*", color=color, edgecolors="black",
                   linewidths=0.4, label=f"KD → {c}")
    if kd_labels is not None:
        labels = pd.Series(np.asarray(kd_labels).astype(str))
        centres = pd.DataFrame(kd_xy).groupby(labels.to_numpy()).mean()
        for gene, xy in centres.iterrows():
            ax.annotate(gene, xy.to_numpy(), fontsize=6)
    ax.set_title("Knockdowns (stars) on the drug latent map (dots: drugs by MoA)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig
