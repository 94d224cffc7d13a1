"""Tests of the LINCS beta simulator: formats, determinism, planted truth, difficulty."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from moaspace.datasets._simulate import (
    DEMO_CONFIG,
    FILE_NAMES,
    MOA_TRUTH_FILE,
    SYNTHETIC_GENE_ID_START,
    SimulationConfig,
    load_demo_paths,
    raw_knn_difficulty,
    simulate,
    simulate_adata,
    simulate_world,
)
from moaspace.errors import InputError
from moaspace.io import (
    bundled_gmt,
    compound_targets,
    read_compoundinfo,
    read_gctx,
    read_gctx_meta,
    read_gmt,
    read_siginfo,
)
from moaspace.io.labels import moa_set_string
from moaspace.pp._prepare import prepare

SIGINFO_COLUMNS = (
    "sig_id",
    "pert_id",
    "pert_type",
    "cmap_name",
    "cell_iname",
    "pert_dose",
    "pert_dose_unit",
    "pert_idose",
    "pert_time",
    "pert_time_unit",
    "pert_itime",
    "tas",
    "is_hiq",
    "qc_pass",
    "nsample",
    "cc_q75",
    "ss_ngene",
)
GENEINFO_COLUMNS = (
    "gene_id",
    "gene_symbol",
    "ensembl_id",
    "gene_title",
    "gene_type",
    "src",
    "feature_space",
)
COMPOUNDINFO_COLUMNS = (
    "pert_id",
    "cmap_name",
    "target",
    "moa",
    "canonical_smiles",
    "inchi_key",
    "compound_aliases",
)
PREPARE_KEYS = ("gctx", "siginfo", "geneinfo", "compoundinfo", "moa_labels")

SMALL = SimulationConfig(
    seed=1,
    n_compounds=170,
    n_moas=8,
    n_cells=8,
    sigs_per_compound=(10, 28),
    n_null_knockdowns=3,
    moa_size_skew=0.3,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_small")
    paths = simulate(out, SMALL)
    truth = json.loads(paths["truth"].read_text())
    return paths, truth


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _program(truth, name, symbols) -> np.ndarray:
    index = {s: i for i, s in enumerate(symbols)}
    vec = np.zeros(len(symbols))
    for sym, weight in truth["pathway_programs"][name].items():
        vec[index[sym]] = weight
    return vec


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


# --------------------------------------------------------------------------- formats


def test_files_exist_with_lincs_columns(small):
    paths, _ = small
    assert set(paths) == {*FILE_NAMES, "moa_truth"}
    for key, path in paths.items():
        name = FILE_NAMES.get(key, MOA_TRUTH_FILE)
        assert path.name == name and path.is_file() and path.stat().st_size > 0
    sig = pd.read_csv(paths["siginfo"], sep="\t")
    assert set(SIGINFO_COLUMNS) <= set(sig.columns)
    gene = pd.read_csv(paths["geneinfo"], sep="\t", dtype={"gene_id": str})
    assert tuple(gene.columns) == GENEINFO_COLUMNS
    assert (gene["feature_space"] == "landmark").sum() == 978
    cinfo = pd.read_csv(paths["compoundinfo"], sep="\t")
    assert tuple(cinfo.columns) == COMPOUNDINFO_COLUMNS
    labels = pd.read_csv(paths["moa_labels"])
    assert tuple(labels.columns) == ("BRD-ID", "Drug name", "MOA")

    assert sig["sig_id"].is_unique
    cp = sig[sig["pert_type"] == "trt_cp"]
    xpr = sig[sig["pert_type"] == "trt_xpr"]
    assert len(cp) and len(xpr) and len(cp) + len(xpr) == len(sig)
    assert cp["pert_id"].str.fullmatch(r"BRD-[AK]\d{8}").all()
    assert cp["sig_id"].str.fullmatch(r"[A-Z.]+\d{3}_[A-Z0-9]+_\d+H:BRD-[AK]\d{8}:[\d.]+").all()
    assert xpr["pert_id"].str.fullmatch(r"BRDN\d{10}").all()
    assert xpr["sig_id"].str.fullmatch(r"XPR\d{3}_[A-Z0-9]+_96H:BRDN\d{10}:-666").all()
    assert set(cp["pert_time"]) <= {3, 6, 24, 48} and set(xpr["pert_time"]) == {96}
    assert (cp["pert_idose"] == cp["pert_dose"].map(lambda d: f"{d:g} uM")).all()
    assert (cp["pert_itime"] == cp["pert_time"].map(lambda t: f"{t:g} h")).all()
    assert set(cp["cell_iname"]) <= {
        "A549",
        "MCF7",
        "PC3",
        "VCAP",
        "HT29",
        "A375",
        "HA1E",
        "HCC515",
        "HEPG2",
        "NCIH508",
        "MDAMB231",
        "LNCAP",
    }
    for cell in ("A549", "NCIH508", "MDAMB231", "LNCAP"):
        assert cell in set(cp["cell_iname"])
    assert sig["tas"].between(0, 1).all() and sig["is_hiq"].isin([0, 1]).all()
    assert (sig["nsample"] >= 2).all() and sig["ss_ngene"].between(0, 978).all()
    # labels: one per labelled compound, consistent with compoundinfo
    assert labels["BRD-ID"].is_unique
    moa_ci = cinfo.dropna(subset=["moa"]).groupby("pert_id")["moa"].agg(set)
    assert (moa_ci.map(len) == 1).all()
    assert (
        dict(zip(labels["BRD-ID"], labels["MOA"], strict=True))
        == moa_ci.map(lambda s: next(iter(s))).to_dict()
    )


def test_siginfo_covers_both_gctx_files_exactly(small):
    paths, truth = small
    sig = read_siginfo(paths["siginfo"])
    _, cols_cp = read_gctx_meta(paths["gctx"])
    rows_xpr, cols_xpr = read_gctx_meta(paths["gctx_xpr"])
    assert not set(cols_cp.index) & set(cols_xpr.index)
    assert set(cols_cp.index) | set(cols_xpr.index) == set(sig.index)
    assert (sig.loc[cols_cp.index, "pert_type"] == "trt_cp").all()
    assert (sig.loc[cols_xpr.index, "pert_type"] == "trt_xpr").all()
    assert len(rows_xpr) == 978
    kd_genes = set(sig.loc[cols_xpr.index, "cmap_name"])
    assert kd_genes == set(truth["knockdown_moa"])
    assert set(truth["knockdown_guides"]) == set(sig.loc[cols_xpr.index, "pert_id"])


def test_compoundinfo_one_row_per_compound_target(small):
    paths, truth = small
    cinfo = read_compoundinfo(paths["compoundinfo"])
    assert not cinfo.duplicated(["pert_id", "target"]).any()
    per = cinfo.groupby("pert_id").size()
    assert per.max() > 1  # compounds with several targets have several rows
    assert cinfo.groupby("pert_id")["canonical_smiles"].nunique().max() == 1
    targets = compound_targets(cinfo)
    for pert_id, info in truth["compounds"].items():
        assert targets.get(pert_id, set()) == set(info["targets"])
    assert cinfo["inchi_key"].str.fullmatch(r"[A-Z]{14}-[A-Z]{10}-N").all()
    for smi in cinfo["canonical_smiles"]:  # syntactic sanity of the fake structures
        assert smi.count("(") == smi.count(")")
        assert all(smi.count(d) % 2 == 0 for d in "12")


def test_prepare_end_to_end(small):
    paths, truth = small
    adata = prepare(**{k: paths[k] for k in PREPARE_KEYS}, progress=False)
    assert adata.n_vars == 978 and adata.n_obs > 1000
    assert adata.obs["moa"].nunique() >= 5
    assert (adata.obs["is_hiq"] == 1).all() and set(adata.obs["pert_time"]) <= {6, 24}
    assert (adata.obs.groupby("pert_id").size() >= 10).all()
    assert (adata.obs.groupby("moa")["pert_id"].nunique() >= 10).all()
    true_moa = adata.obs["pert_id"].map(lambda p: truth["compounds"][p]["moa"])
    assert (adata.obs["moa"] == true_moa).all()
    # MoA from compoundinfo alone gives the same selection
    alt = prepare(
        paths["gctx"], paths["siginfo"], paths["geneinfo"], paths["compoundinfo"], progress=False
    )
    assert set(alt.obs_names) == set(adata.obs_names)
    # knockdowns (96 h, as in the CRISPR release: no time filter)
    kd = prepare(
        paths["gctx_xpr"],
        paths["siginfo"],
        paths["geneinfo"],
        pert_type="trt_xpr",
        times=None,
        progress=False,
    )
    assert kd.n_obs > 50
    assert set(kd.obs["target_gene"]) <= set(truth["knockdown_moa"])


def test_in_memory_equals_files(small):
    paths, _ = small
    adata, truth = simulate_adata(SMALL)
    on_disk = read_gctx(paths["gctx"])
    assert list(adata.obs_names) == list(on_disk.obs_names)
    assert list(adata.var_names) == list(on_disk.var_names)
    np.testing.assert_array_equal(adata.X, on_disk.X)
    sig = read_siginfo(paths["siginfo"]).loc[adata.obs_names]
    np.testing.assert_allclose(adata.obs["tas"], sig["tas"])
    np.testing.assert_array_equal(adata.obs["is_hiq"], sig["is_hiq"])
    for column in (
        "sig_id",
        "pert_id",
        "cmap_name",
        "moa",
        "cell_iname",
        "pert_dose",
        "pert_time",
        "tas",
        "is_hiq",
    ):
        assert column in adata.obs
    assert truth == json.loads(paths["truth"].read_text())
    kd, _ = simulate_adata(SMALL, pert_type="trt_xpr")
    np.testing.assert_array_equal(kd.X, read_gctx(paths["gctx_xpr"]).X)
    assert (kd.obs["target_gene"] == kd.obs["cmap_name"]).all()


def test_deterministic_and_seed_dependent(small, tmp_path):
    paths, _ = small
    again = simulate(tmp_path / "again", SMALL)
    for key in FILE_NAMES:
        assert _sha(paths[key]) == _sha(again[key]), key
    other = simulate(tmp_path / "other", SMALL, seed=2)
    for key in ("siginfo", "compoundinfo", "truth"):
        assert _sha(paths[key]) != _sha(other[key])
    a, b = read_gctx(paths["gctx"]), read_gctx(other["gctx"])
    n = min(a.n_obs, b.n_obs)
    assert not np.allclose(a.X[:n], b.X[:n])


def test_values_look_like_level5(small):
    paths, _ = small
    adata = read_gctx(paths["gctx"])
    x = adata.X
    assert np.isfinite(x).all() and np.abs(x).max() <= 10
    assert 0.7 < x.std() < 1.6 and 0.3 < np.median(np.abs(x)) < 0.8
    kurt = ((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3
    assert kurt > 3  # heavy tails
    sig = read_siginfo(paths["siginfo"])
    cp = sig[sig["pert_type"] == "trt_cp"]
    assert 0.75 < cp["is_hiq"].mean() < 0.97
    # low quality (low replicate agreement or failed QC) is what makes is_hiq 0
    assert cp.loc[cp["is_hiq"] == 0, "cc_q75"].mean() < cp.loc[cp["is_hiq"] == 1, "cc_q75"].mean()
    assert ((cp["is_hiq"] == 1) <= (cp["qc_pass"] == 1)).all()
    # TAS grows with dose for active compounds
    assert cp.groupby("pert_dose")["tas"].median().is_monotonic_increasing


def test_genes_all_adds_inferred_genes():
    cfg = SimulationConfig(
        seed=3,
        n_compounds=140,
        n_moas=6,
        n_cells=4,
        sigs_per_compound=(10, 14),
        n_null_knockdowns=1,
    )
    full, _ = simulate_adata(cfg, genes="all")
    lm, _ = simulate_adata(cfg)
    assert full.n_vars > 10_000
    space = full.var["feature_space"]
    assert (space[:978] == "landmark").all()
    assert set(space[978:]) == {"best inferred", "inferred"}
    assert (full.var_names[978:].astype(int) >= SYNTHETIC_GENE_ID_START).all()
    assert full.var["gene_symbol"].is_unique
    # landmark values do not depend on the gene space
    np.testing.assert_array_equal(full.X[:, :978], lm.X)
    # inferred genes are linear in the landmarks plus noise, best inferred ones more so
    # (ridge fit on 3/4 of the signatures, R^2 on the rest)
    x, y = full.X[:, :978].astype(np.float64), full.X[:, 978:].astype(np.float64)
    n_fit = 3 * len(x) // 4
    coef = np.linalg.solve(x[:n_fit].T @ x[:n_fit] + 300 * np.eye(978), x[:n_fit].T @ y[:n_fit])
    resid = y[n_fit:] - x[n_fit:] @ coef
    r2 = 1 - resid.var(0) / y[n_fit:].var(0)
    best = (space[978:] == "best inferred").to_numpy()
    assert np.median(r2[best]) > 0.3
    assert np.median(r2[best]) > np.median(r2[~best]) + 0.1


def test_config_validation():
    with pytest.raises(InputError, match="genes"):
        SimulationConfig(genes="some")
    with pytest.raises(InputError, match="n_moas"):
        SimulationConfig(n_moas=1)
    with pytest.raises(InputError, match="unknown MoAs"):
        SimulationConfig(moas=["not a MoA", "HDAC inhibitor"])
    with pytest.raises(InputError, match="sigs_per_compound"):
        SimulationConfig(sigs_per_compound=(10, 5))
    with pytest.raises(InputError, match="unknown simulation settings"):
        simulate_adata(SimulationConfig(), n_compoundz=3)
    cfg = SimulationConfig(moas=["HDAC inhibitor", "MTOR inhibitor"], cells=["A549", "MCF7"])
    assert cfg.n_moas == 2 and cfg.n_cells == 2
    with pytest.raises(InputError, match="compound_series"):
        SimulationConfig(compound_series=-1)
    with pytest.raises(InputError, match="series_weight"):
        SimulationConfig(series_weight=1.5)


def test_simulate_world_is_the_world_behind_the_data():
    import moaspace.datasets
    from moaspace.datasets._simulate import MOA_CATALOGUE, MoaSpec

    assert moaspace.datasets.simulate_world is simulate_world
    world = simulate_world(SMALL)
    adata, truth = simulate_adata(SMALL)
    assert world.cpd["pert_id"].tolist() == list(truth["compounds"])
    assert world.design_cp["sig_id"].tolist() == adata.obs_names.tolist()
    assert [s.name for s in world.moas] == list(truth["moa_pathways"])
    assert simulate_world(SMALL, seed=2).cpd["pert_id"].tolist() != world.cpd["pert_id"].tolist()
    assert world.generic_weight(24.0) == 1.0
    # the MoA catalogue is a data resource read into MoaSpec objects
    assert len(MOA_CATALOGUE) == 39 and all(isinstance(m, MoaSpec) for m in MOA_CATALOGUE)
    assert len({m.name for m in MOA_CATALOGUE}) == len(MOA_CATALOGUE)
    assert all(m.strength in ("strong", "medium", "weak") for m in MOA_CATALOGUE)


def _compound_directions(cfg):
    world = simulate_world(cfg)
    directions = world.programs.T @ world.cpd_coef.T + world.cpd_idio.T
    return world, directions.T / np.linalg.norm(directions, axis=0)[:, None]


def test_compound_series_share_a_direction_and_leave_defaults_alone():
    base = dict(seed=5, n_compounds=150, n_moas=5, n_cells=3)
    world0, d0 = _compound_directions(SimulationConfig(**base))
    assert "series" not in world0.cpd.columns
    world, d = _compound_directions(SimulationConfig(**base, compound_series=2, series_weight=0.8))
    # the series are drawn from their own stream: membership, MoA and every other compound
    # property are those of the default world
    cols = ["moa", "efficacy", "active", "moa_cosine", "offtarget_moa"]
    pd.testing.assert_frame_equal(world.cpd[cols], world0.cpd[cols])
    assert set(world.cpd["series"]) == {0, 1}
    # the planted cosine to the MoA direction is kept exactly
    moa_dir = world.programs.T @ world.moa_coef.T + world.moa_idio.T
    moa_dir = (moa_dir / np.linalg.norm(moa_dir, axis=0)).T[world.cpd["moa_index"]]
    np.testing.assert_allclose((d * moa_dir).sum(1), world.cpd["moa_cosine"], atol=1e-6)
    # within a MoA, compounds of one series are closer than compounds of different series,
    # which they are not in the default world
    moa, series = world.cpd["moa_index"].to_numpy(), world.cpd["series"].to_numpy()
    same_moa = (moa[:, None] == moa[None, :]) & ~np.eye(len(moa), dtype=bool)
    same_series = same_moa & (series[:, None] == series[None, :])
    other_series = same_moa & (series[:, None] != series[None, :])
    for dirs, gap in ((d, 0.15), (d0, None)):
        cos = dirs @ dirs.T
        diff = cos[same_series].mean() - cos[other_series].mean()
        if gap is None:
            assert abs(diff) < 0.05
        else:
            assert diff > gap


def test_correlated_noise_regime_adds_module_structure_and_leaves_defaults_alone():
    base = dict(seed=3, n_compounds=120, n_moas=5, n_cells=4, sigs_per_compound=(8, 12),
                n_null_knockdowns=0)
    plain, _ = simulate_adata(SimulationConfig(**base))
    again, _ = simulate_adata(SimulationConfig(**base, module_noise=2.0))  # no modules: off
    np.testing.assert_array_equal(plain.X, again.X)
    corr, _ = simulate_adata(SimulationConfig(**base, noise_modules=10, module_noise=1.5,
                                              saturation=3.0))
    assert corr.obs_names.equals(plain.obs_names)
    assert (corr.obs["moa"] == plain.obs["moa"]).all()

    def top_share(adata):
        """Share of the within-compound variance in its 10 largest components."""
        x = pd.DataFrame(np.asarray(adata.X), index=adata.obs["pert_id"].to_numpy())
        resid = (x - x.groupby(level=0).transform("mean")).to_numpy()
        s = np.linalg.svd(resid, compute_uv=False) ** 2
        return s[:10].sum() / s.sum()

    # module activity varies within a compound and across genes together: noise that is
    # no longer near-isotropic
    assert top_share(corr) > 1.5 * top_share(plain)
    with pytest.raises(InputError, match="saturation must be > 0"):
        SimulationConfig(saturation=0.0)


# --------------------------------------------------------------------------- planted truth


def test_truth_structure(small):
    paths, truth = small
    gmt = read_gmt(bundled_gmt("reactome"))
    assert truth["seed"] == SMALL.seed and truth["config"]["n_compounds"] == SMALL.n_compounds
    for pathways in truth["moa_pathways"].values():
        assert 1 <= len(pathways) <= 3
        for name in pathways:
            assert name in gmt
            program = truth["pathway_programs"][name]
            assert len(program) >= 10 and set(program) <= set(gmt[name])
    assert set(truth["moa_targets"]) == set(truth["moa_pathways"])
    # gene -> compounds (compoundinfo target column) -> MoAs reproduces knockdown_moa
    cinfo = read_compoundinfo(paths["compoundinfo"])
    cinfo = cinfo[cinfo["moa"].notna()]
    n_null = 0
    for gene, moas in truth["knockdown_moa"].items():
        for moa in moas:
            assert gene in truth["moa_targets"][moa]
            hits = cinfo[(cinfo["target"] == gene) & (cinfo["moa"] == moa)]
            labelled = [
                p
                for p, c in truth["compounds"].items()
                if c["moa"] == moa and c["labeled"] and gene in c["targets"]
            ]
            assert len(hits) == len(labelled)
        if not moas:
            n_null += 1
            assert gene in truth["null_knockdowns"]
            assert all(gene not in t for t in truth["moa_targets"].values())
    assert n_null == SMALL.n_null_knockdowns
    assert any(len(cinfo[cinfo["target"] == g]) for g, m in truth["knockdown_moa"].items() if m)


def test_moa_signatures_follow_planted_pathways():
    adata, truth = simulate_adata(SMALL)
    symbols = adata.var["gene_symbol"].tolist()
    sel = (adata.obs["is_hiq"] == 1).to_numpy()
    frame = pd.DataFrame(
        adata.X[sel], index=[truth["compounds"][p]["moa"] for p in adata.obs["pert_id"][sel]]
    )
    means = frame.groupby(level=0).mean()
    names = sorted(truth["pathway_programs"])
    programs = np.vstack([_program(truth, n, symbols) for n in names])
    corr = pd.DataFrame(_row_corr(means.to_numpy(), programs), index=means.index, columns=names)
    wins = []
    for moa, pathways in truth["moa_pathways"].items():
        own = corr.loc[moa, pathways].max()
        others = corr.loc[moa].drop(pathways)
        assert own > (0.3 if truth["moa_strength"][moa] != "weak" else 0.1), moa
        wins.append(own > others.quantile(0.9))
    assert np.mean(wins) >= 0.75


def test_knockdowns_resemble_inhibitors_of_their_target():
    adata, truth = simulate_adata(SMALL)
    kd, _ = simulate_adata(SMALL, pert_type="trt_xpr")
    sel = (adata.obs["is_hiq"] == 1).to_numpy()
    cp_means = (
        pd.DataFrame(
            adata.X[sel], index=[truth["compounds"][p]["moa"] for p in adata.obs["pert_id"][sel]]
        )
        .groupby(level=0)
        .mean()
    )
    kd_means = pd.DataFrame(kd.X, index=kd.obs["target_gene"].to_numpy()).groupby(level=0).mean()
    corr = pd.DataFrame(
        _row_corr(kd_means.to_numpy(), cp_means.to_numpy()),
        index=kd_means.index,
        columns=cp_means.index,
    )
    top1, margins = [], []
    for gene, moas in truth["knockdown_moa"].items():
        if not moas:
            continue
        row = corr.loc[gene]
        top1.append(row.idxmax() in moas)
        margins.append(row[moas].max() - row.drop(moas).mean())
    assert np.mean(top1) >= 0.75
    assert np.mean(margins) > 0.1
    null = corr.loc[truth["null_knockdowns"]].max(axis=1)
    expected = [corr.loc[g, m].max() for g, m in truth["knockdown_moa"].items() if m]
    assert null.mean() < np.mean(expected)


# --------------------------------------------------------------------------- difficulty


def test_default_difficulty_band(tmp_path):
    """Raw cosine kNN on unseen compounds, default config, default prepare filters."""
    paths = simulate(tmp_path / "default", SimulationConfig(seed=0))
    adata = prepare(**{k: paths[k] for k in PREPARE_KEYS}, progress=False)
    assert 3_000 <= adata.n_obs <= 12_000
    assert 200 <= adata.obs["pert_id"].nunique() <= 600
    assert 15 <= adata.obs["moa"].nunique() <= 25
    assert 10 <= adata.obs["cell_iname"].nunique() <= 15
    result = raw_knn_difficulty(adata, k=10, n_splits=5, seed=0)
    assert 0.33 <= result["accuracy"] <= 0.47, result
    assert 0.3 <= result["macro_f1"] <= 0.5, result
    assert result["accuracy"] > 2.5 * result["majority_rate"]


def test_raw_knn_difficulty_separates_easy_from_hard():
    easy, _ = simulate_adata(SMALL, effect_scale=3.0, noise_scale=0.5)
    hard, _ = simulate_adata(SMALL, effect_scale=0.05)
    scores = []
    for adata in (easy, hard):
        keep = (adata.obs["moa"] != "").to_numpy()
        scores.append(raw_knn_difficulty(adata[keep], k=5, n_splits=3)["accuracy"])
    assert scores[0] > 0.55 and scores[1] < 0.3 and scores[0] - scores[1] > 0.3, scores


# --------------------------------------------------------------------------- demo


def test_demo_data_passes_default_filters():
    paths = load_demo_paths()
    assert set(paths) == set(FILE_NAMES)
    total = sum(p.stat().st_size for p in paths.values())
    assert total < 6 * 2**20
    adata = prepare(**{k: paths[k] for k in PREPARE_KEYS}, progress=False)
    assert 1_500 <= adata.n_obs <= 3_000
    assert 8 <= adata.obs["moa"].nunique() <= 12
    truth = json.loads(paths["truth"].read_text())
    assert set(adata.obs["moa"]) <= set(truth["moa_pathways"])
    kd = prepare(
        paths["gctx_xpr"],
        paths["siginfo"],
        paths["geneinfo"],
        pert_type="trt_xpr",
        times=None,
        progress=False,
    )
    assert kd.n_obs > 20
    assert re.fullmatch(r"\d+", str(truth["seed"]))


# --------------------------------------------------------------------------- multi-MoA, unlabelled

MULTI = SimulationConfig(seed=2, n_compounds=120, n_moas=5, n_cells=4, sigs_per_compound=(6, 12),
                         n_null_knockdowns=1)


def test_default_world_is_still_the_shipped_demo(tmp_path):
    """The multi-MoA regime is off by default and draws from its own stream: the default
    options write the demo release (made before it existed) byte for byte."""
    paths = simulate(tmp_path / "demo", DEMO_CONFIG)
    shipped = load_demo_paths()
    for key in FILE_NAMES:
        assert _sha(paths[key]) == _sha(shipped[key]), key
    truth = pd.read_csv(paths["moa_truth"])
    labels = pd.read_csv(shipped["moa_labels"])
    assert set(truth.loc[truth["labelled"] == 1, "pert_id"]) == set(labels["BRD-ID"])
    assert (truth["n_moas"] == 1).all()


def test_multi_moa_regime_mixes_two_moas_and_leaves_the_rest(tmp_path):
    cfg = dataclasses.replace(MULTI, multi_moa_fraction=0.3, frac_unlabeled=0.4)
    world0, d0 = _compound_directions(MULTI)
    world, d = _compound_directions(cfg)
    multi = (world.cpd["moa2"] != "").to_numpy()
    assert 0.15 < multi.mean() < 0.45
    # everything but the multi-MoA compounds' directions is the default world's
    np.testing.assert_array_equal(d[~multi], d0[~multi])
    cols = ["pert_id", "moa", "efficacy", "active", "log10_ec50_um"]
    pd.testing.assert_frame_equal(world.cpd[cols], world0.cpd[cols])
    assert world.design_cp.equals(world0.design_cp)
    # a multi-MoA compound moves along both MoAs' directions
    moa_dir = world.programs.T @ world.moa_coef.T + world.moa_idio.T
    moa_dir = (moa_dir / np.linalg.norm(moa_dir, axis=0)).T
    index = {m.name: i for i, m in enumerate(world.moas)}
    first = world.cpd["moa_index"].to_numpy()[multi]
    second = world.cpd["moa2"][multi].map(index).to_numpy()
    unit = d[multi]
    cos1 = (unit * moa_dir[first]).sum(1)
    cos2 = (unit * moa_dir[second]).sum(1)
    assert np.median(cos1) > 0.3 and np.median(cos2) > 0.3
    np.testing.assert_allclose(cos1, world.cpd["moa_cosine"][multi], atol=1e-6)
    assert np.median((d0[multi] * moa_dir[second]).sum(1)) < 0.2

    paths = simulate(tmp_path / "sim", cfg)
    labels = pd.read_csv(paths["moa_labels"]).set_index("BRD-ID")["MOA"]
    truth = pd.read_csv(paths["moa_truth"]).set_index("pert_id")
    cpd = world.cpd.set_index("pert_id")
    assert truth.index.tolist() == cpd.index.tolist()
    assert (truth["labelled"] == cpd["labeled"].astype(int)).all()
    assert 0.3 < 1 - truth["labelled"].mean() < 0.5
    assert set(labels.index) == set(truth.index[truth["labelled"] == 1])
    assert (labels == truth.loc[labels.index, "moa_set"]).all()
    assert (truth["n_moas"] == np.where(cpd["moa2"] != "", 2, 1)).all()
    expect = [moa_set_string([a, b]) for a, b in zip(cpd["moa"], cpd["moa2"], strict=True)]
    assert truth["moa_set"].tolist() == expect
    assert (labels.str.contains("|", regex=False)).sum() > 5
    compounds = json.loads(paths["truth"].read_text())["compounds"]
    multi_ids = cpd.index[cpd["moa2"] != ""]
    assert all(len(compounds[c]["moa_set"]) == 2 and "moa_set" not in compounds[o]
               for c, o in zip(multi_ids, cpd.index[cpd["moa2"] == ""], strict=False))
    # signatures: compounds that are not multi-MoA keep theirs bit for bit; every
    # multi-MoA or unlabelled compound has several, over several cell lines
    base = simulate_adata(MULTI)[0]
    got = read_gctx(paths["gctx"])
    same = ~got.obs_names.map(dict(zip(world.design_cp["sig_id"],
                                       multi[world.design_cp["cpd"]], strict=True))).astype(bool)
    np.testing.assert_array_equal(got.X[same], base.X[same])
    assert not np.allclose(got.X[~same], base.X[~same])
    design = world.design_cp.assign(multi=multi[world.design_cp["cpd"]],
                                    unlabelled=~cpd["labeled"].to_numpy()[world.design_cp["cpd"]])
    per = design[design["multi"] | design["unlabelled"]].groupby("cpd")
    assert per.size().min() >= 6 and per["cell"].nunique().median() >= 3
    with pytest.raises(InputError, match="multi_moa_fraction"):
        SimulationConfig(multi_moa_fraction=1.5)


def test_simulate_prepare_split_chain_with_multi_and_unlabelled(tmp_path):
    """`moaspace simulate --multi-moa-fraction 0.15 --unlabelled-fraction 0.4`, `prepare
    --keep-unlabelled` and `split`: the data hold the three groups and split runs."""
    from typer.testing import CliRunner

    from moaspace.cli import app
    from moaspace.pp._prepare import read_h5ad

    runner = CliRunner()
    sim = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", "--out", str(sim), "--seed", "2", "--n-compounds",
                            "150", "--n-cells", "4", "--multi-moa-fraction", "0.15",
                            "--unlabelled-fraction", "0.4"])
    assert r.exit_code == 0, r.output
    assert (sim / MOA_TRUTH_FILE).is_file()
    data = tmp_path / "data.h5ad"
    r = runner.invoke(app, ["prepare", "--gctx", str(sim / FILE_NAMES["gctx"]),
                            "--siginfo", str(sim / FILE_NAMES["siginfo"]),
                            "--moa-labels", str(sim / FILE_NAMES["moa_labels"]),
                            "--min-sigs-per-compound", "4", "--min-compounds-per-moa", "3",
                            "--keep-unlabelled", "--out", str(data)])
    assert r.exit_code == 0, r.output
    assert "multi-MoA compounds" in r.output and "unlabelled compounds" in r.output
    obs = read_h5ad(data).obs
    single = obs["moa"].notna()
    multi = obs["moa"].isna() & obs["moa_set"].notna()
    unlabelled = obs["moa_set"].isna()
    assert single.any() and multi.any() and unlabelled.any()
    truth = pd.read_csv(sim / MOA_TRUTH_FILE).set_index("pert_id")
    assert (truth.loc[obs.loc[unlabelled, "pert_id"], "labelled"] == 0).all()
    assert (truth.loc[obs.loc[multi, "pert_id"], "n_moas"] == 2).all()
    out = tmp_path / "split.h5ad"
    r = runner.invoke(app, ["split", str(data), "--out", str(out), "--seed", "0"])
    assert r.exit_code == 0, r.output
    back = read_h5ad(out)
    s = back.obs["split"].astype(str)
    assert set(s[multi.to_numpy()]) >= {"train", "test"}
    assert (s[unlabelled.to_numpy()] == "train").all()
    assert back.uns["moaspace"]["split"]["n_compounds_by_group"]["unlabelled"] > 0


def test_cli_unlabelled_default_is_the_config_default():
    import inspect

    from moaspace.cli._data import simulate as simulate_cmd

    default = inspect.signature(simulate_cmd).parameters["unlabelled_fraction"].default
    assert default == SimulationConfig().frac_unlabeled
