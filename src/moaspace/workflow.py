"""End-to-end runs: the whole pipeline on a LINCS-format release (:func:`run_pipeline`), on an
AnnData already made (:func:`run_on_data`), and the demo (:func:`run_demo`: the real drugs
shipped with moaspace, plus the embedded simulated release for the knockdowns and the
planted truth).

Each stage writes its output in ``out_dir`` so a user can open any of them:
``data.h5ad`` (prepare), ``data_split.h5ad`` (split), ``model/`` (train),
``metrics.json``/``.md`` (evaluate), ``predictions.h5ad``, ``compound_calls.csv`` and
``nearest_drugs.csv`` (predict on test), ``crispr/``, ``explain/``, ``planted_truth.csv``,
``benchmark/``, ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from moaspace._utils import atomic_write_text

logger = logging.getLogger(__name__)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    """Record the seconds the block takes in ``timings[stage]`` (when it succeeds)."""
    t0 = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - t0


#: how the demo selects the real drugs (the README's real-data row uses the same set)
REAL_DEMO_DATA = "moaspace.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa='drop')"
#: the demo's baselines: the README's comparison (the linear ones and raw-signature kNN);
#: the neural ablations would double its time (``moaspace benchmark`` runs them all)
DEMO_BENCHMARK_METHODS = ("moaspace", "linear_svm", "lda", "logreg", "pca_lda", "raw_knn")
#: the simulated world's planted pathways are Reactome's; 50 signatures per MoA suffice there
SIMULATED_EXPLAIN = {"gene_sets": "reactome", "max_per_moa": 50}


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
    world: str | None = None,
    explain_kwargs: dict | None = None,
) -> dict:
    """prepare -> split -> train -> evaluate -> predict (-> crispr -> explain ->
    benchmark -> report); returns the paths written and a summary.

    ``world`` (``"real"`` or ``"simulated"``, recorded in ``summary.json`` and shown on
    every section of the report) defaults to ``"simulated"`` for a release with a
    ``truth`` file (:func:`moaspace.datasets.simulate`), else ``"real"``. With a truth file
    and the ``"explain"`` stage, ``planted_truth.csv`` says which MoA's planted pathways
    the explanation recovered. ``explain_kwargs`` go to :func:`moaspace.tl.explain`."""
    from moaspace.pp._prepare import prepare, write_h5ad

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    written: dict[str, Path] = {}
    with _timed(timings, "prepare"):
        adata = prepare(paths["gctx"], paths["siginfo"], paths["geneinfo"],
                        paths.get("compoundinfo"), paths.get("moa_labels"),
                        **(prepare_kwargs or {}))
        written["data"] = write_h5ad(adata, out_dir / "data.h5ad")
    run = _Run(seed=seed, scheme=scheme, max_epochs=max_epochs, model_kwargs=model_kwargs,
               benchmark_seeds=benchmark_seeds, benchmark_methods=benchmark_methods,
               explain_permutations=explain_permutations, stages=stages,
               world=world or ("simulated" if paths.get("truth") else "real"), paths=paths,
               # a simulated release plants Reactome pathways: explain with those sets
               explain_kwargs={**({"gene_sets": "reactome"} if paths.get("truth") else {}),
                               **(explain_kwargs or {})})
    call = {"function": "moaspace.workflow.run_pipeline", "prepare_kwargs": prepare_kwargs or {},
            "inputs": {k: str(v) for k, v in paths.items()}}
    return _run_stages(adata, out_dir, run, call, timings, written)


def run_on_data(
    adata,
    out_dir: str | os.PathLike,
    *,
    source: str,
    seed: int = 0,
    scheme: str = "compound",
    max_epochs: int = 40,
    model_kwargs: dict | None = None,
    benchmark_seeds: tuple[int, ...] = (0,),
    benchmark_methods: tuple[str, ...] | None = None,
    explain_permutations: int = 500,
    stages: tuple[str, ...] = ("explain", "benchmark", "report"),
    world: str = "real",
) -> dict:
    """The stages of :func:`run_pipeline` after ``prepare``, on an AnnData already made
    (e.g. :func:`moaspace.datasets.lincs_consensus`); ``source`` (text) says where it came
    from in ``summary.json``. No CRISPR stage (it needs a release's knockdowns)."""
    from moaspace.pp._prepare import write_h5ad

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"data": write_h5ad(adata, out_dir / "data.h5ad")}
    run = _Run(seed=seed, scheme=scheme, max_epochs=max_epochs, model_kwargs=model_kwargs,
               benchmark_seeds=benchmark_seeds, benchmark_methods=benchmark_methods,
               explain_permutations=explain_permutations,
               stages=tuple(s for s in stages if s != "crispr"), world=world, paths={})
    call = {"function": "moaspace.workflow.run_on_data", "data": source}
    return _run_stages(adata, out_dir, run, call, {}, written)


