"""Does explain recover known drug-response programmes on real L1000 signatures?

The real consensus signatures shipped with moaspace (``lincs_consensus``: 519 drugs, 44
MoAs), split by compound (seed 0), the default model trained; then, for MoAs with a
published transcriptional response programme (genes and direction, with citations, and a
Hallmark set where one fits), side by side in one run:

* ``explanation``: ``gene_importance_signed.csv`` of ``moaspace explain`` (the pattern of
  the model's calibrated per-MoA probability; + up, - down) over every shipped drug (1,170:
  the model, trained on the 519, also scores the drugs with several MoAs, a rare MoA or
  none, so the pattern uses them; ``--explain-on labelled``: only the 519);
* ``explanation_labelled``: the same model's explanation over the 519 labelled drugs only;
* ``raw_class_mean``: the class mean minus the all-drug mean of the z-scores (the 519);
* ``raw_set_mean``: the mean of every shipped drug whose MoA set lists the MoA (multi-MoA
  drugs included) minus the mean of all 1,170 drugs: the raw baseline that uses as many
  drugs as a label can give;
* ``shuffled_null``: the same explanation from models trained on MoA labels shuffled
  across drugs (``--shuffles`` of them), for the MoA name;
* ``ig_contribution``: the mean integrated-gradients contribution of the same run
  (``gene_contribution.csv``; before issue #27 the signed table held a contribution of this
  kind, of the ArcFace head's cosine from the all-zero signature), shown to say why a
  contribution is no direction.

Scores per programme: the median rank of its landmark genes by |value| (1 = first of 978),
how many have the literature's sign, the median *directional* rank (genes ordered in the
programme's direction: 1 = most up for an up programme; wrong-way genes rank near 978), and
GSEA prerank (Hallmark, signed ranking) of its set: NES (positive = up) and FDR.

Acceptance (issue #27): the explanation's sign is right for every programme gene where the
raw class mean agrees with the literature (also reported: where it agrees significantly,
one-sided Welch p < 0.05); its median directional rank is at most the raw class mean's for
most programmes (also reported: the NES of the programme's set) and below the shuffled
null's median for all (also reported: how many shuffled models it beats).

Cost on 2 cores: 1 + ``--shuffles`` trainings of the default model, integrated gradients
for 6 MoAs (16 steps x 4 baselines, the defaults), GSEA with 1000 permutations: 75 s on an
idle machine, about 9 minutes on the shared one at load 6-8.

Writes ``benchmarks/results/<name>.json`` and ``.md`` (``--name``, default
``bench_biology_real``).

    python benchmarks/bench_biology.py [--shuffles 3] [--seed 0] [--permutations 1000]
        [--explain-on all|labelled] [--name bench_biology_real]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moaspace._utils import provenance
from moaspace.datasets import lincs_consensus
from moaspace.io.genesets import load_gene_sets
from moaspace.model import MoaModel
from moaspace.pp import split
from moaspace.tl._attribution import gene_importance
from moaspace.tl._enrichment import prerank

RESULTS = Path(__file__).resolve().parent / "results"

#: Published response programmes, chosen from the literature before looking at the data;
#: genes are the programme's members among the 978 landmark genes (2016-era symbols).
PROGRAMMES = [
    {"moa": "glucocorticoid receptor agonist", "programme": "GR primary targets",
     "direction": "up", "genes": ["TSC22D3", "DDIT4", "ZFP36", "NFKBIA", "CEBPD"],
     "gene_set": None,
     "citations": "Wang JC et al. 2004 PNAS 101:15603 (primary GR targets incl. GILZ); "
                  "Reddy TE et al. 2009 Genome Res 19:2163; D'Adamio F et al. 1997 Immunity "
                  "7:803 (GILZ/TSC22D3); Wang H et al. 2006 J Biol Chem 281:39128 (REDD1/"
                  "DDIT4); Smoak K & Cidlowski JA 2006 Mol Cell Biol 26:9126 (TTP/ZFP36); "
                  "Auphan N et al. 1995 Science 270:286 (IkBa/NFKBIA); Cao Z et al. 1991 "
                  "Genes Dev 5:1538 (C/EBPdelta/CEBPD)"},
    {"moa": "topoisomerase inhibitor", "programme": "DNA damage -> p53 targets",
     "direction": "up",
     "genes": ["CDKN1A", "SESN1", "FAS", "BAX", "GADD45A", "DDB2", "PMAIP1"],
     "gene_set": "HALLMARK_P53_PATHWAY",
     "citations": "Fischer M 2017 Oncogene 36:3943 (census of p53 targets); el-Deiry WS et "
                  "al. 1993 Cell 75:817 (CDKN1A); Kastan MB et al. 1992 Cell 71:587 "
                  "(GADD45A); Miyashita T & Reed JC 1995 Cell 80:293 (BAX); Muller M et al. "
                  "1998 J Exp Med 188:2033 (FAS after anticancer drugs); Oda E et al. 2000 "
                  "Science 288:1053 (PMAIP1/Noxa); Hwang BJ et al. 1999 PNAS 96:424 (DDB2)"},
    {"moa": "HMGCR inhibitor", "programme": "SREBP2 sterol-synthesis targets",
     "direction": "up",
     "genes": ["HMGCS1", "HMGCR", "INSIG1", "FDFT1", "ACAT2", "NSDHL", "EBP"],
     "gene_set": "HALLMARK_CHOLESTEROL_HOMEOSTASIS",
     "citations": "Brown MS & Goldstein JL 1997 Cell 89:331; Horton JD, Goldstein JL & "
                  "Brown MS 2002 J Clin Invest 109:1125; Horton JD et al. 2003 PNAS "
                  "100:12027 (SREBP target genes)"},
    {"moa": "estrogen receptor agonist", "programme": "early ER targets",
     "direction": "up", "genes": ["XBP1", "NRIP1", "MYC", "CCND1"],
     "gene_set": "HALLMARK_ESTROGEN_RESPONSE_EARLY",
     "citations": "Frasor J et al. 2003 Endocrinology 144:4562; Carroll JS et al. 2006 Nat "
                  "Genet 38:1289; Dubik D & Shiu RP 1988 J Biol Chem 263:12705 (MYC); "
                  "Prall OW et al. 1997 J Biol Chem 272:10882 (CCND1)"},
    {"moa": "EGFR inhibitor", "programme": "EGFR/MAPK (ERK) output genes",
     "direction": "down",
     "genes": ["DUSP6", "DUSP4", "ETV1", "FOSL1", "EGR1", "IER3", "FOS", "CCND1"],
     "gene_set": None,
     "citations": "Pratilas CA et al. 2009 PNAS 106:4519 (MEK-dependent transcriptional "
                  "output); Dry JR et al. 2010 Cancer Res 70:2264; Amit I et al. 2007 Nat "
                  "Genet 39:503 (EGF-induced immediate-early genes)"},
    {"moa": "tubulin polymerization inhibitor",
     "programme": "microtubule disruption -> NF-kB / AP-1 targets", "direction": "up",
     "genes": ["NFKBIA", "IER3", "JUN", "NFKB2", "RELB", "TNIP1"],
     "gene_set": "HALLMARK_TNFA_SIGNALING_VIA_NFKB",
     "citations": "Rosette C & Karin M 1995 J Cell Biol 128:1111 (microtubule "
                  "depolymerisation activates NF-kB); Wang TH et al. 1999 J Biol Chem "
                  "274:8208 (microtubule agents activate JNK/AP-1)"},
]


def directional_ranks(values: pd.Series, genes: list[str], direction: str) -> pd.Series:
    """Rank of each gene when all genes are ordered in the programme's direction."""
    order = values.rank(ascending=direction == "down", method="average")
    return order[genes]


