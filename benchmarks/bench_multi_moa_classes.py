"""How much of the multi-label baseline's lead on multi-MoA drugs is its class list (#28, stop 38).

``logreg_ovr`` (one logistic regression per MoA, fitted on MoA sets) has a class for every
MoA of any training set; moaspace has one for each MoA of the single-MoA drugs (44 on the
real consensus set), and 52% of the multi-MoA drugs carry none of those. This refits
``logreg_ovr`` exactly as ``moaspace benchmark --cv 5`` does (same folds, seeds and
settings, ``moaspace.benchmark._run._fit_predict``) and scores its multi-MoA test drugs
twice: with every class, and with its scores restricted to the single-MoA classes (the
others ranked last), the classes moaspace can call. Beside them, the moaspace rows of a
``moaspace benchmark`` run on the same data (``--records``: its ``results.json``).

``--probe`` (a lead, not the package's behaviour): per fold, a ``moaspace_multi_moa`` network
(``use_multi_moa=True``, ``calibration_folds=0``, the benchmark's epochs and seed); in its
prototype layer (unit rows), a prototype for *every* MoA of the training sets: the unit mean
of the training rows whose MoA set lists it (single-MoA drugs in their class, multi-MoA
drugs in each of theirs); test rows scored by cosine. Rows: those prototypes over every
class (``probe_every``), over the single-MoA classes only (``probe_single``), and the
network's own prototypes (``probe_model``: what ``moaspace_multi_moa`` scores, a check), each
with the single-label macro-F1 of its argmax on the single-MoA drugs.

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
PROBES = ("probe_every", "probe_single", "probe_model")


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


def probe_scores(adata, seed: int, n_folds: int, every: list[str], single: list[str]) -> dict:
    """Cross-validated cosine scores of the ``--probe`` rows (see the module)."""
    from moaspace._core.neighbors import l2_normalize
    from moaspace.model import MoaModel

    sets = truth_of(adata.obs)["sets"]
    out = {k: np.full((adata.n_obs, len(every)), -1e30, dtype=np.float32) for k in PROBES}
    others = [i for i, c in enumerate(every) if c not in set(single)]
    for labels in cv_folds(adata, n_folds, seed=seed):
        data = adata.copy()
        data.obs["split"] = pd.Categorical(labels, categories=["train", "val", "test"])
        model = MoaModel(data, calibration_folds=0, use_multi_moa=True)
        model.train(max_epochs=OPTIONS["max_epochs"], seed=seed, progress_bar=False)
        _, hidden = model.embed_layers(data, ("embedding", "prototype"))
        unit = l2_normalize(np.asarray(hidden, np.float64))
        fit, test = np.isin(labels, ["train", "val"]), labels == "test"
        centres = np.zeros((len(every), unit.shape[1]))
        for i, moa in enumerate(every):
            rows = fit & np.array([moa in s for s in sets])
            centres[i] = unit[rows].mean(axis=0) if rows.any() else 0.0
        cos = unit[test] @ l2_normalize(centres).T
        cos[:, ~centres.any(axis=1)] = -1e30
        out["probe_every"][test] = cos
        cos = cos.copy()
        cos[:, others] = -1e30
        out["probe_single"][test] = cos
        own = unit[test] @ np.asarray(model.hidden_prototypes, np.float64).T
        block = np.full((test.sum(), len(every)), -1e30)
        block[:, [every.index(m) for m in model.moas]] = own
        out["probe_model"][test] = block
    return out


def run_seed(adata, seed: int, n_folds: int, probe: bool = False) -> dict:
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
    if probe:
        from sklearn.metrics import f1_score

        y, one = truth["y"], truth["single"]
        for name, s in probe_scores(adata, seed, n_folds, every, single).items():
            got = multi_score(truth["sets"], truth["multi"], s, every)
            out.update({f"{name}_{k}": got[k] for k in KEYS})
            out[f"{name}_single_macro_f1"] = float(f1_score(
                y[one], np.asarray(every)[s[one].argmax(axis=1)], average="macro",
                labels=single))
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
    for prefix in PROBES:
        if f"{prefix}_{KEYS[0]}" not in df:
            continue
        diff = [df[f"{prefix}_{k}"] - df[f"every_class_{k}"] for k in KEYS]
        lines.append(f"| {prefix} (single-label macro-F1 {df[f'{prefix}_single_macro_f1'].mean():.3f}) | "
                     + " | ".join(f"{df[f'{prefix}_{k}'].mean():.3f} ± "
                                  f"{df[f'{prefix}_{k}'].std(ddof=1):.3f}" for k in KEYS)
                     + " | vs logreg_ovr, every class: " + " / ".join(
                         f"{d.mean():+.3f} ± {d.std(ddof=1):.3f} ({(d > 0).sum()} of {len(d)} higher)"
                         for d in diff) + " |")
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
    parser.add_argument("--probe", action="store_true",
                        help="also the prototype probe over every class (see the module)")
    parser.add_argument("--name", default="bench_multi_moa_classes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = ad.read_h5ad(args.data)
    runs = [run_seed(adata, int(s), args.folds, args.probe) for s in args.seeds.split(",")]
    records = json.loads(args.records.read_text()) if args.records else []
    text = table(runs, records)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(args.data), "seeds": args.seeds, "folds": args.folds, "probe": args.probe,
            "records": str(args.records) if args.records else None}
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {**provenance(), **meta, "runs": runs}, indent=1))
    (args.out / f"{args.name}.md").write_text(f"# {args.name}\n\n`{json.dumps(meta)}`\n\n{text}")


if __name__ == "__main__":
    main()
