"""Real L1000 values from ../shared/data through read_gctx, prepare and zscore_plate."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from moaspace.errors import InputError
from moaspace.io import read_gctx, write_gctx
from moaspace.pp._plate import zscore_plate
from moaspace.pp._prepare import prepare


def _landmarks(shared):
    lm = pd.read_csv(shared / "landmark_genes.csv", dtype={"pr_gene_id": str})
    return lm


def _geneinfo(lm: pd.DataFrame, path):
    pd.DataFrame({"gene_id": lm.pr_gene_id, "gene_symbol": lm.pr_gene_symbol,
                  "feature_space": "landmark"}).to_csv(path, sep="\t", index=False)


def _hours(itime: str) -> float:
    return float(str(itime).split()[0])


@pytest.fixture(scope="module")
def level5_release(shared_data, tmp_path_factory):
    """The 272 real level-5 signatures written as a LINCS beta release."""
    out = tmp_path_factory.mktemp("real5")
    values = pd.read_csv(shared_data / "l1000_cmapR_modz_level5_n272x978.csv.gz", index_col=0)
    meta = pd.read_csv(shared_data / "l1000_cmapR_modz_level5_n272x978_meta.csv")
    lm = _landmarks(shared_data)
    sym_to_id = dict(zip(lm.pr_gene_symbol, lm.pr_gene_id, strict=True))
    gene_ids = [sym_to_id[s] for s in values.columns]
    write_gctx(out / "level5.gctx", values.to_numpy(np.float32), values.index, gene_ids)
    siginfo = pd.DataFrame({
        "sig_id": meta.sig_id, "pert_id": meta.pert_id, "cmap_name": meta.pert_iname,
        "pert_type": meta.pert_type, "cell_iname": meta.cell_id,
        "pert_idose": meta.pert_idose, "pert_time": meta.pert_itime.map(_hours),
        "is_hiq": meta.is_gold,
    })
    siginfo.to_csv(out / "siginfo_beta.txt", sep="\t", index=False)
    _geneinfo(lm, out / "geneinfo_beta.txt")
    cinfo = pd.read_csv(shared_data / "lincs_compound_info_signatureSearch.csv.gz")
    moa_by_name = cinfo.dropna(subset=["MOA"]).drop_duplicates("pert_iname").set_index(
        "pert_iname")["MOA"]
    labels = meta[["pert_id", "pert_iname"]].drop_duplicates()
    labels["moa"] = labels.pert_iname.map(moa_by_name)
    labels.to_csv(out / "moa_labels.csv", index=False)
    return {"dir": out, "values": values, "meta": meta, "gene_ids": gene_ids}


def test_read_real_level5_subset(level5_release):
    values = level5_release["values"]
    rng = np.random.default_rng(0)
    sigs = list(rng.choice(values.index, 50, replace=False))
    genes = list(rng.choice(level5_release["gene_ids"], 100, replace=False))
    adata = read_gctx(level5_release["dir"] / "level5.gctx", rids=genes, cids=sigs,
                      block_bytes=4096)
    cols = [level5_release["gene_ids"].index(g) for g in genes]
    np.testing.assert_array_equal(adata.X, values.loc[sigs].to_numpy(np.float32)[:, cols])


def test_prepare_real_level5(level5_release):
    d = level5_release["dir"]
    adata = prepare(d / "level5.gctx", d / "siginfo_beta.txt", d / "geneinfo_beta.txt",
                    None, d / "moa_labels.csv", min_sigs_per_compound=5,
                    min_compounds_per_moa=1, progress=False)
    meta = level5_release["meta"]
    hiq = meta[(meta.is_gold == 1) & meta.pert_itime.isin(["6 h", "24 h"])]
    counts = hiq.pert_id.value_counts()
    expected = hiq[hiq.pert_id.isin(counts.index[counts >= 5])]
    assert adata.n_obs == len(expected)
    assert {"RAF inhibitor", "HMGCR inhibitor"} <= set(adata.obs["moa"])
    assert adata.n_vars == 978
    # same-drug signatures are more alike than different-drug ones (real biology)
    X = adata.X / np.linalg.norm(adata.X, axis=1, keepdims=True)
    sim = X @ X.T
    drug = adata.obs["cmap_name"].to_numpy()
    same = drug[:, None] == drug[None, :]
    np.fill_diagonal(same, False)
    other = drug[:, None] != drug[None, :]
    assert sim[same].mean() > sim[other].mean() + 0.05


def test_level3_plate_zscore(shared_data):
    values = pd.read_csv(shared_data / "l1000_cmapPy_LJP005_A375_24H_level3_n377x978.csv.gz",
                         index_col=0)
    meta = pd.read_csv(shared_data / "l1000_cmapPy_LJP005_A375_24H_level3_n377x978_meta.csv",
                       index_col="inst_id").loc[values.index]
    plate = ad.AnnData(values.to_numpy(np.float32), obs=meta[["pert_type", "pert_iname",
                                                             "pert_dose"]].copy())
    z = zscore_plate(plate, reference="vehicle")
    Z = np.asarray(z.X)
    ctl = (meta.pert_type == "ctl_vehicle").to_numpy()
    # vehicle wells are centred at 0 with robust SD ~1 (or less where the MAD floor applies)
    np.testing.assert_allclose(np.median(Z[ctl], axis=0), 0, atol=1e-5)
    mad = 1.4826 * np.median(np.abs(Z[ctl]), axis=0)
    assert np.all(mad <= 1 + 1e-4) and np.median(mad) > 0.95
    # real dose response: treated wells at 10 uM move more genes than at 0.04 uM
    strength = np.abs(Z).mean(axis=1)
    hi = strength[(meta.pert_type == "trt_cp").to_numpy() & np.isclose(meta.pert_dose, 10)]
    lo = strength[(meta.pert_type == "trt_cp").to_numpy() & np.isclose(meta.pert_dose, 0.04)]
    assert hi.mean() > 1.2 * lo.mean()
    # plate-population reference gives a different but also centred result
    zp = zscore_plate(plate, reference="plate")
    np.testing.assert_allclose(np.median(np.asarray(zp.X), axis=0), 0, atol=1e-5)
    with pytest.raises(InputError, match="reference wells"):
        zscore_plate(plate[~ctl].copy(), reference="vehicle")


# HGNC renames between the 2016 landmark list and the symbols of the shRNA plate:
# genes are keyed by Entrez id because symbols go stale like this.
RENAMED = {
    "ADGRE5": "CD97", "ADGRG1": "GPR56", "B4GAT1": "B3GNT1", "C2CD5": "KIAA0528",
    "CHP1": "CHP", "CTSL": "CTSL1", "EFCAB14": "KIAA0494", "ERO1A": "ERO1L", "GPER1": "GPER",
    "HACD3": "PTPLAD1", "JADE2": "PHF15", "KIF1BP": "KIAA1279", "MCUR1": "CCDC90A",
    "MPC2": "BRP44", "MTERF3": "MTERFD1", "TBC1D31": "WDR67",
}


def test_shrna_plate_prepare(shared_data, tmp_path):
    values = pd.read_csv(shared_data / "l1000_cmapR_kd_shRNA_KD017_n374x976.csv.gz",
                         index_col=0)
    meta = pd.read_csv(shared_data / "l1000_cmapR_kd_shRNA_KD017_n374x976_meta.csv")
    lm = _landmarks(shared_data)
    sym_to_id = dict(zip(lm.pr_gene_symbol, lm.pr_gene_id, strict=True))
    sig_ids = ("KD017:" + meta.well_id).tolist()
    assert len(set(values.columns) - set(sym_to_id)) == len(RENAMED)
    write_gctx(tmp_path / "kd.gctx", values.to_numpy(np.float32), sig_ids,
               [sym_to_id[RENAMED.get(s, s)] for s in values.columns])
    pd.DataFrame({"sig_id": sig_ids, "pert_id": meta.pert_id, "cmap_name": meta.pert_mfc_desc,
                  "pert_type": meta.pert_type, "cell_iname": "unknown", "is_hiq": 1,
                  "pert_time": 96}).to_csv(tmp_path / "siginfo.txt", sep="\t", index=False)
    _geneinfo(lm, tmp_path / "geneinfo.txt")
    missing = sorted(set(lm.pr_gene_symbol) - {RENAMED.get(s, s) for s in values.columns})
    assert len(missing) == 2
    with pytest.raises(InputError, match="2 landmark genes .* missing"):
        prepare(tmp_path / "kd.gctx", tmp_path / "siginfo.txt", tmp_path / "geneinfo.txt",
                pert_type="trt_sh", times=None, progress=False)
    kd = prepare(tmp_path / "kd.gctx", tmp_path / "siginfo.txt", tmp_path / "geneinfo.txt",
                 pert_type="trt_sh", times=None, genes="all", progress=False)
    assert kd.n_obs == 334 and kd.n_vars == 976
    assert kd.obs["target_gene"].nunique() == 85