def score_programme(values: pd.Series, prog: dict) -> dict:
    """Rank and sign of a programme's genes in one genes-by-symbol vector."""
    genes, sign = prog["genes"], (1 if prog["direction"] == "up" else -1)
    abs_rank = values.abs().rank(ascending=False, method="average")[genes]
    right = np.sign(values[genes]) == sign
    return {"median_abs_rank": float(abs_rank.median()), "n_right_sign": int(right.sum()),
            "n_genes": len(genes),
            "median_directional_rank": float(directional_ranks(values, genes,
                                                               prog["direction"]).median()),
            "genes": {g: {"value": round(float(values[g]), 5), "abs_rank": float(abs_rank[g]),
                          "right_sign": bool(right[g])} for g in genes}}


def enrichment(values: pd.Series, prog: dict, sets: dict, permutations: int, seed: int):
    """NES and FDR of the programme's set in a signed GSEA prerank over the whole library."""
    if prog["gene_set"] is None:
        return {"nes": None, "fdr": None}
    table = prerank(values, sets, permutations=permutations, seed=seed).set_index("pathway")
    row = table.loc[prog["gene_set"]]
    return {"nes": round(float(row["nes"]), 3), "fdr": round(float(row["fdr"]), 4),
            "set_landmark_genes": int(row["n_genes"])}


