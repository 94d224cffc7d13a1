"""The command line: exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json
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


def test_simulate_compound_series_are_recorded_in_the_truth(tmp_path):
    sim = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", "--out", str(sim), "--seed", "3", "--n-compounds", "60",
                            "--n-cells", "3", "--compound-series", "2", "--series-weight", "0.5"])
    assert r.exit_code == 0, r.output
    truth = json.loads((sim / "truth.json").read_text())
    assert truth["config"]["compound_series"] == 2 and truth["config"]["series_weight"] == 0.5
    assert {c["series"] for c in truth["compounds"].values()} == {0, 1}
    r = runner.invoke(app, ["simulate", "--out", str(tmp_path / "bad"), "--series-weight", "2"])
    assert r.exit_code != 0 and "series_weight" in r.output
    assert not (tmp_path / "bad" / "truth.json").exists()


def test_simulate_then_prepare_counts_match_filters(tmp_path):
    """`moaspace simulate` then `moaspace prepare`: each filter removed what pandas says."""
    sim = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", "--out", str(sim), "--seed", "3", "--n-compounds", "200",
                            "--n-cells", "6"])
    assert r.exit_code == 0, r.output
    names = {"level5_beta_trt_cp.gctx", "level5_beta_trt_xpr.gctx", "siginfo_beta.txt",
             "geneinfo_beta.txt", "compoundinfo_beta.txt", "moa_labels.csv", "truth.json"}
    assert names <= {p.name for p in sim.iterdir()}
    out = tmp_path / "data.h5ad"
    r = runner.invoke(app, ["prepare", "--gctx", str(sim / "level5_beta_trt_cp.gctx"),
                            "--siginfo", str(sim / "siginfo_beta.txt"),
                            "--geneinfo", str(sim / "geneinfo_beta.txt"),
                            "--compoundinfo", str(sim / "compoundinfo_beta.txt"),
                            "--moa-labels", str(sim / "moa_labels.csv"),
                            "--min-compounds-per-moa", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    steps = ad.read_h5ad(out).uns["moaspace"]["prepare"]["filters"].set_index("step")
    removed = steps["removed_signatures"]
    si = pd.read_csv(sim / "siginfo_beta.txt", sep="\t")
    labels = pd.read_csv(sim / "moa_labels.csv").set_index("BRD-ID")["MOA"]
    cp = si[si["pert_type"] == "trt_cp"]
    hiq = cp[cp["is_hiq"] == 1]
    timed = hiq[hiq["pert_time"].isin([6, 24])]
    labelled = timed[timed["pert_id"].isin(labels.index)]
    n = labelled["pert_id"].value_counts()
    enough = labelled[labelled["pert_id"].isin(n.index[n >= 10])]
    per_moa = enough.groupby(enough["pert_id"].map(labels))["pert_id"].nunique()
    final = enough[enough["pert_id"].map(labels).isin(per_moa.index[per_moa >= 3])]
    assert removed["is_hiq == 1"] == len(cp) - len(hiq)
    assert removed["pert_time in [6.0, 24.0]"] == len(hiq) - len(timed)
    assert removed["compound has a MoA (moa_labels.csv)"] == len(timed) - len(labelled)
    assert removed[">= 10 signatures per compound"] == len(labelled) - len(enough)
    assert removed[">= 3 compounds per MoA"] == len(enough) - len(final)
    assert steps["signatures"].iloc[-1] == len(final) > 0


def test_demo_cli_prints_the_real_and_simulated_parts(tmp_path, monkeypatch):
    """`moaspace demo` reports the real drugs first and the simulated world's part, and ends
    with the report's path (the run itself is test_report's and test_clean_clone's)."""
    import moaspace.workflow

    calls = {}

    def fake_run_demo(out, *, seed, max_epochs):
        calls.update(out=out, seed=seed, max_epochs=max_epochs)
        out.mkdir(parents=True)
        (out / "report.html").write_text("<html></html>")
        summary = {"compounds": 519, "moas": 44, "scheme": "compound", "seed": seed,
                   "best_epoch": 12, "best_val_macro_f1": 0.25, "test_macro_f1": 0.31,
                   "test_compound_macro_f1": 0.31, "seconds_total": 150.0, "world": "real",
                   "simulated": {"compounds": 157, "moas": 10,
                                 "test_compound_macro_f1": 0.94}}
        return {"summary": summary, "paths": {"report": out / "report.html",
                                              "summary": out / "summary.json"}}

    monkeypatch.setattr(moaspace.workflow, "run_demo", fake_run_demo)
    out = tmp_path / "demo_out"
    result = runner.invoke(app, ["demo", "--out", str(out), "--max-epochs", "3"])
    assert result.exit_code == 0, result.output
    assert calls == {"out": out, "seed": 0, "max_epochs": 3}
    text = " ".join(result.output.split())  # rich wraps long cells: look for short pieces
    for piece in ("real data │ 519 LINCS drugs", "test macro-F1 (real drugs) │ 0.310",
                  "simulated world │ 157 compounds, 10 MoAs", "test macro-F1 (simulated",
                  "0.940", "seconds │ 150"):
        assert piece in text, piece
    assert result.output.strip().splitlines()[-1] == str((out / "report.html").resolve())
