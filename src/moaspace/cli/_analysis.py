"""Analysis commands: ``benchmark``, ``demo``, ``explain``, ``crispr`` and ``report``."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moaspace._utils import check_output
from moaspace.cli._common import handle_errors, load_h5ad, out_console, print_summary, state
from moaspace.errors import MoaspaceError


@handle_errors
def benchmark(
    data: Annotated[Path, typer.Argument(help="Prepared .h5ad (split per seed here).")],
    out: Annotated[Path, typer.Option(help="Output directory (results.json/.md/.png).")],
    scheme: Annotated[str, typer.Option(help="Split scheme(s), comma list.")] = "compound",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0,1,2",
    methods: Annotated[str | None, typer.Option(help="Comma list (default: all).")] = None,
    holdout_cells: Annotated[str | None, typer.Option(help="For the cell schemes.")] = None,
    max_epochs: Annotated[int, typer.Option(help="Epoch budget of every neural model.")] = 40,
    compound_weight: Annotated[
        float | None, typer.Option(help="moaspace's compound-loss weight (default: the "
                                        "model's, 1.0); the other methods are unchanged.",
                                   min=0.0)
    ] = None,
    cv: Annotated[
        int | None, typer.Option(help="K-fold cross-validation over compounds (stratified by "
                                      "MoA, validation from the training folds, every "
                                      "compound tested once, metrics pooled over the folds) "
                                      "instead of --scheme; repeated for each seed.", min=2)
    ] = None,
) -> None:
    """Our model and all baselines on the same splits and seeds.

    Example:

        moaspace benchmark data.h5ad --out bench --scheme compound,cell --seeds 0,1,2

    Small data sets (hundreds of compounds): 5-fold cross-validation, three fold seeds:

        moaspace benchmark real.h5ad --out bench --cv 5 --seeds 0,1,2
    """
    from moaspace.benchmark._run import METHODS, run_benchmark, write_benchmark

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds must be integers, got {seeds!r}") from None
    method_list = [m.strip() for m in methods.split(",")] if methods else list(METHODS)
    check_output(out, [data], directory=True)
    adata = load_h5ad(data)
    model_kwargs = None if compound_weight is None else {"compound_weight": compound_weight}
    records = []
    schemes = [s.strip() for s in scheme.split(",") if s.strip()] if cv is None else ["cv"]
    for sch in schemes:
        records += run_benchmark(adata, scheme=sch, seeds=seed_list, methods=method_list,
                                 holdout_cells=holdout_cells, max_epochs=max_epochs,
                                 model_kwargs=model_kwargs, cv=cv,
                                 progress=not state["quiet"])
    from moaspace._utils import provenance

    meta = {"command": " ".join(sys.argv), "data": str(data), "seeds": seed_list,
            "max_epochs": max_epochs, **provenance()}
    if cv is not None:
        meta["cv_folds"] = cv
    if model_kwargs:
        meta["moaspace_options"] = model_kwargs
    # results.json stays a list of records (its readers rely on it); each record carries
    # the code and command that made it, so the file alone says where it came from
    stamp = {"moaspace_version": meta["moaspace_version"], "git_commit": meta["git_commit"],
             "argv": meta["argv"]}
    records = [{**r, **stamp} for r in records]
    write_benchmark(records, out, meta)
    from moaspace.benchmark._run import summarize

    summary = summarize(records)
    if not state["quiet"]:
        table = Table(title="benchmark (macro-F1 on test, mean ± sd)")
        for col in ("scheme", "method", "macro-F1", "accuracy"):
            table.add_column(col)
        for _, row in summary.iterrows():
            sd = 0.0 if math.isnan(row["macro_f1_std"]) else row["macro_f1_std"]  # 1 seed: NaN
            table.add_row(row["scheme"], row["method"],
                          f"{row['macro_f1_mean']:.3f} ± {sd:.3f}",
                          f"{row['accuracy_mean']:.3f}")
        out_console.print(table)


@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_epochs: Annotated[int, typer.Option(help="Upper bound on training epochs.")] = 40,
) -> None:
    """Run the whole pipeline on the real drugs shipped with moaspace (no arguments, no
    network): train on 519 real LINCS drugs (44 MoAs), call the MoAs of held-out drugs
    (split by compound) with their nearest reference drugs, explain them by genes and
    pathways, compare the baselines; the embedded simulated release adds what has no real
    data here (CRISPR knockdowns, planted truth) in OUT/simulated. Ends by printing the path
    of OUT/report.html.

    Example:

        moaspace demo --out demo_out
    """
    from moaspace.workflow import run_demo

    check_output(out, [], directory=True)
    result = run_demo(out, seed=seed, max_epochs=max_epochs)
    s = result["summary"]
    sim = s.get("simulated", {})
    print_summary("demo", [
        ("real data", f"{s['compounds']} LINCS drugs (one consensus signature each), "
                      f"{s['moas']} MoAs"),
        ("split", f"{s['scheme']} (unseen drugs), seed {s['seed']}"),
        ("best epoch / val macro-F1", f"{s['best_epoch']} / {s['best_val_macro_f1']:.3f}"),
        ("test macro-F1 (real drugs)", f"{s['test_macro_f1']:.3f}"),
        ("simulated world", f"{sim.get('compounds')} compounds, {sim.get('moas')} MoAs: "
                            "CRISPR knockdowns, planted truth"),
        ("test macro-F1 (simulated compounds)",
         f"{sim.get('test_compound_macro_f1') or float('nan'):.3f}"),
        ("seconds", f"{s.get('seconds_total', float('nan')):.0f}"),
        ("outputs", out),
    ])
    typer.echo(str(Path(result["paths"].get("report", result["paths"]["summary"])).resolve()))


@handle_errors
def explain(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    data: Annotated[Path, typer.Argument(help=".h5ad with obs['moa'] (e.g. the training data).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    gene_sets: Annotated[str, typer.Option(
        help="hallmark (bundled MSigDB Hallmark, fits the 978 landmark genes) | reactome "
             "(bundled) | PATH to a .gmt / .gmt.gz.")] = "hallmark",
    min_size: Annotated[int, typer.Option(
        help="Smallest gene set tested, in ranked (landmark) genes.")] = 5,
    view: Annotated[str, typer.Option(
        help="predictor (the scores predict calls with) | arcface_head.")] = "predictor",
    split_name: Annotated[
        str | None, typer.Option("--split", help="Only rows of this split (default: all).")
    ] = None,
    ranking: Annotated[str, typer.Option(
        help="absolute (mean |IG contribution|) | signed (the direction table) ranking.")] = (
        "absolute"),
    permutations: Annotated[int, typer.Option(help="GSEA permutations.")] = 1000,
    max_per_moa: Annotated[int, typer.Option(help="Signatures explained per MoA.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Gene importance per MoA (integrated gradients of the score predict calls with) and
    GSEA prerank on gene sets.

    Writes gene_importance_signed.csv (+ = the gene is up, - = down in the signatures the
    model scores high for the MoA), gene_contribution.csv (+ = the gene's value raises the
    MoA's score relative to other MoAs' signatures; not a direction), gene_importance.csv
    (the ranking enriched), top_genes.csv, enrichment.csv (moa, pathway, nes, fdr, n_genes:
    the set's landmark genes, set_size) and pathway_heatmap.png.

    Example:

        moaspace explain model data_split.h5ad --out explain --gene-sets hallmark
    """
    from moaspace.io.genesets import BUNDLED
    from moaspace.model import MoaModel
    from moaspace.tl._explain import explain as run_explain

    if view not in ("predictor", "arcface_head"):
        raise typer.BadParameter(f"--view must be predictor or arcface_head, got {view!r}")
    library = gene_sets.lower() if gene_sets.lower() in BUNDLED else Path(gene_sets)
    check_output(out, [model_dir, data] + ([library] if isinstance(library, Path) else []),
                 directory=True)
    model = MoaModel.load(model_dir)
    adata = load_h5ad(data)
    if split_name is not None:
        if "split" not in adata.obs.columns:
            raise MoaspaceError(f"{data}: obs has no 'split' column for --split")
        adata = adata[adata.obs["split"].astype(str) == split_name].copy()
    result = run_explain(model, adata, out, gene_sets=library, ranking=ranking, view=view,
                         permutations=permutations, min_size=min_size,
                         max_per_moa=max_per_moa, seed=seed, progress=not state["quiet"])
    enr = result["enrichment"]
    top = (enr[enr["fdr"] < 0.05].sort_values("nes", ascending=False).groupby("moa").head(1))
    rows = [("output", out), ("MoAs explained", result["summary"]["n_moas"]),
            ("gene sets", f"{result['summary']['gene_sets']} (median "
                          f"{result['summary']['median_genes_per_tested_set']:.0f} genes "
                          "per tested set)"),
            ("seconds per MoA", f"{result['summary']['seconds_per_moa']:.1f}")]
    for _, row in top.head(12).iterrows():
        rows.append((str(row["moa"]), f"{row['pathway']} (NES {row['nes']:.2f})"))
    print_summary("explain", rows)


