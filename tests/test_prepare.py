"""prepare(): filters, joins, counts, gene selection, knockdowns, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moaspace.errors import InputError
from moaspace.io import read_moa_table
from moaspace.pp._prepare import prepare, read_h5ad, write_h5ad


def _expected_steps(siginfo: pd.DataFrame, min_sigs: int, min_cpds: int) -> dict[str, int]:
    """Recompute each filter's removals independently with pandas."""
    cp = siginfo[siginfo.pert_type == "trt_cp"]
    hiq = cp[cp.is_hiq == 1]
    timed = hiq[hiq.pert_time.isin([6, 24])]
    labelled = timed[timed.cmap_name != "mystery"]
    counts = labelled.pert_id.value_counts()
    enough = labelled[labelled.pert_id.isin(counts.index[counts >= min_sigs])]
    moa_of = {f"BRD-K0000000{i}": m for i, m in
              [(1, "M"), (2, "M"), (3, "M"), (4, "H"), (5, "H"), (6, "H"), (7, "E"), (8, "E")]}
    n_cpd = enough.groupby(enough.pert_id.map(moa_of)).pert_id.nunique()
    final = enough[enough.pert_id.map(moa_of).isin(n_cpd.index[n_cpd >= min_cpds])]
    return {
        "is_hiq": len(cp) - len(hiq), "time": len(hiq) - len(timed),
        "moa": len(timed) - len(labelled), "min_sigs": len(labelled) - len(enough),
        "min_cpds": len(enough) - len(final), "final": len(final),
    }


@pytest.mark.parametrize("min_cpds", [2, 3])
def test_filter_counts_match(tiny_lincs, min_cpds):
    p = tiny_lincs["paths"]
    adata = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                    min_compounds_per_moa=min_cpds, progress=False)
    steps = adata.uns["moaspace"]["prepare"]["filters"].set_index("step").T
    exp = _expected_steps(tiny_lincs["siginfo"], 10, min_cpds)
    assert steps["is_hiq == 1"]["removed_signatures"] == exp["is_hiq"]
    assert steps["pert_time in [6.0, 24.0]"]["removed_signatures"] == exp["time"]
    assert steps["compound has a MoA (moa_labels.csv)"]["removed_signatures"] == exp["moa"]
    assert steps[">= 10 signatures per compound"]["removed_signatures"] == exp["min_sigs"]
    assert steps[f">= {min_cpds} compounds per MoA"]["removed_signatures"] == exp["min_cpds"]
    assert adata.n_obs == exp["final"] > 0
    assert (min_cpds == 3) == ("EGFR inhibitor" not in set(adata.obs["moa"]))
    assert "rarely" not in set(adata.obs["cmap_name"])


def test_values_columns_and_genes(tiny_lincs):
    p = tiny_lincs["paths"]
    adata = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                    min_compounds_per_moa=2, progress=False)
    assert adata.X.dtype == np.float32
    assert adata.n_vars == tiny_lincs["n_landmark"] == 978
    for column in ("sig_id", "pert_id", "cmap_name", "moa", "cell_iname", "pert_dose",
                   "pert_time", "tas"):
        assert column in adata.obs.columns
    assert "gene_symbol" in adata.var.columns
    # values are exactly the matrix rows/columns selected
    si = tiny_lincs["siginfo"]
    cp_ids = si[si.pert_type == "trt_cp"].sig_id.tolist()
    rows = [cp_ids.index(s) for s in adata.obs_names]
    cols = [tiny_lincs["gene_ids"].index(g) for g in adata.var_names]
    np.testing.assert_array_equal(adata.X, tiny_lincs["X_cp"][np.ix_(rows, cols)])
    all_genes = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"],
                        p["moa_labels"], min_compounds_per_moa=2, genes="all", progress=False)
    assert all_genes.n_vars == 1000


def test_moa_from_compoundinfo_and_min_tas(tiny_lincs):
    p = tiny_lincs["paths"]
    a = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], None,
                min_compounds_per_moa=2, progress=False)
    b = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                min_compounds_per_moa=2, progress=False)
    assert a.obs["moa"].tolist() == b.obs["moa"].tolist()
    c = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                min_compounds_per_moa=1, min_sigs_per_compound=1, min_tas=0.5, progress=False)
    assert (c.obs["tas"] >= 0.5).all() and c.n_obs < b.n_obs + 20


def test_knockdowns(tiny_lincs):
    p = tiny_lincs["paths"]
    kd = prepare(p["gctx_xpr"], p["siginfo"], p["geneinfo"], pert_type="trt_xpr", times=None,
                 progress=False)
    assert sorted(kd.obs["target_gene"].unique()) == ["HDAC1", "MTOR", "TP53"]
    assert kd.n_obs == 12 and kd.n_vars == 978


