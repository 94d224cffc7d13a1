"""What a user brings to `predict`: GCT / GCTX / TSV / CSV / .h5ad queries read by
moaspace.io.read_query (metadata to obs, rows to Entrez ids, Latin-1 or UTF-8 text), the
same calls whatever the format, and `prepare --matrix` without a MoA table."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pandas as pd
import pytest

from _cli import assert_clean_failure, cli
from _landmark_model import landmark_model_dir
from conftest import landmarks
from moaspace.errors import InputError
from moaspace.io import query_from_matrix, read_query, write_gctx
from moaspace.io.query import sniff_format
from moaspace.pp import read_h5ad, write_h5ad
from moaspace.serve import prediction_entry

REAL_GCTX = "real_gct/modzs_n272x978.gctx"
REAL_GCT = "real_gct/modzs_n272x978.gct.gz"


def _write_gct(path, x: np.ndarray, sigs, rows, *, row_meta: dict, col_meta: dict,
               encoding: str = "utf-8") -> None:
    """GCT 1.3: genes in rows (``rows``), signatures in columns, with metadata."""
    n_rm, n_cm = len(row_meta), len(col_meta)
    lines = ["#1.3", f"{len(rows)}\t{len(sigs)}\t{n_rm}\t{n_cm}",
             "\t".join(["id", *row_meta, *sigs])]
    for field, values in col_meta.items():
        lines.append("\t".join([field, *["na"] * n_rm, *map(str, values)]))
    for i, row in enumerate(rows):
        meta = [str(v[i]) for v in row_meta.values()]
        lines.append("\t".join([row, *meta, *(f"{v:.6f}" for v in x[:, i])]))
    data = ("\n".join(lines) + "\n").encode(encoding)
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture(scope="module")
def small():
    lm = landmarks().iloc[:40]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    sigs = [f"SIG{i}" for i in range(6)]
    return x, sigs, lm


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_gct_with_metadata_in_utf8_or_latin1_is_read(tmp_path, small, encoding):
    x, sigs, lm = small
    path = tmp_path / "q.gct.gz"
    _write_gct(path, x, sigs, lm["probe_id"].tolist(),
               row_meta={"pr_gene_id": lm["pr_gene_id"].tolist()},
               col_meta={"pert_id": [f"BRD-{i % 2}" for i in range(6)],
                         "pert_idose": ["10 µM"] * 6, "distil_ss": [1.5, "na", 2, 3, 4, 5]},
               encoding=encoding)
    adata = read_query(path)
    assert adata.var_names.tolist() == lm["pr_gene_id"].tolist()
    assert adata.var["row_id"].tolist() == lm["probe_id"].tolist()
    assert adata.obs_names.tolist() == sigs
    assert adata.obs["pert_idose"].tolist() == ["10 µM"] * 6
    assert adata.obs["pert_id"].tolist() == ["BRD-0", "BRD-1"] * 3
    assert np.isnan(adata.obs["distil_ss"].iloc[1]) and adata.obs["distil_ss"].iloc[2] == 2
    np.testing.assert_allclose(adata.X, x, atol=1e-6)


def test_tsv_with_probe_ids_maps_to_entrez_and_csv_either_way(tmp_path, small):
    x, sigs, lm = small
    frame = pd.DataFrame(x, index=sigs, columns=lm["probe_id"])
    frame.to_csv(tmp_path / "q.tsv", sep="\t")
    frame.T.to_csv(tmp_path / "q.csv")  # genes in rows this time
    for name in ("q.tsv", "q.csv"):
        adata = read_query(tmp_path / name)
        assert adata.var_names.tolist() == lm["pr_gene_id"].tolist(), name
        np.testing.assert_allclose(adata.X, x, atol=1e-6)


def test_two_probes_of_one_gene_are_refused_by_name(tmp_path, small):
    x, sigs, lm = small
    cols = lm["probe_id"].tolist()
    cols[1] = lm["pr_gene_id"].iloc[0]  # a probe and the Entrez id of the same gene
    pd.DataFrame(x, index=sigs, columns=cols).to_csv(tmp_path / "q.tsv", sep="\t")
    with pytest.raises(InputError, match=r"q.tsv: rows map to duplicated Entrez ids: \['16'\]"):
        read_query(tmp_path / "q.tsv")


def test_h5ad_and_gctx_queries(tmp_path, small):
    x, sigs, lm = small
    path = tmp_path / "q.gctx"
    write_gctx(path, x, sigs, lm["pr_gene_id"], col_meta=pd.DataFrame({"cell_id": ["A"] * 6}))
    adata = read_query(path)
    assert adata.obs["cell_iname"].tolist() == ["A"] * 6  # CMap's cell_id, moaspace's name
    write_h5ad(adata, tmp_path / "q.h5ad")
    again = read_query(tmp_path / "q.h5ad")
    np.testing.assert_array_equal(again.X, adata.X)
    assert again.var_names.tolist() == lm["pr_gene_id"].tolist()
    # no usable name: told from the first bytes
    (tmp_path / "upload").write_bytes(path.read_bytes())
    assert read_query(tmp_path / "upload").shape == (6, 40)


def test_sniff_format():
    assert sniff_format(b"\x89HDF\r\n\x1a\nrest") == ".h5"
    assert sniff_format(b"\x1f\x8b\x08") == ".tsv.gz"
    assert sniff_format(b"#1.3\n2\t3") == ".gct"
    assert sniff_format(b"sig\t16\t23\nA\t1\t2") == ".tsv"
    assert sniff_format(b"sig,16,23\nA,1,2") == ".csv"
    for junk, message in ((b"", "empty"), (b"\x00\x01\x02junk", "neither text")):
        with pytest.raises(InputError, match=message):
            sniff_format(junk)


def test_limits_refuse_a_gzip_bomb_and_big_hdf5(tmp_path, small):
    bomb = tmp_path / "bomb.tsv.gz"
    with gzip.open(bomb, "wb") as fh:  # 20 MB of zeros in ~20 kB
        fh.write(b"sig\t16\n" + b"0" * 20_000_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match="decompresses to more than the limit"):
        read_query(bomb, max_bytes=1_000_000)
    big = tmp_path / "big.gctx"
    write_gctx(big, np.zeros((2000, 978), np.float32), [f"s{i}" for i in range(2000)],
               landmarks()["pr_gene_id"], compression="gzip")
    assert big.stat().st_size < 1_000_000
    with pytest.raises(InputError, match="once decompressed, over the limit"):
        read_query(big, max_bytes=1_000_000)


@pytest.mark.parametrize("case", ["empty", "junk", "nan", "text-value", "dir"])
def test_bad_query_files_name_the_file(tmp_path, case):
    path = tmp_path / "q.tsv"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "junk":
        path = tmp_path / "q.gctx"
        path.write_bytes(bytes(range(256)) * 4)
    elif case == "nan":
        path.write_text("sig\t16\t23\nA\t1\tNaN\n")
    elif case == "text-value":
        path.write_text("sig\t16\t23\nA\t1\tabc\n")
    else:
        path = tmp_path / "q.h5ad"
        path.mkdir()
    with pytest.raises(InputError, match=path.name):
        read_query(path)


def test_query_from_matrix_checks_its_shape():
    lm = landmarks()
    adata = query_from_matrix([[0.5, 1.0]], lm["probe_id"].iloc[:2], ["S1"],
                              obs={"pert_id": ["BRD-1"]})
    assert adata.var_names.tolist() == lm["pr_gene_id"].iloc[:2].tolist()
    assert adata.obs.loc["S1", "pert_id"] == "BRD-1"
    with pytest.raises(InputError, match="values have shape"):
        query_from_matrix([[0.5, 1.0]], ["16"], ["S1"])
    with pytest.raises(InputError, match="2-D array of numbers"):
        query_from_matrix([["a", "b"]], ["16", "23"])
    with pytest.raises(InputError, match="duplicated gene ids"):
        query_from_matrix([[0.5, 1.0]], ["16", "16"])


# ------------------------------------------------------------------ the real CMap files


def test_real_gctx_with_latin1_metadata_and_its_gct_agree(shared_data):
    gctx = read_query(shared_data / REAL_GCTX)  # refused with UnicodeDecodeError before
    gct = read_query(shared_data / REAL_GCT)
    assert gctx.shape == gct.shape == (272, 978)
    assert gctx.var_names.tolist() == gct.var_names.tolist()
    assert set(gctx.var_names) == set(landmarks()["pr_gene_id"])
    assert gctx.obs_names.tolist() == gct.obs_names.tolist()
    assert set(gctx.obs["pert_idose"]) >= {"10 µM", "100 nM"}
    for column in ("pert_id", "pert_iname", "pert_idose", "cell_id", "pert_itime"):
        assert gctx.obs[column].tolist() == gct.obs[column].tolist(), column
    # the text file holds the values rounded to 4 decimals
    np.testing.assert_allclose(gctx.X, gct.X, atol=5.1e-5)


@pytest.fixture(scope="module")
def landmark_model():
    return landmark_model_dir()


def _predict_cli(model, path, out):
    res = cli("predict", model, path, "--out", out, "--compound-level")
    assert res.code == 0 and res.exception is None, res.stderr[-2000:]
    return read_h5ad(out), pd.read_csv(out.with_name(out.stem + ".compounds.csv"))


def test_cli_predict_real_gctx_and_gct_gz_give_identical_calls(shared_data, landmark_model,
                                                                tmp_path):
    """The GCT holds the GCTX's values rounded to 4 decimals (checked bit for bit below):
    with those values the GCTX gives the GCT's calls exactly; as published, every top MoA
    is the same and an open-set call may differ only where its unknown score is within
    the rounding of the threshold."""
    gctx = read_query(shared_data / REAL_GCTX)
    rounded = np.round(gctx.X.astype(np.float64), 4).astype(np.float32)
    np.testing.assert_array_equal(rounded, read_query(shared_data / REAL_GCT).X)
    write_gctx(tmp_path / "rounded.gctx", rounded, gctx.obs_names, gctx.var_names,
               col_meta=gctx.obs[["pert_id", "pert_idose"]].reset_index(drop=True))
    a, calls_a = _predict_cli(landmark_model, shared_data / REAL_GCTX, tmp_path / "gctx.h5ad")
    b, calls_b = _predict_cli(landmark_model, shared_data / REAL_GCT, tmp_path / "gct.h5ad")
    r, calls_r = _predict_cli(landmark_model, tmp_path / "rounded.gctx", tmp_path / "r.h5ad")
    assert a.n_obs == 272 and a.obs_names.tolist() == b.obs_names.tolist()
    assert r.obs["moa_pred"].tolist() == b.obs["moa_pred"].tolist()
    np.testing.assert_array_equal(r.obs["moa_pred_score"], b.obs["moa_pred_score"])
    assert calls_r["moa_pred"].tolist() == calls_b["moa_pred"].tolist()
    assert a.obs["moa_pred_known"].tolist() == b.obs["moa_pred_known"].tolist()
    np.testing.assert_allclose(a.obsm["moa_scores"], b.obsm["moa_scores"], atol=1e-3)
    threshold = prediction_entry(a)["params"]["unknown_threshold"]
    score_a, score_b = (p.obs["moa_unknown_score"].to_numpy() for p in (a, b))
    assert np.abs(score_a - score_b).max() < 1e-4
    # a flip needs the threshold between the two scores
    far = np.minimum(np.abs(score_a - threshold), np.abs(score_b - threshold)) > np.abs(
        score_a - score_b)
    assert far.mean() > 0.95
    assert (a.obs["moa_pred"].to_numpy() == b.obs["moa_pred"].to_numpy())[far].all()
    assert calls_a["moa_pred"].tolist() == calls_b["moa_pred"].tolist()
    assert len(calls_a) == a.obs["pert_id"].nunique() == 6  # 3 drugs, 6 pert_ids
    assert a.obs["pert_idose"].iloc[0] == "10 µM" and a.obs["cmap_name"].iloc[0] == "atorvastatin"


def test_cli_predict_takes_every_format_with_the_same_calls(saved_model, tmp_path):
    query = saved_model["query"]
    x = np.asarray(query.X)
    frame = pd.DataFrame(x, index=query.obs_names, columns=query.var_names)
    paths = {"h5ad": saved_model["root"] / "query.h5ad", "tsv": tmp_path / "q.tsv",
             "csv.gz": tmp_path / "q.csv.gz", "gctx": tmp_path / "q.gctx",
             "gct": tmp_path / "q.gct"}
    frame.to_csv(paths["tsv"], sep="\t", float_format="%.9g")
    frame.T.to_csv(paths["csv.gz"], float_format="%.9g")
    write_gctx(paths["gctx"], x, query.obs_names, query.var_names,
               col_meta=query.obs[["pert_id"]].reset_index(drop=True))
    _write_gct(paths["gct"], x, query.obs_names.tolist(), query.var_names.tolist(),
               row_meta={}, col_meta={"pert_id": query.obs["pert_id"].tolist()})
    calls = {}
    for fmt, path in paths.items():
        out = tmp_path / f"pred_{fmt.replace('.', '_')}.h5ad"
        res = cli("predict", saved_model["model_dir"], path, "--out", out)
        assert res.code == 0 and res.exception is None, (fmt, res.stderr[-2000:])
        calls[fmt] = read_h5ad(out)
    ref = calls["h5ad"]
    for fmt, pred in calls.items():
        assert pred.obs["moa_pred"].tolist() == ref.obs["moa_pred"].tolist(), fmt
        np.testing.assert_allclose(pred.obs["moa_pred_score"], ref.obs["moa_pred_score"],
                                   atol=1e-5, err_msg=fmt)


def test_cli_predict_names_a_bad_file(saved_model, tmp_path):
    junk = tmp_path / "q.gctx"
    junk.write_bytes(b"not hdf5 at all")
    res = cli("predict", saved_model["model_dir"], junk, "--out", tmp_path / "p.h5ad")
    assert_clean_failure(res, "q.gctx")
    bad = tmp_path / "q.txt"
    bad.write_text("sig\t1000\t1001\nS1\t0.1\toops\n")
    res = cli("predict", saved_model["model_dir"], bad, "--out", tmp_path / "p.h5ad")
    assert_clean_failure(res, "q.txt", "non-numeric value 'oops'")
    assert not (tmp_path / "p.h5ad").exists()


def test_prepare_a_query_matrix_without_moa_table(shared_data, tmp_path, landmark_model):
    out = tmp_path / "query.h5ad"
    res = cli("prepare", "--matrix", shared_data / REAL_GCT, "--out", out)
    assert res.code == 0 and res.exception is None, res.stderr[-2000:]
    adata = read_h5ad(out)
    assert adata.shape == (272, 978) and "moa" not in adata.obs
    assert adata.var_names.tolist() == landmarks()["pr_gene_id"].tolist()
    assert adata.var.loc["16", "gene_symbol"] == "AARS"
    assert adata.obs["cmap_name"].nunique() == 3 and adata.obs["pert_idose"].iloc[0] == "10 µM"
    res = cli("predict", landmark_model, out, "--out", tmp_path / "pred.h5ad")
    assert res.code == 0, res.stderr[-2000:]
    direct = tmp_path / "direct.h5ad"
    assert cli("predict", landmark_model, shared_data / REAL_GCT, "--out", direct).code == 0
    assert (read_h5ad(tmp_path / "pred.h5ad").obs["moa_pred"].tolist()
            == read_h5ad(direct).obs["moa_pred"].tolist())


def test_h5_id_check_is_unchanged_for_bad_utf8_ids(tmp_path, small):
    """Metadata may be Latin-1; ids must still be UTF-8 (a damaged id is not guessed)."""
    x, sigs, lm = small
    path = tmp_path / "q.gctx"
    write_gctx(path, x, sigs, lm["pr_gene_id"])
    with h5py.File(path, "r+") as handle:
        ids = handle["/0/META/COL/id"][()]
        ids[0] = b"\xb5BROKEN"
        del handle["/0/META/COL/id"]
        handle["/0/META/COL/id"] = ids
    with pytest.raises(InputError, match="not UTF-8"):
        read_query(path)