@dataclass
class _Run:
    """The options of one run of the stages."""

    seed: int
    scheme: str
    max_epochs: int
    model_kwargs: dict | None
    benchmark_seeds: tuple[int, ...]
    benchmark_methods: tuple[str, ...] | None
    explain_permutations: int
    stages: tuple[str, ...]
    world: str
    paths: dict = field(default_factory=dict)
    explain_kwargs: dict = field(default_factory=dict)


def _run_stages(adata, out_dir: Path, run: _Run, call: dict, timings: dict,
                written: dict) -> dict:
    """split -> train -> evaluate -> predict (-> crispr -> explain -> planted truth ->
    benchmark) -> summary (-> report)."""
    from moaspace.pp._prepare import write_h5ad
    from moaspace.pp._split import split
    from moaspace.tl._evaluate import write_metrics

    seed = run.seed
    with _timed(timings, "split"):
        adata = split(adata, run.scheme, seed=seed)
        written["data_split"] = write_h5ad(adata, out_dir / "data_split.h5ad")
    with _timed(timings, "train"):
        model, written["model"] = _train_stage(adata, out_dir, seed=seed,
                                               max_epochs=run.max_epochs,
                                               model_kwargs=run.model_kwargs)
    with _timed(timings, "evaluate"):
        metrics = _evaluate_stage(model, adata, seed=seed)
        written["metrics"] = write_metrics(metrics, out_dir / "metrics.json")
    with _timed(timings, "predict"):
        written.update(_predict_stage(model, adata, out_dir))
    if "crispr" in run.stages and run.paths.get("gctx_xpr"):
        with _timed(timings, "crispr"):
            written.update(_crispr_stage(run.paths, model, adata, out_dir))
    if "explain" in run.stages:
        with _timed(timings, "explain"):
            written["explain"] = _explain_stage(model, adata, out_dir, seed=seed,
                                                permutations=run.explain_permutations,
                                                **run.explain_kwargs)
        if run.paths.get("truth"):
            written["planted_truth"] = planted_truth(out_dir / "explain" / "enrichment.csv",
                                                     run.paths["truth"],
                                                     out_dir / "planted_truth.csv")
    if "benchmark" in run.stages:
        with _timed(timings, "benchmark"):
            own = _own_record(metrics, model, scheme=run.scheme, seed=seed,
                              seconds=timings["train"])
            written["benchmark"] = _benchmark_stage(adata, out_dir, run, own)
    call = {**call, "seed": seed, "scheme": run.scheme, "max_epochs": run.max_epochs,
            "model_kwargs": run.model_kwargs or {}, "benchmark_seeds": list(run.benchmark_seeds),
            "stages": list(run.stages)}
    summary = _run_summary(call, adata, model, metrics, timings, written, world=run.world)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    written["summary"] = out_dir / "summary.json"
    if "report" in run.stages:
        from moaspace.report import write_report

        written["report"] = write_report(out_dir)
    return {"paths": written, "summary": summary, "metrics": metrics}


