"""Open set on held-out MoAs: the training seed's share of the spread, and a deep ensemble (#28, stop 38).

Every open-set benchmark so far trains one network per split seed (training seed = split
seed), so a difference between two settings mixes the split draw with the draw of the
network. Here each split seed (``--scheme moa``: 20% of the MoAs only in test) gets ``K``
default networks (training seeds ``s``, ``s + 1000``, ...; ``--train-seeds K``); each
predicts the test signatures with compounds (``compound_key="pert_id"``) as ``predict``
does by default. Reported per network:

* ``false_unknown_rate`` / ``novel_flagged``: ``moa_pred == "unknown"`` among the known /
  novel labelled test signatures (the calls);
* ``auroc_written``: AUROC, known vs novel, of ``moa_unknown_score`` (the score of the call);
  ``auroc_own``: of each signature's own score; ``auroc_compound``: of the compound means of
  the own scores (one row per compound);
* ``oracle_5pct``: novel signatures above the written score's threshold set on the *test*
  known signatures for 5% false unknowns (the ceiling of the score, not a deployable number).

And per split, a deep ensemble of its ``K`` networks (the mean of their own scores):
``auroc_own`` and ``auroc_compound`` beside the mean of its members'. The summary splits the
spread of each metric into the part between networks of one split (pooled within-split sd)
and between splits (sd of the split means).

Writes ``benchmarks/results/<name>.json`` / ``.md``.

    OMP_NUM_THREADS=1 python benchmarks/bench_training_seeds.py --data sim0.h5ad --seeds 0,1,2,3,4,5
    OMP_NUM_THREADS=1 python benchmarks/bench_training_seeds.py --real --seeds 0,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from moaspace._core.sets import has_label
from moaspace._utils import provenance
from moaspace.datasets import lincs_consensus
from moaspace.model import MoaModel
from moaspace.model._predict import predict
from moaspace.model.calibration import UNKNOWN, unknown_auroc
from moaspace.pp._prepare import read_h5ad
from moaspace.pp._split import split

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("false_unknown_rate", "novel_flagged", "auroc_written", "auroc_own",
           "auroc_compound", "oracle_5pct")


def compound_auroc(score: np.ndarray, compound: np.ndarray, novel: np.ndarray) -> float:
    """AUROC of the compounds' mean scores (a compound is novel or known as a whole)."""
    by = pd.DataFrame({"s": score, "c": compound, "n": novel}).groupby("c").agg(
        s=("s", "mean"), n=("n", "first"))
    return unknown_auroc(by.s[~by.n], by.s[by.n])


def one_network(model: MoaModel, test, held: set[str]) -> tuple[dict, np.ndarray]:
    """The metrics of one trained network on the test split, and its own scores."""
    obs = predict(model, test, compound_key="pert_id").obs
    labelled = has_label(test.obs["moa"])
    novel = test.obs["moa"].astype(str).isin(held).to_numpy() & labelled
    known = labelled & ~novel
    written = obs["moa_unknown_score"].to_numpy(np.float64)
    own = obs.get("moa_unknown_score_signature", obs["moa_unknown_score"]).to_numpy(np.float64)
    unknown = obs["moa_pred"].astype(str).to_numpy() == UNKNOWN
    compound = test.obs["pert_id"].astype(str).to_numpy()
    cut = np.quantile(written[known], 0.95)
    out = {"false_unknown_rate": float(unknown[known].mean()),
           "novel_flagged": float(unknown[novel].mean()),
           "auroc_written": unknown_auroc(written[known], written[novel]),
           "auroc_own": unknown_auroc(own[known], own[novel]),
           "auroc_compound": compound_auroc(own[labelled], compound[labelled], novel[labelled]),
           "oracle_5pct": float((written[novel] > cut).mean())}
    return out, own