def test_round_trip_h5ad(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    adata = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                    min_compounds_per_moa=2, progress=False)
    (tmp_path / "out").mkdir()
    out = write_h5ad(adata, tmp_path / "out" / "d.h5ad")
    back = read_h5ad(out)
    np.testing.assert_array_equal(back.X, adata.X)
    assert back.obs["moa"].tolist() == adata.obs["moa"].tolist()
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["d.h5ad"]
    pd.testing.assert_frame_equal(back.uns["moaspace"]["prepare"]["filters"],
                                  adata.uns["moaspace"]["prepare"]["filters"])


# --- bad input ----------------------------------------------------------------

def test_siginfo_missing_matrix_ids(tiny_lincs):
    p = tiny_lincs["paths"]
    si = pd.read_csv(p["siginfo"], sep="\t")
    dropped = si.sig_id.iloc[0]
    si.iloc[1:].to_csv(p["siginfo"], sep="\t", index=False)
    with pytest.raises(InputError, match=r"not in .*siginfo_beta.txt.*" + dropped.split(":")[0]):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                progress=False)


def test_siginfo_has_ids_absent_from_matrix(tiny_lincs):
    p = tiny_lincs["paths"]
    si = pd.read_csv(p["siginfo"], sep="\t")
    extra = si.iloc[[0]].copy()
    extra["sig_id"] = "GHOST_SIG:1"
    pd.concat([si, extra]).to_csv(p["siginfo"], sep="\t", index=False)
    with pytest.raises(InputError, match="GHOST_SIG:1"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                progress=False)


def test_duplicate_sig_ids_in_siginfo(tiny_lincs):
    p = tiny_lincs["paths"]
    si = pd.read_csv(p["siginfo"], sep="\t")
    pd.concat([si, si.iloc[[3]]]).to_csv(p["siginfo"], sep="\t", index=False)
    with pytest.raises(InputError, match="duplicated sig_id.*" + si.sig_id.iloc[3].split(":")[0]):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                progress=False)


def test_empty_selection_names_filter(tiny_lincs):
    p = tiny_lincs["paths"]
    with pytest.raises(InputError, match="after filter 'pert_time in \\[48.0\\]'"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                times=[48], progress=False)
    with pytest.raises(InputError, match=">= 50 signatures per compound"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                min_sigs_per_compound=50, progress=False)


def test_moa_table_problems(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"BRD-ID": ["BRD-K00000001"], "name": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"bad.csv.*lacks required columns.*moa"):
        read_moa_table(bad)
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"pert_id": ["BRD-X1", "BRD-X2"], "moa": ["a", "b"]}).to_csv(unknown, index=False)
    with pytest.raises(InputError, match="none of its 2 compound ids.*BRD-X1"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], unknown,
                progress=False)
    conflict = tmp_path / "conflict.csv"
    pd.DataFrame({"pert_id": ["A", "A"], "moa": ["a", "b"]}).to_csv(conflict, index=False)
    with pytest.raises(InputError, match="more than one MoA.*'A'"):
        read_moa_table(conflict)
    one = tmp_path / "one.csv"
    pd.DataFrame({"pert_id": [f"BRD-K0000000{i}" for i in range(1, 4)],
                  "moa": ["MTOR inhibitor"] * 3}).to_csv(one, index=False)
    with pytest.raises(InputError, match="only one MoA"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], one,
                min_compounds_per_moa=2, progress=False)


def test_gene_symbols_instead_of_ids(tiny_lincs, tmp_path):
    from moaspace.io import read_gctx, write_gctx

    p = tiny_lincs["paths"]
    gi = pd.read_csv(p["geneinfo"], sep="\t", dtype=str)
    a = read_gctx(p["gctx"])
    sym = dict(zip(gi.gene_id, gi.gene_symbol, strict=True))
    write_gctx(p["gctx"], a.X, a.obs_names, [sym[g] for g in a.var_names])
    with pytest.raises(InputError, match="look like gene symbols"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                progress=False)


def test_swapped_rows_and_columns(tiny_lincs):
    """A matrix whose signature ids sit in the row (gene) metadata."""
    import h5py

    p = tiny_lincs["paths"]
    with h5py.File(p["gctx"], "r+") as handle:
        rows = handle["/0/META/ROW/id"][()]
        cols = handle["/0/META/COL/id"][()]
        del handle["/0/META/ROW/id"], handle["/0/META/COL/id"]
        handle["/0/META/ROW/id"] = cols
        handle["/0/META/COL/id"] = rows
    with pytest.raises(InputError, match="swapped"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                progress=False)


