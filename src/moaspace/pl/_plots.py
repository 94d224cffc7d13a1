"""Plots that return matplotlib Figures (usable in notebooks, like scanpy's ``pl``).

Nothing here writes files or calls ``plt.show()``: callers decide.
"""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["benchmark_results", "confusion", "crispr_map", "embedding_2d", "knockdown_map",
           "latent_map", "latent_maps", "nes_heatmap", "openset_curve", "per_moa_f1",
           "reliability_diagram", "tas_coverage"]


def _palette(n: int):
    names = ("tab10",) if n <= 10 else ("tab20",) if n <= 20 else ("tab20", "tab20b", "tab20c")
    colours = [plt.get_cmap(name)(i) for name in names for i in range(plt.get_cmap(name).N)]
    return [colours[i % len(colours)] for i in range(n)]  # 60 distinct before repeats


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices: all ``n`` rows, or a seeded random ``max_points`` of them."""
    keep = np.arange(n)
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    return keep


def embedding_2d(z: np.ndarray, method: str = "pca", seed: int = 0,
                 fit_on: np.ndarray | None = None):
    """2-D coordinates of an embedding by PCA (default) or UMAP (if installed).

    Parameters
    ----------
    z : numpy.ndarray, shape (n, d)
        The embedding.
    method : {"pca", "umap"}, default "pca"
        UMAP (cosine metric) needs umap-learn; without it PCA is used, with a warning.
        Any other value means PCA.
    seed : int, default 0
        Random state of PCA or UMAP.
    fit_on : numpy.ndarray, shape (m, d), optional
        Points the PCA is fitted on; default None: ``z``. Not used by UMAP.

    Returns
    -------
    coords : numpy.ndarray, shape (n, 2)
        The 2-D coordinates of ``z``.
    transform : callable or None
        Maps new points (shape (m, d)) to 2-D (PCA only); None for UMAP.
    """
    from sklearn.decomposition import PCA

    if method == "umap":
        try:
            import umap
        except ImportError:
            logger.warning("umap-learn is not installed; using PCA")
            method = "pca"
        else:
            # seeded UMAP runs on one thread (umap-learn warns unless told so)
            reducer = umap.UMAP(random_state=seed, metric="cosine", n_jobs=1,
                                n_neighbors=max(2, min(15, len(z) - 1)))
            return reducer.fit_transform(z), None
    pca = PCA(n_components=2, random_state=seed).fit(z if fit_on is None else fit_on)
    return pca.transform(z), pca.transform


def latent_map(
    z: np.ndarray, moa, compound=None, *, method: str = "pca", max_points: int = 6000,
    label_compounds: int = 12, seed: int = 0, title: str = "Latent space (held-out signatures)",
):
    """Signatures coloured by MoA; compound centres drawn as labelled dots (sub-clusters).

    Parameters
    ----------
    z : numpy.ndarray, shape (n, d)
        Embedding of the signatures (e.g. ``obsm["X_moa"]``), projected with
        :func:`embedding_2d`.
    moa : array-like, length n
        MoA of each signature (colour).
    compound : array-like, length n, optional
        Compound of each signature: adds each compound's centre (open black dot) and the
        names of the ``label_compounds`` compounds with the most signatures.
    method : {"pca", "umap"}, default "pca"
        2-D projection.
    max_points : int, default 6000
        Above this many signatures a seeded random subsample is drawn.
    label_compounds : int, default 12
        Number of compound centres labelled.
    seed : int, default 0
        Seed of the subsample and the projection.
    title : str, default "Latent space (held-out signatures)"
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    moa = np.asarray(moa).astype(str)
    keep = _subsample(len(moa), max_points, seed)
    coords, transform = embedding_2d(z[keep], method=method, seed=seed)
    comp = None if compound is None else np.asarray(compound).astype(str)[keep]
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    _draw_latent(ax, coords, moa[keep], comp, label_compounds=label_compounds,
                 method="umap" if transform is None else "pca", colors=_colours(moa[keep]))
    ax.set_title(title)
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    fig.tight_layout()
    return fig


def _colours(*labels: np.ndarray) -> dict:
    classes = sorted(set().union(*(set(lab) for lab in labels)))
    return dict(zip(classes, _palette(len(classes)), strict=True))


