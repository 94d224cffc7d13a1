"""The whole pipeline on a small simulated release and on the shipped real drugs, and the
HTML report (each section labelled real or simulated) in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pandas as pd
import pytest

from moaspace.datasets import lincs_consensus
from moaspace.datasets._simulate import SimulationConfig, simulate
from moaspace.report import write_report
from moaspace.workflow import REAL_DEMO_DATA, run_on_data, run_pipeline

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


def test_simulated_run_is_labelled_and_checks_planted_truth(pipeline_run):
    out, _ = pipeline_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == "simulated"  # a release with a truth file
    text = (out / "report.html").read_text()
    assert "<span class='world simulated'>simulated data</span></h2>" in text
    assert "world real" not in text
    truth = pd.read_csv(out / "planted_truth.csv")
    assert len(truth) == 6 and set(truth.columns) == {"moa", "planted_pathways",
                                                     "top_enriched", "recovered"}
    assert "Planted truth: pathways recovered" in text
    near = pd.read_csv(out / "nearest_drugs.csv")
    assert (near.groupby("compound")["rank"].max() == 3).all()
    assert near["cosine"].between(-1, 1).all()


@pytest.fixture(scope="module")
def real_run(pipeline_run, tmp_path_factory):
    """The demo's layout on a slice of the real drugs (10 largest MoAs): real run in
    ``out``, a simulated run in ``out/simulated``, then the report."""
    real = lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    big = real.obs["moa"].value_counts().index[:10]
    real = real[real.obs["moa"].isin(big)].copy()
    out = tmp_path_factory.mktemp("real") / "demo"
    result = run_on_data(real, out, source=REAL_DEMO_DATA, max_epochs=4,
                         model_kwargs={"hidden_dims": (128, 64), "embedding_dim": 32},
                         benchmark_methods=("moaspace", "raw_knn"), explain_permutations=100,
                         stages=("explain", "benchmark"))
    shutil.copytree(pipeline_run[0], out / "simulated")
    write_report(out)
    return out, real, result


def test_real_run_shows_real_drugs_genes_and_simulated_sections(real_run):
    out, real, _ = real_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == "real" and summary["call"]["data"] == REAL_DEMO_DATA
    # one consensus signature per drug: the compound level is the signature level
    assert summary["test_compound_macro_f1"] == summary["test_macro_f1"]
    text = (out / "report.html").read_text()
    flat = text.replace("\n", "")
    test = real[real.obs_names.isin(pd.read_csv(out / "compound_calls.csv")["compound"])]
    named = [n for n in test.obs["cmap_name"] if n in text]
    assert len(named) == len(test)  # every held-out drug by its name
    near = pd.read_csv(out / "nearest_drugs.csv")
    assert set(near["compound"]) == set(test.obs_names) and (near["rank"] <= 3).all()
    assert "nearest reference drugs" in text
    assert set(near["neighbour"]).isdisjoint(near["compound"])  # references are training drugs
    first = near[near["rank"] == 1].iloc[0]
    assert f"{first['neighbour_drug']} ({first['neighbour_moa']}, " in text
    # real gene symbols, with their sign, per MoA
    top = pd.read_csv(out / "explain" / "top_genes.csv")
    assert set(top["gene_symbol"]) <= set(real.var["gene_symbol"])
    assert "Top genes per MoA" in text and f"{top['gene_symbol'].iloc[0]} " in text
    # every real section labelled real, the simulated ones (CRISPR, planted truth) simulated
    for title in ("Data", "Latent space", "Compound-level calls", "Pathways per MoA",
                  "Top genes per MoA", "Baselines"):
        assert re.search(f"<h2>{title}[^<]*<span class='world real'>real data</span></h2>",
                         flat), title
    for title in ("The simulated world", "CRISPR knockdowns in the drug space",
                  "Planted truth"):
        assert re.search(f"<h2>{title}[^<]*<span class='world simulated'>", flat), title
    assert flat.index("world real") < flat.index("The simulated world")
    assert "UMAP" in text and "PCA" in text
    assert "lincs_consensus" in text and "PROVENANCE.md" in text


def test_latent_maps_draw_pca_and_umap_side_by_side():
    import numpy as np

    from moaspace import pl

    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 8))
    moa = np.repeat(["a", "b"], 20)
    fig = pl.latent_maps(z, moa, [f"drug {i}" for i in range(40)], seed=0)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["PCA", "UMAP"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["PCA 1", "UMAP 1"]
    few = pl.latent_maps(z[:8], moa[:8])  # too few points for UMAP: PCA, and it says so
    assert [ax.get_title() for ax in few.axes] == ["PCA", "UMAP unavailable: PCA"]


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
