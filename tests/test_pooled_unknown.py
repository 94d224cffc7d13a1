"""'Unknown mechanism' calls per compound (#28 part 5): the open-set score averaged over a
compound's signatures, against thresholds fitted per number of signatures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from moaspace.cli import app
from moaspace.errors import InputError
from moaspace.model import MoaModel
from moaspace.model._predict import predict, prediction_table
from moaspace.model.calibration import Calibration, unknown_auroc
from moaspace.model.calibration._pooled import (
    call_unknown_scores,
    fit_pooled_thresholds,
    pooled_threshold,
    pooled_unknown,
)
from moaspace.pp._prepare import read_h5ad


def _compounds(rng, n_compounds: int, n_sigs: int, shift: float, prefix: str):
    """Signature scores of compounds: a compound effect (sd 0.3) plus signature noise (sd
    1), all shifted by ``shift`` (a novel mechanism scores higher)."""
    effect = rng.normal(0.0, 0.3, n_compounds)
    scores = (shift + effect[:, None] + rng.normal(0.0, 1.0, (n_compounds, n_sigs))).ravel()
    groups = np.repeat([f"{prefix}{i}" for i in range(n_compounds)], n_sigs)
    return scores, groups


def test_pooled_thresholds_fall_with_the_number_of_signatures_and_hold_their_rate():
    rng = np.random.default_rng(0)
    scores, groups = _compounds(rng, 60, 16, 0.0, "val")
    fit = fit_pooled_thresholds(scores, groups, 0.05, seed=0)
    assert fit["sizes"] == [2, 3, 4, 6, 8, 12, 16]  # none above the largest compound
    assert np.all(np.diff(fit["thresholds"]) <= 0)
    assert fit["thresholds"][0] > fit["thresholds"][-1] + 0.3  # the mean of 16 spreads less
    # new known compounds of 8 signatures: about 5% of them called unknown
    new, new_groups = _compounds(rng, 400, 8, 0.0, "new")
    _, unknown, pooled = pooled_unknown(new, new_groups, np.ones(len(new), bool), fit)
    assert pooled.all()
    rate = pd.Series(unknown).groupby(new_groups).first().mean()
    assert 0.01 < rate < 0.12
    # novel compounds (shift 1.5): pooling finds most; one signature at its own 5% does not
    novel, novel_groups = _compounds(rng, 100, 8, 1.5, "novel")
    _, flagged, _ = pooled_unknown(novel, novel_groups, np.ones(len(novel), bool), fit)
    single = novel > np.quantile(scores, 0.95)
    assert flagged.mean() > 0.8 > 0.5 > single.mean()


def test_pooled_threshold_takes_the_largest_fitted_size_not_above_n():
    fit = {"sizes": [2, 4, 8], "thresholds": [3.0, 2.0, 1.0]}
    got = pooled_threshold(fit, np.array([1, 2, 3, 4, 7, 8, 100]))
    np.testing.assert_array_equal(got[1:], [3.0, 3.0, 2.0, 2.0, 1.0, 1.0])
    assert np.isnan(got[0])
    assert np.isnan(pooled_threshold({}, np.array([5]))).all()


def test_too_few_validation_compounds_fit_no_threshold():
    rng = np.random.default_rng(1)
    scores, groups = _compounds(rng, 5, 10, 0.0, "c")
    fit = fit_pooled_thresholds(scores, groups, 0.05)
    assert fit["sizes"] == fit["thresholds"] == fit["n_compounds"] == []
    assert np.isnan(pooled_threshold(fit, np.array([2, 10]))).all()


def test_thresholds_extrapolate_to_compounds_larger_than_any_in_validation():
    rng = np.random.default_rng(2)
    scores, groups = _compounds(rng, 80, 8, 0.0, "val")
    fit = fit_pooled_thresholds(scores, groups, 0.05, seed=0)
    assert fit["sizes"][-1] == 8
    # the variance components of the simulated scores: compound sd 0.3, signature sd 1
    assert fit["between_var"] == pytest.approx(0.09, abs=0.06)
    assert fit["within_var"] == pytest.approx(1.0, abs=0.1)
    t = pooled_threshold(fit, np.array([8, 12, 16, 64, 1000]))
    assert t[0] > t[1] > t[2] > fit["mean"]
    assert t[2] == t[3] == t[4]  # no further than MAX_EXTRAPOLATION (2) x 8 signatures
    # known compounds of 16 signatures: about the target flagged (the empirical quantile of 80
    # compounds runs a little above it), where the threshold of 8 signatures would flag fewer;
    # of 64, at most about as many (the capped threshold)
    rates = {}
    for n in (16, 64):
        big, big_groups = _compounds(rng, 400, n, 0.0, f"big{n}_")
        means = pd.Series(big).groupby(big_groups).mean()
        rates[n] = (means > t[2]).mean()
        if n == 16:
            assert (means > t[0]).mean() < 0.75 * rates[16]
    assert 0.02 < rates[16] < 0.12 and rates[64] < 0.12


def test_call_scores_agree_with_the_calls_and_rank_by_distance_beyond_the_threshold():
    rng = np.random.default_rng(3)
    scores, groups = _compounds(rng, 80, 16, 0.0, "val")
    fit = fit_pooled_thresholds(scores, groups, 0.05, seed=0)
    t = float(np.quantile(scores, 0.95))  # the per-signature threshold
    query, query_groups = [], []
    for n, shift in ((2, 0.0), (4, 1.0), (16, 0.5), (16, 2.0), (1, 0.0)):
        s, g = _compounds(rng, 30, n, shift, f"n{n}s{shift}_")
        query.append(s)
        query_groups.append(g)
    query, query_groups = np.concatenate(query), np.concatenate(query_groups)
    eligible = rng.random(len(query)) > 0.1  # some weak signatures: they keep their own
    got = call_unknown_scores(query, query_groups, eligible, fit, t)
    mean, unknown, pooled = pooled_unknown(query, query_groups, eligible, fit)
    np.testing.assert_array_equal(got[pooled] > t, unknown[pooled])
    np.testing.assert_array_equal(got[~pooled], query[~pooled])
    assert unknown.any() and (pooled & ~unknown).any() and (~pooled).any()
    # the mapping keeps the order of a compound's mean for one size, and a mean as far
    # above its size's threshold as another's (in units of threshold - mu) scores the same
    mu = fit["mean"]
    n = pd.Series(eligible).groupby(query_groups).transform("sum").to_numpy()
    tn = pooled_threshold(fit, n)
    z = (mean - mu) / (tn - mu)
    np.testing.assert_allclose(got[pooled], mu + z[pooled] * (t - mu))
    assert np.all(tn[pooled] > mu) and t > mu
    # a novel compound's 16 signatures put it farther out than one known compound's 2
    assert np.median(got[query_groups == "n16s2.0_0"]) > np.max(
        got[pooled & np.char.startswith(query_groups.astype(str), "n2s0.0_")])
    # no random-effects mean: the call scores still agree with the calls (shifted)
    bare = {k: v for k, v in fit.items() if k != "mean"}
    shifted = call_unknown_scores(query, query_groups, eligible, bare, t)
    np.testing.assert_array_equal(shifted[pooled] > t, unknown[pooled])
    np.testing.assert_allclose(shifted[pooled], (mean - tn + t)[pooled])


def test_pooled_unknown_leaves_out_ineligible_and_lone_signatures():
    fit = {"sizes": [2], "thresholds": [1.0]}
    scores = np.array([0.5, 1.8, 9.0, 2.0, 0.1])
    groups = np.array(["a", "a", "a", "b", "c"])
    eligible = np.array([True, True, False, True, True])  # a's third is weak ('no call')
    mean, unknown, pooled = pooled_unknown(scores, groups, eligible, fit)
    np.testing.assert_allclose(mean[:3], 1.15)  # the weak 9.0 does not vote
    assert unknown[:2].all() and pooled[:2].all()
    assert not pooled[2]  # the weak signature is not called by its compound ('no call')
    assert not pooled[3] and not pooled[4]  # one eligible signature: its own threshold
    np.testing.assert_allclose(mean[3:], [2.0, 0.1])
    # signatures without a compound id are not one compound
    ids = np.array(["a", None, np.nan, "a"], dtype=object)
    mean, unknown, pooled = pooled_unknown(np.array([2.0, 5.0, 5.0, 2.0]), ids,
                                           np.ones(4, bool), fit)
    assert pooled.tolist() == [True, False, False, True]
    assert np.isnan(mean[1:3]).all()


def test_predict_calls_unknown_per_compound(openset_run):
    _, model, _, test = openset_run
    cal = model.calibration
    assert cal.pooled["sizes"] and "pooled_unknown" not in cal.validation  # stored once
    pred = predict(model, test, compound_key="pert_id")
    assert pred.uns["moa"]["params"]["unknown_by"] == "compound"
    labels = pred.obs["moa_pred"].astype(str).to_numpy()
    called = labels != "no call"
    # every signature that is not weak votes, also one withheld for a low probability
    voting = pred.obs["moa_strength"].to_numpy() >= (cal.min_strength or 0.0)
    assert (voting & ~called).any()
    compounds = test.obs["pert_id"].astype(str).to_numpy()
    own = pred.obs["moa_unknown_score_signature"].to_numpy(np.float64)
    mean = pred.obs["moa_unknown_score_compound"].to_numpy(np.float64)
    expected = pd.Series(np.where(voting, own, np.nan)).groupby(compounds).transform("mean")
    np.testing.assert_allclose(mean, expected.to_numpy(), rtol=1e-5)
    # the signatures of a compound that get a call share its unknown call
    share = pd.Series(labels[called] == "unknown").groupby(compounds[called]).mean()
    assert set(share.unique()) <= {0.0, 1.0}
    table = prediction_table(pred)
    assert set(table["unknown_score"].dropna().unique()) <= {0.0, 1.0}
    np.testing.assert_allclose(table["mean_unknown_distance"].dropna().to_numpy(),
                               pd.Series(mean[voting]).groupby(compounds[voting]).first()
                               .reindex(table["compound"]).dropna().to_numpy(), rtol=1e-5)
    # moa_unknown_score is the score of the call: above the threshold exactly where a
    # voting signature is called unknown (its compound's score where the compound decides)
    score = pred.obs["moa_unknown_score"].to_numpy(np.float64)
    unknown = labels == "unknown"
    assert unknown.any() and (~unknown & voting).any()
    np.testing.assert_array_equal(score[voting] > cal.threshold, unknown[voting])
    # per signature: the old calls, and the signatures' own scores
    single = predict(model, test, compound_key="pert_id", unknown_by="signature")
    plain = predict(model, test, compound_key=None)
    pd.testing.assert_series_equal(single.obs["moa_pred"], plain.obs["moa_pred"])
    np.testing.assert_allclose(own, plain.obs["moa_unknown_score"].to_numpy(np.float64))
    assert not np.allclose(score, own)
    for kept in ("moa_unknown_score_compound", "moa_unknown_score_signature"):
        assert kept not in single.obs and kept not in plain.obs
    with pytest.raises(InputError, match="unknown_by"):
        predict(model, test, unknown_by="cell")


def test_pooling_separates_held_out_moas_better_than_one_signature(openset_run):
    _, model, adata, test = openset_run
    held = set(adata.uns["moaspace"]["split"]["test_only_moas"])
    novel = test.obs["moa"].isin(held).to_numpy()
    pooled = predict(model, test, compound_key="pert_id")
    single = predict(model, test, compound_key=None)
    mean = pooled.obs["moa_unknown_score_compound"].to_numpy(np.float64)
    own = single.obs["moa_unknown_score"].to_numpy(np.float64)
    ok = np.isfinite(mean)
    assert unknown_auroc(mean[ok & ~novel], mean[ok & novel]) > unknown_auroc(
        own[ok & ~novel], own[ok & novel]) + 0.05
    flagged = pooled.obs["moa_pred"].astype(str).to_numpy() == "unknown"
    alone = single.obs["moa_pred"].astype(str).to_numpy() == "unknown"
    assert flagged[novel].mean() > alone[novel].mean()
    assert flagged[~novel].mean() < 0.15


def test_evaluate_reports_the_unknown_calls_predict_makes(openset_run):
    """evaluate's open-set rates are those of predict's calls (per compound, weak
    signatures 'no call'), its AUROC that of the score predict writes."""
    from moaspace.tl._evaluate import evaluate

    _, model, adata, test = openset_run
    held = set(adata.uns["moaspace"]["split"]["test_only_moas"])
    o = evaluate(model, adata, split="test")["open_set"]
    pred = predict(model, test, compound_key="pert_id", min_score=0)
    calls = pred.obs["moa_pred"].astype(str).to_numpy()
    novel = test.obs["moa"].astype(str).isin(held).to_numpy()
    assert o["false_unknown_rate"] == pytest.approx((calls[~novel] == "unknown").mean())
    assert o["unknown_detected"] == pytest.approx((calls[novel] == "unknown").mean())
    score = pred.obs["moa_unknown_score"].to_numpy(np.float64)
    assert o["auroc"] == pytest.approx(unknown_auroc(score[~novel], score[novel]))
    # a weak signature above the threshold is 'no call', not counted as flagged
    weak = calls == "no call"
    assert (weak & (score > model.calibration.threshold)).any()


def test_pooled_thresholds_survive_save_and_load(openset_run, tmp_path):
    root, model, _, _ = openset_run
    loaded = MoaModel.load(root / "model")
    got, want = loaded.calibration.pooled, model.calibration.pooled
    assert got["sizes"] == want["sizes"] and got["n_compounds"] == want["n_compounds"]
    np.testing.assert_allclose(got["thresholds"], want["thresholds"])
    path = model.calibration.save(tmp_path / "calibration.json")
    assert Calibration.load(path).pooled["sizes"] == model.calibration.pooled["sizes"]


def test_cli_predict_pools_unknown_calls_by_default(openset_run, tmp_path):
    root, _, _, _ = openset_run
    runner = CliRunner()
    outs = {}
    for by in ("compound", "signature"):
        out = tmp_path / f"{by}.h5ad"
        res = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                                  "--out", str(out), "--unknown-by", by])
        assert res.exit_code == 0, res.output
        outs[by] = read_h5ad(out)
        assert not (tmp_path / f"{by}.compounds.csv").exists()  # no --compound-level
    bad = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                              "--out", str(tmp_path / "x.h5ad"), "--unknown-by", "cell"])
    assert bad.exit_code != 0 and "--unknown-by" in bad.output
    assert not (tmp_path / "x.h5ad").exists()
    assert "moa_unknown_score_compound" in outs["compound"].obs
    assert "moa_unknown_score_compound" not in outs["signature"].obs
    assert outs["compound"].uns["moa"]["params"]["unknown_by"] == "compound"
