"""The whole pipeline on a small simulated release, and its HTML report in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pytest

from moaspace.datasets._simulate import SimulationConfig, simulate
from moaspace.report import write_report
from moaspace.workflow import run_pipeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    cfg = SimulationConfig(seed=11, n_compounds=160, n_moas=6, n_cells=6,
                           sigs_per_compound=(12, 30), n_null_knockdowns=2)
    paths = simulate(base / "sim", cfg)
    result = run_pipeline(
        paths, base / "out", max_epochs=4, prepare_kwargs={"min_compounds_per_moa": 5},
        model_kwargs={"hidden_dims": (128, 64), "embedding_dim": 32},
        benchmark_methods=("moaspace", "raw_knn", "pca_lda"), explain_permutations=100,
    )
    return base / "out", result


def test_pipeline_writes_every_stage(pipeline_run):
    out, _ = pipeline_run
    for name in ("data.h5ad", "data_split.h5ad", "model/model.pt", "model/config.json",
                 "metrics.json", "predictions.h5ad", "compound_calls.csv",
                 "crispr/crispr_scores.csv", "crispr/summary.json", "explain/enrichment.csv",
                 "explain/gene_importance.csv", "explain/pathway_heatmap.png",
                 "benchmark/results.json", "report.html", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["moas"] == 6 and 0 <= summary["test_macro_f1"] <= 1
    assert summary["command"] and summary["call"]["max_epochs"] == 4  # how it was made
    records = json.loads((out / "benchmark" / "results.json").read_text())
    assert {r["method"] for r in records} == {"moaspace", "raw_knn", "pca_lda"}


def test_report_is_self_contained(pipeline_run):
    out, _ = pipeline_run
    text = (out / "report.html").read_text()
    for section in ("Data", "Latent space", "Confusion matrix", "Evaluation",
                    "Baselines", "Pathways per MoA", "CRISPR", "How this was made",
                    "Confidence and unknown MoAs",
                    "run_pipeline", "hidden_dims"):
        assert section in text, section
    # the confidence section shows the calibration of the predictor the predictions used
    assert "predictor of these predictions</td><td>hidden_prototype" in text.replace("\n", "")
    assert "hidden_prototype softmax" in text
    srcs = re.findall(r'src="([^"]+)"', text)
    assert len(srcs) >= 6  # latent, confusion, F1 bars, baselines, pathways, CRISPR
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text


def test_report_renders_in_headless_chromium(pipeline_run, tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver must be installed in CI (.ci/run does it)")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out, _ = pipeline_run
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((out / "report.html").resolve().as_uri())
        assert driver.title == "moaspace report"
        state = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
        assert len(state) >= 6
        assert all(done and width > 0 for done, width in state), state
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"  # kept in the test temp dir for a person to look at
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_report_on_empty_dir_fails(tmp_path):
    from moaspace.errors import InputError

    with pytest.raises(InputError, match="nothing to report"):
        write_report(tmp_path)
