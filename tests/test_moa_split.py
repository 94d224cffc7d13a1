"""The ``moa`` split: held-out MoAs stay out of training (API and CLI)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from _synthetic import make_synthetic
from moaspace.cli import app
from moaspace.pp._prepare import read_h5ad, write_h5ad
from moaspace.pp._split import split

# --------------------------------------------------------------------------------------- moa split


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.2, 0.34])
def test_moa_split_keeps_held_out_moas_out_of_training(seed, fraction):
    adata = make_synthetic(n_moas=10, compounds_per_moa=6, n_genes=8, seed=seed)
    split(adata, "moa", moa_fraction=fraction, seed=seed)
    rec = adata.uns["moaspace"]["split"]
    held = set(rec["test_only_moas"])
    assert len(held) == round(fraction * 10)
    s = adata.obs["split"].astype(str)
    assert not held & set(adata.obs.loc[s.isin(["train", "val"]), "moa"])
    assert held <= set(adata.obs.loc[s == "test", "moa"])
    assert set(adata.obs.loc[s == "test", "moa"]) - held  # seen MoAs are tested too


def test_cli_split_moa_fraction(tmp_path):
    adata = make_synthetic(n_moas=10, compounds_per_moa=5, n_genes=8, seed=0)
    write_h5ad(adata, tmp_path / "d.h5ad")
    res = CliRunner().invoke(app, ["split", str(tmp_path / "d.h5ad"), "--scheme", "moa",
                                   "--moa-fraction", "0.3", "--out", str(tmp_path / "s.h5ad")])
    assert res.exit_code == 0, res.output
    out = read_h5ad(tmp_path / "s.h5ad")
    held = set(out.uns["moaspace"]["split"]["test_only_moas"])
    assert len(held) == 3
    fit = out.obs["split"].astype(str).isin(["train", "val"])
    assert not held & set(out.obs.loc[fit, "moa"])
