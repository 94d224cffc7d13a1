"""read_gctx / write_gctx: exact subsets in requested order, both orientations."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moaspace.errors import InputError
from moaspace.io import read_gctx, read_gctx_meta, write_gctx


@st.composite
def gctx_case(draw):
    n_sig = draw(st.integers(1, 40))
    n_gene = draw(st.integers(1, 15))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_sig, n_gene)).astype(np.float32)
    sig_ids = [f"sig{i}:{rng.integers(1e6)}" for i in range(n_sig)]
    gene_ids = [str(1000 + 7 * i) for i in range(n_gene)]
    k_sig = draw(st.integers(1, n_sig))
    k_gene = draw(st.integers(1, n_gene))
    sig_sel = rng.permutation(n_sig)[:k_sig]
    gene_sel = rng.permutation(n_gene)[:k_gene]
    # a square matrix stored transposed is indistinguishable from the spec layout
    transposed = draw(st.booleans()) and n_sig != n_gene
    block_bytes = draw(st.sampled_from([1, 50, 400, 10_000, 2**26]))
    return X, sig_ids, gene_ids, sig_sel, gene_sel, transposed, block_bytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=gctx_case())
def test_read_subset_matches_dense_reference(tmp_path, case):
    X, sig_ids, gene_ids, sig_sel, gene_sel, transposed, block_bytes = case
    path = tmp_path / f"m_{transposed}.gctx"
    write_gctx(path, X, sig_ids, gene_ids, transposed=transposed, chunk_rows=7)
    adata = read_gctx(
        path,
        rids=[gene_ids[i] for i in gene_sel],
        cids=[sig_ids[i] for i in sig_sel],
        block_bytes=block_bytes,
    )
    np.testing.assert_array_equal(adata.X, X[np.ix_(sig_sel, gene_sel)])
    assert list(adata.obs_names) == [sig_ids[i] for i in sig_sel]
    assert list(adata.var_names) == [gene_ids[i] for i in gene_sel]


def test_read_all_and_orientation(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    sigs, genes = [f"s{i}" for i in range(6)], ["1", "2", "3", "4"]
    for transposed in (False, True):
        path = tmp_path / f"o{transposed}.gctx"
        write_gctx(path, X, sigs, genes, transposed=transposed)
        with h5py.File(path) as handle:
            shape = handle["/0/DATA/0/matrix"].shape
        assert shape == ((4, 6) if transposed else (6, 4))
        adata = read_gctx(path)
        np.testing.assert_array_equal(adata.X, X)
        assert adata.shape == (6, 4)
    rows, cols = read_gctx_meta(path)
    assert list(rows.index) == genes and list(cols.index) == sigs


def test_metadata_fields_are_kept(tmp_path):
    import pandas as pd

    X = np.zeros((3, 2), np.float32)
    path = tmp_path / "m.gctx"
    write_gctx(path, X, ["a", "b", "c"], ["1", "2"],
               row_meta=pd.DataFrame({"pr_gene_symbol": ["X", "Y"]}),
               col_meta=pd.DataFrame({"cell_id": ["A549", "MCF7", "PC3"]}))
    adata = read_gctx(path, cids=["c", "a"])
    assert list(adata.obs["cell_id"]) == ["PC3", "A549"]
    assert list(adata.var["pr_gene_symbol"]) == ["X", "Y"]


def test_missing_ids_are_named(tmp_path):
    path = tmp_path / "m.gctx"
    write_gctx(path, np.zeros((3, 2), np.float32), ["a", "b", "c"], ["1", "2"])
    with pytest.raises(InputError, match="'zz'.*not in the file|not in the file.*'zz'"):
        read_gctx(path, cids=["a", "zz"])
    with pytest.raises(InputError, match="'7'"):
        read_gctx(path, rids=["7"])
    with pytest.raises(InputError, match="duplicated"):
        read_gctx(path, cids=["a", "a"])


def test_nan_is_reported_with_signature_ids(tmp_path):
    X = np.zeros((4, 3), np.float32)
    X[2, 1] = np.nan
    X[3, 0] = np.inf
    path = tmp_path / "nan.gctx"
    write_gctx(path, X, ["a", "b", "c", "d"], ["1", "2", "3"])
    with pytest.raises(InputError, match=r"NaN or inf.*'c'.*'d'"):
        read_gctx(path)
    # unaffected selection reads fine
    assert read_gctx(path, cids=["a", "b"]).shape == (2, 3)


def test_not_a_gctx(tmp_path):
    bad = tmp_path / "bad.gctx"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(InputError, match="bad.gctx"):
        read_gctx(bad)
    with h5py.File(tmp_path / "empty.gctx", "w") as handle:
        handle.create_group("0")
    with pytest.raises(InputError, match="missing dataset /0/DATA/0/matrix"):
        read_gctx(tmp_path / "empty.gctx")
    with pytest.raises(InputError, match="not found"):
        read_gctx(tmp_path / "absent.gctx")


def test_duplicate_ids_in_file(tmp_path):
    path = tmp_path / "dup.gctx"
    with h5py.File(path, "w") as handle:
        handle["/0/DATA/0/matrix"] = np.zeros((3, 2), np.float32)
        handle["/0/META/ROW/id"] = np.array([b"1", b"2"])
        handle["/0/META/COL/id"] = np.array([b"a", b"b", b"a"])
    with pytest.raises(InputError, match="duplicated column ids.*'a'"):
        read_gctx(path)


def test_shape_mismatch(tmp_path):
    path = tmp_path / "shape.gctx"
    with h5py.File(path, "w") as handle:
        handle["/0/DATA/0/matrix"] = np.zeros((5, 2), np.float32)
        handle["/0/META/ROW/id"] = np.array([b"1", b"2"])
        handle["/0/META/COL/id"] = np.array([b"a", b"b", b"c"])
    with pytest.raises(InputError, match="matches neither"):
        read_gctx(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "full.gctx"
    write_gctx(path, np.ones((200, 50), np.float32), [f"s{i}" for i in range(200)],
               [str(i) for i in range(50)])
    data = path.read_bytes()
    cut = tmp_path / "cut.gctx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.gctx"):
        read_gctx(cut)


def test_write_is_atomic(tmp_path):
    path = tmp_path / "keep.gctx"
    write_gctx(path, np.ones((2, 2), np.float32), ["a", "b"], ["1", "2"])
    with pytest.raises(InputError):
        write_gctx(path, np.ones((3, 2), np.float32), ["a", "b"], ["1", "2"])
    with pytest.raises(InputError, match="duplicated"):
        write_gctx(path, np.ones((2, 2), np.float32), ["a", "a"], ["1", "2"])
    assert read_gctx(path).shape == (2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.gctx"]
