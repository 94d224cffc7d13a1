"""Calibration on held-out compounds, at signature and compound level.

For each data set and seed: split by compound, train the default model (its calibration is
fitted on the validation compounds, cross-fitted against the prototypes refit on
train + val), call the test compounds, and measure the expected calibration error (10
bins) of ``moa_pred_score`` (signature level) and of the compound table's calibrated
``moa_pred_score`` (compound level), each next to the raw score it maps.

    python benchmarks/bench_calibration.py [--seeds 0,1,2] [--max-epochs 40]

Data sets: the shipped real consensus set (``datasets.lincs_consensus``: one signature
per drug, 519 drugs in 44 MoAs; signature = compound) and the embedded simulated demo
release (several signatures per compound across cells and doses). Writes
``benchmarks/results/bench_calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import moaspace as ms
from moaspace._utils import provenance

OUT = Path(__file__).resolve().parent / "results" / "bench_calibration.json"


def _datasets() -> dict:
    real = ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    paths = ms.datasets.load_demo_paths()
    demo = ms.pp.prepare(paths["gctx"], paths["siginfo"], paths["geneinfo"],
                         paths.get("compoundinfo"), paths.get("moa_labels"))
    return {"real_consensus": real, "simulated_demo": demo}


def _one(adata, seed: int, max_epochs: int) -> dict:
    data = ms.pp.split(adata, "compound", seed=seed)
    model = ms.MoaModel(data)
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, seed=seed, progress_bar=False)
    metrics = ms.tl.evaluate(model, data, split="test")
    sig = metrics["open_set"]
    cpd = metrics["compound_level"]["calibration"]
    return {"seed": seed, "seconds": time.perf_counter() - t0,
            "val_f1": model.train_info["final_val_f1"],
            "test_macro_f1": metrics["macro_f1"],
            "signature_n": sig["n_known"], "signature_accuracy": sig["accuracy_known_closed"],
            "signature_ece_before": sig.get("ece_before"),
            "signature_ece_after": sig.get("ece_after"),
            "compound_n": cpd["n_compounds"], "compound_accuracy": cpd["accuracy"],
            "compound_ece_before": cpd["ece_before"], "compound_ece_after": cpd["ece_after"],
            "scored_by": model.calibration.validation.get("scored_by"),
            "val_compound_map": model.calibration.validation.get("compound", {}).get(
                model.config.predictor)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=40)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {name: [_one(adata, seed, args.max_epochs) for seed in seeds]
            for name, adata in _datasets().items()}
    summary = {}
    keys = ("signature_ece_before", "signature_ece_after", "compound_ece_before",
            "compound_ece_after", "signature_accuracy", "compound_accuracy", "test_macro_f1")
    print(f"{'data':16s} {'metric':22s} mean ± sd over seeds {seeds}")
    for name, rows in runs.items():
        summary[name] = {}
        for key in keys:
            values = np.array([r[key] for r in rows], dtype=float)
            summary[name][key] = {"mean": float(values.mean()),
                                  "sd": float(values.std(ddof=1)) if len(values) > 1 else None}
            print(f"{name:16s} {key:22s} {values.mean():.3f} ± "
                  f"{values.std(ddof=1) if len(values) > 1 else 0:.3f}")
    OUT.write_text(json.dumps({**provenance(), "seeds": seeds, "max_epochs": args.max_epochs,
                               "summary": summary, "runs": runs}, indent=1))
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
