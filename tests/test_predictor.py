"""One predictor end to end: what training early-stops on and reports, what `predict`
calls with and what calibration fits on are the same predictor, and the calibration
rows are never rows its prototypes saw; unit tests of the prototype math, the input
whitening and the candidate choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _synthetic import make_synthetic
from moaspace.errors import InputError
from moaspace.model import MoaModel
from moaspace.model.data import InMemoryRows
from moaspace.model.module import macro_f1
from moaspace.model.predictor import crossfit_cosines, fit_predictor
from moaspace.model.prototypes import (
    ViewSums,
    fit_view_weights,
    stacked_prototypes,
    unit_rows,
    view_scores,
)
from moaspace.model.train import CandidateRun, keep_best
from moaspace.model.whitening import fit_whitening
from moaspace.pp import split
from moaspace.tl import predict

TINY = {"hidden_dims": (64, 32), "embedding_dim": 16}
TRAIN = {"batch_size": 64, "progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def adata():
    return split(make_synthetic(n_moas=5, compounds_per_moa=8, n_genes=48, seed=3),
                 "compound", seed=0)


def _predict_val_f1(model, adata) -> float:
    code = {m: i for i, m in enumerate(model.moas)}
    val = adata[adata.obs["split"] == "val"]
    pred = predict(model, val, compound_key=None, open_set=False)
    assert pred.uns["moa"]["params"]["predictor"] == model.config.predictor
    return macro_f1(val.obs["moa"].astype(str).map(code).to_numpy(),
                    pred.obsm["moa_scores"].argmax(1))


@pytest.mark.parametrize("predictor", ["knn", "prototype", "hidden_prototype"])
def test_reported_f1_early_stopping_and_predict_agree(adata, predictor):
    """Training's reported validation F1, the early-stopping score of the epoch kept and
    `predict`'s macro-F1 on the same validation rows are one number, for every predictor
    (prototypes of the training rows, as early stopping fits them)."""
    model = MoaModel(adata, **TINY, predictor=predictor, average_best=1,
                     refit_prototypes=False)
    out = model.train(max_epochs=4, seed=0, **TRAIN)
    early_stopping = model.history[model.best_epoch]["val_f1"]
    assert out["best_val_f1"] == pytest.approx(early_stopping, abs=1e-12)
    assert out["final_val_f1"] == pytest.approx(early_stopping, abs=1e-9)
    assert _predict_val_f1(model, adata) == pytest.approx(out["final_val_f1"], abs=1e-9)
    assert model.config.input_whitening in ("on", "off")  # the candidate kept, recorded


def test_calibration_rows_never_overlap_prototype_rows(adata):
    """Default (refit on train + val): the validation rows are calibrated on cross-fitted
    scores (each fold by prototypes that never saw it), the record says which rows the
    shipped prototypes saw, and calibrating again on those rows is refused."""
    model = MoaModel(adata, **TINY)
    model.train(max_epochs=3, seed=0, **TRAIN)
    val = adata[adata.obs["split"] == "val"]
    rows = model.prototype_rows
    assert rows["splits"] == ["train", "val"]
    assert sorted(rows["val_signatures"]) == sorted(val.obs_names)
    assert model.calibration.validation["scored_by"].startswith("cross-fitted")
    fitted = model.calibration
    # calibrating again on the validation split cross-fits it the same way
    again = model.calibrate(adata, split="val")
    assert again.thresholds == pytest.approx(fitted.thresholds, abs=1e-6)
    assert again.validation["hidden_prototype"]["ece_after"] == pytest.approx(
        fitted.validation["hidden_prototype"]["ece_after"], abs=1e-9)
    # without the rows they were fitted on, the in-sample rows are refused
    with pytest.raises(InputError, match="prototypes were fitted on"):
        model.calibrate(val.copy(), split=None)
    # compounds the prototypes never saw are fine
    model.calibrate(adata, split="test")


def test_crossfit_scores_each_fold_with_prototypes_that_never_saw_it(adata):
    model = MoaModel(adata, **TINY, refit_prototypes=False)
    model.train(max_epochs=2, seed=0, **TRAIN)
    x = InMemoryRows(np.asarray(adata.X, dtype=np.float32))
    codes = adata.obs["moa"].astype(str).map({m: i for i, m in enumerate(model.moas)})
    codes = codes.fillna(-1).astype(int).to_numpy()
    split_ = adata.obs["split"].to_numpy()
    train, val = np.flatnonzero(split_ == "train"), np.flatnonzero(split_ == "val")
    groups = adata.obs["pert_id"].astype(str).to_numpy()[val]
    weights = model.predictor_of("hidden_prototype").view_weights
    cos, folds = crossfit_cosines(model.net, x, codes, train, val, groups, len(model.moas),
                                  weights)
    assert sorted(np.concatenate(folds)) == list(range(len(val)))
    for fold in folds:
        # no compound of a fold is in another fold
        assert not set(groups[fold]) & set(np.delete(groups, fold))
        fitted_on = np.union1d(train, np.delete(val, fold))
        assert not set(val[fold]) & set(fitted_on)
        explicit = fit_predictor("hidden_prototype", model.net, x, codes, fitted_on,
                                 len(model.moas), view_weights=weights)
        want = explicit.cosines(explicit.features(model.net, x, val[fold]))
        np.testing.assert_allclose(cos[fold], want, atol=1e-5)
    # scored by prototypes that saw the fold, the same rows look different (in-sample)
    seen = fit_predictor("hidden_prototype", model.net, x, codes, np.union1d(train, val),
                         len(model.moas), view_weights=weights)
    assert not np.allclose(cos, seen.cosines(seen.features(model.net, x, val)), atol=1e-5)


def test_stacked_prototype_score_is_the_documented_sum():
    rng = np.random.default_rng(0)
    hidden, whitened = rng.normal(size=(30, 8)), rng.normal(size=(30, 12))
    codes = np.repeat(np.arange(3), 10)
    sums = ViewSums(3, 8, 12)
    sums.add(hidden, whitened, codes)
    s_h, s_w = view_scores(hidden, whitened, sums.centres())
    a_h, a_w = fit_view_weights(s_h, s_w, 0.5)
    assert a_h + 2 * a_w == pytest.approx(1.0)
    feats = np.hstack([np.sqrt(a_h) * unit_rows(hidden), np.sqrt(a_w) * unit_rows(whitened),
                       np.full((30, 1), np.sqrt(a_w))])
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-12)
    got = feats @ stacked_prototypes(sums.centres(), (a_h, a_w)).T
    np.testing.assert_allclose(got, a_h * s_h + a_w * s_w, atol=1e-5)
    # sums add up like one pass over all rows
    half = ViewSums(3, 8, 12)
    half.add(hidden[::2], whitened[::2], codes[::2])
    rest = ViewSums(3, 8, 12)
    rest.add(hidden[1::2], whitened[1::2], codes[1::2])
    np.testing.assert_allclose((half + rest).centres()[1], sums.centres()[1])


def test_whitening_divides_out_the_within_class_covariance():
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(10, 10))
    codes = np.repeat(np.arange(4), 500)
    means = rng.normal(scale=3, size=(4, 10))
    x = (means[codes] + rng.normal(size=(2000, 10)) @ mixing).astype(np.float32)
    fitted = fit_whitening(InMemoryRows(x), np.arange(2000), codes, shrinkage=0.0)
    white = ((x - fitted["mean"]) / fitted["scale"]) @ fitted["matrix"]
    resid = white - np.stack([white[codes == c].mean(0) for c in range(4)])[codes]
    np.testing.assert_allclose(np.cov(resid.T), np.eye(10), atol=0.05)
    shrunk = fit_whitening(InMemoryRows(x), np.arange(2000), codes, shrinkage=1.0)
    # full shrinkage: a scaled identity of the correlation (only per-gene scaling)
    np.testing.assert_allclose(shrunk["matrix"], np.eye(10), atol=1e-5)


def test_keep_best_takes_the_highest_and_the_first_on_a_tie():
    runs = [CandidateRun("off", 0.5, None, 1), CandidateRun("on", 0.5, None, 1)]
    notes: dict = {}
    assert keep_best(runs, notes).name == "off"
    assert notes["input_candidates"] == {"off": 0.5, "on": 0.5}
    runs.append(CandidateRun("on2", 0.6, None, 1))
    assert keep_best(runs, {}).name == "on2"


def test_torch_scores_are_the_cosines_predict_softmaxes(adata):
    model = MoaModel(adata, **TINY)
    model.train(max_epochs=2, seed=0, **TRAIN)
    query = adata[adata.obs["split"] == "test"]
    pred = predict(model, query, open_set=False)
    predictor = model.predictor
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(query.X, dtype=np.float32))
        cos = predictor.torch_scores(model.net.eval(), x).numpy()
    softmax = np.exp(cos / 0.1) / np.exp(cos / 0.1).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax, pred.obsm["moa_scores"], atol=1e-5)


def test_old_names_still_work_and_warn(adata):
    from moaspace.model import MoaModule, MoaTrainingPlan

    model = MoaModel(adata, **TINY, input_whitening="off")
    model.train(max_epochs=1, seed=0, **TRAIN)
    query = adata[adata.obs["split"] == "test"]
    with pytest.warns(DeprecationWarning, match="predictor="):
        old = predict(model, query, method="knn", compound_key=None)
    new = predict(model, query, predictor="knn", compound_key=None)
    np.testing.assert_array_equal(old.obsm["moa_scores"], new.obsm["moa_scores"])
    with pytest.warns(DeprecationWarning, match="atlas"):
        assert model.reference is model.atlas
    with pytest.warns(DeprecationWarning, match="MoaTrainingPlan"):
        plan = MoaModule(model.module, None, lr=1e-3, weight_decay=0.0, warmup_epochs=1,
                         batch_size=8, seed=0, sampling="none", knn_k=5, patience=1)
    assert isinstance(plan, MoaTrainingPlan)


def test_predict_key_added_keeps_both_predictions(adata):
    from moaspace.tl import prediction_table

    model = MoaModel(adata, **TINY, input_whitening="off")
    model.train(max_epochs=1, seed=0, **TRAIN)
    query = adata[adata.obs["split"] == "test"].copy()
    first = predict(model, query)
    both = predict(model, first, predictor="knn", key_added="knn_run")
    assert both.uns["moa"]["params"]["predictor"] == model.config.predictor
    assert both.uns["knn_run"]["params"]["predictor"] == "knn"
    for key, prefix in (("moa", "moa"), ("knn_run", "knn_run")):
        assert f"{prefix}_pred" in both.obs and f"X_{prefix}" in both.obsm
        calls = prediction_table(both, "compound_calls", key=key)
        # grouped by the compound column the model was trained with (its key registry)
        assert sorted(calls.index) == sorted(query.obs[model.keys["compound"]].unique())
    np.testing.assert_array_equal(both.obs["moa_pred"], first.obs["moa_pred"])
    with pytest.raises(InputError, match="no moaspace prediction"):
        prediction_table(both, key="nope")


def test_whitening_is_fitted_on_the_clipped_values_it_whitens():
    """A gene far beyond the clip in one class (GILZ at z 12-40 in GR agonists) must keep
    its sign in that class's whitened mean: the map is fitted on the clipped z-scores the
    encoder whitens, not on raw ones."""
    rng = np.random.default_rng(2)
    codes = np.repeat(np.arange(3), 200)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    x[codes == 0, 0] += rng.uniform(25, 85, size=200).astype(np.float32)  # up, beyond clip
    x[codes == 1, 0] += 2.0
    clipped = np.clip(x, -10, 10)
    fitted = fit_whitening(InMemoryRows(x), np.arange(600), codes, shrinkage=0.5, clip=10.0)
    same = fit_whitening(InMemoryRows(clipped), np.arange(600), codes, shrinkage=0.5)
    for key in ("mean", "scale", "matrix"):
        np.testing.assert_allclose(fitted[key], same[key], rtol=1e-5, atol=1e-6)
    white = ((clipped - fitted["mean"]) / fitted["scale"]) @ fitted["matrix"]
    assert white[codes == 0, 0].mean() > 0 > white[codes == 2, 0].mean()


def test_save_writes_every_file_of_the_model_directory_under_checksums(adata, tmp_path):
    """save() writes the raw atlas too (raw_atlas.h5ad, checksummed in config.json); a model
    loaded and saved again carries it along."""
    import json

    from moaspace.model._save import RAW_ATLAS_FILE

    model = MoaModel(adata, **TINY, input_whitening="off")
    model.train(max_epochs=1, seed=0, **TRAIN)
    model.save(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert RAW_ATLAS_FILE in config["files"]
    loaded = MoaModel.load(tmp_path / "a")
    raw = loaded.raw_atlas
    assert list(raw.obs_names) == list(model.atlas.obs_names)
    np.testing.assert_array_equal(raw.X, np.asarray(adata[model.atlas.obs_names].X))
    loaded.save(tmp_path / "b")
    assert (tmp_path / "b" / RAW_ATLAS_FILE).read_bytes() == (
        tmp_path / "a" / RAW_ATLAS_FILE).read_bytes()
