"""``ModelConfig.multi_moa_classes`` (#28): MoAs that only multi-MoA training compounds list
become classes, with prototype-layer prototypes averaged over the rows whose set lists them."""

from __future__ import annotations

import numpy as np
import pytest

import moaspace as ms
from _synthetic import make_synthetic, split_validation_compounds
from moaspace.errors import MoaspaceError
from moaspace.model._atlas import atlas_classes
from moaspace.model._config import ModelConfig
from moaspace.model.predictor import view_sums
from moaspace.model.train import training_data

NEW = "MoA_new agonist"  # listed by multi-MoA compounds only


def _data(seed: int = 0):
    """Synthetic data; three training compounds of one MoA become ``"<moa>|MoA_new
    agonist"`` (no single-MoA compound carries the second MoA)."""
    adata = make_synthetic(seed=seed)
    obs = adata.obs
    split_validation_compounds(adata, 6, seed)
    moa = obs["moa"].astype(object).copy()
    moa_set = moa.copy()
    first = sorted(moa.unique())[0]
    train_of_first = sorted(set(obs.loc[(moa == first) & (obs["split"] == "train"), "pert_id"]))
    multi = train_of_first[:3]
    rows = obs["pert_id"].isin(multi)
    moa_set[rows] = f"{first}|{NEW}"
    moa[rows] = np.nan
    obs["moa"], obs["moa_set"] = moa, moa_set
    return adata, multi, first


def _model(adata, **kwargs):
    return ms.MoaModel(adata, input_whitening="on", hidden_dims=(32,), embedding_dim=8,
                       use_multi_moa=True, calibration_folds=0, **kwargs)


def test_needs_use_multi_moa():
    with pytest.raises(MoaspaceError, match="multi_moa_classes needs use_multi_moa"):
        ModelConfig(multi_moa_classes=True)
    assert ModelConfig(use_multi_moa=True, multi_moa_classes=True).multi_moa_classes


def test_multi_only_moa_is_a_class_only_with_the_flag():
    adata, _, _ = _data()
    assert NEW not in _model(adata).moas
    model = _model(adata, multi_moa_classes=True)
    assert NEW in model.moas and model.moas == sorted(model.moas)
    assert len(model.moas) == len(_model(adata).moas) + 1


def test_prototypes_average_the_multi_moa_rows_into_each_listed_class():
    adata, multi, first = _data()
    model = _model(adata, multi_moa_classes=True)
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu", seed=0)
    data = training_data(adata, model._split, dict(model.keys), model.moas, model.compounds,
                         model.config, seed=0)
    rows, sets = data.prototype_multi()
    pert = adata.obs["pert_id"].to_numpy()
    assert set(pert[rows]) == set(multi)
    new, old = model.moas.index(NEW), model.moas.index(first)
    assert sets[:, new].all() and sets[:, old].all() and sets.sum(axis=1).tolist() == [2] * len(rows)
    codes = data.moa.numpy()
    alone = view_sums(model.net, data.x, codes, data.train_idx, len(model.moas))
    both = view_sums(model.net, data.x, codes, data.train_idx, len(model.moas),
                     multi=(rows, sets))
    assert alone.counts[new] == 0 and both.counts[new] == len(rows)
    assert both.counts[old] == alone.counts[old] + len(rows)
    other = [i for i in range(len(model.moas)) if i not in (new, old)]
    np.testing.assert_array_equal(both.hidden[other], alone.hidden[other])
    # the stored prototype of the new class is a real direction, and the multi-MoA
    # compounds' own signatures rank it among their top two
    centres = np.asarray(model.hidden_prototypes)
    assert np.linalg.norm(centres[new]) > 0
    out = ms.tl.predict(model, adata[np.isin(pert, multi)].copy(), open_set=False)
    scores = np.asarray(out.obsm["moa_scores"])
    top2 = np.argsort(-scores, axis=1)[:, :2]
    assert (top2 == new).any(axis=1).mean() > 0.5


