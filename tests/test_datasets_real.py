"""The real LINCS consensus set shipped in the package: the loader, the CLI, and the identity of
its benchmark subset with `moaspace prepare --matrix ... --moa-labels ...` (what produced
benchmarks/results/benchmark_real_cv5.json)."""

from __future__ import annotations

import hashlib
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import moaspace as ms
from moaspace.cli import app
from moaspace.errors import InputError
from moaspace.pp import prepare


@pytest.fixture(scope="module")
def every_drug():
    return ms.datasets.lincs_consensus()


@pytest.fixture(scope="module")
def bench_set():
    return ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")


def test_every_drug_with_documented_keys(every_drug):
    a = every_drug
    assert a.shape == (1170, 978) and a.X.dtype == np.float32
    assert list(a.obs.columns) == ["sig_id", "pert_id", "cmap_name", "inchikey", "moa",
                                   "moa_set", "cell_iname", "pert_type"]
    assert (a.obs["pert_id"] == a.obs_names).all() and a.obs_names[0] == "DB00014"
    multi = a.obs["moa_set"].notna() & a.obs["moa"].isna()
    assert a.obs["moa_set"].notna().sum() == 981 and multi.sum() == 122
    assert a.obs["moa"].notna().sum() == 981 - 122
    single = a.obs["moa"].notna()
    assert (a.obs.loc[single, "moa"].astype(str) == a.obs.loc[single, "moa_set"].astype(str)).all()
    assert a.obs["moa_set"][multi].str.contains("|", regex=False).all()
    dex = a.obs[a.obs["cmap_name"] == "Dexamethasone"].iloc[0]
    assert dex["moa"] == "glucocorticoid receptor agonist"
    assert dex["inchikey"] == "UREBDLICKHMUKA-CXSFZGCWSA-N"
    assert a.var.index[0] == "16" and a.var.loc["16", "gene_symbol"] == "AARS"
    assert a.var.loc["1831", "gene_symbol"] == "TSC22D3"  # GILZ, the textbook GR target
    assert np.isfinite(a.X).all() and 3 < a.X.std() < 4


def test_benchmark_subset_is_what_prepare_gives(bench_set):
    """X (bit for bit), obs_names and moa of the 519 drugs: the prepare command of
    docs/benchmarks.md on the shipped files."""
    paths = ms.datasets.lincs_consensus_paths()
    ref = prepare(paths["matrix"], moa_labels=paths["moa_labels"], min_sigs_per_compound=1,
                  min_compounds_per_moa=5, times=None, progress=False, multi_moa="drop")
    assert bench_set.shape == ref.shape == (519, 978)
    assert list(bench_set.obs_names) == list(ref.obs_names)
    assert list(bench_set.var_names) == list(ref.var_names)
    assert (bench_set.var["gene_symbol"] == ref.var["gene_symbol"]).all()
    np.testing.assert_array_equal(bench_set.X, ref.X)
    assert bench_set.obs["moa"].astype(str).tolist() == ref.obs["moa"].astype(str).tolist()
    assert bench_set.obs["cmap_name"].tolist() == ref.obs["cmap_name"].tolist()
    assert bench_set.obs["moa"].nunique() == 44
    steps = bench_set.uns["moaspace"]["dataset"]["filters"]
    assert steps["compounds"].tolist() == [1170, 1048, 859, 519]


def test_shipped_files_are_the_shared_ones(shared_data):
    """Byte-identical to ../shared/data/real_consensus (the benchmark's input) and to the
    checksums in the package's PROVENANCE.md."""
    paths = ms.datasets.lincs_consensus_paths()
    provenance = paths["provenance"].read_text()
    for key in ("matrix", "moa_labels", "genes"):
        digest = hashlib.sha256(paths[key].read_bytes()).hexdigest()
        assert f"{digest}  {paths[key].name}" in provenance, key
        shared = shared_data / "real_consensus" / paths[key].name
        assert hashlib.sha256(shared.read_bytes()).hexdigest() == digest, key


