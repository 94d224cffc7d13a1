"""CRISPR knockdowns vs raw-signature kNN as knockdowns get weaker (simulator default release).

simulate (default config) -> prepare -> compound split -> train once on the drugs; then
the same simulated world's knockdowns at several strengths (``SimulationConfig.
knockdown_scale``; it changes only the knockdown matrix, the drug signatures stay the
same) are scored without retraining: hit@1 / hit@5 / mean rank of the expected MoA per
knocked-down gene for the model, raw-signature kNN against the same training drugs and a
shuffled-link null, and a one-sided sign test on the genes where exactly one of model and
raw kNN has the expected MoA in its top 5.

Writes ``benchmarks/results/bench_crispr.json`` and prints a table.

    python benchmarks/bench_crispr.py [--seed 0] [--max-epochs 30] [--scales 0.7,0.45,0.3,0.2]
        [--compound-weight W] [--out FILE]

``--seed`` sets the simulated world, the split and the training seed alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

from _simdata import prepare_knockdowns, raw_reference, simulate_prepared
from scipy.stats import binomtest

from moaspace._utils import provenance
from moaspace.datasets._simulate import SimulationConfig, simulate
from moaspace.model import MoaModel
from moaspace.pp._split import split
from moaspace.tl._crispr import score_knockdowns

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--scales", default="0.7,0.45,0.3,0.2")
    parser.add_argument("--compound-weight", type=float, default=None,
                        help="the model's compound-loss weight (default: the model's default)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_crispr.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp())
    config = SimulationConfig(seed=args.seed)
    paths, adata = simulate_prepared(work / "sim", config)
    adata = split(adata, "compound", seed=args.seed)
    t0 = time.perf_counter()
    model = MoaModel(adata, **({} if args.compound_weight is None
                               else {"compound_weight": args.compound_weight}))
    model.train(max_epochs=args.max_epochs, seed=args.seed, progress_bar=False)
    result = {"seed": args.seed, "compound_weight": model.config.compound_weight,
              "signatures": adata.n_obs,
              "moas": int(adata.obs["moa"].nunique()),
              "train_seconds": time.perf_counter() - t0, "scales": {}}
    raw = raw_reference(adata)
    for scale in (float(s) for s in args.scales.split(",")):
        kd_paths = simulate(work / f"kd_{scale}", dataclasses.replace(config,
                                                                      knockdown_scale=scale))
        kd = prepare_knockdowns(kd_paths)
        out = score_knockdowns(model, kd, paths["compoundinfo"], raw_reference=raw)
        summary = out["summary"]
        table = out["table"]
        scored = table[table["expected_moas"] != "no expected MoA"]
        hit, hit_raw = scored["rank"] <= 5, scored["rank_raw"] <= 5
        only_model, only_raw = int((hit & ~hit_raw).sum()), int((~hit & hit_raw).sum())
        n = only_model + only_raw
        summary["hit_at_5_only_model"], summary["hit_at_5_only_raw"] = only_model, only_raw
        summary["sign_test_p"] = (binomtest(only_model, n, 0.5, alternative="greater").pvalue
                                  if n else 1.0)
        result["scales"][str(scale)] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), **result}, indent=2, default=float))
    print(f"simulator default (seed {args.seed}): {result['signatures']} drug signatures, "
          f"{result['moas']} MoAs; knockdowns scored without retraining")
    print(f"{'knockdown scale':>16}{'genes':>7}{'hit@1':>8}{'raw':>7}{'hit@5':>8}{'raw':>7}"
          f"{'null':>7}{'rank':>7}{'raw':>7}{'sign p':>9}")
    for scale, s in result["scales"].items():
        print(f"{scale:>16}{s['n_genes_scored']:>7}{s['hit_at_1']:>8.3f}{s['hit_at_1_raw']:>7.3f}"
              f"{s['hit_at_5']:>8.3f}{s['hit_at_5_raw']:>7.3f}{s['hit_at_5_null']:>7.3f}"
              f"{s['mean_rank']:>7.2f}{s['mean_rank_raw']:>7.2f}{s['sign_test_p']:>9.2g}")


if __name__ == "__main__":
    main()