@handle_errors
def crispr(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    kd: Annotated[Path, typer.Argument(help="Knockdowns .h5ad (prepare --pert-type trt_xpr).")],
    compoundinfo: Annotated[Path, typer.Option(help="compoundinfo_beta.txt (targets).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    k: Annotated[int, typer.Option(help="Neighbours in the kNN vote.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the shuffled null.")] = 0,
) -> None:
    """Place knockdown signatures in the drug space and score the expected MoAs.

    Writes crispr_scores.csv (one row per knocked-down gene), summary.json
    (hit_at_1, hit_at_5, hit_at_5_raw, hit_at_5_null, n_genes_scored) and
    crispr_map.png (knockdowns on the drug latent map).

    Example:

        moaspace crispr model kd.h5ad --compoundinfo compoundinfo_beta.txt --out crispr
    """
    from moaspace.model import MoaModel
    from moaspace.pl import knockdown_map
    from moaspace.tl._crispr import score_knockdowns, write_crispr

    check_output(out, [model_dir, kd, compoundinfo], directory=True)
    model = MoaModel.load(model_dir)
    raw = model.raw_atlas  # raw_atlas.h5ad of the model directory, if it has one
    knockdowns = load_h5ad(kd)
    result = score_knockdowns(model, knockdowns, compoundinfo, raw_reference=raw, k=k,
                              seed=seed)
    write_crispr(result, out, knockdown_map(model, knockdowns, result))
    s = result["summary"]
    print_summary("crispr", [("output", out), ("knocked-down genes", s["n_genes"]),
                        ("genes with an expected MoA", s["n_genes_scored"]),
                        ("hit@1 / hit@5", f"{s['hit_at_1']:.3f} / {s['hit_at_5']:.3f}"),
                        ("hit@5 raw signatures", f"{s['hit_at_5_raw']:.3f}"),
                        ("hit@5 shuffled null", f"{s['hit_at_5_null']:.3f}")])


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (e.g. from moaspace demo).")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUN_DIR/report.html).")] = (
        None),
) -> None:
    """Write one self-contained HTML report (plots embedded, no network) for a run.

    Example:

        moaspace report demo_out
    """
    from moaspace.report import write_report

    if out is not None:
        inputs = ([p for p in Path(run_dir).rglob("*") if p.is_file() and p.suffix != ".html"]
                  if Path(run_dir).is_dir() else [])
        check_output(out, [run_dir, *inputs])
    path = write_report(run_dir, out)
    print_summary("report", [("report", path)])
    typer.echo(str(path.resolve()))
