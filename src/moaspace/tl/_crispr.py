"""CRISPR / shRNA knockdowns in the drug latent space, without retraining.

A knockdown of gene G should land near drugs whose MoA targets G. The
expected MoAs of G come from the drug-target table (``compoundinfo_beta.txt``'s
``target`` column: G -> compounds that hit G -> their MoAs as the model knows
them). Each knocked-down gene is scored from the mean MoA scores of its
signatures (kNN against the atlas): rank of the best expected MoA, hit@1/@5,
and the AUROC of expected vs other MoAs. Two references, computed the same
way: raw-signature cosine kNN against the drugs' raw z-scores (no model), and
a null where the gene -> expected-MoA links are shuffled among genes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._core.neighbors import aggregate_scores, encode_labels, knn_scores, knn_search
from moaspace._utils import atomic_path, atomic_write_text, save_figure
from moaspace.errors import InputError
from moaspace.io.lincs import compound_targets, read_compoundinfo

logger = logging.getLogger(__name__)

def expected_moas(
    compoundinfo: pd.DataFrame, compound_moa: dict[str, str], known_moas,
    min_fraction: float = 0.2,
) -> dict[str, list[str]]:
    """Gene symbol -> sorted MoAs (among ``known_moas``) whose compounds target it.

    ``compound_moa`` maps ``pert_id`` -> MoA (the model's training labels);
    compounds absent from it fall back to compoundinfo's own ``moa`` column.
    Target lists include off-targets, so an MoA is expected for gene G only when
    at least ``min_fraction`` of its target-annotated compounds list G: one
    promiscuous compound does not make G a target of its whole MoA.

    Parameters
    ----------
    compoundinfo : pandas.DataFrame
        Drug-target table with ``pert_id`` and ``target`` columns (``moa`` optional), as
        from :func:`moaspace.io.read_compoundinfo`.
    compound_moa : dict of str to str
        ``pert_id`` -> MoA.
    known_moas : iterable
        The MoAs the model knows (compared as ``str``); other MoAs are ignored.
    min_fraction : float, default 0.2
        Minimum share, in [0, 1], of a MoA's target-annotated compounds that list G.

    Returns
    -------
    dict of str to list of str
        Gene symbol -> sorted expected MoAs; genes without one are absent.
    """
    known = set(map(str, known_moas))
    fallback = {}
    if "moa" in compoundinfo.columns:
        for pid, moa in zip(compoundinfo["pert_id"], compoundinfo["moa"], strict=True):
            if isinstance(moa, str) and moa in known:
                fallback.setdefault(str(pid), moa)
    hits: dict[tuple[str, str], int] = {}
    annotated: dict[str, int] = {}
    for pid, genes in compound_targets(compoundinfo).items():
        moa = compound_moa.get(pid, fallback.get(pid))
        if moa is None or moa not in known:
            continue
        annotated[moa] = annotated.get(moa, 0) + 1
        for gene in genes:
            hits[(gene, moa)] = hits.get((gene, moa), 0) + 1
    out: dict[str, set[str]] = {}
    for (gene, moa), n in hits.items():
        if n / annotated[moa] >= min_fraction:
            out.setdefault(gene, set()).add(moa)
    return {g: sorted(m) for g, m in out.items()}


def _rank_metrics(scores: pd.Series, expected: list[str]) -> dict:
    order = scores.sort_values(ascending=False, kind="stable")
    ranks = [int(order.index.get_loc(m)) + 1 for m in expected if m in order.index]
    best = min(ranks)
    pos = scores[scores.index.isin(expected)].to_numpy()
    neg = scores[~scores.index.isin(expected)].to_numpy()
    # AUROC: probability that an expected MoA outscores another one (ties count half)
    auroc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :])
                   .mean()) if len(neg) else float("nan")
    return {"rank": best, "hit_at_1": best <= 1, "hit_at_5": best <= 5, "auroc": auroc}


def _score_table(gene_scores: pd.DataFrame, expected: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for gene, scores in gene_scores.iterrows():
        exp = expected.get(gene, [])
        top = scores.sort_values(ascending=False).index[:5].tolist()
        row = {"gene": gene, "expected_moas": ";".join(exp) if exp else "no expected MoA",
               "predicted_moas": ";".join(top), "top_score": float(scores.max())}
        if exp:
            row.update(_rank_metrics(scores, exp))
        else:
            row.update({"rank": np.nan, "hit_at_1": np.nan, "hit_at_5": np.nan,
                        "auroc": np.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(table: pd.DataFrame) -> dict:
    scored = table[table["expected_moas"] != "no expected MoA"]
    if scored.empty:
        return {"n_genes_scored": 0, "hit_at_1": float("nan"), "hit_at_5": float("nan"),
                "mean_rank": float("nan"), "mean_auroc": float("nan")}
    return {"n_genes_scored": len(scored),
            "hit_at_1": float(scored["hit_at_1"].astype(float).mean()),
            "hit_at_5": float(scored["hit_at_5"].astype(float).mean()),
            "mean_rank": float(scored["rank"].astype(float).mean()),
            "mean_auroc": float(scored["auroc"].astype(float).mean())}


def _null(gene_scores: pd.DataFrame, expected: dict[str, list[str]], n_perm: int,
          seed: int) -> dict:
    """Shuffle which gene expects which MoAs; hit@k of the shuffled links."""
    genes = [g for g in gene_scores.index if g in expected]
    if len(genes) < 2:
        return {"hit_at_1": float("nan"), "hit_at_5": float("nan")}
    rng = np.random.default_rng(seed)
    labels = [expected[g] for g in genes]
    hits1, hits5 = [], []
    for _ in range(n_perm):
        perm = rng.permutation(len(genes))
        shuffled = {g: labels[j] for g, j in zip(genes, perm, strict=True)}
        s = _summary(_score_table(gene_scores.loc[genes], shuffled))
        hits1.append(s["hit_at_1"])
        hits5.append(s["hit_at_5"])
    return {"hit_at_1": float(np.mean(hits1)), "hit_at_5": float(np.mean(hits5)),
            "hit_at_5_sd": float(np.std(hits5)), "n_permutations": n_perm}


def score_knockdowns(
    model,
    kd: ad.AnnData,
    compoundinfo: pd.DataFrame | str | os.PathLike,
    *,
    raw_reference: ad.AnnData | None = None,
    target_key: str = "target_gene",
    k: int = 10,
    n_null: int = 200,
    seed: int = 0,
) -> dict:
    """Embed knockdowns, call MoAs and score the expected MoA of each knocked-down gene.

    Each knockdown signature is embedded (``model.embed``) and scored by a kNN vote over
    the model's MoAs against its atlas (``model.atlas``); the scores are averaged per
    knocked-down gene and ranked against the gene's expected MoAs
    (:func:`expected_moas`, with the atlas compounds' MoAs).

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    kd : anndata.AnnData
        Knockdown signatures, the knocked-down gene symbol in ``obs[target_key]`` (e.g.
        from :func:`moaspace.pp.prepare` with ``pert_type="trt_xpr"``).
    compoundinfo : pandas.DataFrame, str or os.PathLike
        The drug-target table, or the path of ``compoundinfo_beta.txt``.
    raw_reference : anndata.AnnData, optional
        Raw z-scores of the training drug signatures with ``obs["moa"]`` and the model's
        genes (``MoaModel.raw_atlas``, ``raw_atlas.h5ad`` of a saved model): adds the
        raw-signature kNN comparison. Default None: skipped, with a warning.
    target_key : str, default "target_gene"
        ``obs`` column of the knocked-down gene.
    k : int, default 10
        Neighbours of the kNN vote (for the raw reference at most its size).
    n_null : int, default 200
        Permutations of the null, where gene -> expected-MoA links are shuffled among
        the genes that have some.
    seed : int, default 0
        Seed of the null permutations.

    Returns
    -------
    dict
        ``table``: one row per gene with ``gene``, ``n_signatures``, ``expected_moas``
        (``;``-joined, or ``"no expected MoA"``), ``predicted_moas`` (top 5,
        ``;``-joined), ``top_score``, ``rank`` (of the best expected MoA, 1 = top),
        ``hit_at_1``, ``hit_at_5``, ``auroc`` (expected vs other MoAs; NaN without an
        expected MoA) and, with a raw reference, ``rank_raw``. ``summary``:
        ``n_genes_scored``, ``hit_at_1``, ``hit_at_5``, ``mean_rank``, ``mean_auroc``,
        ``hit_at_1_null``, ``hit_at_5_null``, ``hit_at_5_null_sd``, ``n_genes``,
        ``n_signatures``, ``genes_without_expected_moa``, ``hit_at_1_raw`` and
        ``hit_at_5_raw`` (NaN without a raw reference) and ``mean_rank_raw`` (with one).
        ``raw_table``: the table of the raw-signature kNN, or None. ``per_signature``:
        knockdowns x MoAs scores (DataFrame). ``embedding``: the knockdowns' embedding,
        shape (n_signatures, latent_dim). ``expected``: the :func:`expected_moas` map.

    Raises
    ------
    InputError
        If ``obs`` has no ``target_key`` column, compoundinfo cannot be read, the
        knockdowns cannot be aligned to the model's genes, or the raw reference's genes
        differ from the model's.
    MoaspaceError
        If the model is not trained.
    """
    if not isinstance(compoundinfo, pd.DataFrame):
        compoundinfo = read_compoundinfo(compoundinfo)
    if target_key not in kd.obs.columns:
        raise InputError(f"obs has no column {target_key!r}: prepare knockdowns with "
                         "`moaspace prepare --pert-type trt_xpr`")
    ref = model.atlas
    ref_moa = ref.obs["moa"].astype(str).to_numpy()
    classes = list(model.moas)
    compound_moa = (ref.obs.groupby("pert_id", observed=True)["moa"].first().astype(str)
                    .to_dict() if "pert_id" in ref.obs.columns else {})
    expected = expected_moas(compoundinfo, compound_moa, classes)
    genes = kd.obs[target_key].astype(str).to_numpy()

    z = model.embed(kd)
    codes, _ = encode_labels(ref_moa, classes)
    sims, idx = knn_search(z, np.asarray(ref.X, np.float32), k)
    per_sig = knn_scores(sims, idx, codes, len(classes))
    gene_scores = aggregate_scores(per_sig, genes)
    gene_scores.columns = classes
    table = _score_table(gene_scores, expected)
    table.insert(1, "n_signatures", pd.Series(genes).value_counts().reindex(table["gene"]).values)
    summary = _summary(table)
    null = _null(gene_scores, expected, n_null, seed)
    summary["hit_at_1_null"], summary["hit_at_5_null"] = null["hit_at_1"], null["hit_at_5"]
    summary["hit_at_5_null_sd"] = null.get("hit_at_5_sd", float("nan"))
    summary["n_genes"] = len(table)
    summary["n_signatures"] = int(kd.n_obs)
    summary["genes_without_expected_moa"] = int((table["expected_moas"] ==
                                                 "no expected MoA").sum())

    raw_table = None
    if raw_reference is not None:
        x = model.align_genes(kd)  # same gene order as the model (and the raw reference)
        rgenes = list(map(str, raw_reference.var_names))
        if rgenes != list(model.genes):
            raise InputError("the raw reference's genes differ from the model's")
        r_codes, _ = encode_labels(raw_reference.obs["moa"].astype(str), classes)
        rs, ri = knn_search(x, np.asarray(raw_reference.X, np.float32),
                            min(k, raw_reference.n_obs))
        raw_scores = aggregate_scores(knn_scores(rs, ri, r_codes, len(classes)), genes)
        raw_scores.columns = classes
        raw_table = _score_table(raw_scores, expected)
        raw_summary = _summary(raw_table)
        summary["hit_at_1_raw"], summary["hit_at_5_raw"] = (raw_summary["hit_at_1"],
                                                            raw_summary["hit_at_5"])
        summary["mean_rank_raw"] = raw_summary["mean_rank"]
        table["rank_raw"] = raw_table["rank"].to_numpy()
    else:
        summary["hit_at_1_raw"] = summary["hit_at_5_raw"] = float("nan")
        logger.warning("no raw reference: hit_at_5_raw not computed (train with the CLI, or "
                       "pass raw_reference)")
    per_signature = pd.DataFrame(per_sig, index=kd.obs_names, columns=classes)
    return {"table": table, "summary": summary, "raw_table": raw_table,
            "per_signature": per_signature, "embedding": z, "expected": expected}


def write_crispr(result: dict, out_dir: str | os.PathLike, figure=None) -> Path:
    """Write the output of :func:`score_knockdowns` to a directory.

    Writes ``crispr_scores.csv`` (one row per gene), ``summary.json`` and, given a
    figure (see :func:`moaspace.pl.knockdown_map`), ``crispr_map.png`` (100 dpi; the
    figure is closed). Files are written atomically; the directory is created if needed.

    Parameters
    ----------
    result : dict
        Output of :func:`score_knockdowns` (``table`` and ``summary`` are written).
    out_dir : str or os.PathLike
        Output directory.
    figure : matplotlib.figure.Figure, optional
        Figure saved as ``crispr_map.png``; default None: no figure.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    InputError
        If an output path exists and is not a regular file.
    MoaspaceError
        If the output directory is not writable.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "crispr_scores.csv") as tmp:
        result["table"].to_csv(tmp, index=False)
    atomic_write_text(out_dir / "summary.json", json.dumps(result["summary"], indent=2,
                                                           default=float))
    if figure is not None:
        save_figure(figure, out_dir / "crispr_map.png", dpi=100)
    return out_dir