def _train_stage(adata, out_dir: Path, *, seed: int, max_epochs: int,
                 model_kwargs: dict | None) -> tuple:
    """Train and save the model in ``out_dir/model`` with its raw-signature reference;
    returns the model and its directory."""
    from moaspace.model import MoaModel

    model = MoaModel(adata, **(model_kwargs or {}))
    model_dir = out_dir / "model"
    model.train(max_epochs=max_epochs, seed=seed, model_dir=model_dir)
    model.save(model_dir, overwrite=True)  # with raw_atlas.h5ad, for the CRISPR stage
    return model, model_dir


def _evaluate_stage(model, adata, *, seed: int) -> dict:
    """Test-split metrics (with one signature per compound, as in consensus data, the
    compound level equals the signature level)."""
    from moaspace.tl._evaluate import evaluate

    return evaluate(model, adata, split="test", seed=seed)


def _predict_stage(model, adata, out_dir: Path) -> dict:
    """Predict the test signatures and compounds; writes the predictions, both tables and
    each test compound's nearest atlas compounds (``nearest_drugs.csv``)."""
    from moaspace.model._predict import predict, write_predictions

    test = adata[adata.obs["split"].astype(str) == "test"].copy()
    pred = predict(model, test)  # compounds by the model's compound key
    nearest_drugs(pred, model.atlas).to_csv(out_dir / "nearest_drugs.csv", index=False)
    written = write_predictions(pred, out_dir / "predictions.h5ad",
                                top_k_csv=out_dir / "predictions.top_k.csv",
                                compounds_csv=out_dir / "compound_calls.csv")
    return {"nearest_drugs": out_dir / "nearest_drugs.csv",
            "compound_calls": out_dir / "compound_calls.csv", "predictions": written["h5ad"]}


def _centres(z, obs, key: str = "pert_id"):
    """Unit-length mean of each compound's unit-length embeddings, and the compounds."""
    import numpy as np
    import pandas as pd

    from moaspace._core.neighbors import l2_normalize

    frame = pd.DataFrame(l2_normalize(np.asarray(z)), index=obs[key].astype(str).to_numpy())
    means = frame.groupby(level=0, sort=False).mean()
    return l2_normalize(means.to_numpy()), means.index


def nearest_drugs(pred, atlas, n: int = 3):
    """Each predicted compound's ``n`` nearest atlas (training) compounds by cosine of their
    mean embeddings, with names and MoAs: the reference drugs a call rests on.

    Parameters
    ----------
    pred : anndata.AnnData
        Predictions (``obsm["X_moa"]``, ``obs["pert_id"]``; ``cmap_name``, ``moa`` and
        ``moa_pred`` where present).
    atlas : anndata.AnnData
        The model's atlas (``X``: embeddings; ``obs``: ``pert_id``, ``moa``, ``cmap_name``).
    n : int, default 3
        Neighbours per compound.

    Returns
    -------
    pandas.DataFrame
        One row per compound and neighbour: ``compound``, ``drug``, ``moa``, ``rank``,
        ``neighbour``, ``neighbour_drug``, ``neighbour_moa``, ``cosine``.
    """
    import numpy as np
    import pandas as pd

    q, q_ids = _centres(pred.obsm["X_moa"], pred.obs)
    r, r_ids = _centres(atlas.X, atlas.obs)
    sims = q @ r.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :n]

    def first(obs, column):
        if column not in obs.columns:
            return {}
        return obs.groupby(obs["pert_id"].astype(str), observed=True)[column].first().astype(str)

    names_q, moa_q = first(pred.obs, "cmap_name"), first(pred.obs, "moa")
    names_r, moa_r = first(atlas.obs, "cmap_name"), first(atlas.obs, "moa")
    rows = [{"compound": cpd, "drug": names_q.get(cpd, cpd), "moa": moa_q.get(cpd, ""),
             "rank": rank + 1, "neighbour": r_ids[j], "neighbour_drug": names_r.get(r_ids[j],
                                                                                  r_ids[j]),
             "neighbour_moa": moa_r.get(r_ids[j], ""), "cosine": float(sims[i, j])}
            for i, cpd in enumerate(q_ids) for rank, j in enumerate(order[i])]
    return pd.DataFrame(rows)