def test_missing_files_and_columns(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    with pytest.raises(InputError, match="siginfo not found"):
        prepare(p["gctx"], tmp_path / "nope.txt", p["geneinfo"], p["compoundinfo"],
                p["moa_labels"])
    si = pd.read_csv(p["siginfo"], sep="\t").drop(columns=["cell_iname"])
    si.to_csv(p["siginfo"], sep="\t", index=False)
    with pytest.raises(InputError, match=r"siginfo lacks required columns \['cell_iname'\]"):
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"])


def test_shared_moa_table_csv_and_xlsx(shared_data):
    csv = read_moa_table(shared_data / "moa_labels.csv")
    xlsx = read_moa_table(shared_data / "Huang_MOA_label.xlsx")
    assert len(csv) == len(xlsx) > 2500
    assert csv.loc["BRD-K85606544", "moa"] == "EGFR-i"
    assert (csv["moa"].sort_index() == xlsx["moa"].sort_index()).all()


# --- groups: multi-MoA, rare-MoA, unlabelled (#28) ------------------------------------

def _labels_with(p, tmp_path, extra: list[tuple[str, str]]):
    """The tiny release's MoA table plus rows (pert_id, MoA cell)."""
    table = pd.read_csv(p["moa_labels"])
    more = pd.DataFrame([(pid, "x", moa) for pid, moa in extra], columns=table.columns)
    path = tmp_path / "labels_multi.csv"
    pd.concat([table, more]).to_csv(path, index=False)
    return path


def _text(values: pd.Series) -> list:
    """Values as text with missing ones as None (NaN != NaN in list comparisons)."""
    values = values.astype(object)
    return [None if pd.isna(v) else str(v) for v in values]


def _run(p, labels, **kwargs):
    return prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], labels,
                   progress=False, **kwargs)


@pytest.mark.parametrize("extra", [
    [("BRD-K00000009", "MTOR inhibitor|HDAC inhibitor")],
    [("BRD-K00000009", "MTOR inhibitor"), ("BRD-K00000009", " HDAC inhibitor")],
])
def test_multi_moa_kept_and_single_part_unchanged(tiny_lincs, tmp_path, extra):
    """Default multi_moa="keep": the multi-MoA compound joins with moa NaN and its sorted
    set; the single-MoA compounds and their moa are exactly what "drop" (and the release
    without the compound) gives."""
    p = tiny_lincs["paths"]
    labels = _labels_with(p, tmp_path, extra)
    kept = _run(p, labels, min_compounds_per_moa=2)
    dropped = _run(p, labels, min_compounds_per_moa=2, multi_moa="drop")
    before = _run(p, p["moa_labels"], min_compounds_per_moa=2)
    multi = kept.obs["pert_id"] == "BRD-K00000009"
    assert multi.sum() > 0 and kept.obs.loc[multi, "moa"].isna().all()
    assert (kept.obs.loc[multi, "moa_set"] == "HDAC inhibitor|MTOR inhibitor").all()
    single = kept[~multi.to_numpy()]
    for other in (dropped, before):
        assert list(single.obs_names) == list(other.obs_names)
        assert single.obs["moa"].tolist() == other.obs["moa"].tolist()
        np.testing.assert_array_equal(single.X, other.X)
    assert (single.obs["moa"] == single.obs["moa_set"]).all()
    groups = kept.uns["moaspace"]["prepare"]["groups"].set_index("group")
    assert groups.loc["multi-MoA", "compounds_kept"] == 1
    assert groups.loc["multi-MoA", "signatures_kept"] == multi.sum()
    gd = dropped.uns["moaspace"]["prepare"]["groups"].set_index("group")
    assert gd.loc["multi-MoA", "compounds_dropped"] == 1
    assert gd.loc["multi-MoA", "dropped_by"] == "multi_moa='drop': 1"
    steps = dropped.uns["moaspace"]["prepare"]["filters"].set_index("step")
    assert steps.loc["compound has one MoA (multi_moa='drop')", "removed_signatures"] == multi.sum()


