"""Is the planted biology recovered? Explain and CRISPR on the simulator's default release.

simulate (default config) -> prepare -> compound split -> train -> explain (IG + GSEA
prerank on Reactome) and CRISPR knockdown scoring, with their controls in the same run:

* explain: share of MoAs whose planted pathway is among the top-5 enriched (FDR < 0.05;
  Reactome, the library the simulator plants), for the trained model and for a model trained
  on shuffled MoA labels; seconds per MoA; and the planted genes' signs: the three heaviest
  genes of each MoA's first planted pathway, where the raw class mean shows the planted
  sign among its top 100 genes, against the sign in ``gene_importance_signed.csv``;
* CRISPR: hit@1 / hit@5 / mean rank of the expected MoA, vs raw-signature kNN and a
  shuffled-link null.

Writes ``benchmarks/results/bench_science.json`` and prints a table.

    python benchmarks/bench_science.py [--seed 0] [--max-epochs 30] [--permutations 500]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _simdata import prepare_knockdowns, raw_reference, simulate_prepared

from moaspace._utils import provenance
from moaspace.datasets._simulate import SimulationConfig
from moaspace.model import MoaModel
from moaspace.pp._split import split
from moaspace.tl._crispr import score_knockdowns
from moaspace.tl._explain import explain

RESULTS = Path(__file__).resolve().parent / "results"


def recovered(enrichment: pd.DataFrame, truth: dict) -> dict[str, bool]:
    out = {}
    for moa, block in enrichment.groupby("moa"):
        top = block[block["fdr"] < 0.05].sort_values("nes", ascending=False).head(5)
        out[moa] = bool(set(top["pathway"]) & set(truth["moa_pathways"][moa]))
    return out


def planted_signs(signed: pd.DataFrame, adata, truth: dict) -> dict:
    """Planted genes whose planted sign the data shows (raw class mean, top 100): how many
    have that sign in the signed table (the check of tests/test_science.py)."""
    x, moa = np.asarray(adata.X), adata.obs["moa"].astype(str).to_numpy()
    symbols = adata.var["gene_symbol"].astype(str).to_numpy()
    table = signed.set_index("gene_symbol")
    checked, right = 0, 0
    for name in table.columns:
        raw = pd.Series(x[moa == name].mean(0) - x.mean(0), index=symbols)
        program = truth["pathway_programs"][truth["moa_pathways"][name][0]]
        for gene in sorted(program, key=lambda g: -abs(program[g]))[:3]:
            planted = np.sign(program[gene])
            if np.sign(raw[gene]) == planted and raw.abs().rank(ascending=False)[gene] <= 100:
                checked += 1
                right += int(np.sign(table.loc[gene, name]) == planted)
    return {"planted_genes_checked": checked, "planted_genes_right_sign": right}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--permutations", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp())
    paths, adata = simulate_prepared(work / "sim", SimulationConfig(seed=args.seed))
    truth = json.loads(paths["truth"].read_text())
    adata = split(adata, "compound", seed=args.seed)
    result = {"seed": args.seed, "signatures": adata.n_obs, "moas": adata.obs["moa"].nunique()}

    t0 = time.perf_counter()
    model = MoaModel(adata)
    model.train(max_epochs=args.max_epochs, seed=args.seed, progress_bar=False)
    result["train_seconds"] = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed)
    shuffled_data = adata.copy()
    per_cpd = shuffled_data.obs.groupby("pert_id", observed=True)["moa"].first().astype(str)
    mapping = pd.Series(rng.permutation(per_cpd.to_numpy()), index=per_cpd.index)
    shuffled_data.obs["moa"] = shuffled_data.obs["pert_id"].astype(str).map(mapping).to_numpy()
    shuffled = MoaModel(shuffled_data)
    shuffled.train(max_epochs=args.max_epochs, seed=args.seed, progress_bar=False)

    for name, m, data in (("model", model, adata), ("shuffled_labels", shuffled, shuffled_data)):
        train = data[data.obs["split"] == "train"].copy()
        e = explain(m, train, work / f"explain_{name}", gene_sets="reactome",
                    permutations=args.permutations)
        hits = recovered(e["enrichment"], truth)
        result[f"explain_{name}"] = {
            **(planted_signs(e["signed"], train, truth) if name == "model" else {}),
            "recovered_fraction": float(np.mean(list(hits.values()))),
            "n_moas": len(hits), "seconds_per_moa": e["summary"]["seconds_per_moa"],
            "seconds_integrated_gradients": e["summary"]["seconds_integrated_gradients"],
            "seconds_gsea": e["summary"]["seconds_gsea"], "per_moa": hits,
        }

    result["crispr"] = score_knockdowns(model, prepare_knockdowns(paths), paths["compoundinfo"],
                                        raw_reference=raw_reference(adata))["summary"]

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_science.json").write_text(json.dumps({**provenance(), **result}, indent=2, default=float))
    em, es, c = result["explain_model"], result["explain_shuffled_labels"], result["crispr"]
    print(f"simulator default (seed {args.seed}): {result['signatures']} signatures, "
          f"{result['moas']} MoAs")
    print(f"{'explain: planted pathway in top-5 (FDR<0.05)':<48}{'model':>10}{'shuffled':>10}")
    print(f"{'  share of MoAs':<48}{em['recovered_fraction']:>10.2f}"
          f"{es['recovered_fraction']:>10.2f}")
    print(f"{'  seconds per MoA (IG + GSEA)':<48}{em['seconds_per_moa']:>10.1f}")
    print(f"{'  planted genes with their planted sign':<48}"
          f"{em['planted_genes_right_sign']:>6} of {em['planted_genes_checked']}")
    print(f"{'CRISPR (genes scored: ' + str(c['n_genes_scored']) + ')':<48}{'model':>10}"
          f"{'raw kNN':>10}{'null':>10}")
    for key in ("hit_at_1", "hit_at_5"):
        print(f"{'  ' + key:<48}{c[key]:>10.3f}{c[key + '_raw']:>10.3f}{c[key + '_null']:>10.3f}")
    print(f"{'  mean rank of expected MoA':<48}{c['mean_rank']:>10.2f}{c['mean_rank_raw']:>10.2f}")


if __name__ == "__main__":
    main()