def run_split(adata, seed: int, k: int, max_epochs: int, moa_fraction: float) -> dict:
    data = split(adata, "moa", moa_fraction=moa_fraction, seed=seed, copy=True)
    held = set(data.uns["moaspace"]["split"]["test_only_moas"])
    test = data[(data.obs["split"] == "test").to_numpy()].copy()
    networks, own_scores = [], []
    for j in range(k):
        model = MoaModel(data)
        model.train(max_epochs=max_epochs, seed=seed + 1000 * j, progress_bar=False)
        metrics, own = one_network(model, test, held)
        networks.append({"train_seed": seed + 1000 * j, **metrics})
        own_scores.append(own)
        print(json.dumps({"split_seed": seed, **networks[-1]}), flush=True)
    labelled = has_label(test.obs["moa"])
    novel = test.obs["moa"].astype(str).isin(held).to_numpy() & labelled
    mean_own = np.mean(own_scores, axis=0)
    compound = test.obs["pert_id"].astype(str).to_numpy()
    ensemble = {"auroc_own": unknown_auroc(mean_own[labelled & ~novel], mean_own[novel]),
                "auroc_compound": compound_auroc(mean_own[labelled], compound[labelled],
                                                 novel[labelled])}
    return {"split_seed": seed, "networks": networks, "ensemble": ensemble}


def summary(runs: list[dict]) -> str:
    rows = [{"split_seed": r["split_seed"], **n} for r in runs for n in r["networks"]]
    df = pd.DataFrame(rows)
    lines = ["| metric | mean, every network | sd between networks of a split (pooled) | "
             "sd between splits (split means) |", "|---|---|---|---|"]
    for m in METRICS:
        within = np.sqrt(df.groupby("split_seed")[m].var(ddof=1).mean())
        lines.append(f"| {m} | {df[m].mean():.3f} | {within:.3f} | "
                     f"{df.groupby('split_seed')[m].mean().std(ddof=1):.3f} |")
    lines += ["", "| split seed | " + " | ".join(
        f"{m}, networks" for m in ("novel_flagged", "oracle_5pct", "auroc_compound"))
        + " | ensemble auroc_own (members' mean) | ensemble auroc_compound (members' mean) |",
        "|---|---|---|---|---|---|"]
    gains = {"auroc_own": [], "auroc_compound": []}
    for r in runs:
        net = pd.DataFrame(r["networks"])
        cells = [" / ".join(f"{v:.3f}" for v in net[m]) for m in
                 ("novel_flagged", "oracle_5pct", "auroc_compound")]
        for m in gains:
            gains[m].append(r["ensemble"][m] - net[m].mean())
        cells += [f"{r['ensemble'][m]:.3f} ({net[m].mean():.3f})" for m in gains]
        lines.append(f"| {r['split_seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    for m, g in gains.items():
        g = np.asarray(g)
        lines.append(f"Ensemble minus its members' mean, {m}: {g.mean():+.4f} ± {g.std(ddof=1):.4f} "
                     f"(higher in {(g > 0).sum()} of {len(g)} splits).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a prepared h5ad")
    source.add_argument("--real", action="store_true",
                        help="the shipped consensus set (519 single-MoA drugs, 44 MoAs)")
    parser.add_argument("--seeds", default="0,1,2,3,4,5", help="split seeds")
    parser.add_argument("--train-seeds", type=int, default=3, help="networks per split")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--moa-fraction", type=float, default=0.2)
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = (lincs_consensus(min_compounds_per_moa=5, multi_moa="drop") if args.real
             else read_h5ad(args.data))
    name = args.name or ("bench_training_seeds_real" if args.real else "bench_training_seeds")
    runs = [run_split(adata, int(s), args.train_seeds, args.max_epochs, args.moa_fraction)
            for s in args.seeds.split(",")]
    text = summary(runs)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"data": "real consensus" if args.real else str(args.data), "seeds": args.seeds,
            "train_seeds": args.train_seeds, "max_epochs": args.max_epochs,
            "moa_fraction": args.moa_fraction}
    (args.out / f"{name}.json").write_text(json.dumps(
        {**provenance(), **meta, "runs": runs}, indent=1))
    (args.out / f"{name}.md").write_text(f"# {name}\n\n`{json.dumps(meta)}`\n\n{text}")


if __name__ == "__main__":
    main()