def _draw_latent(ax, coords: np.ndarray, moa: np.ndarray, comp: np.ndarray | None, *,
                 label_compounds: int, method: str, colors: dict,
                 reference: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Points coloured by MoA and, with compounds, their labelled centres, on ``ax``;
    ``reference`` (coordinates, MoAs) is drawn first, small and faint."""
    if reference is not None:
        ax.scatter(*reference[0].T, s=7, alpha=0.3, linewidths=0,
                   color=[colors[c] for c in reference[1]])
    ref = reference is not None
    for c in sorted(set(moa)):
        ax.scatter(*coords[moa == c].T, s=22 if ref else 6, alpha=0.9 if ref else 0.55,
                   color=colors[c], label=c, linewidths=0.5 if ref else 0, edgecolors="black")
    if comp is not None:
        centres = pd.DataFrame(coords).groupby(comp).mean()
        sizes = pd.Series(comp).value_counts()
        if (sizes > 1).any():  # one point per compound: the point is its centre
            ax.scatter(centres[0], centres[1], s=22, facecolors="none", edgecolors="black",
                       linewidths=0.6, label="compound centre")
        for cpd in sizes.index[:label_compounds]:
            ax.annotate(cpd, centres.loc[cpd].to_numpy(), fontsize=6, alpha=0.8)
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")


def latent_maps(
    z: np.ndarray, moa, compound=None, *, reference: np.ndarray | None = None,
    reference_moa=None, methods: tuple[str, ...] = ("pca", "umap"), max_points: int = 6000,
    label_compounds: int = 12, seed: int = 0, title: str = "Latent space (held-out signatures)",
):
    """The same embedding side by side by PCA (global directions) and UMAP (local
    neighbourhoods; umap-learn, cosine, imported only here), as in :func:`latent_map`.
    Below 16 points, or without umap-learn (logged), a UMAP panel is PCA and says so.

    Parameters
    ----------
    z : numpy.ndarray, shape (n, d)
        Embedding of the signatures (e.g. ``obsm["X_moa"]``).
    moa : array-like, length n
        MoA of each signature (colour).
    compound : array-like, length n, optional
        Compound (or drug name) of each signature: labelled centres, as in :func:`latent_map`.
    reference : numpy.ndarray, shape (m, d), optional
        Reference embedding (e.g. a model's atlas), projected with ``z`` and drawn small and
        faint behind it; ``z`` is then drawn larger, with black edges.
    reference_moa : array-like, length m, optional
        MoA of each reference signature (needed with ``reference``).
    methods : tuple of str, default ("pca", "umap")
        One panel per projection, in order.
    max_points : int, default 6000
        Above this many rows (of ``z``, of ``reference``) a seeded subsample is drawn.
    label_compounds : int, default 12
        Number of compound centres labelled in each panel.
    seed : int, default 0
        Seed of the subsample and the projections.
    title : str, default "Latent space (held-out signatures)"
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    moa = np.asarray(moa).astype(str)
    keep = _subsample(len(moa), max_points, seed)
    comp = None if compound is None else np.asarray(compound).astype(str)[keep]
    zq, mq = np.asarray(z)[keep], moa[keep]
    zr, mr = np.empty((0, zq.shape[1]), zq.dtype), np.empty(0, dtype=str)
    if reference is not None:
        pick = _subsample(len(reference), max_points, seed)
        zr, mr = np.asarray(reference)[pick], np.asarray(reference_moa).astype(str)[pick]
    colors = _colours(mq, mr)
    fig, axes = plt.subplots(1, len(methods), figsize=(6.2 * len(methods) + 2.5, 6),
                             squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        wanted = method if len(zq) + len(zr) >= 16 else "pca"
        coords, transform = embedding_2d(np.vstack([zr, zq]), method=wanted, seed=seed)
        used = "umap" if transform is None else "pca"
        _draw_latent(ax, coords[len(zr):], mq, comp, label_compounds=label_compounds,
                     method=used, colors=colors,
                     reference=(coords[:len(zr)], mr) if len(zr) else None)
        ax.set_title(used.upper() if used == method else f"{method.upper()} unavailable: "
                     f"{used.upper()}", fontsize=10)
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=6, markerscale=1.5,
               loc="center right", frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 1))
    return fig


def confusion(y_true, y_pred, classes=None, *, normalize: bool = True):
    """Row-normalised confusion matrix (true MoA in rows).

    Parameters
    ----------
    y_true : array-like, length n
        True MoAs.
    y_pred : array-like, length n
        Called MoAs.
    classes : sequence, optional
        Row and column order; default None: the sorted union of both.
    normalize : bool, default True
        Divide each row by its count (share of the true MoA, colour scale 0 to 1);
        False: counts.

    Returns
    -------
    matplotlib.figure.Figure
    """
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
    """Horizontal bars of per-MoA F1 (from :func:`moaspace.tl._evaluate.evaluate`).

    Parameters
    ----------
    metrics : dict
        Output of :func:`moaspace.tl.evaluate`; ``per_moa`` gives the bars and
        ``macro_f1`` a dashed line.

    Returns
    -------
    matplotlib.figure.Figure
    """
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
    """Knockdowns placed on the drug embedding map, coloured by their expected MoA.

    The drugs are projected by a PCA fitted on them (:func:`embedding_2d`) and drawn as
    dots coloured by MoA; the knockdowns, mapped by the same PCA, are stars in the
    colour of their expected MoA (grey for one no drug has).

    Parameters
    ----------
    drug_z : numpy.ndarray, shape (n_drugs, d)
        Drug embeddings.
    drug_moa : array-like, length n_drugs
        MoA of each drug signature.
    kd_z : numpy.ndarray, shape (n_kd, d)
        Knockdown embeddings.
    kd_expected : array-like, length n_kd
        Expected MoA of each knockdown (legend ``KD → MoA``).
    kd_labels : array-like, length n_kd, optional
        Gene of each knockdown, written at the centre of that gene's knockdowns.
    seed : int, default 0
        Seed of the drug subsample and the PCA.
    max_points : int, default 5000
        Above this many drugs a seeded random subsample is drawn.

    Returns
    -------
    matplotlib.figure.Figure
    """
    drug_moa = np.asarray(drug_moa).astype(str)
    keep = _subsample(len(drug_moa), max_points, seed)
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


def _frame(table) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))


