"""CLI helpers shared by the bad-input and reliability tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from moaspace.cli import app

ENV = {**os.environ, "COLUMNS": "250", "PYTHONWARNINGS": "ignore"}


@dataclass
class CliResult:
    code: int
    stderr: str
    stdout: str
    exception: BaseException | None = None

    @property
    def flat(self) -> str:
        """stderr with whitespace collapsed (rich wraps long log lines)."""
        return " ".join(self.stderr.split())


def cli(*args: str) -> CliResult:
    """Run the CLI in-process; an uncaught exception is kept, not raised."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    exc = result.exception
    if isinstance(exc, SystemExit):
        exc = None
    return CliResult(result.exit_code, result.stderr, result.stdout, exc)


def cli_proc(*args: str) -> CliResult:
    """Run ``python -m moaspace.cli`` in a subprocess: the exit status a shell sees."""
    proc = subprocess.run([sys.executable, "-m", "moaspace.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    return CliResult(proc.returncode, proc.stderr, proc.stdout)


def assert_clean_failure(res: CliResult, *needles: str, code: int = 1) -> None:
    """Exit ``code``, no traceback, a last line 'Error: ...' containing every needle."""
    assert res.exception is None, f"uncaught {type(res.exception).__name__}: {res.exception}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.code == code, (res.code, res.stderr[-3000:])
    lines = res.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert starts, f"no 'Error: ' line in stderr: {res.stderr[-2000:]}"
    error = "\n".join(lines[starts[-1]:])
    flat = " ".join(error.split())
    for needle in needles:
        assert needle in flat, f"{needle!r} not in error message: {flat}"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (names and bytes), to show nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


