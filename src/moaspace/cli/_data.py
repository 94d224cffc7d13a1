"""Data commands: ``prepare`` (LINCS files -> .h5ad), ``simulate`` (a simulated release)
and ``split`` (train / val / test)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moaspace._utils import check_output
from moaspace.cli._common import handle_errors, load_h5ad, parse_floats, print_summary, state
from moaspace.errors import MoaspaceError


@handle_errors
def prepare(
    gctx: Annotated[Path, typer.Option(
        "--gctx", "--matrix",
        help="Signature matrix: level-5 .gctx (streamed), or GCT 1.2/1.3, .tsv, .csv text "
             "(optionally .gz; genes in rows or columns, Entrez ids).")],
    out: Annotated[Path, typer.Option(help="Output .h5ad (written atomically).")],
    siginfo: Annotated[Path | None, typer.Option(
        help="siginfo_beta.txt. Without it every matrix signature is one compound (e.g. "
             "consensus signatures) whose id is looked up in the MoA table.")] = None,
    geneinfo: Annotated[Path | None, typer.Option(
        help="geneinfo_beta.txt (default: the bundled 978 landmark genes).")] = None,
    compoundinfo: Annotated[
        Path | None, typer.Option(help="compoundinfo_beta.txt (MoA fallback, targets).")
    ] = None,
    moa_labels: Annotated[
        Path | None, typer.Option(help="Compound -> MoA table (.csv/.tsv/.xlsx).")
    ] = None,
    pert_type: Annotated[
        str, typer.Option(help="trt_cp (compounds) or knockdowns: trt_xpr, trt_sh (comma list).")
    ] = "trt_cp",
    genes: Annotated[str, typer.Option(help="landmark (978) or all.")] = "landmark",
    times: Annotated[str, typer.Option(
        help="Time points in hours, comma list, or 'all'. Default 'auto': 6,24 for compounds; "
             "all for knockdowns (LINCS measures them at 96 h and later).")] = "auto",
    min_tas: Annotated[float | None, typer.Option(help="Minimum TAS (none by default).")] = None,
    min_sigs_per_compound: Annotated[int, typer.Option(help="Compounds need >= N sigs.")] = 10,
    min_compounds_per_moa: Annotated[int, typer.Option(
        help="MoAs need >= M single-MoA compounds (else rare).")] = 10,
    multi_moa: Annotated[str, typer.Option(
        help="Compounds with several MoAs: 'keep' (obs moa missing, moa_set 'a|b') or "
             "'drop'.")] = "keep",
    keep_rare_moas: Annotated[bool, typer.Option(
        "--keep-rare-moas/--drop-rare-moas",
        help="Keep compounds of MoAs with fewer than M compounds, with their MoA.")] = False,
    keep_unlabelled: Annotated[bool, typer.Option(
        "--keep-unlabelled/--drop-unlabelled",
        help="Keep compounds without a MoA (obs moa and moa_set missing).")] = False,
    all_quality: Annotated[
        bool, typer.Option("--all-quality", help="Keep signatures with is_hiq == 0 too.")
    ] = False,
) -> None:
    """Filter LINCS signatures and join metadata into an .h5ad.

    Example:

        moaspace prepare --gctx level5_beta_trt_cp.gctx --siginfo siginfo_beta.txt
        --geneinfo geneinfo_beta.txt --compoundinfo compoundinfo_beta.txt
        --moa-labels moa_labels.csv --out data.h5ad

    One signature per compound (a matrix and a MoA table, no siginfo):

        moaspace prepare --matrix consensi.tsv.gz --moa-labels moa.tsv
        --min-sigs-per-compound 1 --min-compounds-per-moa 5 --out real.h5ad

    Unlabelled query signatures (no siginfo, no MoA table; GCT/GCTX metadata to obs):

        moaspace prepare --matrix query.gct --out query.h5ad
    """
    from moaspace.pp._prepare import PrepareConfig, prepare_query, write_h5ad
    from moaspace.pp._prepare import prepare as run_prepare

    check_output(out, [gctx, siginfo, geneinfo, compoundinfo, moa_labels])
    knockdown = pert_type != "trt_cp"
    if not knockdown and siginfo is moa_labels is compoundinfo is None:
        adata = prepare_query(gctx, geneinfo, genes=genes)
        write_h5ad(adata, out)
        print_summary("prepare (unlabelled query)", [
            ("output", out), ("signatures", adata.n_obs), ("genes", adata.n_vars),
            ("obs columns", ", ".join(map(str, adata.obs.columns[:8])) or "none")])
        return
    if times.strip().lower() == "auto":
        times = "all" if knockdown else "6,24"
    config = PrepareConfig(
        pert_type=pert_type,
        times=parse_floats(times, "--times"),
        hiq_only=not all_quality,
        min_tas=min_tas,
        min_sigs_per_compound=min_sigs_per_compound,
        min_compounds_per_moa=min_compounds_per_moa,
        genes=genes,
        multi_moa=multi_moa,
        keep_rare_moas=keep_rare_moas,
        keep_unlabelled=keep_unlabelled,
    )
    adata = run_prepare(
        gctx, siginfo, geneinfo,
        compoundinfo=compoundinfo,
        moa_labels=None if knockdown else moa_labels,
        config=config,
        progress=not state["quiet"],
    )
    write_h5ad(adata, out)
    print_summary("prepare", _prepare_rows(adata, out, knockdown))


def _prepare_rows(adata, out: Path, knockdown: bool) -> list[tuple]:
    """The summary of ``prepare``: sizes, and for compounds what each group gave."""
    rows = [("output", out), ("signatures", adata.n_obs), ("genes", adata.n_vars),
            ("compounds", adata.obs["pert_id"].nunique())]
    if knockdown:
        rows.append(("knocked-down genes", adata.obs["target_gene"].nunique()))
    else:
        rows.append(("MoAs", adata.obs["moa"].nunique()))
        groups = adata.uns["moaspace"]["prepare"]["groups"]
        for _, g in groups.iterrows():
            rows.append((f"{g['group']} compounds", f"{g['compounds_kept']} kept "
                         f"({g['signatures_kept']} signatures), {g['compounds_dropped']} "
                         "dropped"))
    rows.append(("cell lines", adata.obs["cell_iname"].nunique()))
    return rows


@handle_errors
def simulate(
    out: Annotated[Path, typer.Option(help="Output directory.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    n_compounds: Annotated[int | None, typer.Option(help="Number of compounds.")] = None,
    n_cells: Annotated[int | None, typer.Option(help="Number of cell lines.")] = None,
    genes: Annotated[str, typer.Option(help="landmark (978) or all.")] = "landmark",
    compound_series: Annotated[int, typer.Option(
        help="Chemical series per MoA whose compounds share part of their off-MoA "
             "direction (0: none, the default).")] = 0,
    series_weight: Annotated[float, typer.Option(
        help="Share of a compound's off-MoA direction common to its series.")] = 0.6,
    noise_modules: Annotated[int, typer.Option(
        help="Correlated-noise regime: co-regulated gene modules whose activity varies "
             "from signature to signature (0: off, the default world).", min=0)] = 0,
    module_noise: Annotated[float, typer.Option(
        help="Per-gene RMS (z-score units) of the module noise.", min=0.0)] = 0.5,
    saturation: Annotated[float | None, typer.Option(
        help="Saturating responses: response -> S * tanh(response / S) (default: off).")
    ] = None,
    multi_moa_fraction: Annotated[float, typer.Option(
        help="Share of compounds with a second MoA (mixed signature; 'a|b' in the MoA "
             "table). 0: none, the default world.", min=0.0, max=1.0)] = 0.0,
    unlabelled_fraction: Annotated[float, typer.Option(
        help="Share of compounds left out of the MoA table and compoundinfo (true MoAs in "
             "moa_truth.csv). 0.08: the default world.", min=0.0, max=0.99)] = 0.08,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Write into a non-empty --out (replacing a release there).")
    ] = False,
) -> None:
    """Write a simulated LINCS beta release (gctx, siginfo, geneinfo, ...) with truth.json.

    Example:

        moaspace simulate --out sim --seed 0

    The correlated-noise regime (docs/simulator.md):

        moaspace simulate --out sim_corr --seed 0 --noise-modules 20 --saturation 3

    Multi-MoA and unlabelled compounds (docs/data_labels.md):

        moaspace simulate --out sim_multi --multi-moa-fraction 0.15 --unlabelled-fraction 0.4
    """
    from moaspace.datasets._simulate import SimulationConfig
    from moaspace.datasets._simulate import simulate as run_simulate

    check_output(out, [], directory=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MoaspaceError(f"--out {out} is not empty (a release there would be overwritten); "
                            "pass --overwrite or choose an empty directory")

    kwargs = {"seed": seed, "genes": genes, "compound_series": compound_series,
              "series_weight": series_weight, "noise_modules": noise_modules,
              "module_noise": module_noise, "saturation": saturation,
              "multi_moa_fraction": multi_moa_fraction, "frac_unlabeled": unlabelled_fraction}
    if n_compounds is not None:
        kwargs["n_compounds"] = n_compounds
    if n_cells is not None:
        kwargs["n_cells"] = n_cells
    paths = run_simulate(out, SimulationConfig(**kwargs))
    print_summary("simulate", [(name, path) for name, path in paths.items()])


@handle_errors
def split_cmd(
    data: Annotated[Path, typer.Argument(help="Prepared .h5ad.")],
    out: Annotated[Path, typer.Option(help="Output .h5ad with obs['split'].")],
    scheme: Annotated[
        str, typer.Option(help="compound | cell | compound+cell | moa | random (leaky).")
    ] = "compound",
    holdout_cells: Annotated[
        str | None, typer.Option(help="Cell lines to hold out, comma list (cell schemes).")
    ] = None,
    test_size: Annotated[float, typer.Option(help="Share of compounds in test.")] = 0.2,
    val_size: Annotated[float, typer.Option(help="Share for val: of compounds (of signatures "
                                                      "when val is by cell line).")] = 0.1,
    moa_fraction: Annotated[
        float, typer.Option(help="--scheme moa: share of MoAs held out (test only).")
    ] = 0.2,
    val_by: Annotated[
        str, typer.Option(help="Validation held out by 'compound' or by 'cell' line; 'auto': "
                               "cell lines for --scheme cell, compounds otherwise.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Assign signatures to train / val / test without leakage.

    Example:

        moaspace split data.h5ad --scheme compound --seed 0 --out data_split.h5ad
    """
    from moaspace.pp._prepare import write_h5ad
    from moaspace.pp._split import split

    check_output(out, [data])
    adata = split(load_h5ad(data), scheme, holdout_cells=holdout_cells, test_size=test_size,
                  val_size=val_size, moa_fraction=moa_fraction, val_by=val_by, seed=seed)
    write_h5ad(adata, out)
    counts = adata.obs["split"].astype(str).value_counts()
    rows = [("output", out), ("scheme", scheme)]
    if scheme == "moa":
        rows.append(("test-only MoAs", ", ".join(adata.uns["moaspace"]["split"]["test_only_moas"])))
    if "val_cells" in adata.uns["moaspace"]["split"]:
        rows.append(("validation cell lines", ", ".join(adata.uns["moaspace"]["split"]["val_cells"])))
    for part in ("train", "val", "test", "unused"):
        if part in counts:
            cpds = adata.obs.loc[adata.obs["split"].astype(str) == part, "pert_id"].nunique()
            rows.append((part, f"{counts[part]} signatures, {cpds} compounds"))
    print_summary("split", rows)
