"""What every command shares: the Typer app, the global options and their state, logging,
error handling, the summary table, option parsing and input / output paths.

The command modules register themselves on :data:`app`; nothing heavy is imported here,
so ``moaspace --help`` stays fast.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moaspace.errors import MoaspaceError

app = typer.Typer(
    name="moaspace",
    help="Predict drug mechanism of action (MoA) from LINCS L1000 signatures in a "
    "hierarchical latent space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: logs, progress and errors
console = Console(stderr=True)
#: the summary tables
out_console = Console()
#: the global options (--verbose, --quiet) of this invocation
state = {"verbose": False, "quiet": False}
logger = logging.getLogger("moaspace")


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Send the ``moaspace`` loggers to stderr at the level the global options ask for."""
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
            if state["verbose"]:
                console.print_exception()
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except (OSError, MemoryError) as exc:
            if state["verbose"]:
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
    state["verbose"], state["quiet"] = verbose, quiet
    setup_logging(verbose, quiet)
    # the CLI only writes figures to files: a headless backend, chosen here and not on
    # `import moaspace.pl` (a notebook keeps its own)
    import matplotlib

    matplotlib.use("Agg")


def print_summary(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column table of what a command did, on stdout (nothing with --quiet)."""
    if state["quiet"]:
        return
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows:
        table.add_row(key, str(value))
    out_console.print(table)


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """A comma list of numbers; ``None`` for an empty text, 'all' or 'none'."""
    if text is None or text.strip().lower() in ("", "all", "none"):
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


def side_file(out: Path, suffix: str) -> Path:
    """A table written next to ``out``: ``pred.h5ad`` -> ``pred<suffix>``; any other name is
    kept whole (``run.2024`` -> ``run.2024<suffix>``, not ``run<suffix>``)."""
    name = out.name[:-len(".h5ad")] if out.name.endswith(".h5ad") else out.name
    return out.with_name(name + suffix)


def load_h5ad(path: Path, backed: bool = False):
    """Read an input .h5ad; with ``backed`` X stays on disk (opened read-only)."""
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
