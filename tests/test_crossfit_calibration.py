"""Cross-fitted calibration rows (ModelConfig.calibration_folds, moaspace.model._crossfit)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _openset import TINY
from moaspace.cli import app
from moaspace.errors import MoaspaceError
from moaspace.model import MoaModel
from moaspace.model._config import ModelConfig
from moaspace.model._crossfit import _top, fold_of_compounds, on_final_scale
from moaspace.pp._prepare import write_h5ad


def test_folds_are_stratified_by_moa_and_leave_single_compound_moas_whole():
    moa_of = pd.Series(list("aaaaabbbcdd"), index=[f"c{i}" for i in range(11)])
    fold = fold_of_compounds(moa_of, 3, seed=0)
    assert "c8" not in fold  # MoA "c" has one compound: every fold model must keep it
    for moa in "abd":
        members = moa_of.index[moa_of == moa]
        counts = np.bincount([fold[c] for c in members], minlength=3)
        assert counts.max() - counts.min() <= 1  # dealt in turn
        assert (counts > 0).sum() == min(3, len(members))
    assert fold == fold_of_compounds(moa_of, 3, seed=0)
    assert fold != fold_of_compounds(moa_of, 3, seed=1)


def test_fold_rows_are_put_on_the_final_models_scale_through_the_validation_rows():
    rng = np.random.default_rng(0)
    val_cos = rng.uniform(-0.2, 0.9, size=(200, 5))
    # the fold model scores the same validation rows 0.1 higher on every class, and its
    # confidences are a monotone distortion of the final model's
    fold_val_cos = val_cos + 0.1
    rows = rng.uniform(-0.2, 0.9, size=(50, 5)) + 0.1
    cos, top, shift = on_final_scale(rows, fold_val_cos, val_cos)
    assert shift == pytest.approx(0.1)
    np.testing.assert_allclose(1 - cos.max(axis=1), 1 - rows.max(axis=1) + 0.1)
    # softmax is unchanged by the shift: the confidences come from the quantile map, which
    # sends a fold validation row's confidence to (about) the final model's for that row
    _, val_top, _ = on_final_scale(fold_val_cos, fold_val_cos, val_cos)
    assert np.corrcoef(val_top, _top(val_cos))[0, 1] > 0.99
    assert np.all(np.diff(top[np.argsort(_top(rows))]) >= 0)  # monotone in the raw confidence
    assert top.min() >= _top(val_cos).min() and top.max() <= _top(val_cos).max()


def test_calibration_folds_must_be_auto_off_or_at_least_two():
    assert ModelConfig().calibration_folds == "auto"
    assert ModelConfig(calibration_folds="3").calibration_folds == 3
    for bad in (1, -2, "x", True, None):
        with pytest.raises(MoaspaceError, match="calibration_folds"):
            ModelConfig(calibration_folds=bad)


def test_auto_folds_where_validation_is_small_and_training_is_not():
    from moaspace.model._crossfit import AUTO_FOLDS, resolve_folds

    assert resolve_folds("auto", 62, 353) == AUTO_FOLDS == 5  # the real consensus set
    assert resolve_folds("auto", 48, 277) == 5  # its held-out-MoA split
    assert resolve_folds("auto", 794, 208) == 0  # the default simulator: many val rows
    assert resolve_folds("auto", 62, 150) == 0  # few training compounds: not measured
    assert resolve_folds(0, 10, 1000) == 0 and resolve_folds(3, 1000, 10) == 3


def test_auto_resolves_to_no_folds_on_the_small_test_world(openset_run):
    plain = openset_run[1]
    assert plain.config.calibration_folds == "auto"
    assert plain.calibration.validation["calibration_folds"] == {"setting": "auto", "folds": 0}


@pytest.fixture(scope="module")
def crossfit_model(openset_run):
    _, plain, adata, _ = openset_run
    model = MoaModel(adata, calibration_folds=2, **TINY)
    model.train(max_epochs=8, seed=0, progress_bar=False)
    return plain, model, adata


def test_training_with_folds_adds_the_left_out_compounds_to_the_calibration(crossfit_model):
    plain, model, adata = crossfit_model
    cal, before = model.calibration, plain.calibration
    record = cal.validation["crossfit"]
    obs = adata.obs[adata.obs["split"] == "train"]
    per_moa = obs.groupby("moa", observed=True)["pert_id"].nunique()
    eligible = obs["moa"].isin(per_moa.index[per_moa >= 2])
    assert record["folds"] == 2 and len(record["score_shifts"]) == 2
    assert record["n_rows"] == int(eligible.sum())  # every training signature they left out
    assert record["n_compounds"] == obs.loc[eligible, "pert_id"].nunique()
    assert cal.methods["hidden_prototype"] == "isotonic"
    assert 0 < record["accuracy"] < 1
    # the stored "after" (what the report plots) is the combined map's, out of fold
    summary = cal.validation["hidden_prototype"]
    assert summary["method"] == "isotonic" and 0 <= summary["ece_after"] <= 1
    assert 0 < summary["brier_out_of_fold_crossfit"] < 1 and summary["reliability_after"]
    assert "brier_out_of_fold_crossfit" not in before.validation["hidden_prototype"]
    assert "crossfit" not in before.validation
    # the rows join the confidence map only: it changes, nothing else does
    assert cal.isotonic["hidden_prototype"] != before.isotonic["hidden_prototype"]
    assert cal.thresholds == before.thresholds and cal.pooled == before.pooled
    assert cal.min_strength == before.min_strength and cal.score == before.score
    assert cal.min_score == before.min_score
    assert cal.validation["calibration_folds"] == {"setting": 2, "folds": 2}
    # the same network and atlas as without folds (the folds only add calibration rows)
    np.testing.assert_array_equal(model.embed(adata[:20]), plain.embed(adata[:20]))


def test_saved_model_keeps_the_folds_and_refits_without_them(crossfit_model, tmp_path):
    _, model, adata = crossfit_model
    model.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model"]["calibration_folds"] == 2
    loaded = MoaModel.load(tmp_path / "model")
    assert loaded.calibration.to_dict() == model.calibration.to_dict()
    # calibrate() has no fold models: it refits on the rows it is given
    cal = loaded.calibrate(adata)
    assert "crossfit" not in cal.validation


def test_cli_train_passes_calibration_folds(openset_run, tmp_path):
    _, _, adata, _ = openset_run
    small = adata[adata.obs["pert_id"].isin(adata.obs["pert_id"].unique()[:80])].copy()
    write_h5ad(small, tmp_path / "data.h5ad")
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "data.h5ad"), "--out",
                              str(tmp_path / "bad"), "--calibration-folds", "1",
                              "--max-epochs", "1"])
    assert res.exit_code != 0 and "calibration_folds" in res.output
    assert not (tmp_path / "bad" / "config.json").exists()
    res = runner.invoke(app, ["train", str(tmp_path / "data.h5ad"), "--out",
                              str(tmp_path / "bad2"), "--calibration-folds", "some",
                              "--max-epochs", "1"])
    assert res.exit_code != 0 and "--calibration-folds" in res.output
    assert not (tmp_path / "bad2" / "config.json").exists()
