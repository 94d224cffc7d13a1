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
from contextlib import contextmanager
from pathlib import Path

from moaspace._utils import atomic_write_text

logger = logging.getLogger(__name__)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    """Record the seconds the block takes in ``timings[stage]`` (when it succeeds)."""
    t0 = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - t0


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
    from moaspace.pp._prepare import prepare, write_h5ad
    from moaspace.pp._split import split
    from moaspace.tl._evaluate import evaluate, write_metrics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    written: dict[str, Path] = {}

    with _timed(timings, "prepare"):
        adata = prepare(paths["gctx"], paths["siginfo"], paths["geneinfo"],
                        paths.get("compoundinfo"), paths.get("moa_labels"),
                        **(prepare_kwargs or {}))
        written["data"] = write_h5ad(adata, out_dir / "data.h5ad")
    with _timed(timings, "split"):
        adata = split(adata, scheme, seed=seed)
        written["data_split"] = write_h5ad(adata, out_dir / "data_split.h5ad")
    with _timed(timings, "train"):
        model, written["model"] = _train_stage(adata, out_dir, seed=seed,
                                               max_epochs=max_epochs, model_kwargs=model_kwargs)
    with _timed(timings, "evaluate"):
        metrics = evaluate(model, adata, split="test", seed=seed)
        written["metrics"] = write_metrics(metrics, out_dir / "metrics.json")
    with _timed(timings, "predict"):
        written.update(_predict_stage(model, adata, out_dir))
    if "crispr" in stages and paths.get("gctx_xpr"):
        with _timed(timings, "crispr"):
            written.update(_crispr_stage(paths, model, adata, out_dir))
    if "explain" in stages:
        with _timed(timings, "explain"):
            written["explain"] = _explain_stage(model, adata, out_dir, seed=seed,
                                                permutations=explain_permutations)
    if "benchmark" in stages:
        with _timed(timings, "benchmark"):
            written["benchmark"] = _benchmark_stage(
                adata, out_dir, scheme=scheme, seeds=benchmark_seeds,
                methods=benchmark_methods, max_epochs=max_epochs, model_kwargs=model_kwargs)

    call = {"function": "moaspace.workflow.run_pipeline", "seed": seed, "scheme": scheme,
            "max_epochs": max_epochs, "prepare_kwargs": prepare_kwargs or {},
            "model_kwargs": model_kwargs or {}, "benchmark_seeds": list(benchmark_seeds),
            "stages": list(stages), "inputs": {k: str(v) for k, v in paths.items()}}
    summary = _run_summary(call, adata, model, metrics, timings, written)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    written["summary"] = out_dir / "summary.json"
    if "report" in stages:
        from moaspace.report import write_report

        written["report"] = write_report(out_dir)
    return {"paths": written, "summary": summary, "metrics": metrics}


def _train_stage(adata, out_dir: Path, *, seed: int, max_epochs: int,
                 model_kwargs: dict | None) -> tuple:
    """Train and save the model in ``out_dir/model`` with its raw-signature reference;
    returns the model and its directory."""
    from moaspace.model import MoaModel
    from moaspace.tl._crispr import save_raw_reference

    model = MoaModel(adata, **(model_kwargs or {}))
    model_dir = out_dir / "model"
    model.train(max_epochs=max_epochs, seed=seed, model_dir=model_dir)
    model.save(model_dir, overwrite=True)
    save_raw_reference(adata, model_dir)
    return model, model_dir


def _predict_stage(model, adata, out_dir: Path) -> dict:
    """Predict the test signatures and compounds; writes the predictions and both tables."""
    from moaspace.model._predict import predict
    from moaspace.pp._prepare import write_h5ad

    test = adata[adata.obs["split"].astype(str) == "test"].copy()
    pred = predict(model, test, compound_key="pert_id")
    calls = pred.uns.pop("moa_compound_calls")
    top = pred.uns.pop("moa_top_k")
    calls.to_csv(out_dir / "compound_calls.csv", index=False)
    top.to_csv(out_dir / "predictions.top_k.csv", index=False)
    return {"predictions": write_h5ad(pred, out_dir / "predictions.h5ad"),
            "compound_calls": out_dir / "compound_calls.csv"}


def _explain_stage(model, adata, out_dir: Path, *, seed: int, permutations: int) -> Path:
    """Gene importance and pathway enrichment of the training signatures' MoAs."""
    from moaspace.tl._explain import explain

    train_rows = adata[adata.obs["split"].astype(str) == "train"].copy()
    explain(model, train_rows, out_dir / "explain", permutations=permutations, seed=seed)
    return out_dir / "explain"


def _benchmark_stage(adata, out_dir: Path, *, scheme: str, seeds: tuple[int, ...],
                     methods: tuple[str, ...] | None, max_epochs: int,
                     model_kwargs: dict | None) -> Path:
    """The model and the baselines on fresh splits of the same data; returns the folder."""
    from moaspace.benchmark._run import METHODS, run_benchmark, write_benchmark

    data = adata.copy()
    del data.obs["split"]
    records = run_benchmark(data, scheme=scheme, seeds=seeds, methods=methods or METHODS,
                            max_epochs=max_epochs, model_kwargs=model_kwargs)
    return write_benchmark(records, out_dir / "benchmark",
                           meta={"scheme": scheme, "seeds": list(seeds),
                                 "max_epochs": max_epochs})


def _run_summary(call: dict, adata, model, metrics: dict, timings: dict,
                 written: dict) -> dict:
    """The content of ``summary.json``: the call, the data, the scores, times and outputs."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "call": call,
        "signatures": int(adata.n_obs), "genes": int(adata.n_vars),
        "compounds": int(adata.obs["pert_id"].nunique()),
        "moas": int(adata.obs["moa"].nunique()),
        "cell_lines": int(adata.obs["cell_iname"].nunique()),
        "scheme": call["scheme"], "seed": call["seed"],
        "best_epoch": model.best_epoch, "best_val_macro_f1": model.best_val_f1,
        "averaged_epochs": model.train_info.get("averaged_epochs", []),
        "final_val_macro_f1": model.train_info.get("final_val_f1"),
        "test_macro_f1": metrics["macro_f1"], "test_accuracy": metrics["accuracy"],
        "test_compound_macro_f1": metrics.get("compound_level", {}).get("macro_f1"),
        "seconds": timings,
        "outputs": {k: str(v) for k, v in written.items()},
    }


def _crispr_stage(paths: dict, model, adata, out_dir: Path) -> dict:
    """Prepare the knockdowns, score them against the drug atlas, draw the map."""
    from moaspace.pl import knockdown_map
    from moaspace.pp._prepare import prepare, read_h5ad, write_h5ad
    from moaspace.tl._crispr import RAW_REFERENCE, score_knockdowns, write_crispr

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
