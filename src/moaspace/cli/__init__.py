"""The ``moaspace`` command line: one thin command per pipeline stage.

Each command parses its arguments, calls the library function that does the
work, and prints a short summary. Expected failures (:class:`MoaspaceError`)
become a one-line message on stderr and exit code 1; usage errors exit 2; a
traceback is shown only with ``--verbose``.

Layout: :mod:`moaspace.cli._common` holds the app, the global options, error
handling and the shared helpers; the commands live by stage in
:mod:`~moaspace.cli._data` (prepare, simulate, split), :mod:`~moaspace.cli._model`
(train, predict, calibrate, evaluate), :mod:`~moaspace.cli._analysis` (benchmark,
demo, explain, crispr, report) and :mod:`~moaspace.cli._serve` (serve). They are registered here, in :data:`COMMANDS` order,
which is the order ``moaspace --help`` lists them in.
"""

from __future__ import annotations

import sys

import typer

from moaspace.cli._analysis import benchmark, crispr, demo, explain, report
from moaspace.cli._common import app, console, handle_errors, logger, out_console, side_file
from moaspace.cli._data import prepare, simulate, split_cmd
from moaspace.cli._datasets import dataset
from moaspace.cli._model import calibrate, evaluate, predict, train
from moaspace.cli._serve import serve
from moaspace.errors import MoaspaceError

__all__ = [
    "COMMANDS",
    "app",
    "benchmark",
    "calibrate",
    "console",
    "crispr",
    "dataset",
    "demo",
    "evaluate",
    "explain",
    "handle_errors",
    "logger",
    "main",
    "out_console",
    "predict",
    "prepare",
    "report",
    "serve",
    "side_file",
    "simulate",
    "split_cmd",
    "train",
]

#: (name, function) of every command, in the order of the pipeline and of ``--help``
COMMANDS = (
    ("prepare", prepare),
    ("simulate", simulate),
    ("dataset", dataset),
    ("split", split_cmd),
    ("train", train),
    ("predict", predict),
    ("calibrate", calibrate),
    ("evaluate", evaluate),
    ("benchmark", benchmark),
    ("demo", demo),
    ("explain", explain),
    ("crispr", crispr),
    ("report", report),
    ("serve", serve),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)
del _name, _command


def main() -> None:
    """Entry point of the ``moaspace`` console script."""
    try:
        app()
    except MoaspaceError as exc:  # pragma: no cover - commands already handle these
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)