def test_filters_are_orthogonal():
    kept = ms.datasets.lincs_consensus(min_compounds_per_moa=5)  # multi-MoA drugs kept
    assert kept.n_obs == 519 + 122 and kept.obs["moa"].isna().sum() == 122
    no_multi = ms.datasets.lincs_consensus(multi_moa="drop")  # drugs without a MoA kept
    assert no_multi.n_obs == 1170 - 122 and no_multi.obs["moa_set"].isna().sum() == 189
    with pytest.raises(InputError, match="multi_moa must be one of"):
        ms.datasets.lincs_consensus(multi_moa="first")
    with pytest.raises(InputError, match="min_compounds_per_moa must be >= 1"):
        ms.datasets.lincs_consensus(min_compounds_per_moa=0)


def test_h5ad_round_trip_keeps_missing_moas(every_drug, tmp_path):
    ms.pp.write_h5ad(every_drug, tmp_path / "all.h5ad")
    back = ad.read_h5ad(tmp_path / "all.h5ad")
    assert back.obs["moa"].isna().sum() == 311 and back.obs["moa_set"].isna().sum() == 189
    np.testing.assert_array_equal(back.X, every_drug.X)


def test_cli_dataset_writes_the_benchmark_set(bench_set, tmp_path):
    out = tmp_path / "real.h5ad"
    res = CliRunner().invoke(app, ["dataset", "lincs-consensus", "--min-compounds-per-moa", "5",
                                   "--multi-moa", "drop", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "519" in res.output and "44" in res.output
    back = ms.pp.read_h5ad(out)
    np.testing.assert_array_equal(back.X, bench_set.X)
    assert list(back.obs_names) == list(bench_set.obs_names)
    res = CliRunner().invoke(app, ["dataset", "lincs", "--out", str(tmp_path / "x.h5ad")])
    assert res.exit_code == 2 and "unknown data set 'lincs'" in res.output
    res = CliRunner().invoke(app, ["dataset", "lincs-consensus", "--multi-moa", "first",
                                   "--out", str(tmp_path / "x.h5ad")])
    assert res.exit_code == 1 and "multi_moa must be one of" in res.output
    assert not (tmp_path / "x.h5ad").exists()


def test_committed_real_benchmark_used_these_519_drugs():
    """Every record of the README's real row tested 519 compounds in 44 MoAs."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "benchmark_real_cv5.json"
    records = pd.DataFrame(json.loads(path.read_text()))
    assert (records["n_test"] == 519).all()


def test_shipped_signatures_carry_known_biology(bench_set):
    """Real biology in the shipped data, with no ../shared: glucocorticoid receptor agonists
    induce TSC22D3 (GILZ), topoisomerase inhibitors the p53 targets CDKN1A and SESN1 (class
    mean minus the all-drug mean, rank by |change| of 978), and drugs of one MoA are more
    alike than drugs of different MoAs."""
    X, moa = bench_set.X, bench_set.obs["moa"].astype(str).to_numpy()
    symbols = bench_set.var["gene_symbol"].to_numpy()

    def rank_and_sign(cls, gene):
        delta = X[moa == cls].mean(axis=0) - X.mean(axis=0)
        ranks = np.argsort(-np.abs(delta)).argsort() + 1
        i = int(np.flatnonzero(symbols == gene)[0])
        return int(ranks[i]), float(np.sign(delta[i]))

    assert rank_and_sign("glucocorticoid receptor agonist", "TSC22D3") == (1, 1.0)
    for gene in ("CDKN1A", "SESN1"):
        rank, sign = rank_and_sign("topoisomerase inhibitor", gene)
        assert rank <= 30 and sign == 1.0, gene
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = unit @ unit.T
    same = moa[:, None] == moa[None, :]
    np.fill_diagonal(same, False)
    assert sim[same].mean() > sim[moa[:, None] != moa[None, :]].mean() + 0.04