def reliability_diagram(curves: dict, *, ece: dict | None = None,
                        title: str = "Reliability (validation compounds)"):
    """Accuracy vs confidence per bin, one line per curve, with the diagonal.

    ``curves``: label -> table from :func:`moaspace.model.calibration.reliability_curve`
    (or its records, as stored in ``calibration.json``: ``validation
    ["reliability_before"]`` / ``["reliability_after"]``); ``ece``: label ->
    ECE for the legend. Marker area follows the number of rows in the bin.

    Parameters
    ----------
    curves : dict
        Label -> table with columns ``confidence``, ``accuracy``, ``n``, ``bin_lo`` and
        ``bin_hi`` (DataFrame or list of records); empty bins are not drawn.
    ece : dict, optional
        Label -> expected calibration error, shown in the legend.
    title : str, default "Reliability (validation compounds)"
        Title of the upper panel.

    Returns
    -------
    matplotlib.figure.Figure
        Upper panel: accuracy vs confidence; lower panel: signatures per bin.
    """
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    colors = _palette(max(len(curves), 2))
    for (label, table), color in zip(curves.items(), colors, strict=False):
        t = _frame(table)
        t = t[t["n"] > 0]
        name = label if not ece or label not in ece else f"{label} (ECE {ece[label]:.3f})"
        sizes = 10 + 150 * t["n"] / max(t["n"].max(), 1)
        ax.plot(t["confidence"], t["accuracy"], color=color, lw=1.2, label=name)
        ax.scatter(t["confidence"], t["accuracy"], s=sizes, color=color, alpha=0.7)
        width = (t["bin_hi"] - t["bin_lo"]).to_numpy()
        ax_n.bar(t["bin_lo"], t["n"], width=width, align="edge", alpha=0.45, color=color)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the top call")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax_n.set_xlabel("confidence (moa_pred_score)")
    ax_n.set_ylabel("signatures")
    fig.tight_layout()
    return fig