def shuffle_labels(adata, seed: int):
    """The same data with MoA labels permuted across drugs (one signature per drug)."""
    out = adata.copy()
    rng = np.random.default_rng(seed)
    out.obs["moa"] = pd.Categorical(rng.permutation(out.obs["moa"].astype(str).to_numpy()))
    return out


def explained(model, adata, moas: list[str], args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The signed table and the IG contributions, indexed by gene symbol."""
    signed, _, _, contribution = gene_importance(
        model, adata, moas=moas, n_steps=args.n_steps, n_baselines=args.n_baselines,
        seed=args.seed, return_contribution=True)
    return (signed.set_index("gene_symbol"), contribution.set_index("gene_symbol"))


def raw_significance(adata, prog: dict) -> dict[str, float]:
    """One-sided Welch t-test p of each programme gene: class vs other drugs, in the
    literature's direction (is the raw class mean's agreement more than noise?)."""
    from scipy.stats import ttest_ind

    x = pd.DataFrame(np.asarray(adata.X, dtype=np.float64),
                     columns=adata.var["gene_symbol"].astype(str))
    inside = (adata.obs["moa"].astype(str) == prog["moa"]).to_numpy()
    side = "greater" if prog["direction"] == "up" else "less"
    return {g: float(ttest_ind(x.loc[inside, g], x.loc[~inside, g], equal_var=False,
                               alternative=side).pvalue) for g in prog["genes"]}


def raw_class_means(adata, moas: list[str]) -> pd.DataFrame:
    x = np.asarray(adata.X, dtype=np.float64)
    labels = adata.obs["moa"].astype(str).to_numpy()
    symbols = adata.var["gene_symbol"].astype(str).to_numpy()
    return pd.DataFrame({m: x[labels == m].mean(0) - x.mean(0) for m in moas}, index=symbols)


def raw_set_means(full, moas: list[str]) -> pd.DataFrame:
    """Mean of every drug whose MoA set lists the MoA (case-insensitive), minus the mean
    of all drugs."""
    x = np.asarray(full.X, dtype=np.float64)
    sets = full.obs["moa_set"].astype(object).map(
        lambda v: {m.strip().casefold() for m in str(v).split("|")} if isinstance(v, str)
        else set())
    symbols = full.var["gene_symbol"].astype(str).to_numpy()
    return pd.DataFrame({m: x[sets.map(lambda s, m=m: m.casefold() in s).to_numpy()].mean(0)
                         - x.mean(0) for m in moas}, index=symbols)


def with_labels(full, adata):
    """The full shipped set, ``obs["moa"]`` taken from ``adata`` where it has the drug
    (shuffled labels for a null model) and missing elsewhere."""
    out = full.copy()
    moa = pd.Series(np.nan, index=out.obs_names, dtype=object)
    moa[adata.obs_names] = adata.obs["moa"].astype(str).to_numpy()
    out.obs["moa"] = moa.to_numpy()
    return out


def run_models(adata, full, moas: list[str], args) -> dict:
    """Train the real model and the shuffled-label models; their tables, in one run."""
    tables, seconds = {}, {}
    target = (lambda data: with_labels(full, data)) if args.explain_on == "all" else (
        lambda data: data)
    t0 = time.perf_counter()
    model = MoaModel(adata)
    model.train(seed=args.seed, progress_bar=False)
    seconds["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tables["explanation"], tables["ig_contribution"] = explained(model, target(adata), moas,
                                                                 args)
    seconds["explain"] = time.perf_counter() - t0
    if args.explain_on == "all":
        tables["explanation_labelled"], _ = explained(model, adata, moas, args)
    tables["raw_class_mean"] = raw_class_means(adata, moas)
    tables["raw_set_mean"] = raw_set_means(full, moas)
    for k in range(args.shuffles):
        data = shuffle_labels(adata, seed=1000 + k)
        null = MoaModel(data)
        null.train(seed=args.seed, progress_bar=False)
        tables[f"shuffled_{k}"], _ = explained(null, target(data), moas, args)
    return {"tables": tables, "seconds": seconds}


def score_all(tables: dict, args) -> list[dict]:
    sets, _ = load_gene_sets("hallmark")
    rows = []
    for prog in PROGRAMMES:
        row = {k: prog[k] for k in ("moa", "programme", "direction", "genes", "gene_set",
                                    "citations")}
        for method, table in tables.items():
            values = table[prog["moa"]]
            row[method] = {**score_programme(values, prog),
                           **enrichment(values, prog, sets, args.permutations, args.seed)}
        rows.append(row)
    return rows


def acceptance(rows: list[dict], n_shuffles: int) -> dict:
    """The three criteria of issue #27, programme by programme.

    Sign: on the genes where the raw class mean has the literature's sign (``agree``), and
    on those where it does so significantly (one-sided Welch p < 0.05, ``agree_sig``).
    Recovery: the median directional rank, against the raw class mean's, and against the
    shuffled models' (their median, and how many of them it beats); with a Hallmark set
    also the NES.
    """
    out = {"programmes": {}}
    for row in rows:
        expl, raw = row["explanation"], row["raw_class_mean"]
        agree = [g for g in row["genes"] if raw["genes"][g]["right_sign"]]
        agree_sig = [g for g in agree if row["raw_p"][g] < 0.05]
        nulls = [row[f"shuffled_{k}"]["median_directional_rank"] for k in range(n_shuffles)]
        rank = expl["median_directional_rank"]
        entry = {
            "raw_agrees_with_literature": f"{len(agree)}/{len(row['genes'])}",
            "raw_agrees_significantly": f"{len(agree_sig)}/{len(row['genes'])}",
            "sign_right_where_raw_agrees": all(expl["genes"][g]["right_sign"] for g in agree),
            "sign_right_where_raw_agrees_significantly": all(
                expl["genes"][g]["right_sign"] for g in agree_sig),
            "at_least_as_good_as_raw": rank <= raw["median_directional_rank"],
            "at_least_as_good_as_raw_set": (
                rank <= row["raw_set_mean"]["median_directional_rank"]),
            "better_than_null_median": rank < float(np.median(nulls)),
            "shuffles_beaten": f"{sum(rank < n for n in nulls)}/{n_shuffles}",
        }
        if "explanation_labelled" in row:
            lab = row["explanation_labelled"]
            entry["labelled_at_least_as_good_as_raw"] = (
                lab["median_directional_rank"] <= raw["median_directional_rank"])
            entry["labelled_sign_right_where_raw_agrees"] = all(
                lab["genes"][g]["right_sign"] for g in agree)
        if expl["nes"] is not None:
            entry["nes_at_least_raw"] = expl["nes"] >= raw["nes"]
        out["programmes"][row["moa"]] = entry
    progs = list(out["programmes"].values())
    n = len(progs)
    out["sign_right_for_all"] = all(p["sign_right_where_raw_agrees"] for p in progs)
    out["sign_right_for_all_significant"] = all(
        p["sign_right_where_raw_agrees_significantly"] for p in progs)
    good = sum(p["at_least_as_good_as_raw"] for p in progs)
    out["as_good_as_raw_for"] = f"{good}/{n}"
    out["as_good_as_raw_for_most"] = good > n / 2
    out["as_good_as_raw_set_for"] = f"{sum(p['at_least_as_good_as_raw_set'] for p in progs)}/{n}"
    if all("labelled_at_least_as_good_as_raw" in p for p in progs):
        out["labelled_as_good_as_raw_for"] = (
            f"{sum(p['labelled_at_least_as_good_as_raw'] for p in progs)}/{n}")
        out["labelled_sign_right_for_all"] = all(
            p["labelled_sign_right_where_raw_agrees"] for p in progs)
    with_set = [p for p in progs if "nes_at_least_raw" in p]
    out["nes_at_least_raw_for"] = f"{sum(p['nes_at_least_raw'] for p in with_set)}/{len(with_set)}"
    out["better_than_null_median_for_all"] = all(p["better_than_null_median"] for p in progs)
    out["better_than_every_shuffle_for"] = (
        f"{sum(p['shuffles_beaten'] == f'{n_shuffles}/{n_shuffles}' for p in progs)}/{n}")
    return out


def markdown(result: dict) -> str:
    n_null = result["settings"]["shuffles"]
    lines = ["# Real-biology validation of explain (bench_biology)", "",
             f"{result['data']}; commit {result.get('git_commit')}; "
             f"{result['settings']}", "",
             "Median directional rank of the programme's landmark genes (1 = first of 978 in "
             "the programme's direction), genes with the literature's sign, and the "
             "programme's Hallmark set in a signed GSEA prerank (NES, FDR).", "",
             f"Explanation: {result.get('explained', 'every drug passed')}.", "",
             "| MoA (n drugs) | programme | dir | explanation | raw class mean | "
             "raw mean, every drug listing the MoA | explanation, labelled drugs only | "
             f"shuffled null (median of {n_null}) | IG contribution (a filter) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["programmes"]:
        def cell(s):
            nes = "" if s["nes"] is None else f"; NES {s['nes']:+.2f} (FDR {s['fdr']:.3f})"
            return f"{s['median_directional_rank']:.0f}, {s['n_right_sign']}/{s['n_genes']}{nes}"
        labelled = (cell(row["explanation_labelled"]) if "explanation_labelled" in row
                    else "(the explanation)")
        nulls = [row[f"shuffled_{k}"] for k in range(n_null)]
        null_rank = np.median([s["median_directional_rank"] for s in nulls])
        null_sign = np.median([s["n_right_sign"] for s in nulls])
        null_nes = [s["nes"] for s in nulls if s["nes"] is not None]
        null_txt = (f"{null_rank:.0f}, {null_sign:.0f}/{len(row['genes'])}"
                    + (f"; NES {np.median(null_nes):+.2f}" if null_nes else ""))
        lines.append(f"| {row['moa']} ({row['n_drugs']}) | {row['programme']}"
                     f"{' (' + row['gene_set'] + ')' if row['gene_set'] else ''} | "
                     f"{row['direction']} | {cell(row['explanation'])} | "
                     f"{cell(row['raw_class_mean'])} | {cell(row['raw_set_mean'])} | "
                     f"{labelled} | {null_txt} | "
                     f"{cell(row['ig_contribution'])} |")
    acc = result["acceptance"]
    lines += ["", "Acceptance (issue #27):", "",
              f"- sign right for every gene where the raw class mean agrees with the "
              f"literature: **{acc['sign_right_for_all']}**; where it agrees significantly "
              f"(one-sided Welch p < 0.05): **{acc['sign_right_for_all_significant']}**;",
              f"- median directional rank at least as good as the raw class mean's: "
              f"**{acc['as_good_as_raw_for']}** programmes; NES at least the raw class "
              f"mean's: **{acc['nes_at_least_raw_for']}** sets; at least as good as the raw "
              f"mean of every drug listing the MoA: **{acc['as_good_as_raw_set_for']}**;",
              *([f"- the explanation over the labelled drugs only: at least as good as the "
                 f"raw class mean for **{acc['labelled_as_good_as_raw_for']}** programmes, "
                 f"sign right for all: **{acc['labelled_sign_right_for_all']}**;"]
                if "labelled_as_good_as_raw_for" in acc else []),
              f"- better than the shuffled null's median: "
              f"**{acc['better_than_null_median_for_all']}** (all programmes); better than "
              f"every shuffled model: {acc['better_than_every_shuffle_for']} programmes.",
              "", "| MoA | raw agrees (p<0.05) | sign right | >= raw | shuffles beaten |",
              "|---|---|---|---|---|"]
    for moa, p in acc["programmes"].items():
        lines.append(f"| {moa} | {p['raw_agrees_with_literature']} "
                     f"({p['raw_agrees_significantly']}) | "
                     f"{p['sign_right_where_raw_agrees']} | {p['at_least_as_good_as_raw']} | "
                     f"{p['shuffles_beaten']} |")
    lines += ["", "Per gene: explanation value (rank by |value|) / raw class mean (rank), "
              "one-sided p of the raw difference.", ""]
    for row in result["programmes"]:
        cells = []
        for g in row["genes"]:
            e, r = row["explanation"]["genes"][g], row["raw_class_mean"]["genes"][g]
            cells.append(f"{g} {e['value']:+.3f} ({e['abs_rank']:.0f}) / {r['value']:+.2f} "
                         f"({r['abs_rank']:.0f}), p {row['raw_p'][g]:.2g}")
        lines.append(f"- {row['moa']} ({row['direction']}): " + "; ".join(cells))
    lines += ["", "Citations:", ""]
    lines += [f"- {row['moa']}: {row['citations']}" for row in result["programmes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffles", type=int, default=5)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--n-baselines", type=int, default=4)
    parser.add_argument("--explain-on", choices=("all", "labelled"), default="all")
    parser.add_argument("--name", default="bench_biology_real")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    full = lincs_consensus()
    adata = split(lincs_consensus(min_compounds_per_moa=5, multi_moa="drop"), "compound",
                  seed=args.seed)
    moas = [p["moa"] for p in PROGRAMMES]
    t0 = time.perf_counter()
    run = run_models(adata, full, moas, args)
    rows = score_all(run["tables"], args)
    counts = adata.obs["moa"].astype(str).value_counts()
    for row, prog in zip(rows, PROGRAMMES, strict=True):
        row["n_drugs"] = int(counts[row["moa"]])
        row["raw_p"] = raw_significance(adata, prog)
    explained_on = (f"all {full.n_obs} shipped drugs (the model scores the drugs it was not "
                    "trained on: several MoAs, a rare MoA, none)" if args.explain_on == "all"
                    else f"the {adata.n_obs} labelled drugs")
    result = {**provenance(),
              "data": f"trained on lincs_consensus(min_compounds_per_moa=5, "
                      f"multi_moa='drop'): {adata.n_obs} drugs, {counts.size} MoAs; split "
                      f"compound seed {args.seed}",
              "explained": explained_on,
              "settings": vars(args), "seconds": {**run["seconds"],
                                                  "total": time.perf_counter() - t0},
              "programmes": rows, "acceptance": acceptance(rows, args.shuffles)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=float))
    text = markdown(result)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
