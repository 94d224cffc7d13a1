"""Open-set prediction with a trained, calibrated model (moaspace.model._predict and
`moaspace predict`): calibrated scores, 'unknown' and 'no call' labels, compound calls."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from _openset import TINY
from _synthetic import make_synthetic
from moaspace.cli import app
from moaspace.errors import InputError, MoaspaceError
from moaspace.model import MoaModel
from moaspace.model._predict import predict, prediction_table
from moaspace.model.calibration import unknown_auroc
from moaspace.pp._prepare import read_h5ad
from moaspace.pp._split import split

# --------------------------------------------------------------------- calls of a calibrated model


def test_unknown_moas_score_higher_than_known(openset_run):
    _, model, adata, test = openset_run
    cal = model.calibration
    assert cal is not None and cal.validation["n"] > 0
    held = set(adata.uns["moaspace"]["split"]["test_only_moas"])
    assert not held & set(model.moas)
    pred = predict(model, test, compound_key=None)
    unknown = test.obs["moa"].isin(held).to_numpy()
    score = pred.obs["moa_unknown_score"].to_numpy()
    # per compound (mean over its signatures): 0.81 when written; per signature 0.65 (a
    # small, briefly trained model: see docs/confidence.md on signature-level limits)
    compounds = test.obs["pert_id"].astype(str).to_numpy()
    mean = pd.Series(score).groupby(compounds).mean()
    is_unknown = pd.Series(unknown).groupby(compounds).first()
    assert unknown_auroc(mean[~is_unknown], mean[is_unknown]) > 0.7
    assert unknown_auroc(score[~unknown], score[unknown]) > 0.55
    labels = pred.obs["moa_pred"].astype(str).to_numpy()
    assert (labels[unknown] == "unknown").mean() > (labels[~unknown] == "unknown").mean()
    assert set(labels) <= set(model.moas) | {"unknown", "no call"}
    # 'no call' exactly for the signatures weaker than the calibrated cut-off and for the
    # calls (not 'unknown') whose calibrated probability is below the calibrated level (#28)
    score = pred.obs["moa_pred_score"].to_numpy()
    assert ((score > 0) & (score <= 1)).all()
    assert cal.min_score is not None and 0 < cal.min_score < 1
    weak = pred.obs["moa_strength"].to_numpy() < (cal.min_strength or 0.0)
    unsure = ~weak & (labels != "unknown") & (score < cal.min_score)
    assert ((labels == "no call") == (weak | unsure)).all()
    known_pred = pred.obs["moa_pred_known"].astype(str).to_numpy()
    called = ~np.isin(labels, ["unknown", "no call"])
    assert (labels[called] == known_pred[called]).all()  # a call is the argmax label
    # compound level: 'unknown' when most of a compound's signatures are
    calls = prediction_table(predict(model, test, compound_key="pert_id"), "compound_calls")
    cpd_unknown = is_unknown.reindex(calls.index).to_numpy()
    called_unknown = (calls["moa_pred"] == "unknown").to_numpy()
    np.testing.assert_array_equal(called_unknown, calls["share_unknown"].to_numpy() > 0.5)
    assert called_unknown[cpd_unknown].mean() > called_unknown[~cpd_unknown].mean()
    assert (calls.loc[~called_unknown, "moa_pred"] == calls.loc[~called_unknown,
                                                                 "moa_pred_known"]).all()
    closed = predict(model, test, compound_key=None, open_set=False)
    assert "unknown" not in set(closed.obs["moa_pred"].astype(str))
    np.testing.assert_array_equal(closed.obs["moa_pred_score"], pred.obs["moa_pred_score"])


def test_cli_predict_open_set_writes_unknown(openset_run, tmp_path):
    root, model, _, test = openset_run
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                              "--out", str(tmp_path / "p.h5ad"), "--open-set"])
    assert res.exit_code == 0, res.output
    pred = read_h5ad(tmp_path / "p.h5ad")
    labels = pred.obs["moa_pred"].astype(str)
    assert (labels == "unknown").any()
    assert "moa_unknown_score" in pred.obs and pred.uns["moa"]["params"]["open_set"]
    # default is on for a calibrated model; --no-open-set keeps the closed-set labels
    res = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                              "--out", str(tmp_path / "d.h5ad")])
    assert res.exit_code == 0, res.output
    assert read_h5ad(tmp_path / "d.h5ad").obs["moa_pred"].astype(str).tolist() == labels.tolist()
    cut = float(np.median(test.obs["tas"]))
    res = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                              "--out", str(tmp_path / "c.h5ad"), "--no-open-set",
                              "--min-tas", f"{cut}"])
    assert res.exit_code == 0, res.output
    closed = read_h5ad(tmp_path / "c.h5ad").obs
    low = closed["tas"].to_numpy() < cut
    assert 0 < low.sum() < len(low)
    assert (closed["moa_pred"].astype(str)[low] == "no call").all()
    assert set(closed["moa_pred"].astype(str)[~low]) <= set(model.moas) | {"no call"}
    # --min-score 0 turns the confidence cut-off off, --min-strength 0 the strength one
    res = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                              "--out", str(tmp_path / "n.h5ad"), "--no-open-set",
                              "--min-score", "0", "--min-strength", "0"])
    assert res.exit_code == 0, res.output
    every = read_h5ad(tmp_path / "n.h5ad").obs["moa_pred"].astype(str)
    assert set(every) <= set(model.moas)
    res = runner.invoke(app, ["predict", str(root / "model"), str(root / "test.h5ad"),
                              "--out", str(tmp_path / "bad.h5ad"), "--min-score", "1.5"])
    assert res.exit_code != 0 and "--min-score" in res.output
    assert not (tmp_path / "bad.h5ad").exists()


def test_model_without_calibration_still_loads_and_predicts(openset_run, tmp_path, caplog):
    root, _, _, test = openset_run
    old = tmp_path / "old_model"
    old.mkdir()
    for name in ("model.pt", "atlas.h5ad"):
        (old / name).write_bytes((root / "model" / name).read_bytes())
    config = json.loads((root / "model" / "config.json").read_text())
    del config["files"]["calibration.json"]  # as written before calibration existed
    del config["files"]["raw_atlas.h5ad"]  # ... and before save() wrote the raw atlas
    del config["config_sha1"]  # ... and before config.json had a checksum of its own
    (old / "config.json").write_text(json.dumps(config))
    model = MoaModel.load(old)
    assert model.calibration is None
    with caplog.at_level(logging.WARNING, logger="moaspace"):
        pred = predict(model, test, compound_key=None)
    assert "no calibration" in caplog.text
    assert "unknown" not in set(pred.obs["moa_pred"].astype(str))
    with pytest.raises(MoaspaceError, match="calibrat"):
        predict(model, test, compound_key=None, open_set=True)
    res = CliRunner().invoke(app, ["predict", str(old), str(root / "test.h5ad"),
                                   "--out", str(tmp_path / "p.h5ad"), "--open-set"])
    assert res.exit_code == 1 and "calibration" in res.output


@pytest.mark.parametrize("predictor", ["knn", "hidden_prototype"])
@pytest.mark.parametrize("method", ["logistic", "isotonic"])
def test_predict_uses_the_forced_calibration_method(openset_run, method, predictor):
    """predict() gives the calibrated score of the map fitted on val, for each map and
    each predictor (the hidden-prototype map reads its own scores and margin layer)."""
    from moaspace._core.neighbors import (
        encode_labels,
        knn_scores,
        knn_search,
        prototype_scores,
        prototypes,
    )
    from moaspace.model.calibration import confidence_features

    _, model, adata, test = openset_run
    before = model.calibration
    try:
        cal = model.calibrate(adata, method=method)
        assert cal.method == method
        assert set(cal.logistic) == {"knn", "prototype", "hidden_prototype"}
        assert cal.method_for(predictor) == method
        assert cal.validation["brier_after"] == cal.validation["brier_out_of_fold"][method]
        pred = predict(model, test, compound_key=None, predictor=predictor)
        assert pred.uns["moa"]["params"]["predictor"] == predictor
        assert pred.uns["moa"]["params"]["calibration_method"] == method
        ref = model.atlas
        ref_z, ref_moa = np.asarray(ref.X), ref.obs["moa"].astype(str).to_numpy()
        codes, classes = encode_labels(ref_moa, sorted(set(ref_moa)))
        z = pred.obsm["X_moa"]
        sims, idx = knn_search(z, ref_z, max(cal.k, cal.wide_k))
        if predictor == "knn":
            scores = knn_scores(sims[:, :cal.k], idx[:, :cal.k], codes, len(classes))
            layer, centres = z, prototypes(ref_z, ref_moa, classes)[0]
        else:
            layer, centres = model.embed(test, layer="prototype"), model.hidden_prototypes
            scores = prototype_scores(layer, centres)
        np.testing.assert_allclose(pred.obsm["moa_scores"], scores, atol=1e-5)
        feats = confidence_features(scores, layer, centres, sims, idx, codes, wide_k=cal.wide_k)
        _, expected = cal.calibrate_scores(scores, predictor, feats)
        np.testing.assert_allclose(pred.obs["moa_pred_score"].to_numpy(), expected, atol=1e-5)
        score = pred.obs["moa_pred_score"].to_numpy()
        assert ((score > 0) & (score < 1)).all()
    finally:
        model.calibration = before


def test_predict_by_prototype_uses_the_prototype_map(openset_run):
    _, model, _, test = openset_run
    before = model.calibration
    try:
        # a copy: the module-scoped model's own calibration is left as it was
        cal = dataclasses.replace(before, method="isotonic", methods={"prototype": "none"})
        model.calibration = cal
        by_proto = predict(model, test, predictor="prototype", compound_key=None)
        assert by_proto.uns["moa"]["params"]["calibration_method"] == "none"
        np.testing.assert_allclose(by_proto.obs["moa_pred_score"].to_numpy(),
                                   by_proto.obsm["moa_scores"].max(axis=1), atol=1e-6)
        by_knn = predict(model, test, compound_key=None, predictor="knn")
        assert by_knn.uns["moa"]["params"]["calibration_method"] == "isotonic"
        curve = cal.isotonic["knn"]
        np.testing.assert_allclose(
            by_knn.obs["moa_pred_score"].to_numpy(),
            np.interp(by_knn.obsm["moa_scores"].max(axis=1), curve["x"], curve["y"]), atol=1e-6)
    finally:
        model.calibration = before


def test_msp_unknown_score_does_not_depend_on_the_prediction_method(openset_run):
    """msp's threshold is fitted on the calibration's kNN vote: predict(predictor='prototype')
    must score unknowns on that vote too, not on the prototype softmax."""
    _, model, adata, test = openset_run
    before = model.calibration
    try:
        model.calibrate(adata, score="msp")
        by_knn = predict(model, test, compound_key=None, predictor="knn")
        by_proto = predict(model, test, predictor="prototype", compound_key=None)
        np.testing.assert_allclose(by_proto.obs["moa_unknown_score"].to_numpy(),
                                   by_knn.obs["moa_unknown_score"].to_numpy(), atol=1e-6)
        share = (by_proto.obs["moa_pred"].astype(str) == "unknown").mean()
        assert share == (by_knn.obs["moa_pred"].astype(str) == "unknown").mean() < 0.9
    finally:
        model.calibration = before


def test_predict_defaults_to_the_calibrated_k(openset_run, caplog):
    _, model, _, test = openset_run
    cal = model.calibration
    old_k = cal.k
    try:
        cal.k = 7  # as if the model had been trained (and calibrated) with knn_k=7
        with caplog.at_level(logging.WARNING, logger="moaspace"):
            pred = predict(model, test, compound_key=None)
        assert pred.uns["moa"]["params"]["k"] == 7
        assert "may be miscalibrated" not in caplog.text
        with caplog.at_level(logging.WARNING, logger="moaspace"):
            assert predict(model, test, k=3, compound_key=None).uns["moa"]["params"]["k"] == 3
        assert "may be miscalibrated" in caplog.text
    finally:
        cal.k = old_k


# ------------------------------------------------------------------ abstentions and compound calls


def test_compound_calls_leave_out_no_call_signatures():
    from moaspace.model._predict import compound_calls

    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    compounds = ["c1", "c1", "c1", "c2"]
    everyone = compound_calls(scores, ["A", "B"], compounds)
    assert everyone.loc["c1", "moa_pred"] == "B" and everyone.loc["c1", "n_voting"] == 3
    voting = np.array([True, False, False, False])
    calls = compound_calls(scores, ["A", "B"], compounds, voting=voting)
    assert calls.loc["c1", "moa_pred"] == "A" and calls.loc["c1", "moa_pred_score"] == \
        pytest.approx(0.9)
    assert calls.loc["c1", "n_signatures"] == 3 and calls.loc["c1", "n_voting"] == 1
    assert calls.loc["c2", "moa_pred"] == "no call" and np.isnan(calls.loc["c2",
                                                                           "moa_pred_score"])
    assert calls.loc["c2", "top3"] == "" and list(calls.index) == ["c1", "c2"]


@pytest.mark.parametrize("open_set", [False, True])
def test_predict_compound_level_with_min_tas(openset_run, open_set):
    _, model, _, test = openset_run
    q = test.copy()
    cpd = q.obs["pert_id"].astype(str)
    quiet = cpd.iloc[0]
    tas = q.obs["tas"].to_numpy(np.float64).copy()
    tas[(cpd == quiet).to_numpy()] = 0.0  # one compound with nothing but inactive signatures
    q.obs["tas"] = tas
    cut = float(np.quantile(tas, 0.5))
    pred = predict(model, q, min_tas=cut, open_set=open_set, min_score=0)
    calls = prediction_table(pred, "compound_calls")
    label = pred.obs["moa_pred"].astype(str).to_numpy()
    no_call = label == "no call"
    assert no_call.any() and not no_call.all()
    per_cpd = pd.Series(~no_call, index=cpd.to_numpy()).groupby(level=0).sum()
    assert (calls["n_voting"] == per_cpd.reindex(calls.index)).all()
    silent = per_cpd[per_cpd == 0].index
    assert quiet in silent
    assert (calls.loc[silent, "moa_pred"] == "no call").all()
    if open_set:  # the unknown share is over the signatures that vote
        voting = pd.Series(~no_call, index=cpd.to_numpy())
        unknown = pd.Series(label == "unknown", index=cpd.to_numpy())[voting.to_numpy()]
        share = unknown.groupby(level=0).mean().reindex(calls.index)
        np.testing.assert_allclose(calls["share_unknown"].to_numpy(), share.to_numpy())


@pytest.mark.parametrize("open_set", [False, True])
def test_low_confidence_calls_are_no_call_and_still_vote(openset_run, open_set):
    _, model, _, test = openset_run
    base = predict(model, test, compound_key="pert_id", min_score=0, open_set=open_set)
    labels0 = base.obs["moa_pred"].astype(str).to_numpy()
    score = base.obs["moa_pred_score"].to_numpy()
    called0 = ~np.isin(labels0, ["unknown", "no call"])
    cut = float(np.median(score[called0]))  # withholds about half of the calls
    pred = predict(model, test, compound_key="pert_id", min_score=cut, open_set=open_set)
    labels = pred.obs["moa_pred"].astype(str).to_numpy()
    assert pred.uns["moa"]["params"]["min_score"] == cut
    assert "min_score" not in base.uns["moa"]["params"]
    changed = labels != labels0
    np.testing.assert_array_equal(changed, called0 & (score < cut))
    assert changed.any() and (labels[changed] == "no call").all()
    # nothing else moves: the scores, the top known MoA, the unknown calls
    np.testing.assert_array_equal(pred.obs["moa_pred_score"], score)
    np.testing.assert_array_equal(pred.obs["moa_pred_known"], base.obs["moa_pred_known"])
    np.testing.assert_array_equal(labels == "unknown", labels0 == "unknown")
    assert (pred.obs["moa_pred_set"].astype(str)[changed] == "").all()
    # an uncertain signature still votes for its compound, which is judged on its own
    # calibrated probability against the same cut-off
    calls0 = prediction_table(base, "compound_calls")
    calls = prediction_table(pred, "compound_calls")
    np.testing.assert_array_equal(calls["n_voting"], calls0["n_voting"])
    np.testing.assert_allclose(calls["moa_pred_score"], calls0["moa_pred_score"])
    was_called = ~calls0["moa_pred"].isin(["unknown", "no call"])
    unsure = was_called & (calls0["moa_pred_score"] < cut)
    assert ((calls["moa_pred"] == "no call") == (unsure | (calls0["moa_pred"] == "no call"))).all()
    assert (calls.loc[unsure, "moa_pred_known"] == calls0.loc[unsure, "moa_pred"]).all()
    # the default is the calibration's cut-off
    default = predict(model, test, compound_key=None, open_set=open_set)
    assert default.uns["moa"]["params"]["min_score"] == model.calibration.min_score


def test_predict_warns_when_queries_are_atlas_signatures(openset_run, caplog):
    _, model, adata, test = openset_run
    train = adata[adata.obs["split"] == "train"][:15].copy()
    with caplog.at_level(logging.WARNING, logger="moaspace"):
        predict(model, train, compound_key="pert_id")
    assert "15 of 15 query signatures are in the training atlas" in caplog.text
    caplog.clear()
    renamed = train.copy()
    renamed.obs["pert_id"] = "another compound"  # same names, other compound: not the same rows
    with caplog.at_level(logging.WARNING, logger="moaspace"):
        predict(model, renamed, compound_key="pert_id")
        predict(model, test, compound_key="pert_id")
    assert "in the training atlas" not in caplog.text


@pytest.mark.parametrize("label", ["unknown", "No call", " "])
def test_moa_labels_that_clash_with_abstentions_are_refused(label):
    adata = make_synthetic(n_moas=3, compounds_per_moa=4, n_genes=16, seed=1)
    split(adata, "compound", seed=0)
    moa = adata.obs["moa"].astype(str).to_numpy().copy()
    moa[moa == moa[0]] = label
    adata.obs["moa"] = moa
    if not label.strip():
        # a blank MoA is a missing one (#28): those compounds are unlabelled, not a class
        assert label not in MoaModel(adata).moas
        return
    with pytest.raises(InputError, match="name no mechanism"):
        MoaModel(adata)


# --------------------------------------------------------------------- hidden-layer open-set score


def test_model_hidden_prototypes_and_the_hidden_unknown_score(openset_run, tmp_path):
    from moaspace._core.neighbors import prototypes

    root, model, adata, test = openset_run
    # by hand: the prototype layer stacks the hidden layer's unit MoA centres and the
    # sphere-centroid discriminant of the whitened signatures (moaspace.model.prototypes),
    # over the training and validation rows, with the view weights fitted in training
    fit = adata[adata.obs["split"].isin(["train", "val"])]
    centres, _ = prototypes(model.embed(fit, layer="hidden"), fit.obs["moa"].astype(str),
                            model.moas)
    enc = model.net.encoder
    x = torch.as_tensor(model.align_genes(fit))
    with torch.no_grad():
        w = torch.nn.functional.normalize(enc.whiten(enc._clip(x)), dim=1).numpy()
    labels = fit.obs["moa"].astype(str).to_numpy()
    means = np.stack([w[labels == m].mean(axis=0) for m in model.moas])
    a_h, a_w = (float(v) for v in enc.view_weights)
    assert a_h > 0 and a_w > 0 and a_h + 2 * a_w == pytest.approx(1.0)
    expected = np.hstack([np.sqrt(a_h) * centres, np.sqrt(a_w) * means,
                          -np.sqrt(a_w) * 0.5 * (means ** 2).sum(axis=1, keepdims=True)])
    np.testing.assert_allclose(model.hidden_prototypes, expected, atol=1e-5)
    assert model.hidden_prototypes.shape == (len(model.moas),
                                             TINY["hidden_dims"][-1] + adata.n_vars + 1)
    loaded = MoaModel.load(root / "model")
    np.testing.assert_array_equal(loaded.hidden_prototypes, model.hidden_prototypes)
    # compared on validation with the others, whichever was chosen
    assert "hidden_prototype" in model.calibration.validation["auroc_pseudo_unknown"]
    before = model.calibration
    try:
        cal = model.calibrate(adata, score="hidden_prototype")
        assert cal.score == "hidden_prototype"
        pred = predict(model, test, compound_key=None)
        h = model.embed(test, layer="prototype")
        np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-5)
        want = 1 - (h @ model.hidden_prototypes.T).max(axis=1)
        np.testing.assert_allclose(pred.obs["moa_unknown_score"], want, atol=1e-5)
        # 'no call' (weak signatures, #28) takes precedence over 'unknown'
        flagged = (want > cal.threshold) & ~(pred.obs["moa_strength"].to_numpy()
                                             < (cal.min_strength or 0.0))
        np.testing.assert_array_equal(pred.obs["moa_pred"].astype(str) == "unknown", flagged)
    finally:
        model.calibration = before
    # one pass gives both layers, equal to the separate ones
    z2, h2 = model.embed_layers(test)
    np.testing.assert_array_equal(z2, model.embed(test))
    np.testing.assert_array_equal(h2, model.embed(test, layer="hidden"))
    with pytest.raises(InputError, match="layers"):
        model.embed(test, layer="penultimate")
    # an atlas whose MoAs no longer match its hidden prototypes is refused, not misread
    meta = loaded.atlas.uns["moaspace"]
    names = list(meta["hidden_prototype_moas"])
    meta["hidden_prototype_moas"] = names[::-1]
    with pytest.raises(MoaspaceError, match="changed after training"):
        _ = loaded.hidden_prototypes
    meta["hidden_prototype_moas"] = names
    # a model saved before hidden prototypes existed: the other scores, and a clear error
    hidden_cal = model.calibrate(adata, score="hidden_prototype")
    model.calibration = before
    del meta["hidden_prototypes"]
    assert loaded.hidden_prototypes is None
    # as such a model loads (test_model: old config.json)
    loaded.config = dataclasses.replace(loaded.config, predictor="knn")
    loaded.calibration = hidden_cal
    with pytest.raises(MoaspaceError, match="open-set score 'hidden_prototype' needs the "
                                            "model's prototype-layer prototypes"):
        predict(loaded, test, compound_key=None)
    old_cal = loaded.calibrate(adata)
    assert "hidden_prototype" not in old_cal.thresholds
    assert "hidden_prototype" not in old_cal.methods and "hidden_prototype" not in old_cal.logistic
    assert predict(loaded, test, compound_key=None).uns["moa"]["params"]["predictor"] == "knn"
    with pytest.raises(MoaspaceError, match="method 'hidden_prototype' needs the model's prototype-layer"):
        predict(loaded, test, compound_key=None, predictor="hidden_prototype")
    with pytest.raises(InputError, match="hidden"):
        loaded.calibrate(adata, score="hidden_prototype")
