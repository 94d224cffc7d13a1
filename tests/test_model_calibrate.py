"""Calibrating a trained model (MoaModel.calibrate, `moaspace calibrate`) and its
calibration.json in the model directory."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from moaspace.cli import app
from moaspace.errors import InputError
from moaspace.model import MoaModel
from moaspace.pp._prepare import write_h5ad

# ------------------------------------------------------------------------------- model calibration


def test_model_dir_round_trips_calibration(openset_run):
    root, model, _, _ = openset_run
    assert (root / "model" / "calibration.json").is_file()
    config = json.loads((root / "model" / "config.json").read_text())
    assert "calibration.json" in config["files"]
    loaded = MoaModel.load(root / "model")
    assert loaded.calibration.to_dict() == model.calibration.to_dict()


def test_calibrate_refit_and_bad_input(openset_run):
    _, model, adata, _ = openset_run
    before = model.calibration
    assert before.score == "hidden_prototype"  # score="auto" on a model with a prototype layer
    try:
        cal = model.calibrate(adata, score="pseudo_unknown")
        aurocs = cal.validation["auroc_pseudo_unknown"]
        assert "hidden_prototype" in aurocs and cal.score == max(aurocs, key=aurocs.get)
        cal = model.calibrate(adata, target_false_unknown=0.1, score="knn")
        assert cal.score == "knn" and cal.target_false_unknown == 0.1
        assert cal.validation["false_unknown_rate"]["knn"] <= 0.1
        no_val = adata[adata.obs["split"] != "val"].copy()
        with pytest.raises(InputError, match="no rows with obs\\['split'\\] == 'val'"):
            model.calibrate(no_val)
        only_unknown = adata[adata.obs["split"] == "test"].copy()
        held = adata.uns["moaspace"]["split"]["test_only_moas"]
        only_unknown = only_unknown[only_unknown.obs["moa"].isin(held)].copy()
        with pytest.raises(InputError, match="known MoA"):
            model.calibrate(only_unknown, split=None)
    finally:
        model.calibration = before


def test_cli_calibrate_rewrites_the_calibration(openset_run, tmp_path):
    root, _, adata, _ = openset_run
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.pt", "atlas.h5ad", "raw_atlas.h5ad", "calibration.json", "config.json"):
        (model_dir / name).write_bytes((root / "model" / name).read_bytes())
    write_h5ad(adata, tmp_path / "data.h5ad")
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", str(model_dir), str(tmp_path / "data.h5ad"),
                              "--target-false-unknown", "0.2", "--score", "energy"])
    assert res.exit_code == 0, res.output
    loaded = MoaModel.load(model_dir)  # checksums in config.json match the new file
    assert loaded.calibration.score == "energy"
    assert loaded.calibration.target_false_unknown == 0.2
    assert loaded.calibration.validation["false_unknown_rate"]["energy"] <= 0.2
    before = (model_dir / "calibration.json").read_bytes()
    res = runner.invoke(app, ["calibrate", str(model_dir), str(tmp_path / "data.h5ad"),
                              "--split", "train"])  # no held-out rows there: clear error
    assert res.exit_code == 1 and "in the training atlas" in res.output, res.output
    assert (model_dir / "calibration.json").read_bytes() == before
    res = runner.invoke(app, ["calibrate", str(model_dir), str(tmp_path / "data.h5ad"),
                              "--target-false-unknown", "1.5"])
    assert res.exit_code == 2


def test_calibrating_on_training_compounds_warns_and_names_them(openset_run, caplog):
    _, model, adata, _ = openset_run
    before = model.calibration
    try:
        atlas = set(model.atlas.obs_names)
        train = adata[adata.obs["split"] == "train"]
        # other signatures of training compounds: same compounds, new signature ids
        other = train[:40].copy()
        other.obs_names = [f"new_{i}" for i in range(other.n_obs)]
        assert not set(other.obs_names) & atlas
        with caplog.at_level(logging.WARNING, logger="moaspace"):
            model.calibrate(other, split=None)
        assert "also in the training atlas" in caplog.text
        assert other.obs["pert_id"].astype(str).iloc[0] in caplog.text
        # a signature id of the atlas that names another compound is not the same signature
        # (held-out test compounds: the validation rows are the prototypes' own after the
        # refit, test_predictor.py)
        val = adata[adata.obs["split"] == "test"].copy()
        names = list(val.obs_names)
        names[0] = sorted(atlas)[0]
        val.obs_names = names
        model.calibrate(val, split=None)
        with pytest.raises(InputError, match="in the training atlas"):
            model.calibrate(train[:20].copy(), split=None)
        no_compound = val.copy()
        del no_compound.obs["pert_id"]
        with pytest.raises(InputError, match="pert_id"):
            model.calibrate(no_compound, split=None)
    finally:
        model.calibration = before


def test_calibrate_reads_tas_from_the_named_column(openset_run):
    _, model, adata, _ = openset_run
    before = model.calibration
    try:
        renamed = adata.copy()
        renamed.obs["activity"] = renamed.obs.pop("tas")
        assert "tas_coverage" not in model.calibrate(renamed).validation
        assert "tas_coverage" in model.calibrate(renamed, tas_key="activity").validation
    finally:
        model.calibration = before
