"""Real CMap level-5 signatures through models trained on the real consensus set (#28).

``../shared/data/real_gct/`` holds 272 level-5 signatures of atorvastatin (an HMGCR inhibitor, a
class of the model), vemurafenib (a RAF inhibitor, not a class) and venlafaxine, across cell lines
as CMap distributes them. For each seed: the shipped consensus set
(``lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")``) is split by compound with that
seed, the default model is trained with that seed, and ``predict`` runs with its defaults (open set
on, per-compound unknown calls by ``pert_id``, the calibrated strength cut-off). Per drug it counts
``no call``, ``unknown`` and the calls made, and the compound table's call for the drug.

    python benchmarks/bench_level5.py --seeds 0,1,2,3,4
    python benchmarks/bench_level5.py --gct path/to/level5.gctx --seeds 0

Writes ``benchmarks/results/bench_level5.{json,md}`` and prints the table. The level-5 files
are not shipped with moaspace; the script needs them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

import moaspace as ms
from moaspace._utils import provenance

OUT = Path(__file__).resolve().parent / "results"
GCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_gct" / "modzs_n272x978.gctx"
ABSTAIN = ("unknown", "no call")
EXPECTED = {"atorvastatin": "HMGCR inhibitor"}  # the class a drug's calls should be


def drug_rows(pred, drug_key: str) -> dict:
    """Per drug: counts of each outcome and of every known call made."""
    obs = pred.obs
    compounds = ms.tl.prediction_table(pred, "compound_calls")
    rows = {}
    for drug, group in obs.groupby(drug_key, observed=True):
        calls = group["moa_pred"].astype(str)
        called = ~calls.isin(ABSTAIN).to_numpy()
        made = calls[called]
        gold = (group["is_gold"].astype(str).str.lower().isin(["1", "true", "1.0"]).to_numpy()
                if "is_gold" in group else np.zeros(len(group), bool))
        ids = set(group["pert_id"].astype(str)) if "pert_id" in group else set()
        compound_calls = compounds.loc[compounds.index.astype(str).isin(ids), "moa_pred"]
        rows[str(drug)] = {
            "signatures": len(group), "gold": int(gold.sum()),
            "median_strength": float(group["moa_strength"].median()),
            "no_call": int((calls == "no call").sum()), "unknown": int((calls == "unknown").sum()),
            "called": len(made), "called_gold": int((gold & called).sum()),
            "calls": dict(Counter(made).most_common()),
            "calls_gold": dict(Counter(calls[gold & called]).most_common()),
            "compound_call": sorted(compound_calls.astype(str).unique().tolist())}
    return rows


def run_seed(adata, query, seed: int, drug_key: str) -> dict:
    ms.pp.split(adata, scheme="compound", seed=seed)
    model = ms.MoaModel(adata)
    model.train(seed=seed, progress_bar=False, accelerator="cpu")
    pred = ms.tl.predict(model, query.copy())
    cal = model.calibration
    return {"min_strength": cal.min_strength, "score": cal.score,
            "drugs": drug_rows(pred, drug_key)}


def summarise(seeds: dict) -> dict:
    """Pooled over seeds: share of a drug's calls that are its expected class, of its
    signatures that abstain, and the per-seed spread of each."""
    out = {}
    drugs = sorted({d for r in seeds.values() for d in r["drugs"]})
    for drug in drugs:
        per = [r["drugs"][drug] for r in seeds.values() if drug in r["drugs"]]
        abstain = [(d["no_call"] + d["unknown"]) / d["signatures"] for d in per]
        entry = {"abstain_mean": float(np.mean(abstain)), "abstain_per_seed": abstain}
        expected = EXPECTED.get(drug)
        if expected:
            hits = [d["calls"].get(expected, 0) for d in per]
            made = [d["called"] for d in per]
            entry.update({"expected": expected, "expected_among_called_pooled":
                          float(np.sum(hits) / max(np.sum(made), 1)),
                          "expected_among_called_per_seed":
                          [h / m if m else float("nan") for h, m in zip(hits, made, strict=True)]})
        out[drug] = entry
    return out


def markdown(seeds: dict, summary: dict, argv: str) -> str:
    lines = ["# Real level-5 signatures through the real-consensus model", "",
             f"`python benchmarks/bench_level5.py {argv}`: one model per seed (split `compound` and "
             "training with that seed, default `train` and `predict`).", "",
             "| seed | drug (signatures; gold) | median strength | no call | unknown | called "
             "| calls made (most common first) | compound call |", "|---|---|---|---|---|---|---|---|"]
    for seed, r in seeds.items():
        for drug, d in r["drugs"].items():
            top = ", ".join(f"{k} {v}" for k, v in list(d["calls"].items())[:4])
            more = len(d["calls"]) - 4
            top += f", {more} other classes" if more > 0 else ""
            lines.append(f"| {seed} | {drug} ({d['signatures']}; {d['gold']}) "
                         f"| {d['median_strength']:.2f} | {d['no_call']} | {d['unknown']} "
                         f"| {d['called']} | {top} | {', '.join(d['compound_call'])} |")
    lines += ["", "| drug | abstains (`unknown` or `no call`), mean over seeds "
              "| expected class among the calls made, pooled | per seed |", "|---|---|---|---|"]
    for drug, s in summary.items():
        share = s.get("expected_among_called_pooled")
        per = ", ".join("–" if np.isnan(v) else f"{v:.2f}"
                        for v in s.get("expected_among_called_per_seed", []))
        expected = "" if share is None else f"{share:.2f} ({s['expected']})"
        lines.append(f"| {drug} | {s['abstain_mean']:.2f} | {expected} | {per} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gct", type=Path, default=GCT, help="level-5 signatures (.gct/.gctx)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--drug-key", default="pert_iname")
    p.add_argument("--name", default="bench_level5")
    args = p.parse_args(argv)
    adata = ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    query = ms.io.read_query(args.gct)
    t0 = time.perf_counter()
    seeds = {int(s): run_seed(adata, query, int(s), args.drug_key)
             for s in args.seeds.split(",")}
    summary = summarise(seeds)
    text = markdown(seeds, summary, " ".join(argv) if argv else f"--seeds {args.seeds}")
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.md").write_text(text)
    (OUT / f"{args.name}.json").write_text(json.dumps(
        {**provenance(), "gct": args.gct.name, "seconds": time.perf_counter() - t0,
         "seeds": seeds, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
