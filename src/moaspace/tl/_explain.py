"""Explain the latent space: per-MoA gene importance (integrated gradients) and
pathway enrichment (GSEA prerank on local gene sets)."""

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
    permutations: int = 1000,
    min_size: int = 10,
    max_size: int = 500,
    max_per_moa: int = 200,
    n_steps: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Gene importance + enrichment for every MoA; writes CSVs and the NES heatmap.

    Runs :func:`gene_importance` (integrated gradients), then :func:`enrich_moas` on
    the chosen ranking.

    ``ranking``: ``absolute`` ranks genes by mean |attribution| (a pathway whose
    genes move in both directions still counts), ``signed`` by the mean signed
    attribution (up- vs down-regulated programs).

    Files: ``gene_importance.csv`` (genes x MoAs, the ranking used),
    ``gene_importance_signed.csv``, ``top_genes.csv`` (from the signed table),
    ``enrichment.csv`` (``moa, pathway, nes, pval, fdr, ...``),
    ``attribution_info.csv``, ``pathway_heatmap.png``, ``explain.json`` (timings and
    settings).

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    adata : anndata.AnnData
        Signatures to explain, with the true MoA in ``obs["moa"]``.
    out_dir : str or os.PathLike
        Output directory, created if needed.
    gene_sets : dict, str or os.PathLike, optional
        Gene sets for :func:`enrich_moas`; default None: the bundled Reactome.
    ranking : {"absolute", "signed"}, default "absolute"
        The gene ranking enriched (see above).
    permutations : int, default 1000
        GSEA permutations per MoA.
    min_size : int, default 10
        Minimum number of ranked genes of a gene set tested.
    max_size : int, default 500
        Maximum number of ranked genes of a gene set tested.
    max_per_moa : int, default 200
        Maximum signatures attributed per MoA.
    n_steps : int, default 32
        Integration steps of integrated gradients.
    seed : int, default 0
        Seed of the signature subsample and of the permutations.
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    dict
        ``importance`` (the genes x MoAs table enriched), ``signed``, ``enrichment``,
        ``info`` (per-MoA attribution info) and ``summary`` (the content of
        ``explain.json``: ``ranking``, ``permutations``, ``n_moas``,
        ``direction_source``, ``seconds_integrated_gradients``, ``seconds_gsea``,
        ``seconds_per_moa``, ``mean_abs_convergence_delta``, ``files``: name -> path).

    Raises
    ------
    ValueError
        If ``ranking`` is neither ``"absolute"`` nor ``"signed"``.
    InputError
        As raised by :func:`gene_importance` and :func:`enrich_moas`, or if an output
        path exists and is not a regular file.
    MoaspaceError
        If the model is not trained, no MoA had signatures to explain, or the output
        directory is not writable.
    """
    from moaspace._utils import atomic_path, atomic_write_text, save_figure

    if ranking not in ("absolute", "signed"):
        raise ValueError(f"ranking must be 'absolute' or 'signed', got {ranking!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    signed, absolute, info = gene_importance(model, adata, max_per_moa=max_per_moa,
                                             n_steps=n_steps, seed=seed, progress=progress)
    t_ig = time.perf_counter() - t0
    used = absolute if ranking == "absolute" else signed
    t0 = time.perf_counter()
    enrichment = enrich_moas(used, gene_sets, permutations=permutations, min_size=min_size,
                             max_size=max_size, seed=seed, progress=progress)
    t_gsea = time.perf_counter() - t0
    files = {}
    for name, frame, index in (("gene_importance.csv", used, True),
                               ("gene_importance_signed.csv", signed, True),
                               ("top_genes.csv", top_genes(signed), False),
                               ("enrichment.csv", enrichment, False),
                               ("attribution_info.csv", info, False)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=index, index_label="gene_id" if index else None)
        files[name] = str(out_dir / name)
    from moaspace.pl import nes_heatmap  # pl imports nothing from moaspace: no cycle

    save_figure(nes_heatmap(enrichment), out_dir / "pathway_heatmap.png", dpi=110)
    files["pathway_heatmap.png"] = str(out_dir / "pathway_heatmap.png")
    n_moas = len(info)
    summary = {
        "ranking": ranking, "permutations": permutations, "n_moas": n_moas,
        "direction_source": info.attrs.get("direction_source"),
        "seconds_integrated_gradients": t_ig, "seconds_gsea": t_gsea,
        "seconds_per_moa": (t_ig + t_gsea) / max(1, n_moas),
        "mean_abs_convergence_delta": float(info["mean_abs_delta"].mean()),
        "files": files,
    }
    atomic_write_text(out_dir / "explain.json", json.dumps(summary, indent=2))
    return {"importance": used, "signed": signed, "enrichment": enrichment, "info": info,
            "summary": summary}
