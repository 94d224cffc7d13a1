"""The command line: exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import pandas as pd
from typer.testing import CliRunner

from moaspace.cli import app

runner = CliRunner()


def _prepare_args(p, out, *extra):
    return ["prepare", "--gctx", str(p["gctx"]), "--siginfo", str(p["siginfo"]),
            "--geneinfo", str(p["geneinfo"]), "--compoundinfo", str(p["compoundinfo"]),
            "--moa-labels", str(p["moa_labels"]), "--out", str(out), *extra]


def test_prepare_cli_writes_h5ad(tiny_lincs, tmp_path):
    out = tmp_path / "data.h5ad"
    result = runner.invoke(app, _prepare_args(tiny_lincs["paths"], out,
                                              "--min-compounds-per-moa", "2"))
    assert result.exit_code == 0, result.output
    adata = ad.read_h5ad(out)
    assert adata.n_vars == 978 and adata.obs["moa"].nunique() == 3


def test_prepare_cli_knockdown(tiny_lincs, tmp_path):
    p = dict(tiny_lincs["paths"])
    p["gctx"] = p["gctx_xpr"]
    out = tmp_path / "kd.h5ad"
    result = runner.invoke(app, _prepare_args(p, out, "--pert-type", "trt_xpr",
                                              "--times", "all"))
    assert result.exit_code == 0, result.output
    assert set(ad.read_h5ad(out).obs["target_gene"]) == {"MTOR", "HDAC1", "TP53"}


def test_failure_is_one_line_and_leaves_no_output(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    pd.DataFrame({"BRD-ID": ["x"]}).to_csv(p["moa_labels"], index=False)
    out = tmp_path / "never.h5ad"
    cmd = [sys.executable, "-m", "moaspace.cli", *_prepare_args(p, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "moa_labels.csv" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".never*"))
    verbose = subprocess.run([sys.executable, "-m", "moaspace.cli", "--verbose",
                              *_prepare_args(p, out)], capture_output=True, text=True)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_existing_output_survives_failed_run(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    out = tmp_path / "data.h5ad"
    assert runner.invoke(app, _prepare_args(p, out, "--min-compounds-per-moa", "2")).exit_code == 0
    before = out.read_bytes()
    result = runner.invoke(app, _prepare_args(p, out, "--times", "48"))
    assert result.exit_code == 1
    assert out.read_bytes() == before


def test_usage_error_exit_code(tmp_path):
    result = runner.invoke(app, ["prepare", "--gctx", "x"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["prepare", "--gctx", "a", "--siginfo", "b", "--geneinfo", "c",
                                 "--out", str(tmp_path / "o.h5ad"), "--times", "six"])
    assert result.exit_code == 2


def test_missing_input_file(tmp_path):
    result = runner.invoke(app, ["prepare", "--gctx", str(tmp_path / "none.gctx"),
                                 "--siginfo", "b", "--geneinfo", "c",
                                 "--out", str(tmp_path / "o.h5ad")])
    assert result.exit_code == 1
    assert "siginfo not found: b" in result.output or "not found" in result.output


def test_unwritable_output(tiny_lincs, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK):  # root ignores permission bits
            out = "/proc/moaspace_cannot_write/data.h5ad"
        else:
            out = str(locked / "data.h5ad")
        result = runner.invoke(app, _prepare_args(tiny_lincs["paths"], out,
                                                  "--min-compounds-per-moa", "2"))
        assert result.exit_code == 1
        assert "Error:" in result.output
    finally:
        locked.chmod(0o700)
