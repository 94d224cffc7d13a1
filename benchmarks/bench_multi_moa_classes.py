"""How much of the multi-label baseline's lead on multi-MoA drugs is its class list (#28, stop 38).

``logreg_ovr`` (one logistic regression per MoA, fitted on MoA sets) has a class for every
MoA of any training set; moaspace has one for each MoA of the single-MoA drugs (44 on the
real consensus set), and 52% of the multi-MoA drugs carry none of those. This refits
``logreg_ovr`` exactly as ``moaspace benchmark --cv 5`` does (same folds, seeds and
settings, ``moaspace.benchmark._run._fit_predict``) and scores its multi-MoA test drugs
twice: with every class, and with its scores restricted to the single-MoA classes (the
others ranked last), the classes moaspace can call. Beside them, the moaspace rows of a
``moaspace benchmark`` run on the same data (``--records``: its ``results.json``).

Writes ``benchmarks/results/<name>.json`` / ``.md``.

    python benchmarks/bench_multi_moa_classes.py --data real_multi.h5ad --seeds 0,1,2 \\
        --records benchmarks/results/real_multi_moa/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import provenance
from moaspace.benchmark._multi import multi_score, truth_of
from moaspace.benchmark._run import _fit_predict, _on_classes
from moaspace.pp._split import cv_folds

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = {"max_epochs": 60, "k": 10, "n_components": 100, "model_kwargs": None}
KEYS = ("multi_top1_in_set", "multi_recall_at_3")


def ovr_scores(adata, seed: int, n_folds: int, every: list[str]) -> np.ndarray:
    """Cross-validated ``logreg_ovr`` scores of every row on the classes ``every``."""
    scores = np.full((adata.n_obs, len(every)), -np.inf, dtype=np.float32)
    for labels in cv_folds(adata, n_folds, seed=seed):
        data = adata.copy()
        data.obs["split"] = pd.Categorical(labels, categories=["train", "val", "test"])
        got = _fit_predict("logreg_ovr", data, seed, **OPTIONS)
        scores[labels == "test"] = _on_classes(got["scores"], got["classes"], every)
    scores[~np.isfinite(scores)] = np.float32(-1e30)
    return scores


def run_seed(adata, seed: int, n_folds: int) -> dict:
    truth = truth_of(adata.obs)
    single = sorted(set(truth["y"][truth["single"]]))
    every = sorted(set(single).union(*truth["sets"]))
    scores = ovr_scores(adata, seed, n_folds, every)
    restricted = scores.copy()
    restricted[:, [i for i, c in enumerate(every) if c not in set(single)]] = np.float32(-1e30)
    out = {"seed": seed, "n_single_classes": len(single), "n_classes": len(every)}
    for name, s in (("every_class", scores), ("single_classes", restricted)):
        got = multi_score(truth["sets"], truth["multi"], s, every)
        out.update({f"{name}_{k}": got[k] for k in KEYS})
    return out


def table(runs: list[dict], records: list[dict]) -> str:
    rows = {"logreg_ovr, every class": "every_class", "logreg_ovr, single-MoA classes only":
            "single_classes"}
    df = pd.DataFrame(runs).set_index("seed")
    lines = ["| method | top-1 in set | recall@3 | paired vs restricted logreg_ovr (top-1 / "
             "recall@3) |", "|---|---|---|---|"]
    for label, prefix in rows.items():
        cells = [f"{df[f'{prefix}_{k}'].mean():.3f} ± {df[f'{prefix}_{k}'].std(ddof=1):.3f}"
                 for k in KEYS]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | |")
    for method in ("moaspace", "moaspace_multi_moa"):
        rec = pd.DataFrame([r for r in records if r["method"] == method]).set_index("seed")
        rec = rec.loc[rec.index.intersection(df.index)]
        if rec.empty:
            continue
        diff = [rec[k] - df.loc[rec.index, f"single_classes_{k}"] for k in KEYS]
        lines.append(f"| {method} (records) | " + " | ".join(
            f"{rec[k].mean():.3f} ± {rec[k].std(ddof=1):.3f}" for k in KEYS) + " | " + " / ".join(
            f"{d.mean():+.3f} ± {d.std(ddof=1):.3f} ({(d > 0).sum()} of {len(d)} higher)"
            for d in diff) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="prepared h5ad with multi-MoA drugs (moa_set)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--records", type=Path, help="results.json of a moaspace benchmark run")
    parser.add_argument("--name", default="bench_multi_moa_classes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = ad.read_h5ad(args.data)
    runs = [run_seed(adata, int(s), args.folds) for s in args.seeds.split(",")]
    records = json.loads(args.records.read_text()) if args.records else []
    text = table(runs, records)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(args.data), "seeds": args.seeds, "folds": args.folds,
            "records": str(args.records) if args.records else None}
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {**provenance(), **meta, "runs": runs}, indent=1))
    (args.out / f"{args.name}.md").write_text(f"# {args.name}\n\n`{json.dumps(meta)}`\n\n{text}")


if __name__ == "__main__":
    main()
