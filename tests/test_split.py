"""Splits: no leakage across train/val/test, stratification, determinism, errors."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest

from _synthetic import make_synthetic
from moaspace.errors import InputError, MoaspaceError
from moaspace.pp._prepare import read_h5ad, write_h5ad
from moaspace.pp._split import check_split, cv_folds, split


@pytest.fixture
def adata():
    return make_synthetic(n_moas=5, compounds_per_moa=10, n_genes=16,
                          cells=("A549", "MCF7", "PC3", "VCAP"), sigs_per_compound_cell=2)


def _sets(a, column, value):
    return set(a.obs.loc[a.obs["split"] == value, column])


def test_compound_split_has_no_compound_leak_and_is_stratified(adata):
    split(adata, "compound", seed=1)
    s = adata.obs["split"]
    assert set(s.unique()) == {"train", "val", "test"}
    train, val, test = (_sets(adata, "pert_id", v) for v in ("train", "val", "test"))
    assert not train & test and not train & val and not val & test
    assert check_split(adata) == {"shared_compounds": 0, "shared_cells": 4,
                                  "train_val_shared_compounds": 0, "train_val_shared_cells": 4}
    for moa, frame in adata.obs.groupby("moa", observed=True):
        sides = set(frame["split"])
        assert {"train", "test", "val"} <= sides, moa
    # about test_size / val_size of the compounds
    n = adata.obs["pert_id"].nunique()
    assert len(test) == pytest.approx(0.2 * n, abs=1)
    assert len(val) == pytest.approx(0.1 * n, abs=5)
    rec = adata.uns["moaspace"]["split"]
    assert rec["scheme"] == "compound" and rec["seed"] == 1 and rec["leaky"] is False
    assert rec["n_signatures"]["test"] == int((s == "test").sum())


def test_small_moas_keep_both_sides():
    a = make_synthetic(n_moas=4, compounds_per_moa=2, n_genes=8, sigs_per_compound_cell=1)
    split(a, "compound", seed=0)
    for _, frame in a.obs.groupby("moa", observed=True):
        assert {"train", "test"} <= set(frame["split"])


def test_split_is_deterministic_and_order_independent(adata):
    a1 = split(adata, "compound", seed=3, copy=True)
    a2 = split(adata, "compound", seed=3, copy=True)
    assert (a1.obs["split"] == a2.obs["split"]).all()
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    a3 = split(adata[perm].copy(), "compound", seed=3)
    assert (a3.obs["split"] == a1.obs.loc[a3.obs_names, "split"]).all()
    a4 = split(adata, "compound", seed=4, copy=True)
    assert not (a4.obs["split"] == a1.obs["split"]).all()
    assert "split" not in adata.obs  # copy=True left the input alone


def test_cell_split_holds_out_whole_cells(adata):
    split(adata, "cell", seed=0)  # default: A549 (first reference cell present)
    assert adata.uns["moaspace"]["split"]["holdout_cells"] == ["A549"]
    test_cells = _sets(adata, "cell_iname", "test")
    assert test_cells == {"A549"}
    assert (adata.obs.loc[adata.obs["cell_iname"] == "A549", "split"] == "test").all()
    assert check_split(adata)["shared_cells"] == 0
    # validation holds out whole training cell lines too (what the test part asks)
    rec = adata.uns["moaspace"]["split"]
    assert rec["val_by"] == "cell" and len(rec["val_cells"]) == 1
    assert _sets(adata, "cell_iname", "val") == set(rec["val_cells"]) != {"A549"}
    assert check_split(adata)["train_val_shared_cells"] == 0
    assert _sets(adata, "cell_iname", "train") == {"MCF7", "PC3", "VCAP"} - set(rec["val_cells"])

    split(adata, "cell", holdout_cells="MCF7,PC3", seed=0)
    assert _sets(adata, "cell_iname", "test") == {"MCF7", "PC3"}
    # two training lines left: one is validation, one is training (never all of them)
    assert len(_sets(adata, "cell_iname", "val")) == 1 == len(_sets(adata, "cell_iname", "train"))


def test_cell_split_validation_by_cell_or_compound(adata):
    n = adata.n_obs
    # val_size of all signatures: 4 equal lines of 25% each, so 0.3 takes two lines
    split(adata, "cell", holdout_cells="A549", val_size=0.3, seed=1)
    assert len(adata.uns["moaspace"]["split"]["val_cells"]) == 2
    assert (adata.obs["split"] == "val").sum() == n // 2
    # the same split with validation by compound: compounds, not cell lines, held out
    split(adata, "cell", holdout_cells="A549", val_by="compound", seed=1)
    assert adata.uns["moaspace"]["split"]["val_by"] == "compound"
    assert check_split(adata)["train_val_shared_compounds"] == 0
    assert _sets(adata, "cell_iname", "val") == {"MCF7", "PC3", "VCAP"}
    # one training line only: validation falls back to compounds
    split(adata, "cell", holdout_cells="A549,MCF7,PC3", seed=1)
    assert adata.uns["moaspace"]["split"]["val_by"] == "compound"
    assert _sets(adata, "cell_iname", "val") == {"VCAP"} == _sets(adata, "cell_iname", "train")
    with pytest.raises(InputError, match="val_by='cell' is for the 'cell' scheme"):
        split(adata, "compound", val_by="cell")
    with pytest.raises(InputError, match="val_by must be"):
        split(adata, "cell", val_by="plate")


def test_unknown_holdout_cell_is_named(adata):
    with pytest.raises(InputError, match="HELA"):
        split(adata, "cell", holdout_cells=["HELA", "MCF7"])


def test_compound_cell_split(adata):
    split(adata, "compound+cell", holdout_cells=["VCAP"], seed=2)
    obs = adata.obs
    test = obs[obs["split"] == "test"]
    assert set(test["cell_iname"]) == {"VCAP"}
    fit = obs[obs["split"].isin(["train", "val"])]
    assert "VCAP" not in set(fit["cell_iname"])
    assert not set(fit["pert_id"]) & set(test["pert_id"])
    unused = obs[obs["split"] == "unused"]
    held = set(test["pert_id"])
    # unused = held-out compounds in training cells + training compounds in VCAP
    assert (unused["pert_id"].isin(held) ^ (unused["cell_iname"] == "VCAP")).all()
    assert len(unused) > 0


def test_moa_split_holds_out_whole_moas(adata):
    split(adata, "moa", moa_fraction=0.2, seed=0)
    rec = adata.uns["moaspace"]["split"]
    assert len(rec["test_only_moas"]) == 1
    fit_moas = set(adata.obs.loc[adata.obs["split"].isin(["train", "val"]), "moa"])
    assert not fit_moas & set(rec["test_only_moas"])
    assert check_split(adata)["shared_compounds"] == 0
    # the test part also holds unseen compounds of known MoAs (for open-set scoring)
    assert set(_sets(adata, "moa", "test")) - set(rec["test_only_moas"])


def test_random_split_is_flagged_leaky(adata, caplog):
    with caplog.at_level(logging.WARNING, logger="moaspace.pp._split"):
        split(adata, "random", seed=0)
    assert adata.uns["moaspace"]["split"]["leaky"] is True
    assert "leaky" in caplog.text or "overestimate" in caplog.text
    assert (adata.obs["split"] == "test").mean() == pytest.approx(0.2, abs=0.01)
    # validation is still carved by compound
    assert check_split(adata)["train_val_shared_compounds"] == 0


def test_errors(adata):
    with pytest.raises(MoaspaceError, match="unknown split scheme"):
        split(adata, "tissue")
    bad = adata.copy()
    del bad.obs["cell_iname"]
    with pytest.raises(InputError, match="cell_iname"):
        split(bad, "cell")
    with pytest.raises(InputError, match="test_size"):
        split(adata, "compound", test_size=1.5)
    with pytest.raises(InputError, match="holdout_cells"):
        split(adata, "compound", holdout_cells=["A549"])
    nolabel = adata.copy()
    nolabel.obs["moa"] = np.nan
    with pytest.raises(InputError, match="none of the .* signatures has a MoA label"):
        split(nolabel, "compound")
    # a row without moa whose compound has one elsewhere follows its compound
    one = adata.copy()
    one.obs["moa"] = one.obs["moa"].astype(object)
    one.obs.iloc[0, one.obs.columns.get_loc("moa")] = np.nan
    split(one, "moa", seed=0)
    same = one.obs["pert_id"] == one.obs["pert_id"].iloc[0]
    assert one.obs.loc[same, "split"].nunique() == 1


def test_split_survives_h5ad_round_trip(adata, tmp_path):
    split(adata, "compound+cell", holdout_cells=["A549"], seed=0)
    path = write_h5ad(adata, tmp_path / "s.h5ad")
    back = read_h5ad(path)
    assert (back.obs["split"].astype(str) == adata.obs["split"].astype(str)).all()
    assert list(back.uns["moaspace"]["split"]["holdout_cells"]) == ["A549"]


def test_cv_folds_test_every_compound_once_without_leaks(adata):
    folds = cv_folds(adata, 4, seed=1)
    assert len(folds) == 4
    pert = adata.obs["pert_id"].astype(str).to_numpy()
    moa = adata.obs["moa"].astype(str).to_numpy()
    tested = np.zeros(adata.n_obs, dtype=int)
    for labels in folds:
        assert set(labels) == {"train", "val", "test"}
        tested += labels == "test"
        parts = {p: set(pert[labels == p]) for p in ("train", "val", "test")}
        assert not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
        assert not parts["train"] & parts["val"]
        # stratified: every MoA is in each test fold and keeps training compounds
        assert set(moa[labels == "test"]) == set(moa) == set(moa[labels == "train"])
    assert (tested == 1).all()  # each signature (so each compound) is tested exactly once
    again = cv_folds(adata[::-1].copy(), 4, seed=1)  # row order does not matter
    order = np.argsort(adata[::-1].obs_names)
    for a, b in zip(folds, again, strict=True):
        np.testing.assert_array_equal(a[np.argsort(adata.obs_names)], b[order])
    assert any((a != b).any() for a, b in zip(folds, cv_folds(adata, 4, seed=2), strict=True))
    with pytest.raises(InputError, match="at least 2 folds"):
        cv_folds(adata, 1)


# --- multi-MoA and unlabelled compounds (#28) -----------------------------------------

def _with_extras(base, n_multi: int = 8, n_unlabelled: int = 6, moa_set: bool = True):
    """``base`` with multi-MoA and unlabelled compounds inserted in the middle of its rows
    (same cell lines): ``(augmented, mask of base rows)``; none: ``base`` with ``moa_set``."""
    if n_multi + n_unlabelled == 0:
        base = base.copy()
        base.obs["moa_set"] = base.obs["moa"].astype(object)
        return base, np.ones(base.n_obs, dtype=bool)
    extra = make_synthetic(n_moas=2, compounds_per_moa=(n_multi + n_unlabelled) // 2,
                           n_genes=base.n_vars, cells=tuple(sorted(set(base.obs["cell_iname"]))),
                           sigs_per_compound_cell=2, seed=9)
    extra.var_names = base.var_names
    moas = sorted(set(base.obs["moa"].astype(str)))
    cpds = sorted(set(extra.obs["pert_id"]))
    role = {c: ("multi" if i < n_multi else "unlabelled") for i, c in enumerate(cpds)}
    obs = extra.obs
    obs["pert_id"] = [f"X-{role[c]}-{c}" for c in obs["pert_id"]]
    obs["sig_id"] = [f"X{s}" for s in obs["sig_id"]]
    extra.obs_names = obs["sig_id"].to_numpy()
    pair = {c: "|".join(sorted({moas[i % len(moas)], moas[(i + 1) % len(moas)]}))
            for i, c in enumerate(sorted(set(obs["pert_id"])))}
    obs["moa"] = np.nan
    obs["moa_set"] = [pair[c] if "-multi-" in c else np.nan for c in obs["pert_id"]]
    base = base.copy()
    base.obs["moa"] = base.obs["moa"].astype(object)
    if moa_set:
        base.obs["moa_set"] = base.obs["moa"]
    else:
        del extra.obs["moa_set"]
    half = base.n_obs // 2
    out = ad.concat([base[:half], extra, base[half:]], merge="same")
    return out, ~out.obs_names.str.startswith("X")


@pytest.mark.parametrize(("scheme", "kwargs"), [
    ("compound", {}), ("moa", {"moa_fraction": 0.4}), ("cell", {}),
    ("cell", {"val_by": "compound"}), ("compound+cell", {"holdout_cells": "PC3"}),
    ("random", {}),
])
def test_extras_leave_the_single_moa_split_unchanged(adata, scheme, kwargs):
    """The single-MoA compounds get the same labels, for the same seed, with or without
    multi-MoA and unlabelled compounds beside them (their own random stream)."""
    aug, base_rows = _with_extras(adata)
    ref = split(_with_extras(adata, 0, 0)[0], scheme, seed=5, copy=True, **kwargs)
    got = split(aug, scheme, seed=5, copy=True, **kwargs)
    assert got.obs["split"][base_rows].tolist() == ref.obs["split"].tolist()
    plain = split(adata, scheme, seed=5, copy=True, **kwargs)  # no moa_set column at all
    assert plain.obs["split"].tolist() == ref.obs["split"].tolist()
    rec, rec0 = got.uns["moaspace"]["split"], ref.uns["moaspace"]["split"]
    for field in ("test_only_moas", "holdout_cells", "val_cells", "val_by"):
        assert rec.get(field) == rec0.get(field), field
    assert rec["n_compounds_by_group"] == {"single": 50, "multi": 8, "unlabelled": 6}
    s = got.obs["split"].astype(str)
    pert = got.obs["pert_id"].astype(str)
    multi, unlabelled = pert.str.contains("-multi-"), pert.str.contains("-unlabelled-")
    if scheme in ("compound", "moa"):
        assert check_split(got)["shared_compounds"] == 0
        assert check_split(got)["train_val_shared_compounds"] == 0
        assert {"train", "test"} <= set(s[multi])
    if scheme == "moa":
        held = set(rec["test_only_moas"])
        novel = got.obs["moa_set"][multi].map(lambda v: bool(held & set(v.split("|"))))
        assert (s[multi][novel] == "test").all() and novel.any()
    if scheme in ("cell", "compound+cell"):
        assert check_split(got)["shared_cells"] == 0
        held = set(rec["holdout_cells"]) | set(rec.get("val_cells", []))
        in_held = got.obs["cell_iname"].isin(held)
        assert (s[unlabelled & in_held] == "unused").all()
        assert (s[unlabelled & ~in_held] == "train").all()
    else:
        assert (s[unlabelled] == "train").all()


def test_multi_split_is_deterministic_and_order_free(adata):
    aug, _ = _with_extras(adata)
    a = split(aug, "compound", seed=2, copy=True)
    perm = np.random.default_rng(1).permutation(aug.n_obs)
    b = split(aug[perm].copy(), "compound", seed=2)
    assert (b.obs["split"] == a.obs.loc[b.obs_names, "split"]).all()
    c = split(aug, "compound", seed=3, copy=True)
    multi = aug.obs["pert_id"].str.contains("-multi-").to_numpy()
    assert (a.obs["split"][multi] != c.obs["split"][multi]).any()


def test_without_moa_set_column_missing_moa_is_unlabelled(adata):
    aug, base_rows = _with_extras(adata, moa_set=False)
    assert "moa_set" not in aug.obs
    got = split(aug, "compound", seed=0, copy=True)
    assert (got.obs["split"][~base_rows] == "train").all()
    assert got.uns["moaspace"]["split"]["n_compounds_by_group"]["unlabelled"] == 14


def test_cv_folds_with_extras(adata):
    aug, base_rows = _with_extras(adata)
    ref = cv_folds(_with_extras(adata, 0, 0)[0], 4, seed=1)
    got = cv_folds(aug, 4, seed=1)
    pert = aug.obs["pert_id"].astype(str).to_numpy()
    multi = np.char.find(pert.astype(str), "-multi-") >= 0
    unlabelled = np.char.find(pert.astype(str), "-unlabelled-") >= 0
    tested = np.zeros(aug.n_obs, dtype=int)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(g[base_rows], r)
        assert (g[unlabelled] == "train").all()
        tested += g == "test"
        parts = {p: set(pert[multi & (g == p)]) for p in ("train", "val", "test")}
        assert not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    assert (tested[multi] == 1).all() and (tested[unlabelled] == 0).all()
    assert any((g[multi] == "val").any() for g in got)
