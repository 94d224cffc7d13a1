"""Explain the MoA calls: per-MoA gene importance (integrated gradients of the score
``predict`` calls with) and pathway enrichment (GSEA prerank on local gene sets).

What the output files mean (all genes x MoAs tables are indexed by gene id, with a
``gene_symbol`` column, one column per explained MoA):

``gene_importance_signed.csv``
    The **direction** of each gene for the MoA: positive = the gene is up, negative = down
    in the signatures the model gives the MoA (the pattern of the MoA's calibrated
    probability ``obsm["moa_proba"]``, Haufe et al. 2014; z-score units per standard
    deviation of that probability; of the softmax score for a model without per-MoA
    calibration).
    Compare it with a MoA's known up- and down-regulated genes.
``gene_contribution.csv``
    The mean integrated-gradients contribution to the MoA's cosine (the predictor's score
    before the softmax): positive = the gene's value, relative to signatures of other MoAs,
    raises the MoA's score. Summed over genes it is the cosine's gain over those signatures.
    Not a direction: through the model's input whitening a gene that rises in every
    signature of a MoA can contribute negatively when its co-regulated genes already carry
    the rise.
``gene_importance.csv``
    The table the enrichment ranked: with ``ranking="absolute"`` the mean |contribution|
    (how much the gene moves the score, either way), with ``"signed"`` the signed pattern.
``top_genes.csv``
    The 20 genes of largest |signed pattern| per MoA, with ``direction`` up/down.
``enrichment.csv``
    GSEA prerank per MoA: ``nes`` (with the signed ranking, positive = the set is up),
    ``fdr``, ``n_genes`` (the set's ranked genes: its landmark genes for a 978-gene model),
    ``set_size``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from moaspace.tl._attribution import gene_importance, top_genes
from moaspace.tl._enrichment import enrich_moas

logger = logging.getLogger(__name__)

__all__ = ["explain"]


def explain(
    model,
    adata,
    out_dir: str | os.PathLike,
    *,
    gene_sets=None,
    ranking: str = "absolute",
    view: str = "predictor",
    permutations: int = 1000,
    min_size: int = 5,
    max_size: int = 500,
    max_per_moa: int = 200,
    n_steps: int = 16,
    n_baselines: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Gene importance + enrichment for every MoA; writes CSVs and the NES heatmap.

    Runs :func:`gene_importance` (integrated gradients of the score ``predict`` calls
    with, from signatures of other MoAs), then :func:`enrich_moas` on the chosen ranking.
    The files and what their signs mean are listed in the module docstring.

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    adata : anndata.AnnData
        Signatures to explain, with the true MoA in ``obs["moa"]`` (at least two MoAs).
    out_dir : str or os.PathLike
        Output directory, created if needed.
    gene_sets : dict, str or os.PathLike, optional
        ``"hallmark"`` (default when None), ``"reactome"``, a ``.gmt`` path or a dict
        (:func:`moaspace.io.genesets.load_gene_sets`).
    ranking : {"absolute", "signed"}, default "absolute"
        ``absolute`` ranks genes by mean |contribution| (a pathway whose genes move in both
        directions still counts), ``signed`` by the signed pattern (up- vs down-regulated
        programmes: NES > 0 up, < 0 down).
    view : {"predictor", "arcface_head"}, default "predictor"
        The score attributed: the predictor's (``obsm["moa_scores"]``) or the ArcFace
        head's cosine (recorded in ``explain.json`` and ``attribution_info.csv``).
    permutations : int, default 1000
        GSEA permutations per MoA.
    min_size : int, default 5
        Minimum number of ranked genes of a gene set tested (see :mod:`._enrichment`).
    max_size : int, default 500
        Maximum number of ranked genes of a gene set tested.
    max_per_moa : int, default 200
        Maximum signatures attributed per MoA.
    n_steps : int, default 16
        Integration steps per path.
    n_baselines : int, default 4
        Paths per signature (other-MoA signatures they start from).
    seed : int, default 0
        Seed of the signature subsample, the baselines and the permutations.
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    dict
        ``importance`` (the genes x MoAs table enriched), ``signed``, ``contribution``,
        ``enrichment``, ``info`` (per-MoA attribution info) and ``summary`` (the content of
        ``explain.json``: ``ranking``, ``view``, ``score``, ``attributed``, ``baseline``,
        ``signed_means``, ``gene_sets``, ``min_size``, ``median_genes_per_tested_set``,
        ``permutations``, ``n_moas``, ``seconds_integrated_gradients``,
        ``seconds_gsea``, ``seconds_per_moa``, ``mean_abs_convergence_delta``, ``files``:
        name -> path).

    Raises
    ------
    ValueError
        If ``ranking`` is neither ``"absolute"`` nor ``"signed"``, or ``view`` is unknown.
    InputError
        As raised by :func:`gene_importance` and :func:`enrich_moas`, or if an output
        path exists and is not a regular file.
    MoaspaceError
        If the model is not trained, no MoA had signatures to explain, or the output
        directory is not writable.
    """
    if ranking not in ("absolute", "signed"):
        raise ValueError(f"ranking must be 'absolute' or 'signed', got {ranking!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    signed, absolute, info, contribution = gene_importance(
        model, adata, view=view, max_per_moa=max_per_moa, n_steps=n_steps,
        n_baselines=n_baselines, seed=seed, progress=progress, return_contribution=True)
    t_ig = time.perf_counter() - t0
    used = absolute if ranking == "absolute" else signed
    t0 = time.perf_counter()
    enrichment = enrich_moas(used, gene_sets, permutations=permutations, min_size=min_size,
                             max_size=max_size, seed=seed, progress=progress)
    t_gsea = time.perf_counter() - t0
    files = _write_tables(out_dir, used, signed, contribution, enrichment, info)
    n_moas = len(info)
    summary = {
        "ranking": ranking, "view": view, "score": info.attrs.get("score"),
        "attributed": info.attrs.get("attributed"), "pattern_of": info.attrs.get("pattern_of"),
        "baseline": f"{n_baselines} signatures of other MoAs per signature, {n_steps} steps",
        "signed_means": SIGNED_MEANS,
        "gene_sets": enrichment.attrs.get("gene_sets"), "min_size": min_size,
        "median_genes_per_tested_set": float(enrichment.drop_duplicates("pathway")[
            "n_genes"].median()),
        "permutations": permutations, "n_moas": n_moas,
        "seconds_integrated_gradients": t_ig, "seconds_gsea": t_gsea,
        "seconds_per_moa": (t_ig + t_gsea) / max(1, n_moas),
        "mean_abs_convergence_delta": float(info["mean_abs_delta"].mean()),
        "files": files,
    }
    from moaspace._utils import atomic_write_text

    atomic_write_text(out_dir / "explain.json", json.dumps(summary, indent=2))
    return {"importance": used, "signed": signed, "contribution": contribution,
            "enrichment": enrichment, "info": info, "summary": summary}


