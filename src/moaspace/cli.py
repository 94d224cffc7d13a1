"""The ``moaspace`` command line: one thin command per pipeline stage.

Each command parses its arguments, calls the library function that does the
work, and prints a short summary. Expected failures (:class:`MoaspaceError`)
become a one-line message on stderr and exit code 1; usage errors exit 2; a
traceback is shown only with ``--verbose``.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import MoaspaceError

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
    gctx: Annotated[Path, typer.Option(help="Level-5 .gctx (e.g. level5_beta_trt_cp_*.gctx).")],
    siginfo: Annotated[Path, typer.Option(help="siginfo_beta.txt")],
    geneinfo: Annotated[Path, typer.Option(help="geneinfo_beta.txt")],
    out: Annotated[Path, typer.Option(help="Output .h5ad (written atomically).")],
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
    times: Annotated[str, typer.Option(help="Time points in hours, comma list, or 'all'.")] = "6,24",
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
    """
    from .data.prepare import PrepareConfig, write_h5ad
    from .data.prepare import prepare as run_prepare

    knockdown = pert_type != "trt_cp"
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
) -> None:
    """Write a simulated LINCS beta release (gctx, siginfo, geneinfo, ...) with truth.json.

    Example:

        moaspace simulate --out sim --seed 0
    """
    from .data.simulate import SimulationConfig
    from .data.simulate import simulate as run_simulate

    kwargs = {"seed": seed, "genes": genes}
    if n_compounds is not None:
        kwargs["n_compounds"] = n_compounds
    if n_cells is not None:
        kwargs["n_cells"] = n_cells
    paths = run_simulate(out, SimulationConfig(**kwargs))
    _summary("simulate", [(name, path) for name, path in paths.items()])


def main() -> None:
    """Entry point of the ``moaspace`` console script."""
    try:
        app()
    except MoaspaceError as exc:  # pragma: no cover - commands already handle these
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