def planted_truth(enrichment_csv: Path, truth_json: Path, out: Path, top: int = 5) -> Path:
    """For each MoA of a simulated release: its planted pathways, the explanation's top
    enriched pathways (FDR < 0.05, by NES) and whether one of them is planted (as
    ``benchmarks/bench_science.py`` scores it); written to ``out`` (CSV)."""
    import pandas as pd

    enrichment = pd.read_csv(enrichment_csv)
    planted = json.loads(Path(truth_json).read_text()).get("moa_pathways", {})
    rows = []
    for moa, block in enrichment.groupby("moa"):
        best = block[block["fdr"] < 0.05].sort_values("nes", ascending=False).head(top)
        truth = planted.get(str(moa), [])
        rows.append({"moa": moa, "planted_pathways": "; ".join(truth),
                     "top_enriched": "; ".join(best["pathway"].astype(str)),
                     "recovered": bool(set(best["pathway"]) & set(truth))})
    table = pd.DataFrame(rows, columns=["moa", "planted_pathways", "top_enriched", "recovered"])
    table.to_csv(out, index=False)
    logger.info("planted truth: %d of %d MoAs' planted pathways among their top %d enriched",
                int(table["recovered"].sum()), len(table), top)
    return out


def _explain_stage(model, adata, out_dir: Path, *, seed: int, permutations: int,
                   **kwargs) -> Path:
    """Gene importance and pathway enrichment of the model's MoAs, over every signature of
    the run: the signed pattern uses them all (a held-out drug the model gives a MoA adds to
    that MoA's pattern; docs/model.md), the integrated gradients the correctly called ones."""
    from moaspace.tl._explain import explain

    explain(model, adata, out_dir / "explain", permutations=permutations, seed=seed, **kwargs)
    return out_dir / "explain"


def _benchmark_stage(adata, out_dir: Path, run: _Run, own: dict) -> Path:
    """The model and the baselines on fresh splits of the same data; returns the folder.

    With one seed, the run's own, the ``moaspace`` row is ``own``: the model the train
    stage fitted on that very split (``run_benchmark`` would fit the same model again)."""
    from moaspace.benchmark._run import METHODS, run_benchmark, write_benchmark

    data = adata.copy()
    del data.obs["split"]
    methods = list(run.benchmark_methods or METHODS)
    reuse = "moaspace" in methods and tuple(run.benchmark_seeds) == (run.seed,)
    if reuse:
        methods.remove("moaspace")
    records = run_benchmark(data, scheme=run.scheme, seeds=run.benchmark_seeds,
                            methods=methods, max_epochs=run.max_epochs,
                            model_kwargs=run.model_kwargs) if methods else []
    if reuse:
        records.insert(0, own)
    return write_benchmark(records, out_dir / "benchmark",
                           meta={"scheme": run.scheme, "seeds": list(run.benchmark_seeds),
                                 "max_epochs": run.max_epochs,
                                 "moaspace": own["source"] if reuse else "trained here"})


def _own_record(metrics: dict, model, *, scheme: str, seed: int, seconds: float) -> dict:
    """The trained model's test metrics as a benchmark record (``run_benchmark``'s keys)."""
    record = {"method": "moaspace", "scheme": scheme, "seed": seed,
              **{k: metrics[k] for k in ("macro_f1", "accuracy", "weighted_f1",
                                         "top3_accuracy", "top5_accuracy")},
              "n_test": metrics["n"], "seconds": seconds,
              "best_epoch": model.best_epoch, "best_val_f1": model.best_val_f1,
              "source": "the train stage's model (same split, seed and settings)"}
    compound = metrics.get("compound_level")
    if compound is not None:
        record.update(compound_macro_f1=compound["macro_f1"],
                      compound_accuracy=compound["accuracy"])
    if metrics.get("retrieval", {}).get("compound_map") is not None:
        record["compound_map"] = metrics["retrieval"]["compound_map"]
    return record