def test_keep_unlabelled_and_rare_moas(tiny_lincs):
    """'mystery' has no MoA (kept with keep_unlabelled, moa and moa_set NaN); EGFR inhibitor
    has 2 compounds, rare at min_compounds_per_moa=3 (kept with keep_rare_moas); 'rarely'
    (5 signatures) fails min_sigs_per_compound whatever the flags."""
    p = tiny_lincs["paths"]
    base = _run(p, p["moa_labels"], min_compounds_per_moa=3)
    assert "EGFR inhibitor" not in set(base.obs["moa"])
    both = _run(p, p["moa_labels"], min_compounds_per_moa=3, keep_unlabelled=True,
                keep_rare_moas=True)
    names = both.obs["cmap_name"]
    unlabelled = (names == "mystery").to_numpy()
    assert unlabelled.any() and both.obs.loc[unlabelled, ["moa", "moa_set"]].isna().all().all()
    assert set(both.obs.loc[~unlabelled, "moa"]) == {"MTOR inhibitor", "HDAC inhibitor",
                                                     "EGFR inhibitor"}
    assert "rarely" not in set(names)
    # the groups' signatures add up and say who dropped what
    g = both.uns["moaspace"]["prepare"]["groups"].set_index("group")
    assert g["signatures_kept"].sum() == both.n_obs
    assert g.loc["unlabelled", "compounds_kept"] == 1
    assert g.loc["rare-MoA", "compounds_kept"] == 2
    assert g.loc["rare-MoA", "dropped_by"] == "min_sigs_per_compound: 1"
    g = base.uns["moaspace"]["prepare"]["groups"].set_index("group")
    assert g.loc["unlabelled", "dropped_by"] == "keep_unlabelled=False: 1"
    assert g.loc["rare-MoA", "dropped_by"] == ("keep_rare_moas=False: 2; "
                                               "min_sigs_per_compound: 1")
    assert g.loc["single-MoA", "compounds_kept"] == 6 and g["compounds_dropped"].sum() == 4
    # single-MoA rows are those of the default run
    common = both.obs["moa"].isin(["MTOR inhibitor", "HDAC inhibitor"]).to_numpy()
    assert list(both.obs_names[common]) == list(base.obs_names)
    with pytest.raises(InputError, match="multi_moa must be"):
        _run(p, p["moa_labels"], multi_moa="split")


def test_only_multi_moa_compounds_is_an_error(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    path = tmp_path / "all_multi.csv"
    pd.DataFrame({"pert_id": [f"BRD-K0000000{i}" for i in range(1, 9)],
                  "moa": "MTOR inhibitor|HDAC inhibitor"}).to_csv(path, index=False)
    with pytest.raises(InputError, match="no single MoA left"):
        _run(p, path, min_compounds_per_moa=2)


def test_missing_moa_survives_h5ad_and_compoundinfo_sets(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    ci = pd.read_csv(p["compoundinfo"], sep="\t")
    extra = ci[ci["pert_id"] == "BRD-K00000009"].assign(moa="EGFR inhibitor|MTOR inhibitor")
    pd.concat([ci, extra]).to_csv(p["compoundinfo"], sep="\t", index=False)
    a = _run(p, None, min_compounds_per_moa=2, keep_unlabelled=True)
    multi = (a.obs["pert_id"] == "BRD-K00000009").to_numpy()
    assert (a.obs.loc[multi, "moa_set"] == "EGFR inhibitor|MTOR inhibitor").all()
    back = read_h5ad(write_h5ad(a, tmp_path / "a.h5ad"))
    assert back.obs["moa"].isna().sum() == multi.sum() == a.obs["moa"].isna().sum()
    assert _text(back.obs["moa_set"]) == _text(a.obs["moa_set"])
    pd.testing.assert_frame_equal(back.uns["moaspace"]["prepare"]["groups"],
                                  a.uns["moaspace"]["prepare"]["groups"])


def test_read_moa_table_keep_sets(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"BRD-ID": ["A", "A", "B", "C", "D", "D"],
                  "MOA": ["x", "y", " b | a", "a", "c", "c|d"]}).to_csv(path, index=False)
    got = read_moa_table(path, multi_moa="keep")
    assert got["moa_set"].to_dict() == {"A": "x|y", "B": "a|b", "C": "a", "D": "c|d"}
    assert got["moa"].isna().tolist() == [True, True, False, True]
    with pytest.raises(InputError, match="more than one MoA.*'A'"):
        read_moa_table(path)
    assert got.index.tolist() == ["A", "B", "C", "D"]


def test_real_consensus_keep_matches_the_loader():
    """prepare on the shipped consensus files with the default multi_moa="keep" gives the
    loader's drugs: the 519 single-MoA drugs of the benchmark plus the multi-MoA ones."""
    import moaspace as ms

    paths = ms.datasets.lincs_consensus_paths()
    ref = prepare(paths["matrix"], moa_labels=paths["moa_labels"], min_sigs_per_compound=1,
                  min_compounds_per_moa=5, times=None, progress=False)
    loader = ms.datasets.lincs_consensus(min_compounds_per_moa=5)
    assert list(ref.obs_names) == list(loader.obs_names)
    assert ref.obs["moa"].notna().sum() == 519 and ref.obs["moa"].nunique() == 44
    assert _text(ref.obs["moa"]) == _text(loader.obs["moa"])
    # the same sets (the Hub writes one set unsorted)
    sets = [set(s.split("|")) for s in ref.obs["moa_set"]]
    assert sets == [set(str(s).split("|")) for s in loader.obs["moa_set"]]
