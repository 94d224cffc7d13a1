"""The open-set score ``predict`` writes beside its ``unknown`` calls (#28, stop 37).

With compounds (``compound_key``, the default) ``predict`` calls ``unknown`` per compound:
the mean open-set score of a compound's signatures against a threshold for that many
signatures. ``obs["moa_unknown_score"]`` is the score of that call: the compound's mean put
on the per-signature threshold's scale (``calibration._pooled.call_unknown_scores``), so
that score and call agree; the signature's own score is ``moa_unknown_score_signature``.
Before, ``moa_unknown_score`` was the signature's own, and disagreed with the call of many
signatures. Per split seed (``--scheme moa``: 20% of the MoAs only in test; the other MoAs
split by compound), one default model (``--max-epochs``, as ``bench_openset.py``), its test
signatures predicted once with compounds; reported:

* AUROC, known vs novel MoA test signatures (the labelled ones), of the score as written
  (``moa_unknown_score``) and of each signature's own score;
* the share of test signatures that get a call (not ``no call``) whose call disagrees with
  its score against the per-signature threshold (``score > threshold`` but not ``unknown``,
  or ``unknown`` but not above it), for either score;
* false unknowns and novel signatures flagged (``moa_pred == "unknown"``; the same for
  either score: the calls do not change).

Writes ``benchmarks/results/<name>.json`` / ``.md``.

    OMP_NUM_THREADS=1 python benchmarks/bench_unknown_score.py --data sim0.h5ad --seeds 0,1,2,3,4,5
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
from moaspace.model import MoaModel
from moaspace.model._predict import predict
from moaspace.model.calibration import UNKNOWN, unknown_auroc
from moaspace.pp._prepare import read_h5ad
from moaspace.pp._split import split

RESULTS = Path(__file__).resolve().parent / "results"


def run_seed(adata, seed: int, max_epochs: int, moa_fraction: float) -> dict:
    data = split(adata, "moa", moa_fraction=moa_fraction, seed=seed, copy=True)
    held = set(data.uns["moaspace"]["split"]["test_only_moas"])
    model = MoaModel(data)
    model.train(max_epochs=max_epochs, seed=seed, progress_bar=False)
    test = data[(data.obs["split"] == "test").to_numpy()].copy()
    pred = predict(model, test, compound_key="pert_id")
    obs = pred.obs
    labelled = has_label(test.obs["moa"])
    novel = test.obs["moa"].astype(str).isin(held).to_numpy() & labelled
    known = labelled & ~novel
    written = obs["moa_unknown_score"].to_numpy(np.float64)
    own = obs.get("moa_unknown_score_signature", obs["moa_unknown_score"]).to_numpy(np.float64)
    calls = obs["moa_pred"].astype(str).to_numpy()
    called = (calls != "no call") & labelled
    threshold = float(model.calibration.threshold)
    unknown = calls == UNKNOWN
    out = {"seed": seed, "n_known": int(known.sum()), "n_novel": int(novel.sum()),
           "unknown_by": pred.uns["moa"]["params"].get("unknown_by"),
           "false_unknown_rate": float(unknown[known].mean()),
           "novel_flagged": float(unknown[novel].mean())}
    for name, score in (("written", written), ("own", own)):
        out[f"auroc_{name}"] = unknown_auroc(score[known], score[novel])
        out[f"disagree_{name}"] = float(((score > threshold) != unknown)[called].mean())
    return out


def table(runs: list[dict]) -> str:
    df = pd.DataFrame(runs)
    rows = ["| seed | AUROC, moa_unknown_score (written) | AUROC, signature's own | calls "
            "disagreeing with the score, written | ... own | false unknowns | novel flagged |",
            "|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['seed']} | {r['auroc_written']:.3f} | {r['auroc_own']:.3f} | "
                    f"{r['disagree_written']:.3f} | {r['disagree_own']:.3f} | "
                    f"{r['false_unknown_rate']:.3f} | {r['novel_flagged']:.3f} |")
    m, s = df.mean(numeric_only=True), df.std(numeric_only=True)
    cols = ("auroc_written", "auroc_own", "disagree_written", "disagree_own",
            "false_unknown_rate", "novel_flagged")
    rows.append("| mean ± sd | " + " | ".join(f"{m[c]:.3f} ± {s[c]:.3f}" for c in cols) + " |")
    diff = df["auroc_written"] - df["auroc_own"]
    return "\n".join(rows) + (f"\n\nPaired AUROC, written minus own: {diff.mean():+.3f} ± "
                              f"{diff.std():.3f} (higher in {(diff > 0).sum()} of {len(df)} "
                              "seeds).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared h5ad")
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--moa-fraction", type=float, default=0.2)
    parser.add_argument("--name", default="bench_unknown_score")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = read_h5ad(args.data)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(run_seed(adata, seed, args.max_epochs, args.moa_fraction))
        print(json.dumps(runs[-1]), flush=True)
    text = table(runs)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(args.data), "seeds": args.seeds, "max_epochs": args.max_epochs,
            "moa_fraction": args.moa_fraction}
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {**provenance(), **meta, "runs": runs}, indent=1))
    (args.out / f"{args.name}.md").write_text(
        f"# {args.name}\n\n`{json.dumps(meta)}`\n\n{text}")


if __name__ == "__main__":
    main()