def _run_summary(call: dict, adata, model, metrics: dict, timings: dict,
                 written: dict, *, world: str) -> dict:
    """The content of ``summary.json``: the call, the data, the scores, times and outputs."""
    compound = metrics.get("compound_level", {}).get("macro_f1")
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "world": world,
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
        "test_compound_macro_f1": compound,
        "seconds": timings,
        "outputs": {k: str(v) for k, v in written.items()},
    }


def _crispr_stage(paths: dict, model, adata, out_dir: Path) -> dict:
    """Prepare the knockdowns, score them against the drug atlas, draw the map."""
    from moaspace.pl import knockdown_map
    from moaspace.pp._prepare import prepare, write_h5ad
    from moaspace.tl._crispr import score_knockdowns, write_crispr

    kd = prepare(paths["gctx_xpr"], paths["siginfo"], paths["geneinfo"],
                 pert_type="trt_xpr", times=None, progress=False)
    kd_path = write_h5ad(kd, out_dir / "knockdowns.h5ad")
    result = score_knockdowns(model, kd, paths["compoundinfo"], raw_reference=model.raw_atlas)
    crispr_dir = write_crispr(result, out_dir / "crispr", knockdown_map(model, kd, result))
    return {"knockdowns": kd_path, "crispr": crispr_dir}


def run_demo(out_dir: str | os.PathLike = "demo_out", *, seed: int = 0,
             max_epochs: int = 40, explain_permutations: int = 100) -> dict:
    """The demo: real drugs first, the simulated world where no real data ships.

    1. ``out_dir/simulated/``: the embedded simulated release (prepare, split, train,
       CRISPR knockdowns in the drug space, explain, the planted-truth check); the
       knockdowns and the planted pathways exist only there.
    2. ``out_dir/``: the real LINCS consensus drugs (:data:`REAL_DEMO_DATA`: 519 drugs, 44
       MoAs), split by compound (``seed``), train, evaluate, MoA calls of the held-out
       drugs with their nearest reference drugs, explain, the baselines of
       :data:`DEMO_BENCHMARK_METHODS` on the same split, and ``report.html`` (real sections first, then the simulated ones, each labelled).

    No network; the data ship with the package. Returns :func:`run_on_data`'s result, with
    ``paths["simulated"]`` added.
    """
    from moaspace.datasets import lincs_consensus, load_demo_paths

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    sim = run_pipeline(load_demo_paths(), out_dir / "simulated", seed=seed,
                       max_epochs=max_epochs, explain_permutations=explain_permutations,
                       explain_kwargs=SIMULATED_EXPLAIN, stages=("crispr", "explain"),
                       world="simulated")
    logger.info("demo: simulated part done in %.0f s", time.perf_counter() - t0)
    real = lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    result = run_on_data(real, out_dir, source=REAL_DEMO_DATA, seed=seed,
                         max_epochs=max_epochs, explain_permutations=explain_permutations,
                         benchmark_methods=DEMO_BENCHMARK_METHODS,
                         stages=("explain", "benchmark"), world="real")
    result["paths"]["simulated"] = out_dir / "simulated"
    result["summary"]["simulated"] = {k: sim["summary"][k] for k in (
        "signatures", "compounds", "moas", "test_macro_f1", "test_compound_macro_f1")}
    result["summary"]["seconds_total"] = time.perf_counter() - t0
    atomic_write_text(out_dir / "summary.json",
                      json.dumps(result["summary"], indent=2, default=str))
    from moaspace.report import write_report

    result["paths"]["report"] = write_report(out_dir)
    return result
