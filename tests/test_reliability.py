"""Reliability, round two: no command destroys a user's data; every failure is one line.

One test per item of the issue (numbers in the test names' docstrings), each of which
failed before the fix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from _cli import ENV, assert_clean_failure, cli, snapshot
from moaspace.model import MoaModel
from moaspace.pp._prepare import read_h5ad, write_h5ad

HERE = Path(__file__).resolve().parent
BENCHMARKS = sorted(p for p in (HERE.parent / "benchmarks").glob("*.py")
                    if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, saved_model):
    """A tiny release on disk, prepared data with a split, and a trained model."""
    from moaspace.datasets._simulate import SimulationConfig, simulate

    root = tmp_path_factory.mktemp("reliability")
    cfg = SimulationConfig(seed=2, n_compounds=60, n_moas=4, n_cells=3,
                           sigs_per_compound=(8, 12), n_null_knockdowns=1)
    paths = simulate(root / "rel", cfg)
    # the session's model, data and query, copied: some tests here write beside them
    for name in ("model", "data.h5ad", "query.h5ad"):
        src = saved_model["root"] / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    return {"root": root, "paths": paths, "adata": saved_model["adata"],
            "query": saved_model["query"]}


def _prepare(paths: dict, out, *extra) -> list:
    return ["prepare", "--gctx", paths["gctx"], "--siginfo", paths["siginfo"], "--geneinfo",
            paths["geneinfo"], "--compoundinfo", paths["compoundinfo"], "--moa-labels",
            paths["moa_labels"], "--min-compounds-per-moa", "2", "--out", out, *extra]


# ------------------------------------------------------------------ 1-5: data loss


def test_out_that_is_an_input_or_a_device_is_refused(run, tmp_path):
    """1. --out may not be one of the command's inputs, nor a non-regular file."""
    paths = run["paths"]
    before = snapshot(paths["siginfo"].parent)
    res = cli(*_prepare(paths, paths["siginfo"]))
    assert_clean_failure(res, "--out", "siginfo_beta.txt", "is an input")
    res = cli(*_prepare(paths, paths["gctx"]))
    assert_clean_failure(res, "level5_beta_trt_cp.gctx", "is an input")
    assert snapshot(paths["siginfo"].parent) == before
    res = cli("predict", run["root"] / "model", run["root"] / "query.h5ad", "--out",
              run["root"] / "query.h5ad")
    assert_clean_failure(res, "query.h5ad", "is an input")
    res = cli("predict", run["root"] / "model", run["root"] / "query.h5ad", "--out",
              run["root"] / "model" / "atlas.h5ad")
    assert_clean_failure(res, "atlas.h5ad", "input directory")
    assert read_h5ad(run["root"] / "query.h5ad").n_obs == run["query"].n_obs
    folder = tmp_path / "dir.h5ad"
    folder.mkdir()
    assert_clean_failure(cli("split", run["root"] / "data.h5ad", "--out", folder),
                         "dir.h5ad", "not a regular file")
    device = tmp_path / "device"
    try:
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device
    except (PermissionError, OSError):
        device = None
    if device is not None:
        assert_clean_failure(cli("split", run["root"] / "data.h5ad", "--out", device),
                             "device", "not a regular file")
        assert not device.is_file() and device.exists()


def test_simulate_refuses_a_non_empty_directory(tmp_path):
    """2. simulate --out DIR keeps an existing release unless --overwrite."""
    out = tmp_path / "rel"
    out.mkdir()
    (out / "siginfo_beta.txt").write_text("mine")
    res = cli("simulate", "--out", out, "--n-compounds", "40", "--n-cells", "2")
    assert_clean_failure(res, str(out), "not empty", "--overwrite")
    assert (out / "siginfo_beta.txt").read_text() == "mine"
    res = cli("simulate", "--out", out, "--n-compounds", "40", "--n-cells", "2", "--overwrite")
    assert res.code == 0, res.stderr
    assert (out / "siginfo_beta.txt").read_text() != "mine"