SIGNED_MEANS = ("gene_importance_signed.csv: + = the gene is up, - = down in the signatures "
                "the model gives the MoA (pattern of its calibrated probability); "
                "gene_contribution.csv: + = the gene's value raises the MoA's score relative "
                "to signatures of other MoAs (integrated gradients; not a direction)")


def _write_tables(out_dir: Path, used, signed, contribution, enrichment, info) -> dict:
    """Write the CSV tables and the NES heatmap; name -> path."""
    from moaspace._utils import atomic_path, save_figure

    files = {}
    info = info.assign(score=info.attrs.get("score"), view=info.attrs.get("view"))
    for name, frame, index in (("gene_importance.csv", used, True),
                               ("gene_importance_signed.csv", signed, True),
                               ("gene_contribution.csv", contribution, True),
                               ("top_genes.csv", top_genes(signed), False),
                               ("enrichment.csv", enrichment, False),
                               ("attribution_info.csv", info, False)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=index, index_label="gene_id" if index else None)
        files[name] = str(out_dir / name)
    from moaspace.pl import nes_heatmap  # pl imports nothing from moaspace: no cycle

    save_figure(nes_heatmap(enrichment), out_dir / "pathway_heatmap.png", dpi=110)
    files["pathway_heatmap.png"] = str(out_dir / "pathway_heatmap.png")
    return files
