"""How much headroom is there? An oracle that knows the simulator's planted MoA directions.

The benchmark table for unseen compounds (``benchmarks/results/benchmark_compound_sim0.json``)
puts our model level with logistic regression. This script asks whether any method could do
clearly better on that data. For the same splits (``moaspace simulate --seed 0`` +
default ``prepare``, the README's ``data.h5ad``; same ``split`` seeds) it scores an
*oracle* that knows what no method can learn: the true MoA response direction of every
MoA in every cell line (pathway programs x the cell's pathway gains, plus the MoA's own
genes x the cell's gene gains) and the true cell-line baseline, and calls the MoA whose
direction has the highest cosine with the baseline-free signature.

plus the MoA's generic proliferation/stress program at the signature's time point.
The oracle is not Bayes-optimal (it ignores the noise structure, dose, compound-level
off-targets shared between training and test compounds, and the magnitude of the
response, which also differs between MoAs), so a learned model can beat it; it is a
reference for how much a nearest-true-direction rule gets. It
also reports the share of test signatures from compounds the simulator made inactive
(efficacy x 0.03-0.15: nothing to classify) and the oracle's macro-F1 on the active
ones. Next to it, from the benchmark files, every method's paired difference to
``moaspace`` (same split per seed): mean and sd over seeds.

Writes ``benchmarks/results/bench_ceiling.json`` and prints a table.

    python benchmarks/bench_ceiling.py [--data data.h5ad]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _simdata import add_data_argument, default_data

from moaspace._utils import provenance
from moaspace.datasets import SimulationConfig, simulate_world
from moaspace.pp._split import split
from moaspace.tl._metrics import classification_metrics

RESULTS = Path(__file__).resolve().parent / "results"
# compound split only: on a held-out cell line the test compounds are training compounds,
# whose own (off-MoA) directions a learned model has seen in other cells and the MoA-level
# oracle ignores, so there the oracle is no reference (learned models beat it by ~0.05)
SCHEMES = {"compound": {}}


def oracle_scores(world, adata: ad.AnnData, moas: list[str]) -> np.ndarray:
    """Cosine of each baseline-free signature with the true direction of each MoA in its cell."""
    names = [s.name for s in world.moas]
    cells = list(world.cells)
    mi = [names.index(m) for m in moas]
    ci = np.array([cells.index(c) for c in adata.obs["cell_iname"].astype(str)])
    x = np.asarray(adata.X, np.float64) - world.cell_base[ci]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cyto = np.array([world.moas[j].cytotoxic for j in mi])
    times = adata.obs["pert_time"].astype(float).to_numpy()
    scores = np.zeros((adata.n_obs, len(moas)))
    for k in np.unique(ci):
        d = ((world.moa_coef[mi] * world.cell_pw_gain[k]) @ world.programs
             + world.moa_idio[mi] * world.cell_gene_gain[k])
        for t in np.unique(times):
            rows = (ci == k) & (times == t)
            # plus the generic proliferation/stress program, as the simulator adds it
            gain = cyto * world.generic_weight(t) * world.cell_generic[k]
            full = d + gain[:, None] * world.generic
            full /= np.linalg.norm(full, axis=1, keepdims=True)
            scores[rows] = x[rows] @ full.T
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_argument(parser)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = SimulationConfig(seed=0)
    adata = default_data(args.data)
    world = simulate_world(config)
    active = world.cpd.set_index("pert_id")["active"]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {"data": {"signatures": adata.n_obs, "moas": int(adata.obs["moa"].nunique())},
           "schemes": {}}
    for scheme, kwargs in SCHEMES.items():
        rows = []
        for seed in seeds:
            data = split(adata, scheme, seed=seed, copy=True, **kwargs)
            part = data.obs["split"].astype(str).to_numpy()
            moas = sorted(set(data.obs["moa"].astype(str)[part == "train"]))
            test = data[part == "test"]
            y = test.obs["moa"].astype(str).to_numpy()
            s = oracle_scores(world, test, moas)
            probs = np.exp(30 * (s - s.max(1, keepdims=True)))
            probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
            act = active.loc[test.obs["pert_id"].astype(str)].to_numpy()
            rows.append({
                "seed": seed,
                "oracle_macro_f1": classification_metrics(y, probs, moas)["macro_f1"],
                "oracle_macro_f1_active": classification_metrics(y[act], probs[act],
                                                                 moas)["macro_f1"],
                "inactive_share": float(1 - act.mean()),
            })
        oracle = pd.DataFrame(rows).set_index("seed")
        bench_file = RESULTS / f"benchmark_{scheme}_sim0.json"
        methods = {}
        if bench_file.exists():
            bench = json.loads(bench_file.read_text())
            records = pd.DataFrame(bench["records"] if isinstance(bench, dict) else bench)
            f1 = records.pivot_table(index="seed", columns="method", values="macro_f1")
            f1 = f1.loc[f1.index.isin(seeds)]
            for method in f1.columns:
                diff = f1["moaspace"] - f1[method]
                gap = oracle["oracle_macro_f1"].reindex(f1.index) - f1[method]
                methods[method] = {
                    "macro_f1_mean": float(f1[method].mean()),
                    "macro_f1_sd": float(f1[method].std(ddof=1)),
                    "moaspace_minus_method_mean": float(diff.mean()),
                    "moaspace_minus_method_sd": float(diff.std(ddof=1)),
                    "oracle_minus_method_mean": float(gap.mean()),
                }
        out["schemes"][scheme] = {
            "oracle_per_seed": oracle.reset_index().to_dict("records"),
            "oracle_macro_f1_mean": float(oracle["oracle_macro_f1"].mean()),
            "oracle_macro_f1_active_mean": float(oracle["oracle_macro_f1_active"].mean()),
            "inactive_share_mean": float(oracle["inactive_share"].mean()),
            "methods": methods,
        }
        print(f"\n{scheme} split: oracle macro-F1 {oracle['oracle_macro_f1'].mean():.3f} "
              f"(per seed {', '.join(f'{v:.3f}' for v in oracle['oracle_macro_f1'])}); "
              f"active compounds only {oracle['oracle_macro_f1_active'].mean():.3f}; "
              f"inactive share of test {oracle['inactive_share'].mean():.2f}")
        print(f"{'method':18s} {'macro-F1':>14s} {'moaspace - it':>16s} {'oracle - it':>12s}")
        for method, m in sorted(methods.items(), key=lambda kv: -kv[1]["macro_f1_mean"]):
            print(f"{method:18s} {m['macro_f1_mean']:7.3f} ± {m['macro_f1_sd']:.3f} "
                  f"{m['moaspace_minus_method_mean']:+9.3f} ± {m['moaspace_minus_method_sd']:.3f} "
                  f"{m['oracle_minus_method_mean']:+12.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_ceiling.json").write_text(json.dumps({**provenance(), **out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