def test_train_into_an_existing_model_is_refused_before_any_work(run, tmp_path):
    """3. train --out MODEL_DIR without --overwrite refuses at once: the earlier run's
    checkpoint is untouched (it could no longer resume otherwise)."""
    model_dir = tmp_path / "model"
    assert cli("train", run["root"] / "data.h5ad", "--out", model_dir, "--max-epochs", "1"
               ).code == 0
    ckpts = sorted((model_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts  # the finished candidates' checkpoints (--resume reloads them)
    before = snapshot(model_dir)
    start = time.perf_counter()
    res = cli("train", run["root"] / "data.h5ad", "--out", model_dir, "--max-epochs", "1",
              "--seed", "5")
    assert_clean_failure(res, str(model_dir), "already holds a model", "--overwrite")
    assert time.perf_counter() - start < 20
    assert snapshot(model_dir) == before


def test_predict_side_files_follow_the_whole_output_name(run, tmp_path):
    """4. side files are named from the whole --out, and a stale compound table goes."""
    model, query = run["root"] / "model", run["root"] / "query.h5ad"
    out = tmp_path / "pred.h5ad"
    assert cli("predict", model, query, "--out", out, "--compound-level").code == 0
    assert (tmp_path / "pred.compounds.csv").exists() and (tmp_path / "pred.top_k.csv").exists()
    assert cli("predict", model, query, "--out", out).code == 0
    assert not (tmp_path / "pred.compounds.csv").exists()
    for year in ("2024", "2025"):
        assert cli("predict", model, query, "--out", tmp_path / f"run.{year}").code == 0
    assert (tmp_path / "run.2024.top_k.csv").exists() and (tmp_path / "run.2025.top_k.csv").exists()
    assert not (tmp_path / "run.top_k.csv").exists()


# ------------------------------------------------------------------ 6-9: refusals, errors


def test_sparse_float_x_is_accepted_by_the_cli(run, tmp_path):
    """6. CSR/CSC float X in a query or a data .h5ad: the CLI predicts and trains on it."""
    query = run["query"].copy()
    query.X = sp.csr_matrix(np.asarray(query.X))
    write_h5ad(query, tmp_path / "sparse.h5ad")
    res = cli("predict", run["root"] / "model", tmp_path / "sparse.h5ad", "--out",
              tmp_path / "p.h5ad")
    assert res.code == 0, res.stderr
    res = cli("predict", run["root"] / "model", run["root"] / "query.h5ad", "--out",
              tmp_path / "dense.h5ad")
    np.testing.assert_allclose(read_h5ad(tmp_path / "p.h5ad").obsm["moa_scores"],
                               read_h5ad(tmp_path / "dense.h5ad").obsm["moa_scores"], atol=1e-6)
    data = run["adata"].copy()
    data.X = sp.csc_matrix(np.asarray(data.X))
    write_h5ad(data, tmp_path / "data_csc.h5ad")
    res = cli("train", tmp_path / "data_csc.h5ad", "--out", tmp_path / "m", "--max-epochs", "1")
    assert res.code == 0, res.stderr


def test_report_errors_name_the_file(run, tmp_path):
    """7. report: mathtext in MoA names renders; a corrupt metrics.json or a truncated
    .h5ad gives one line naming it."""
    from moaspace.tl._evaluate import evaluate, write_metrics

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = MoaModel.load(run["root"] / "model")
    metrics = evaluate(model, run["adata"])
    first = next(iter(metrics["per_moa"]))
    metrics["per_moa"] = {(r"$\undefinedcmd$" if name == first else name): m
                          for name, m in metrics["per_moa"].items()}
    write_metrics(metrics, run_dir / "metrics.json")
    res = cli("report", run_dir)
    assert res.code == 0, res.stderr
    (run_dir / "metrics.json").write_text('{"accuracy": 0.5')
    assert_clean_failure(cli("report", run_dir), "metrics.json", "cannot be read")
    (run_dir / "metrics.json").write_text('{"accuracy": 0.5}')
    assert_clean_failure(cli("report", run_dir), "metrics.json", "macro_f1")
    (run_dir / "metrics.json").unlink()
    data = (run["root"] / "data.h5ad").read_bytes()
    (run_dir / "data.h5ad").write_bytes(data[: len(data) // 3])
    assert_clean_failure(cli("report", run_dir), "data.h5ad", "cannot be read")


def test_bad_options_and_inputs_give_one_line(run, tmp_path, monkeypatch):
    """7. --top-k -1, --devices abc, --accelerator gpu without a GPU, a full disk,
    evaluate without a test split: one line each, naming the option or file."""
    model, query, data = run["root"] / "model", run["root"] / "query.h5ad", run["root"] / "data.h5ad"
    _usage_error(cli("predict", model, query, "--out", tmp_path / "p.h5ad", "--top-k", "-1"),
                 "--top-k must be >= 1")
    _usage_error(cli("train", data, "--out", tmp_path / "m", "--devices", "abc"),
                 "--devices must be a number", "'abc'")
    import torch

    if not torch.cuda.is_available():
        assert_clean_failure(cli("train", data, "--out", tmp_path / "m", "--accelerator", "gpu"),
                             "--accelerator gpu", "no CUDA GPU")
    import moaspace.model.module as module

    def full_disk(obj, target):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(module.torch, "save", full_disk)
    res = cli("train", data, "--out", tmp_path / "full", "--max-epochs", "1")
    assert_clean_failure(res, "cannot write", "last.ckpt", "disk full")
    monkeypatch.undo()
    no_test = run["adata"][run["adata"].obs["split"] != "test"].copy()
    write_h5ad(no_test, tmp_path / "no_test.h5ad")
    res = cli("evaluate", model, tmp_path / "no_test.h5ad", "--out", tmp_path / "m.json")
    assert_clean_failure(res, "no_test.h5ad", "obs['split']", "'test'")


def _usage_error(res, *needles: str) -> None:
    """A usage error: exit 2, no traceback, the option named (typer frames the message)."""
    assert res.exception is None and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.code == 2, (res.code, res.stderr[-2000:])
    flat = " ".join(res.stderr.replace("│", " ").split())
    for needle in needles:
        assert needle in flat, flat


def _sigint_when(cmd: list, ready, timeout: float = 240.0) -> subprocess.CompletedProcess:
    # a child inherits an ignored SIGINT (and Python then installs no KeyboardInterrupt
    # handler); pytest started in the background by a non-interactive shell (`cmd &`) has
    # it ignored, so give the child the default, as an interactive shell gives a command
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        warnings.warn("SIGINT is ignored in the test process (started in the background?); "
                      "the Ctrl-C test resets it in its child", stacklevel=2)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.002)
        assert proc.poll() is None, f"finished before the interrupt: {proc.stderr.read()}"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ctrl_c_exits_130_with_interrupted(run, tmp_path):
    """8. Ctrl-C during train and during prepare's write: exit 130, 'Interrupted.', and
    no output file."""
    model_dir = tmp_path / "model"
    ckpt = model_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "moaspace.cli", "train", str(run["root"] / "data.h5ad"),
           "--out", str(model_dir), "--max-epochs", "500", "--patience", "500",
           "--input-whitening", "off"]
    res = _sigint_when(cmd, ckpt.exists)
    assert res.returncode == 130, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == "Interrupted."
    assert not (model_dir / "config.json").exists()
    out = tmp_path / "data.h5ad"
    cmd = [sys.executable, "-m", "moaspace.cli", *map(str, _prepare(run["paths"], out))]
    res = _sigint_when(cmd, lambda: any(tmp_path.glob(".data.h5ad.*")))
    assert res.returncode == 130, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == "Interrupted."
    assert not out.exists() and not list(tmp_path.glob(".data.h5ad.*"))


def test_smaller_items(run, tmp_path, caplog):
    """9. huge 'z-scores' warn; metrics.md escapes HTML in MoA names; gene ids padded
    with whitespace still match."""
    model = MoaModel.load(run["root"] / "model")
    query = run["query"].copy()
    x = np.asarray(query.X).copy()
    x[0, 0] = 3e38
    query.X = x
    from moaspace.model._predict import predict

    with caplog.at_level(logging.WARNING, logger="moaspace"):
        predict(model, query, compound_key=None)
    assert "values up to 3e+38" in caplog.text
    padded = run["query"].copy()
    padded.var_names = [f" {g} " for g in padded.var_names]
    np.testing.assert_array_equal(model.embed(padded), model.embed(run["query"]))
    from moaspace.tl._evaluate import metrics_markdown

    metrics = {"n": 1, "accuracy": 1.0, "macro_f1": 1.0, "weighted_f1": 1.0,
               "top3_accuracy": 1.0, "top5_accuracy": 1.0,
               "per_moa": {"<script>alert(1)</script>|x": {"precision": 1.0, "recall": 1.0,
                                                             "f1": 1.0, "support": 1}}}
    md = metrics_markdown(metrics)
    assert "<script>" not in md and "&lt;script&gt;" in md and "\\|x" in md


# ------------------------------------------------------------------ 10-12: rough edges


def test_knockdowns_keep_their_time_points_by_default(run, tmp_path):
    """10. prepare --pert-type trt_xpr as the README shows it: knockdowns are at 96 h."""
    p = run["paths"]
    out = tmp_path / "kd.h5ad"
    res = cli("prepare", "--gctx", p["gctx_xpr"], "--siginfo", p["siginfo"], "--geneinfo",
              p["geneinfo"], "--pert-type", "trt_xpr", "--out", out)
    assert res.code == 0, res.stderr
    kd = read_h5ad(out)
    assert kd.n_obs > 0 and set(kd.obs["pert_time"]) == {96.0}


def test_benchmark_reference_makes_no_calibration_warning(run, caplog):
    """11. the reference baseline is calibrated for the 1-NN it predicts with."""
    from moaspace.benchmark._run import run_benchmark

    with caplog.at_level(logging.WARNING, logger="moaspace"):
        records = run_benchmark(run["adata"], seeds=[0], methods=["reference"], max_epochs=1)
    assert records[0]["method"] == "reference"
    assert "calibration was fitted for" not in caplog.text


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_benchmark_script_imports_and_has_help(script):
    """12. no benchmark script rots: each imports and answers --help."""
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=120, env=ENV, cwd=script.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_bench_train_runs_on_a_tiny_input(tmp_path):
    """12. bench_train.py (broken by an import) runs end to end on a tiny synthetic set."""
    out = tmp_path / "bench_train.json"
    proc = subprocess.run([sys.executable, str(HERE.parent / "benchmarks" / "bench_train.py"),
                           "--source", "synthetic", "--n-signatures", "600", "--max-epochs", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env=ENV, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["moaspace_version"] and "val" in json.dumps(result)


@pytest.mark.parametrize("script, out_name", [("bench_openset.py", "openset"),
                                              ("bench_predictors.py", "predictors.json")])
def test_model_level_benchmarks_run_on_a_tiny_input(script, out_name, tmp_path):
    """12. the benchmarks that read a trained model's layers run end to end (both broke
    silently when the prototype layer changed, which --help could not see)."""
    from _synthetic import make_synthetic

    data = tmp_path / "tiny.h5ad"
    make_synthetic(seed=0).write_h5ad(data)
    out = tmp_path / out_name
    proc = subprocess.run([sys.executable, str(HERE.parent / "benchmarks" / script),
                           "--data", str(data), "--seeds", "0", "--max-epochs", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env=ENV, cwd=HERE.parent / "benchmarks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench_openset.json" if out.is_dir() else out).read_text())
    assert result["moaspace_version"] and result["argv"]


def test_atomic_writes_refuse_a_non_regular_target(tmp_path):
    """1 (library): atomic_path itself never renames over a directory or device."""
    from moaspace._utils import atomic_write_text
    from moaspace.errors import InputError

    target = tmp_path / "a_dir"
    target.mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write_text(target, "x")
    assert target.is_dir()
