"""#28 in the model: multi-MoA and unlabelled compounds in training, per-MoA probabilities
and prediction sets in predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import moaspace as ms
from _synthetic import make_synthetic, split_validation_compounds
from moaspace.model._config import ModelConfig
from moaspace.model.arcface import ArcFace
from moaspace.model.calibration._classwise import (
    fit_classwise,
    set_f1,
    sets_at,
    truth_matrix,
)
from moaspace.model.train import loss_compounds, loss_rows, training_data


def test_multi_positive_loss_is_arcface_cross_entropy_with_one_positive():
    torch.manual_seed(0)
    head = ArcFace(8, 5, margin=0.3, scale=20.0)
    z = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = F.cross_entropy(head(z, labels), labels, reduction="none")
    positives = F.one_hot(labels, 5).bool()
    assert torch.allclose(head.multi_positive_loss(z, positives), expected, atol=1e-5)


def test_multi_positive_loss_pulls_towards_every_listed_moa():
    torch.manual_seed(0)
    head = ArcFace(4, 3, margin=0.2, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4))
    between = F.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), dim=1)
    only_a = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    both = torch.tensor([[True, True, False]])
    # a signature between MoAs 0 and 1 fits the set {0, 1} better than one on MoA 0 alone
    assert head.multi_positive_loss(between, both) < head.multi_positive_loss(only_a, both)
    # and the other positive is not a negative: {0, 1} costs less than {0} from between
    assert (head.multi_positive_loss(between, both)
            < head.multi_positive_loss(between, torch.tensor([[True, False, False]])))


def _data_with_extras(seed: int = 0):
    adata = make_synthetic(seed=seed)
    obs = adata.obs
    val = split_validation_compounds(adata, 6, seed)
    cpds = np.array(sorted(obs["pert_id"].unique()))
    moa = obs["moa"].astype(object).copy()
    moa_set = moa.copy()
    train_cpds = [c for c in cpds if c not in val]
    multi, unlabelled = train_cpds[::9][:3], train_cpds[1::9][:3]
    for c in multi:
        rows = obs["pert_id"] == c
        other = "MoA_00 inhibitor" if moa[rows].iloc[0] != "MoA_00 inhibitor" else "MoA_01 inhibitor"
        moa_set[rows] = "|".join(sorted({moa[rows].iloc[0], other}))
        moa[rows] = np.nan
    for c in unlabelled:
        moa[obs["pert_id"] == c] = np.nan
        moa_set[obs["pert_id"] == c] = np.nan
    obs["moa"], obs["moa_set"] = moa, moa_set
    return adata, multi, unlabelled


def test_training_rows_include_multi_moa_and_unlabelled_compounds():
    adata, multi, unlabelled = _data_with_extras()
    model = ms.MoaModel(adata, input_whitening="on", hidden_dims=(32,), embedding_dim=8,
                          use_multi_moa=True)
    assert "nan" not in model.moas and len(model.moas) == 6
    # every multi-MoA and unlabelled compound has 12 training signatures: compound classes
    assert set(multi) | set(unlabelled) <= set(model.compounds)
    keys = dict(model.keys)
    data = training_data(adata, model._split, keys, model.moas, model.compounds,
                         model.config, seed=0)
    extra = np.setdiff1d(data.loss_idx, data.train_idx)
    pert = adata.obs["pert_id"].to_numpy()
    assert set(pert[extra]) == set(multi) | set(unlabelled)
    assert (data.moa[data.train_idx] >= 0).all() and (data.moa[extra] == -1).all()
    assert (data.compound[extra] >= 0).all()
    sets = data.batch_moa_sets(torch.as_tensor(extra))
    assert (sets.sum(dim=1)[np.isin(pert[extra], multi)] == 2).all()
    assert (sets.sum(dim=1)[np.isin(pert[extra], unlabelled)] == 0).all()
    # switched off, the rows are not used and the compounds are not classes
    off = ModelConfig(use_multi_moa=False, use_unlabelled=False)
    train = model._split == "train"
    m_rows, u_rows = loss_rows(adata.obs, train, keys, model.moas, off)
    assert not m_rows.any() and not u_rows.any()
    assert not set(loss_compounds(adata.obs, train, keys, model.moas, off)) & (
        set(multi) | set(unlabelled))


def test_training_with_extra_compounds_runs_and_predicts_sets():
    adata, _, _ = _data_with_extras()
    model = ms.MoaModel(adata, input_whitening="on", hidden_dims=(32,), embedding_dim=8,
                          use_multi_moa=True)
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu", seed=0)
    out = ms.tl.predict(model, adata[adata.obs["split"] == "val"].copy())
    proba = out.obsm["moa_proba"]
    assert proba.shape == (out.n_obs, len(model.moas))
    assert ((proba >= 0) & (proba <= 1)).all()
    sets = out.obs["moa_pred_set"].astype(str)
    called = ~out.obs["moa_pred"].isin(["unknown", "no call"])
    # the set holds the top call wherever a MoA is called, and is empty elsewhere
    assert all(p in s.split("|") for p, s in zip(out.obs["moa_pred"][called], sets[called],
                                                strict=True))
    assert (sets[~called] == "").all()
    table = ms.tl.prediction_table(out)
    assert "moa_pred_set" in table.columns


def test_set_threshold_adds_a_second_moa_only_when_it_pays():
    rng = np.random.default_rng(0)
    n, c = 400, 4
    codes = rng.integers(0, c, n)
    scores = rng.uniform(0, 0.2, (n, c))
    second = (codes + 1) % c
    scores[np.arange(n), codes] = 0.55
    scores[np.arange(n), second] = 0.45
    # world 1: the true MoA is always the top one: sets stay single
    one = fit_classwise(scores, truth_matrix(codes, c), np.arange(n))
    assert one["mean_set_size"] == pytest.approx(1.0)
    # world 2: the runner-up is right as often as the top: a set of two wins
    flip = rng.random(n) < 0.5
    truth_codes = np.where(flip, second, codes)
    two = fit_classwise(scores, truth_matrix(truth_codes, c), np.arange(n))
    assert two["mean_set_size"] > 1.5 and two["set_f1"] > two["set_f1_top1"] + 0.05


def test_set_f1_and_sets_at_by_hand():
    truth = np.array([[True, True, False], [True, False, False]])
    sets = np.array([[True, False, False], [True, True, False]])
    assert set_f1(sets, truth) == pytest.approx([2 / 3, 2 / 3])
    proba = np.array([[0.1, 0.6, 0.5]])
    scores = np.array([[0.9, 0.05, 0.05]])
    assert sets_at(proba, scores, 0.55).tolist() == [[True, True, False]]


def test_min_strength_cuts_where_calls_fall_to_chance():
    from moaspace.model.calibration._strength import choose_min_strength

    rng = np.random.default_rng(0)
    strength = rng.uniform(0.5, 3.0, 600)
    # below 1.0 the calls are right 2% of the time, above it 60%
    right = np.where(strength < 1.0, rng.random(600) < 0.02, rng.random(600) < 0.6)
    cut = choose_min_strength(strength, right, chance=0.05)
    assert cut is not None and 0.85 < cut < 1.15
    # weak calls right 25% of the time, 5 times chance: they keep their calls
    better = np.where(strength < 1.0, rng.random(600) < 0.25, rng.random(600) < 0.6)
    cut = choose_min_strength(strength, better, chance=0.05)
    assert cut is None or cut < 0.6


def test_weak_signatures_get_no_call_by_default():
    adata, _, _ = _data_with_extras()
    model = ms.MoaModel(adata, input_whitening="on", hidden_dims=(32,), embedding_dim=8)
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu", seed=0)
    model.calibration.min_strength = 0.5  # as a fit on weaker validation data would choose
    query = adata[adata.obs["split"] == "val"].copy()
    query.X[:5] *= 0.01  # five near-inert signatures
    out = ms.tl.predict(model, query)
    strength = out.obs["moa_strength"].to_numpy()
    assert (strength[:5] < 0.5).all() and (strength[5:] > 0.5).all()
    assert (out.obs["moa_pred"].astype(str).to_numpy()[:5] == "no call").all()
    assert not (out.obs["moa_pred"].astype(str).to_numpy()[5:] == "no call").any()
    off = ms.tl.predict(model, query, min_strength=0)
    assert not (off.obs["moa_pred"].astype(str) == "no call").any()


def test_multi_moa_rows_are_left_out_by_default():
    adata, multi, unlabelled = _data_with_extras()
    model = ms.MoaModel(adata, input_whitening="on", hidden_dims=(32,), embedding_dim=8)
    # default: multi-MoA compounds take no part; unlabelled ones feed the compound loss
    assert not set(multi) & set(model.compounds)
    assert set(unlabelled) <= set(model.compounds)