def openset_curve(rocs: dict, *, known_scores=None, unknown_scores=None,
                  threshold: float | None = None, chosen: str | None = None,
                  title: str = "Known vs unknown MoA", hist_title: str = "Unknown scores"):
    """ROC curves of the open-set scores (and, if given, the score histograms).

    ``rocs``: score name -> ``{"fpr", "tpr", "auroc"}`` (from
    :func:`moaspace.model.calibration.roc_points`; stored in ``calibration.json`` as
    ``validation["roc_pseudo_unknown"]``). ``known_scores`` / ``unknown_scores``
    (unknown scores of known and unknown queries) and ``threshold`` add a
    histogram panel with the decision line; ``chosen`` is drawn bold.

    Parameters
    ----------
    rocs : dict
        Score name -> ``{"fpr", "tpr", "auroc"}``.
    known_scores : array-like, optional
        Unknown scores of known-MoA queries; given, a second (histogram) panel is drawn.
    unknown_scores : array-like, optional
        Unknown scores of unknown-MoA queries, in the histogram.
    threshold : float, optional
        Decision threshold, a dashed line in the histogram.
    chosen : str, optional
        Name of the score in use, drawn bold and marked in the legend.
    title : str, default "Known vs unknown MoA"
        Title of the ROC panel.
    hist_title : str, default "Unknown scores"
        Title of the histogram panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    with_hist = known_scores is not None
    fig, axes = plt.subplots(1, 2 if with_hist else 1, figsize=(10.5 if with_hist else 5.2, 4.6))
    ax = axes[0] if with_hist else axes
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    for (name, roc), color in zip(rocs.items(), _palette(max(len(rocs), 2)), strict=False):
        bold = name == chosen
        ax.plot(roc["fpr"], roc["tpr"], color=color, lw=2.4 if bold else 1.2,
                label=f"{name} (AUROC {roc['auroc']:.3f})" + (" ← used" if bold else ""))
    ax.set_xlabel("false-unknown rate (known queries called unknown)")
    ax.set_ylabel("unknown queries detected")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    if with_hist:
        ax2 = axes[1]
        known = np.asarray(known_scores, dtype=float)
        parts = [known] + ([np.asarray(unknown_scores, dtype=float)]
                           if unknown_scores is not None else [])
        bins = np.histogram_bin_edges(np.concatenate(parts), bins=40)
        ax2.hist(known, bins=bins, alpha=0.6, density=True, color="tab:blue",
                 label="known MoA")
        if unknown_scores is not None:
            ax2.hist(parts[1], bins=bins, alpha=0.6, density=True, color="tab:red",
                     label="unknown MoA")
        if threshold is not None:
            ax2.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
        ax2.set_xlabel("unknown score (higher = farther from every known MoA)")
        ax2.set_ylabel("density")
        ax2.set_title(hist_title)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def tas_coverage(curves: dict, *, title: str = "Accuracy vs coverage over TAS"):
    """Accuracy of the called signatures vs the share called, as the TAS cut-off rises.

    ``curves``: label -> table from :func:`moaspace.model.calibration.tas_coverage_curve`
    (``min_tas, coverage, n, accuracy``; or its records). A few cut-offs are labelled.

    Parameters
    ----------
    curves : dict
        Label -> table (DataFrame or list of records) with ``min_tas``, ``coverage`` and
        ``accuracy``.
    title : str, default "Accuracy vs coverage over TAS"
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        Coverage (x, decreasing to the right) against accuracy, one line per curve.
    """
    fig, ax = plt.subplots(figsize=(5.8, 4.4))
    for (label, table), color in zip(curves.items(), _palette(max(len(curves), 2)),
                                     strict=False):
        t = _frame(table).sort_values("coverage")
        ax.plot(t["coverage"], t["accuracy"], marker="o", ms=3, color=color, label=label)
        for _, row in t.iloc[:: max(1, len(t) // 5)].iterrows():
            ax.annotate(f"TAS≥{row['min_tas']:.2f}", (row["coverage"], row["accuracy"]),
                        fontsize=6, alpha=0.8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("coverage (share of signatures called)")
    ax.set_ylabel("accuracy of the calls")
    ax.set_xlim(0, 1.02)
    ax.invert_xaxis()
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def nes_heatmap(enrichment: pd.DataFrame, fdr: float = 0.05, max_pathways: int = 40):
    """Heatmap (matplotlib Figure) of NES for pathways significant in at least one MoA.

    A pathway is significant with ``fdr`` below the cut-off and a positive NES; the
    best of each MoA by NES (about ``max_pathways / n_moas`` each) are shown, at most
    ``max_pathways``, with their NES in every MoA (blue-red scale centred at 0).
    Without any significant pathway the figure says so.

    Parameters
    ----------
    enrichment : pandas.DataFrame
        Output of :func:`moaspace.tl.enrich_moas` (``moa``, ``pathway``, ``nes``,
        ``fdr``).
    fdr : float, default 0.05
        FDR cut-off (strictly below).
    max_pathways : int, default 40
        Maximum number of pathways (rows).

    Returns
    -------
    matplotlib.figure.Figure
        Pathways (names cut to 60 characters) in rows, MoAs in columns.
    """
    sig = enrichment[(enrichment["fdr"] < fdr) & (enrichment["nes"] > 0)]
    if sig.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, f"no pathway with FDR < {fdr}", ha="center", va="center")
        ax.axis("off")
        return fig
    best = sig.sort_values("nes", ascending=False).groupby("moa").head(
        max(1, max_pathways // max(1, sig["moa"].nunique())))
    pathways = list(dict.fromkeys(best["pathway"]))[:max_pathways]
    table = enrichment[enrichment["pathway"].isin(pathways)].pivot_table(
        index="pathway", columns="moa", values="nes")
    table = table.reindex(pathways)
    labels = [p[:60] for p in table.index]
    # room for the row labels (about 0.06 in per character at 7 pt) and the colour bar, so
    # that a few MoAs with long pathway names still leave the heatmap its cells
    width = 2.0 + 0.45 * table.shape[1] + 0.06 * max(len(label) for label in labels)
    below = 0.05 * max((len(str(m)) for m in table.columns), default=0)  # rotated MoA names
    fig, ax = plt.subplots(figsize=(width, 1.5 + below + 0.28 * table.shape[0]))
    vmax = float(np.nanmax(np.abs(table.to_numpy()))) if table.size else 1.0
    im = ax.imshow(table.to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="NES", shrink=0.6)
    ax.set_title(f"Pathways enriched (FDR < {fdr}) per MoA")
    fig.tight_layout()
    return fig


def benchmark_results(summary: pd.DataFrame):
    """Bar chart of macro-F1 (mean ± sd over seeds) per method and scheme.

    ``summary``: the table of :func:`moaspace.benchmark.summarize` (one row per scheme and
    method, with ``macro_f1_mean`` and ``macro_f1_std``).

    Parameters
    ----------
    summary : pandas.DataFrame
        Columns ``scheme``, ``method``, ``macro_f1_mean`` and ``macro_f1_std``.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per scheme; ``moaspace`` in red, other methods in grey.
    """
    schemes = list(dict.fromkeys(summary["scheme"]))
    fig, axes = plt.subplots(1, len(schemes), figsize=(5 * len(schemes), 4), squeeze=False)
    for ax, scheme in zip(axes[0], schemes, strict=True):
        block = summary[summary["scheme"] == scheme]
        colors = ["tab:red" if m == "moaspace" else "tab:gray" for m in block["method"]]
        ax.barh(block["method"], block["macro_f1_mean"], xerr=block["macro_f1_std"].fillna(0),
                color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("macro-F1 (test)")
        ax.set_title(f"held-out {scheme}")
    fig.tight_layout()
    return fig


def knockdown_map(model, kd, result: dict, target_key: str = "target_gene"):
    """Knockdowns on the drug latent map, coloured by their (first) expected MoA.

    Draws :func:`crispr_map` of the model's atlas (``model.atlas``) and the
    knockdowns' embedding; genes without an expected MoA get ``"no expected MoA"``.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        The trained model whose atlas is drawn.
    kd : anndata.AnnData
        The knockdowns scored in ``result``.
    result : dict
        Output of :func:`moaspace.tl.score_knockdowns` (``embedding`` and ``expected``).
    target_key : str, default "target_gene"
        ``obs`` column of the knocked-down gene.

    Returns
    -------
    matplotlib.figure.Figure
    """
    first = {g: (m[0] if m else "no expected MoA") for g, m in result["expected"].items()}
    genes = kd.obs[target_key].astype(str)
    ref = model.atlas
    return crispr_map(np.asarray(ref.X), ref.obs["moa"], result["embedding"],
                      genes.map(lambda g: first.get(g, "no expected MoA")).to_numpy(),
                      kd_labels=genes.to_numpy())
