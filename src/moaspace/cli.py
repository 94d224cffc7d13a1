"""The ``moaspace`` command line: one thin command per pipeline stage.

Each command parses its arguments, calls the library function that does the
work, and prints a short summary. Expected failures (:class:`MoaspaceError`)
become a one-line message on stderr and exit code 1; usage errors exit 2; a
traceback is shown only with ``--verbose``.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moaspace._utils import check_output
from moaspace.errors import MoaspaceError

app = typer.Typer(
    name="moaspace",
    help="Predict drug mechanism of action (MoA) from LINCS L1000 signatures in a "
    "hierarchical latent space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()
_state = {"verbose": False, "quiet": False}
logger = logging.getLogger("moaspace")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=verbose, show_time=False, markup=False)
    root = logging.getLogger("moaspace")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def handle_errors(func):
    """Turn expected errors into a one-line message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MoaspaceError as exc:
            if _state["verbose"]:
                console.print_exception()
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except (OSError, MemoryError) as exc:
            if _state["verbose"]:
                console.print_exception()
            typer.echo(f"Error: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _state["verbose"], _state["quiet"] = verbose, quiet
    _setup_logging(verbose, quiet)
    # the CLI only writes figures to files: a headless backend, chosen here and not on
    # `import moaspace.pl` (a notebook keeps its own)
    import matplotlib

    matplotlib.use("Agg")


def _summary(title: str, rows: list[tuple[str, object]]) -> None:
    if _state["quiet"]:
        return
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows:
        table.add_row(key, str(value))
    out_console.print(table)


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None or text.strip().lower() in ("", "all", "none"):
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


@app.command()
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
    min_compounds_per_moa: Annotated[int, typer.Option(help="MoAs need >= M compounds.")] = 10,
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
    """
    from moaspace.pp._prepare import PrepareConfig, write_h5ad
    from moaspace.pp._prepare import prepare as run_prepare

    check_output(out, [gctx, siginfo, geneinfo, compoundinfo, moa_labels])
    knockdown = pert_type != "trt_cp"
    if times.strip().lower() == "auto":
        times = "all" if knockdown else "6,24"
    config = PrepareConfig(
        pert_type=pert_type,
        times=_floats(times, "--times"),
        hiq_only=not all_quality,
        min_tas=min_tas,
        min_sigs_per_compound=min_sigs_per_compound,
        min_compounds_per_moa=min_compounds_per_moa,
        genes=genes,
    )
    adata = run_prepare(
        gctx, siginfo, geneinfo,
        compoundinfo=compoundinfo,
        moa_labels=None if knockdown else moa_labels,
        config=config,
        progress=not _state["quiet"],
    )
    write_h5ad(adata, out)
    rows = [("output", out), ("signatures", adata.n_obs), ("genes", adata.n_vars),
            ("compounds", adata.obs["pert_id"].nunique())]
    if knockdown:
        rows.append(("knocked-down genes", adata.obs["target_gene"].nunique()))
    else:
        rows.append(("MoAs", adata.obs["moa"].nunique()))
    rows.append(("cell lines", adata.obs["cell_iname"].nunique()))
    _summary("prepare", rows)


@app.command()
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
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Write into a non-empty --out (replacing a release there).")
    ] = False,
) -> None:
    """Write a simulated LINCS beta release (gctx, siginfo, geneinfo, ...) with truth.json.

    Example:

        moaspace simulate --out sim --seed 0

    The correlated-noise regime (docs/simulator.md):

        moaspace simulate --out sim_corr --seed 0 --noise-modules 20 --saturation 3
    """
    from moaspace.datasets._simulate import SimulationConfig
    from moaspace.datasets._simulate import simulate as run_simulate

    check_output(out, [], directory=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MoaspaceError(f"--out {out} is not empty (a release there would be overwritten); "
                            "pass --overwrite or choose an empty directory")

    kwargs = {"seed": seed, "genes": genes, "compound_series": compound_series,
              "series_weight": series_weight, "noise_modules": noise_modules,
              "module_noise": module_noise, "saturation": saturation}
    if n_compounds is not None:
        kwargs["n_compounds"] = n_compounds
    if n_cells is not None:
        kwargs["n_cells"] = n_cells
    paths = run_simulate(out, SimulationConfig(**kwargs))
    _summary("simulate", [(name, path) for name, path in paths.items()])


def side_file(out: Path, suffix: str) -> Path:
    """A table written next to ``out``: ``pred.h5ad`` -> ``pred<suffix>``; any other name is
    kept whole (``run.2024`` -> ``run.2024<suffix>``, not ``run<suffix>``)."""
    name = out.name[:-len(".h5ad")] if out.name.endswith(".h5ad") else out.name
    return out.with_name(name + suffix)


def _load_h5ad(path: Path, backed: bool = False):
    from moaspace.pp._prepare import read_h5ad

    if not backed:
        return read_h5ad(path)
    import anndata as ad

    if not path.exists():
        raise MoaspaceError(f"AnnData file not found: {path}")
    try:  # X stays on disk; obs / var are read
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # h5py/anndata raise many types for corrupt files
        raise MoaspaceError(f"{path}: cannot open as .h5ad ({type(exc).__name__}: {exc})") from exc
    dtype = getattr(adata.X, "dtype", None)
    if dtype is None or dtype.kind != "f":
        raise MoaspaceError(f"{path}: X must hold floating-point z-scores (found {dtype})")
    return adata


@app.command("split")
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
    adata = split(_load_h5ad(data), scheme, holdout_cells=holdout_cells, test_size=test_size,
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
    _summary("split", rows)


@app.command()
@handle_errors
def train(
    data: Annotated[Path, typer.Argument(help=".h5ad with obs['split'] (moaspace split).")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_epochs: Annotated[int, typer.Option(help="Upper bound on epochs.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Batch size per device.")] = 256,
    patience: Annotated[int, typer.Option(help="Epochs without val-F1 gain before stop.")] = 10,
    genes: Annotated[
        str | None, typer.Option(help="Restrict to 'landmark' genes (var feature_space).")
    ] = None,
    loss: Annotated[
        str, typer.Option(help="dual_arcface | arcface_moa | softmax | supcon.")
    ] = "dual_arcface",
    predictor: Annotated[
        str, typer.Option(help="How predict calls a MoA by default, and what early stopping "
                               "scores: hidden_prototype | knn | prototype.")
    ] = "hidden_prototype",
    average_best: Annotated[
        int, typer.Option(help="Keep the mean weights of this many best validation epochs "
                               "(1: the single best epoch).", min=1)
    ] = 5,
    compound_weight: Annotated[
        float | None, typer.Option(help="Weight of the compound ArcFace loss next to the MoA "
                                        "loss (default: the model's, 1.0).", min=0.0)
    ] = None,
    input_whitening: Annotated[
        str, typer.Option(help="auto: train on the raw and on the within-class whitened "
                               "signatures and keep the network that validates best; on | off.")
    ] = "auto",
    linear_view_weight: Annotated[
        float, typer.Option(help="Weight of the whitened-signature centroid score next to the "
                                 "hidden layer's in the MoA prototypes (0: hidden layer only).",
                            min=0.0, max=1.0)
    ] = 0.5,
    accelerator: Annotated[str, typer.Option(help="auto | cpu | gpu.")] = "auto",
    devices: Annotated[str, typer.Option(help="Devices per node (e.g. 2), or auto.")] = "auto",
    strategy: Annotated[str, typer.Option(help="auto | ddp | ddp_spawn ...")] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from MODEL_DIR/checkpoints/last.ckpt.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
    backed: Annotated[
        bool, typer.Option("--backed", help="Out of core: leave X on disk (h5ad opened with "
                           "backed='r') and read each batch from the file, for data larger "
                           "than memory. Same results as in memory, slower per epoch.")
    ] = False,
) -> None:
    """Train the dual-ArcFace encoder; early-stops on validation macro-F1 of --predictor
    and keeps the mean weights of the --average-best best epochs.

    Example:

        moaspace train data_split.h5ad --out model --seed 0 --max-epochs 60

    With --backed the matrix is never loaded whole: batches, validation and the
    atlas read rows from DATA as needed (docs/reliability.md, out-of-core training).
    """
    from moaspace.model import MoaModel
    from moaspace.model.model import CONFIG_FILE

    check_output(out, [data], directory=True)
    if (out / CONFIG_FILE).exists() and not (overwrite or resume):
        # checked before any work: training first would overwrite the checkpoints of the
        # run that saved the model here
        raise MoaspaceError(f"{out} already holds a model; pass --overwrite to replace it "
                            "(or --resume to continue its training)")
    if devices != "auto" and not devices.isdigit():
        raise typer.BadParameter(f"--devices must be a number or 'auto', got {devices!r}")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MoaspaceError(f"--accelerator {accelerator}: no CUDA GPU is available here "
                                "(use --accelerator cpu or auto)")
    adata = _load_h5ad(data, backed=backed)
    if genes == "landmark":
        if "feature_space" not in adata.var.columns:
            raise MoaspaceError(f"{data}: var has no 'feature_space' column to pick landmarks")
        landmark = adata.var["feature_space"].astype(str) == "landmark"
        # a backed view stays on disk (its rows are read through the view's gene positions)
        adata = adata[:, landmark] if backed else adata[:, landmark].copy()
    elif genes not in (None, "all"):
        raise typer.BadParameter("--genes must be 'landmark' or 'all'")
    extra = {} if compound_weight is None else {"compound_weight": compound_weight}
    if input_whitening not in ("auto", "on", "off"):
        raise typer.BadParameter("--input-whitening must be auto, on or off")
    model = MoaModel(adata, loss=loss, predictor=predictor, average_best=average_best,
                     input_whitening=input_whitening, linear_view_weight=linear_view_weight,
                     **extra)
    model.train(max_epochs=max_epochs, batch_size=batch_size, seed=seed, resume=resume,
                model_dir=out, patience=patience, accelerator=accelerator,
                devices=int(devices) if devices.isdigit() else devices, strategy=strategy,
                progress_bar=not _state["quiet"])
    model.save(out, overwrite=overwrite or resume)
    from moaspace.tl._crispr import save_raw_reference

    # raw-signature comparison for `moaspace crispr`
    save_raw_reference(adata, out)
    _summary("train", [("model directory", out), ("signatures x genes", adata.shape),
                       ("MoAs", len(model.moas)), ("compounds", len(model.compounds)),
                       ("best epoch", model.best_epoch),
                       ("best val macro-F1", f"{model.best_val_f1 or float('nan'):.3f}"),
                       ("epochs averaged", ", ".join(map(str, model.train_info["averaged_epochs"]))
                        or "none (best epoch kept)"),
                       ("val macro-F1 kept",
                        f"{model.train_info['final_val_f1'] or float('nan'):.3f}")])


@app.command()
@handle_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    query: Annotated[Path, typer.Argument(help="Query .h5ad (signatures x genes).")],
    out: Annotated[Path, typer.Option(help="Output .h5ad with predictions.")],
    k: Annotated[
        int | None,
        typer.Option(help="Neighbours in the kNN vote (default: the k the model was "
                          "calibrated for, its knn_k, 10)."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="knn | prototype | hidden_prototype (default: the model's predictor, "
                          "hidden_prototype for models trained by this version)."),
    ] = None,
    top_k: Annotated[int, typer.Option(help="MoAs kept per signature in the table.")] = 5,
    compound_level: Annotated[
        bool, typer.Option("--compound-level", help="Also call one MoA per compound.")
    ] = False,
    compound_key: Annotated[str, typer.Option(help="obs column naming compounds.")] = "pert_id",
    backend: Annotated[str, typer.Option(help="torch (exact, chunked) | faiss.")] = "torch",
    open_set: Annotated[
        bool | None,
        typer.Option("--open-set/--no-open-set",
                     help="Call 'unknown' above the calibrated unknown-score threshold "
                          "(default: on when the model is calibrated)."),
    ] = None,
    min_tas: Annotated[
        float | None,
        typer.Option(help="'no call' for signatures with obs['tas'] below this "
                          "(default: the model's calibration, usually off)."),
    ] = None,
) -> None:
    """Embed signatures and call their MoA by nearest neighbours in the atlas.

    Writes obsm['X_moa'], obs['moa_pred'], obs['moa_pred_score'], the top-k table
    next to OUT as OUT.top_k.csv (with --compound-level also the per-compound table
    OUT.compounds.csv; a stale one from an earlier run is removed). OUT.h5ad gives
    OUT.top_k.csv; any other name keeps its whole name (run.2024 -> run.2024.top_k.csv).
    With a calibrated model (calibration.json) moa_pred_score is a calibrated
    probability, obs['moa_unknown_score'] the distance to every known MoA, and
    moa_pred is 'unknown' where the query is far from all of them (--open-set)
    or 'no call' below --min-tas; obs['moa_pred_known'] keeps the top known MoA.

    Example:

        moaspace predict model query.h5ad --out pred.h5ad --compound-level --min-tas 0.2
    """
    from moaspace.model import MoaModel
    from moaspace.model._predict import predict as run_predict
    from moaspace.pp._prepare import write_h5ad

    if top_k < 1:
        raise typer.BadParameter(f"--top-k must be >= 1, got {top_k}")
    if k is not None and k < 1:
        raise typer.BadParameter(f"--k must be >= 1, got {k}")
    top_path, calls_path = (side_file(out, ".top_k.csv"), side_file(out, ".compounds.csv"))
    for path in (out, top_path, calls_path):
        check_output(path, [model_dir, query])
    model = MoaModel.load(model_dir)
    if open_set and model.calibration is None:
        raise MoaspaceError(f"{model_dir} has no calibration.json (saved by an older moaspace?): "
                            "--open-set needs one; retrain, or use --no-open-set")
    if min_tas is not None and not 0 <= min_tas <= 1:
        raise typer.BadParameter("--min-tas must be in [0, 1]")
    adata = _load_h5ad(query)
    if compound_level and compound_key not in adata.obs.columns:
        raise MoaspaceError(f"{query}: obs has no column {compound_key!r} for --compound-level")
    if min_tas and "tas" not in adata.obs.columns:
        raise MoaspaceError(f"{query}: obs has no 'tas' column for --min-tas")
    result = run_predict(model, adata, k=k, method=method, top_k=top_k, backend=backend,
                         compound_key=compound_key if compound_level else None,
                         open_set=open_set, min_tas=min_tas)
    top = result.uns.pop("moa_top_k")
    calls = result.uns.pop("moa_compound_calls", None)
    # tables go to CSV next to the .h5ad; uns keeps plain values only. The tables stay
    # under temporary names until the .h5ad is written: all files appear, or none.
    from contextlib import ExitStack

    from moaspace._utils import atomic_path

    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(top_path))
        top.to_csv(tmp, index=False)
        if calls is not None:
            tmp = stack.enter_context(atomic_path(calls_path))
            calls.to_csv(tmp, index=False)
            result.uns["moa_compound_calls"] = calls.reset_index(drop=True)
        write_h5ad(result, out)  # renamed first; the tables follow as the stack closes
    if calls is None and calls_path.is_file():
        # from an earlier run with --compound-level: it would pass for this run's table
        calls_path.unlink()
        logger.info("removed %s (an earlier run's compound table)", calls_path)
    rows = [("output", out), ("signatures", result.n_obs),
            ("top MoA calls", ", ".join(
                f"{m} ({n})" for m, n in result.obs["moa_pred"].value_counts().head(3).items()))]
    if calls is not None:
        rows.append(("compounds called", len(calls)))
        rows.append(("compound table", calls_path))
    info = result.uns["moa_predict"]
    if info.get("calibrated"):
        labels = result.obs["moa_pred"].astype(str)
        rows.append(("unknown MoA calls", f"{int((labels == 'unknown').sum())} "
                     f"({info['unknown_score']} score > {info['unknown_threshold']:.3f})"
                     if info.get("open_set") else "off (--no-open-set)"))
        if "min_tas" in info:
            rows.append((f"no call (TAS < {info['min_tas']:.2f})",
                         int((labels == "no call").sum())))
    else:
        rows.append(("calibration", "missing: moa_pred_score is uncalibrated"))
    _summary("predict", rows)


@app.command()
@handle_errors
def calibrate(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory (updated in place).")],
    data: Annotated[Path, typer.Argument(help=".h5ad with held-out compounds of known MoAs.")],
    split: Annotated[
        str, typer.Option(help="Use rows with obs['split'] == SPLIT ('all': every row).")
    ] = "val",
    target_false_unknown: Annotated[
        float, typer.Option(help="False-unknown rate the threshold allows on these rows.")
    ] = 0.05,
    method: Annotated[
        str, typer.Option(help="auto | isotonic | temperature | logistic | none.")
    ] = "auto",
    score: Annotated[str, typer.Option(
        help="Open-set score: auto | prototype | knn | energy | msp | hidden_prototype.")
    ] = "auto",
    min_tas: Annotated[
        float | None, typer.Option(help="Store a 'no call' TAS cut-off in the calibration.")
    ] = None,
) -> None:
    """Refit the calibrated scores and the 'unknown' threshold of a trained model.

    train() already calibrates on its validation compounds; use this to
    recalibrate on a larger or newer set of held-out compounds (they must not
    be in the training atlas) or for another false-unknown rate. Rewrites
    calibration.json and config.json (checksums) in MODEL_DIR.

    Example:

        moaspace calibrate model heldout.h5ad --split all --target-false-unknown 0.1
    """
    from moaspace.model import MoaModel

    if not 0 < target_false_unknown < 1:
        raise typer.BadParameter("--target-false-unknown must be in (0, 1)")
    if min_tas is not None and not 0 <= min_tas <= 1:
        raise typer.BadParameter("--min-tas must be in [0, 1]")
    model = MoaModel.load(model_dir)
    adata = _load_h5ad(data)
    cal = model.calibrate(adata, split=None if split == "all" else split,
                          target_false_unknown=target_false_unknown, method=method,
                          score=score, min_tas=min_tas)
    model.save(model_dir, overwrite=True)
    maps = ", ".join(f"{m} ({p})" for p, m in cal.maps.items())
    _summary("calibrate", [("model", model_dir), ("calibration", maps),
                           ("open-set score", cal.score),
                           ("target false-unknown rate", target_false_unknown)])


@app.command()
@handle_errors
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    data: Annotated[Path, typer.Argument(help=".h5ad with obs['split'] and obs['moa'].")],
    out: Annotated[Path, typer.Option(help="Metrics JSON (a .md twin is written too).")],
    split_name: Annotated[str, typer.Option("--split", help="Which split to score.")] = "test",
    k: Annotated[
        int | None,
        typer.Option(help="Neighbours in the kNN vote (default: as calibrated, the model's "
                          "knn_k)."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="knn | prototype | hidden_prototype (default: the model's predictor)."),
    ] = None,
) -> None:
    """Score a model on held-out signatures: signature and compound level, hierarchy.

    Example:

        moaspace evaluate model data_split.h5ad --out metrics.json
    """
    from moaspace.model import MoaModel
    from moaspace.tl._evaluate import evaluate as run_evaluate
    from moaspace.tl._evaluate import write_metrics

    for path in (out, out.with_suffix(".md")):
        check_output(path, [model_dir, data])
    model = MoaModel.load(model_dir)
    adata = _load_h5ad(data)
    if "split" not in adata.obs.columns:
        raise MoaspaceError(f"{data}: obs has no 'split' column (run `moaspace split` first)")
    if not (adata.obs["split"].astype(str) == split_name).any():
        counts = adata.obs["split"].astype(str).value_counts().to_dict()
        raise MoaspaceError(f"{data}: no signatures with obs['split'] == {split_name!r} to "
                            f"evaluate (the split column holds {counts}); use --split")
    metrics = run_evaluate(model, adata, split=split_name, k=k, method=method)
    write_metrics(metrics, out)
    _summary("evaluate", [("output", out), ("signatures", metrics["n"]),
                          ("accuracy", f"{metrics['accuracy']:.3f}"),
                          ("macro-F1", f"{metrics['macro_f1']:.3f}"),
                          ("top-5 accuracy", f"{metrics['top5_accuracy']:.3f}"),
                          ("compound macro-F1",
                           f"{metrics.get('compound_level', {}).get('macro_f1', float('nan')):.3f}")])


@app.command()
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
    adata = _load_h5ad(data)
    model_kwargs = None if compound_weight is None else {"compound_weight": compound_weight}
    records = []
    schemes = [s.strip() for s in scheme.split(",") if s.strip()] if cv is None else ["cv"]
    for sch in schemes:
        records += run_benchmark(adata, scheme=sch, seeds=seed_list, methods=method_list,
                                 holdout_cells=holdout_cells, max_epochs=max_epochs,
                                 model_kwargs=model_kwargs, cv=cv,
                                 progress=not _state["quiet"])
    from moaspace._utils import provenance

    meta = {"command": " ".join(sys.argv), "data": str(data), "seeds": seed_list,
            "max_epochs": max_epochs, **provenance()}
    if cv is not None:
        meta["cv_folds"] = cv
    if model_kwargs:
        meta["moaspace_options"] = model_kwargs
    write_benchmark(records, out, meta)
    from moaspace.benchmark._run import summarize

    summary = summarize(records)
    if not _state["quiet"]:
        table = Table(title="benchmark (macro-F1 on test, mean ± sd)")
        for col in ("scheme", "method", "macro-F1", "accuracy"):
            table.add_column(col)
        for _, row in summary.iterrows():
            sd = 0.0 if math.isnan(row["macro_f1_std"]) else row["macro_f1_std"]  # 1 seed: NaN
            table.add_row(row["scheme"], row["method"],
                          f"{row['macro_f1_mean']:.3f} ± {sd:.3f}",
                          f"{row['accuracy_mean']:.3f}")
        out_console.print(table)


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_epochs: Annotated[int, typer.Option(help="Upper bound on training epochs.")] = 40,
) -> None:
    """Run the whole pipeline on the embedded demo data (no arguments, no network).

    Example:

        moaspace demo --out demo_out
    """
    from moaspace.workflow import run_demo

    check_output(out, [], directory=True)
    result = run_demo(out, seed=seed, max_epochs=max_epochs)
    s = result["summary"]
    _summary("demo", [
        ("data", f"{s['signatures']} signatures, {s['compounds']} compounds, {s['moas']} MoAs, "
                 f"{s['cell_lines']} cell lines"),
        ("split", f"{s['scheme']} (unseen compounds)"),
        ("best epoch / val macro-F1", f"{s['best_epoch']} / {s['best_val_macro_f1']:.3f}"),
        ("epochs averaged / val macro-F1", f"{s['averaged_epochs']} / "
                                           f"{s['final_val_macro_f1'] or float('nan'):.3f}"),
        ("test macro-F1 (signatures)", f"{s['test_macro_f1']:.3f}"),
        ("test macro-F1 (compounds)", f"{s['test_compound_macro_f1']:.3f}"),
        ("outputs", out),
    ])
    typer.echo(str(Path(result["paths"].get("report", result["paths"]["summary"])).resolve()))


@app.command()
@handle_errors
def explain(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    data: Annotated[Path, typer.Argument(help=".h5ad with obs['moa'] (e.g. the training data).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    gene_sets: Annotated[
        Path | None, typer.Option(help="Local .gmt / .gmt.gz (default: bundled Reactome).")
    ] = None,
    split_name: Annotated[
        str | None, typer.Option("--split", help="Only rows of this split (default: all).")
    ] = None,
    ranking: Annotated[str, typer.Option(help="absolute | signed attribution ranking.")] = (
        "absolute"),
    permutations: Annotated[int, typer.Option(help="GSEA permutations.")] = 1000,
    max_per_moa: Annotated[int, typer.Option(help="Signatures explained per MoA.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Gene importance per MoA (integrated gradients) and GSEA prerank on pathways.

    Writes gene_importance.csv (genes x MoAs), enrichment.csv (moa, pathway,
    nes, pval, fdr) and pathway_heatmap.png.

    Example:

        moaspace explain model data_split.h5ad --out explain
    """
    from moaspace.model import MoaModel
    from moaspace.tl._explain import explain as run_explain

    check_output(out, [model_dir, data, gene_sets], directory=True)
    model = MoaModel.load(model_dir)
    adata = _load_h5ad(data)
    if split_name is not None:
        if "split" not in adata.obs.columns:
            raise MoaspaceError(f"{data}: obs has no 'split' column for --split")
        adata = adata[adata.obs["split"].astype(str) == split_name].copy()
    result = run_explain(model, adata, out, gene_sets=gene_sets, ranking=ranking,
                         permutations=permutations, max_per_moa=max_per_moa, seed=seed,
                         progress=not _state["quiet"])
    enr = result["enrichment"]
    top = (enr[enr["fdr"] < 0.05].sort_values("nes", ascending=False).groupby("moa").head(1))
    rows = [("output", out), ("MoAs explained", result["summary"]["n_moas"]),
            ("seconds per MoA", f"{result['summary']['seconds_per_moa']:.1f}")]
    for _, row in top.head(12).iterrows():
        rows.append((str(row["moa"]), f"{row['pathway']} (NES {row['nes']:.2f})"))
    _summary("explain", rows)


@app.command()
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
    from moaspace.tl._crispr import RAW_REFERENCE, knockdown_map, score_knockdowns, write_crispr

    check_output(out, [model_dir, kd, compoundinfo], directory=True)
    model = MoaModel.load(model_dir)
    raw = _load_h5ad(model_dir / RAW_REFERENCE) if (model_dir / RAW_REFERENCE).exists() else None
    knockdowns = _load_h5ad(kd)
    result = score_knockdowns(model, knockdowns, compoundinfo, raw_reference=raw, k=k,
                              seed=seed)
    write_crispr(result, out, knockdown_map(model, knockdowns, result))
    s = result["summary"]
    _summary("crispr", [("output", out), ("knocked-down genes", s["n_genes"]),
                        ("genes with an expected MoA", s["n_genes_scored"]),
                        ("hit@1 / hit@5", f"{s['hit_at_1']:.3f} / {s['hit_at_5']:.3f}"),
                        ("hit@5 raw signatures", f"{s['hit_at_5_raw']:.3f}"),
                        ("hit@5 shuffled null", f"{s['hit_at_5_null']:.3f}")])


@app.command()
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
    _summary("report", [("report", path)])
    typer.echo(str(path.resolve()))


def main() -> None:
    """Entry point of the ``moaspace`` console script."""
    try:
        app()
    except MoaspaceError as exc:  # pragma: no cover - commands already handle these
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
