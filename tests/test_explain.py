"""explain attributes the score predict calls with, its signed table reads as gene directions,
and the gene-set libraries fit the landmark genes."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from _synthetic import make_synthetic
from moaspace.cli import app
from moaspace.io.genesets import BUNDLED, load_gene_sets
from moaspace.model import MoaModel
from moaspace.pp import split
from moaspace.tl import predict
from moaspace.tl._attribution import gene_importance, score_module, score_patterns
from moaspace.tl._enrichment import prerank

runner = CliRunner()


def test_attributed_score_is_the_predict_score(saved_model):
    """The module explain attributes gives, on query rows, predict's obsm['moa_scores']."""
    model, query = saved_model["model"], saved_model["query"]
    module, moas, description = score_module(model)
    assert description.startswith(f"predictor {model.config.predictor}")
    result = predict(model, query)
    classes = (result.uns["moa_classes"] if "moa_classes" in result.uns
               else result.uns["moa"]["classes"])  # the layout before / after #27's refactor
    assert moas == list(classes)
    with torch.no_grad():
        scores = module(torch.from_numpy(model.align_genes(query))).numpy()
    np.testing.assert_allclose(scores, result.obsm["moa_scores"], atol=1e-5)


def test_signed_table_is_the_pattern_not_the_filter():
    """The cause of the sign inversion, without a network: a linear score that whitens
    (LDA's filter Sigma^-1 mu) weighs an up gene negatively when a co-regulated gene
    already carries its rise. Its integrated-gradients contribution is then negative; the
    pattern Cov(x, score) gives the gene's direction (up)."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])  # within-MoA noise: two co-regulated genes
    mu = np.array([2.0, 1.0])  # the MoA raises both genes
    labels = np.repeat([1, 0], 500)
    x = rng.multivariate_normal([0, 0], cov, 1000) + labels[:, None] * mu
    filt = np.linalg.solve(cov, mu)  # (5.8, -4.2): gene 1 is a suppressor
    assert filt[1] < 0
    others = x[labels == 0].mean(0)
    contribution = filt * (x[labels == 1].mean(0) - others)  # IG of a linear score
    assert contribution[1] < 0  # what gene_importance_signed.csv used to report
    pattern = score_patterns(x, (x @ filt)[:, None])[:, 0]
    assert (pattern > 0).all()  # both genes are up in the MoA
    # clipped as the model sees them, a constant score gives zeros
    assert np.array_equal(score_patterns(x, np.ones((1000, 1)), clip=1.0), np.zeros((2, 1)))


@pytest.fixture(scope="module")
def planted():
    """Synthetic signatures with one planted up-gene and one planted down-gene in MoA 0,
    and a small model trained on them (input whitening on, as on real data)."""
    adata = make_synthetic(n_moas=5, compounds_per_moa=6, seed=3)
    moa = sorted(adata.obs["moa"].astype(str).unique())[0]
    rows = (adata.obs["moa"].astype(str) == moa).to_numpy()
    x = np.asarray(adata.X).copy()
    x[rows, 0] += 5.0  # the planted up-gene
    x[rows, 1] -= 5.0  # the planted down-gene
    adata.X = x
    adata = split(adata, "compound", seed=0)
    model = MoaModel(adata, hidden_dims=(64, 32), embedding_dim=16, input_whitening="on")
    model.train(max_epochs=8, seed=0, progress_bar=False, accelerator="cpu")
    return model, adata, moa


def test_planted_up_gene_comes_out_positive(planted):
    model, adata, moa = planted
    signed, absolute, info, contribution = gene_importance(
        model, adata, moas=[moa], return_contribution=True)
    col = signed[moa]
    assert col.iloc[0] > 0 and col.iloc[1] < 0  # up is positive, down negative
    top = col.abs().sort_values(ascending=False).index[:3]
    assert {adata.var_names[0], adata.var_names[1]} <= set(top)
    assert absolute[moa].ge(0).all() and set(contribution.columns) == set(signed.columns)
    assert info.attrs["view"] == "predictor" and "softmax" in info.attrs["score"]
    assert "cosine" in info.attrs["attributed"]
    # IG completeness: contributions sum to score(x) - score(baseline)
    gain = info.loc[moa, "mean_cosine"] - info.loc[moa, "mean_baseline_cosine"]
    assert gain > 0.05 and info.loc[moa, "mean_abs_delta"] < 0.05 * gain


def test_signed_table_is_the_pattern_of_predicts_calibrated_probability(planted):
    """The signed table is the pattern of the per-MoA probability predict reports
    (obsm['moa_proba']); a model without per-MoA calibration falls back to the softmax."""
    model, adata, moa = planted
    assert model.calibration is not None and model.calibration.classwise
    signed, _, info = gene_importance(model, adata, moas=[moa], n_steps=4, n_baselines=1,
                                      max_per_moa=5)
    assert info.attrs["pattern_of"].startswith("calibrated per-MoA probability")
    pred = predict(model, adata.copy(), compound_key=None)
    column = list(pred.uns["moa"]["classes"]).index(moa)
    expected = score_patterns(model.align_genes(adata), pred.obsm["moa_proba"],
                              model.config.clip)[:, column]
    np.testing.assert_allclose(signed[moa].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    # the calibrated probability differs from the softmax: the pattern is not the softmax's
    softmax = score_patterns(model.align_genes(adata), pred.obsm["moa_scores"],
                             model.config.clip)[:, column]
    assert not np.allclose(expected, softmax, rtol=1e-3)
    classwise = model.calibration.classwise
    try:
        model.calibration.classwise = {}
        fallback, _, info = gene_importance(model, adata, moas=[moa], n_steps=4,
                                            n_baselines=1, max_per_moa=5)
    finally:
        model.calibration.classwise = classwise
    assert "no per-MoA calibration" in info.attrs["pattern_of"]
    np.testing.assert_allclose(fallback[moa].to_numpy(), softmax, rtol=1e-4, atol=1e-6)


def test_arcface_view_is_labelled(planted):
    model, adata, moa = planted
    _, _, info = gene_importance(model, adata, moas=[moa], view="arcface_head", n_steps=4,
                                 n_baselines=2, max_per_moa=10)
    assert info.attrs["view"] == "arcface_head" and "cosine" in info.attrs["score"]
    with pytest.raises(ValueError, match="view"):
        score_module(model, "nope")


def test_bundled_libraries_and_their_licence():
    hallmark, name = load_gene_sets(None)
    assert name == "hallmark" and len(hallmark) == 50
    assert "HALLMARK_CHOLESTEROL_HOMEOSTASIS" in hallmark
    reactome, name = load_gene_sets("reactome")
    assert name == "reactome" and len(reactome) > 2000
    assert load_gene_sets({"S": ["A"]}) == ({"S": ["A"]}, "custom")
    licence = (resources.files("moaspace.resources") / "hallmark.LICENSE.txt").read_text()
    assert "CC BY 4.0" in licence and "Liberzon" in licence
    assert set(BUNDLED) == {"hallmark", "reactome"}
    # Hallmark fits the landmark genes: most sets keep >= 5 of them, Reactome's do not
    landmarks = set(pd.read_csv(resources.files("moaspace.resources") / "landmark_genes.csv")
                    ["pr_gene_symbol"])
    h = np.array([len(set(g) & landmarks) for g in hallmark.values()])
    r = np.array([len(set(g) & landmarks) for g in reactome.values()])
    assert np.median(h) >= 20 and (h >= 5).sum() >= 45 and np.median(r) <= 3


def test_enrichment_reports_set_sizes_and_drops_small_sets():
    genes = [f"G{i}" for i in range(60)]
    ranking = pd.Series(np.linspace(3, -3, 60), index=genes)
    sets = {"top": [*genes[:6], "NOT_RANKED"], "tiny": genes[:4], "spread": genes[::5]}
    out = prerank(ranking, sets, permutations=50)
    assert set(out["pathway"]) == {"top", "spread"}  # "tiny" has 4 < 5 ranked genes
    row = out.set_index("pathway").loc["top"]
    assert row["n_genes"] == 6 and row["set_size"] == 7 and row["nes"] > 0


def test_cli_explain_gene_sets_option(saved_model, tmp_path):
    symbols = saved_model["adata"].var["gene_symbol"].astype(str).tolist()
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("".join(f"SET{k}\tdesc\t" + "\t".join(symbols[k * 8:(k + 1) * 8]) + "\n"
                           for k in range(6)))
    out = tmp_path / "ex"
    r = runner.invoke(app, ["explain", str(saved_model["model_dir"]),
                            str(saved_model["root"] / "data.h5ad"), "--out", str(out),
                            "--gene-sets", str(gmt), "--permutations", "20",
                            "--max-per-moa", "5"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "explain.json").read_text())
    assert summary["gene_sets"] == str(gmt) and summary["view"] == "predictor"
    assert "up" in summary["signed_means"]
    enrichment = pd.read_csv(out / "enrichment.csv")
    assert {"n_genes", "set_size"} <= set(enrichment.columns)
    for name in ("gene_importance_signed.csv", "gene_contribution.csv", "top_genes.csv"):
        assert (out / name).stat().st_size > 0
    assert set(pd.read_csv(out / "top_genes.csv")["direction"]) <= {"up", "down"}
    bad = runner.invoke(app, ["explain", str(saved_model["model_dir"]),
                              str(saved_model["root"] / "data.h5ad"), "--out",
                              str(tmp_path / "ex2"), "--view", "nope"])
    assert bad.exit_code == 2
