"""End-to-end runs: the whole pipeline on a LINCS-format release (the embedded demo by default).

Each stage writes its output in ``out_dir`` so a user can open any of them:
``data.h5ad`` (prepare), ``data_split.h5ad`` (split), ``model/`` (train),
``metrics.json``/``.md`` (evaluate), ``predictions.h5ad`` (predict on test).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from moaspace._utils import atomic_write_text

logger = logging.getLogger(__name__)


def run_pipeline(
    paths: dict,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    scheme: str = "compound",
    max_epochs: int = 40,
    prepare_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
    benchmark_seeds: tuple[int, ...] = (0,),
    benchmark_methods: tuple[str, ...] | None = None,
    explain_permutations: int = 500,
    stages: tuple[str, ...] = ("crispr", "explain", "benchmark", "report"),
) -> dict:
    """prepare -> split -> train -> evaluate -> predict (-> crispr -> explain ->
    benchmark -> report); returns the paths written and a summary."""
    from moaspace.model import MoaModel
    from moaspace.model._predict import predict
    from moaspace.pp._prepare import prepare, write_h5ad
    from moaspace.pp._split import split
    from moaspace.tl._crispr import save_raw_reference
    from moaspace.tl._evaluate import evaluate, write_metrics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    written: dict[str, Path] = {}

    t0 = time.perf_counter()
    adata = prepare(paths["gctx"], paths["siginfo"], paths["geneinfo"],
                    paths.get("compoundinfo"), paths.get("moa_labels"),
                    **(prepare_kwargs or {}))
    written["data"] = write_h5ad(adata, out_dir / "data.h5ad")
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    adata = split(adata, scheme, seed=seed)
    written["data_split"] = write_h5ad(adata, out_dir / "data_split.h5ad")
    timings["split"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = MoaModel(adata, **(model_kwargs or {}))
    model_dir = out_dir / "model"
    model.train(max_epochs=max_epochs, seed=seed, model_dir=model_dir)
    model.save(model_dir, overwrite=True)
    save_raw_reference(adata, model_dir)
    written["model"] = model_dir
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate(model, adata, split="test", seed=seed)
    written["metrics"] = write_metrics(metrics, out_dir / "metrics.json")
    timings["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    test = adata[adata.obs["split"].astype(str) == "test"].copy()
    pred = predict(model, test, compound_key="pert_id")
    calls = pred.uns.pop("moa_compound_calls")
    top = pred.uns.pop("moa_top_k")
    calls.to_csv(out_dir / "compound_calls.csv", index=False)
    top.to_csv(out_dir / "predictions.top_k.csv", index=False)
    written["predictions"] = write_h5ad(pred, out_dir / "predictions.h5ad")
    written["compound_calls"] = out_dir / "compound_calls.csv"
    timings["predict"] = time.perf_counter() - t0

    if "crispr" in stages and paths.get("gctx_xpr"):
        t0 = time.perf_counter()
        written.update(_crispr_stage(paths, model, adata, out_dir))
        timings["crispr"] = time.perf_counter() - t0

    if "explain" in stages:
        from moaspace.tl._explain import explain

        t0 = time.perf_counter()
        train_rows = adata[adata.obs["split"].astype(str) == "train"].copy()
        explain(model, train_rows, out_dir / "explain", permutations=explain_permutations,
                seed=seed)
        written["explain"] = out_dir / "explain"
        timings["explain"] = time.perf_counter() - t0

    if "benchmark" in stages:
        from moaspace.benchmark._run import METHODS, run_benchmark, write_benchmark

        t0 = time.perf_counter()
        data = adata.copy()
        del data.obs["split"]
        records = run_benchmark(data, scheme=scheme, seeds=benchmark_seeds,
                                methods=benchmark_methods or METHODS,
                                max_epochs=max_epochs, model_kwargs=model_kwargs)
        written["benchmark"] = write_benchmark(
            records, out_dir / "benchmark",
            meta={"scheme": scheme, "seeds": list(benchmark_seeds), "max_epochs": max_epochs})
        timings["benchmark"] = time.perf_counter() - t0

    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "call": {"function": "moaspace.workflow.run_pipeline", "seed": seed, "scheme": scheme,
                 "max_epochs": max_epochs, "prepare_kwargs": prepare_kwargs or {},
                 "model_kwargs": model_kwargs or {}, "benchmark_seeds": list(benchmark_seeds),
                 "stages": list(stages), "inputs": {k: str(v) for k, v in paths.items()}},
        "signatures": int(adata.n_obs), "genes": int(adata.n_vars),
        "compounds": int(adata.obs["pert_id"].nunique()),
        "moas": int(adata.obs["moa"].nunique()),
        "cell_lines": int(adata.obs["cell_iname"].nunique()),
        "scheme": scheme, "seed": seed,
        "best_epoch": model.best_epoch, "best_val_macro_f1": model.best_val_f1,
        "averaged_epochs": model.train_info.get("averaged_epochs", []),
        "final_val_macro_f1": model.train_info.get("final_val_f1"),
        "test_macro_f1": metrics["macro_f1"], "test_accuracy": metrics["accuracy"],
        "test_compound_macro_f1": metrics.get("compound_level", {}).get("macro_f1"),
        "seconds": timings,
        "outputs": {k: str(v) for k, v in written.items()},
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    written["summary"] = out_dir / "summary.json"
    if "report" in stages:
        from moaspace.report import write_report

        written["report"] = write_report(out_dir)
    return {"paths": written, "summary": summary, "metrics": metrics}


def _crispr_stage(paths: dict, model, adata, out_dir: Path) -> dict:
    """Prepare the knockdowns, score them against the drug atlas, draw the map."""
    from moaspace.pp._prepare import prepare, read_h5ad, write_h5ad
    from moaspace.tl._crispr import RAW_REFERENCE, knockdown_map, score_knockdowns, write_crispr

    kd = prepare(paths["gctx_xpr"], paths["siginfo"], paths["geneinfo"],
                 pert_type="trt_xpr", times=None, progress=False)
    kd_path = write_h5ad(kd, out_dir / "knockdowns.h5ad")
    raw = read_h5ad(Path(out_dir) / "model" / RAW_REFERENCE)
    result = score_knockdowns(model, kd, paths["compoundinfo"], raw_reference=raw)
    crispr_dir = write_crispr(result, out_dir / "crispr", knockdown_map(model, kd, result))
    return {"knockdowns": kd_path, "crispr": crispr_dir}


def run_demo(out_dir: str | os.PathLike = "demo_out", *, seed: int = 0,
             max_epochs: int = 40) -> dict:
    """The whole pipeline on the embedded demo data (no arguments, no network)."""
    from moaspace.datasets._simulate import load_demo_paths

    return run_pipeline(load_demo_paths(), out_dir, seed=seed, max_epochs=max_epochs)