def test_predict_save_and_load_keep_the_extra_class(tmp_path):
    adata, _, _ = _data()
    model = _model(adata, multi_moa_classes=True)
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu", seed=0)
    query = adata[(adata.obs["split"] == "val").to_numpy()].copy()
    out = ms.tl.predict(model, query)
    assert list(out.uns["moa"]["classes"]) == list(model.moas)
    assert out.obsm["moa_proba"].shape == (query.n_obs, len(model.moas))
    assert NEW not in set(model.atlas.obs["moa"].astype(str))  # no atlas signature has it
    assert atlas_classes(model.atlas) == list(model.moas)
    model.save(tmp_path / "m")
    loaded = ms.MoaModel.load(tmp_path / "m")
    again = ms.tl.predict(loaded, query)
    assert list(again.uns["moa"]["classes"]) == list(model.moas)
    np.testing.assert_allclose(again.obsm["moa_scores"], out.obsm["moa_scores"], atol=1e-5)
    assert (again.obs["moa_pred"].astype(str) == out.obs["moa_pred"].astype(str)).all()
    # recalibrating on the training AnnData cross-fits the validation rows with the same
    # prototypes, multi-MoA rows included
    loaded.calibrate(adata)
    assert list(loaded.calibration.classes) == list(model.moas)


def test_an_atlas_with_a_moa_outside_its_stored_classes_is_refused():
    adata, _, _ = _data()
    model = _model(adata, multi_moa_classes=True)
    model.train(max_epochs=1, progress_bar=False, accelerator="cpu", seed=0)
    atlas = model.atlas.copy()
    atlas.obs["moa"] = atlas.obs["moa"].astype(str)
    atlas.obs.iloc[0, atlas.obs.columns.get_loc("moa")] = "stray MoA"
    with pytest.raises(MoaspaceError, match="stray MoA"):
        atlas_classes(atlas)


def test_cli_train_multi_moa_classes(tmp_path):
    from typer.testing import CliRunner

    from moaspace.cli import app
    from moaspace.pp._prepare import write_h5ad

    adata, _, _ = _data()
    write_h5ad(adata, tmp_path / "data.h5ad")
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "data.h5ad"), "--out", str(tmp_path / "m"),
                              "--multi-moa", "classes", "--max-epochs", "1",
                              "--input-whitening", "off", "--calibration-folds", "0"])
    assert res.exit_code == 0, res.output
    loaded = ms.MoaModel.load(tmp_path / "m")
    assert NEW in loaded.moas and loaded.config.multi_moa_classes
    res = runner.invoke(app, ["train", str(tmp_path / "data.h5ad"), "--out", str(tmp_path / "bad"),
                              "--multi-moa", "both", "--max-epochs", "1"])
    assert res.exit_code != 0 and "--multi-moa" in res.output
    assert not (tmp_path / "bad" / "config.json").exists()


def test_the_query_service_browses_atlas_moas_and_answers_with_every_class(tmp_path):
    from moaspace.serve._results import answer
    from moaspace.serve._state import ServiceState

    adata, multi, _ = _data()
    model = _model(adata, multi_moa_classes=True)
    model.train(max_epochs=1, progress_bar=False, accelerator="cpu", seed=0)
    model.save(tmp_path / "m")
    state = ServiceState(tmp_path / "m")
    # the map and MoA pages list the MoAs with atlas members; the new one has none
    assert NEW not in state.classes and len(state.classes) == len(model.moas) - 1
    assert {row["moa"] for row in state.moa_summary()} == set(state.classes)
    with pytest.raises(KeyError):
        state.moa_detail(NEW)
    query = adata[adata.obs["pert_id"].isin(multi).to_numpy()].copy()
    result = state.predict(query, "pert_id")
    payload = answer(result, state, "pert_id")
    tops = {t["moa"] for row in payload["signatures"] for t in row["top"]}
    assert NEW in tops
