"""Property tests of the readers: correct output or InputError, never wrong values or
another exception type.

Beyond tests/test_gctx.py (random shapes, subsets and block sizes of plain ids):
ids with spaces and punctuation, metadata fields of every type, chunking and
compression, requests with unknown or repeated ids, malformed HDF5 layouts and
damaged bytes; the LINCS tables (siginfo, geneinfo, compoundinfo) and MoA tables
with random column orders and spellings, extra columns, missing values and
duplicated rows; and prepare() on shuffled files (rows, columns, matrix order).
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import make_lincs
from moaspace.errors import InputError
from moaspace.io import (
    compound_targets,
    read_compoundinfo,
    read_gctx,
    read_gctx_meta,
    read_geneinfo,
    read_moa_table,
    read_siginfo,
    write_gctx,
)
from moaspace.pp._prepare import prepare

MATRIX = "/0/DATA/0/matrix"
# derandomize: the same examples on every run, so CI cannot flake on a rare draw; run
# with HYPOTHESIS_EXPLORE=1 to draw new examples (and 10x more of them) when hunting bugs
EXPLORE = bool(os.environ.get("HYPOTHESIS_EXPLORE"))
FAST = settings(max_examples=300 if EXPLORE else 30, deadline=None, derandomize=not EXPLORE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# printable ASCII without control characters; ids may hold spaces and punctuation
ID_CHARS = string.ascii_letters + string.digits + " :_-.|/()[]+#@!%&*=~"
# strings pandas reads as missing values must not be generated as ids on purpose
NA_TOKENS = {"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "n/a", "<NA>", "-NaN",
             "-nan", "#N/A", "#NA", "1.#IND", "1.#QNAN", "-1.#IND", "-1.#QNAN", "#N/A N/A"}


def _ids(min_size: int, max_size: int, chars: str = ID_CHARS):
    return st.lists(st.text(chars, min_size=1, max_size=12), min_size=min_size,
                    max_size=max_size)


# --------------------------------------------------------------------------- GCTX


@st.composite
def gctx_case(draw):
    n_sig = draw(st.integers(1, 30))
    n_gene = draw(st.integers(1, 12))
    sig_ids = draw(_ids(n_sig, n_sig))
    gene_ids = draw(_ids(n_gene, n_gene, string.digits + " "))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_sig, n_gene)).astype(np.float32)
    meta = {}
    for k in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["int", "float", "str", "bool"]))
        if kind == "int":
            meta[f"f{k}_int"] = rng.integers(-5, 1000, n_sig)
        elif kind == "float":
            values = rng.standard_normal(n_sig)
            values[rng.random(n_sig) < 0.2] = np.nan
            meta[f"f{k}_float"] = values
        elif kind == "bool":
            meta[f"f{k}_bool"] = rng.random(n_sig) < 0.5
        else:
            meta[f"f{k}_str"] = draw(_ids(n_sig, n_sig))
    # requested ids: a subset in random order, sometimes with an unknown or a repeated id
    strip_sig = [s.strip() for s in sig_ids]
    strip_gene = [g.strip() for g in gene_ids]
    cids = None if draw(st.booleans()) else [strip_sig[i] for i in rng.permutation(n_sig)[
        : draw(st.integers(1, n_sig))]]
    rids = None if draw(st.booleans()) else [strip_gene[i] for i in rng.permutation(n_gene)[
        : draw(st.integers(1, n_gene))]]
    spoil = draw(st.sampled_from(["none", "none", "unknown", "repeat"]))
    if cids is None:
        spoil = "none"
    if spoil != "none":
        cids = [*cids, "NOT_IN_FILE"] if spoil == "unknown" else [*cids, cids[0]]
    return {
        "X": X, "sig_ids": sig_ids, "gene_ids": gene_ids, "meta": pd.DataFrame(meta),
        "cids": cids, "rids": rids, "spoil": spoil,
        # a square matrix stored transposed cannot be told apart (documented)
        "transposed": draw(st.booleans()) and n_sig != n_gene,
        "chunk_rows": draw(st.integers(1, 40)),
        "compression": draw(st.sampled_from([None, "gzip"])),
        "block_bytes": draw(st.sampled_from([1, 37, 400, 10_000, 2**26])),
    }


@FAST
@given(case=gctx_case())
def test_gctx_round_trip_or_input_error(case):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.gctx"
        exact_dup = (pd.Index(case["sig_ids"]).has_duplicates
                     or pd.Index(case["gene_ids"]).has_duplicates)
        try:
            write_gctx(path, case["X"], case["sig_ids"], case["gene_ids"],
                       col_meta=case["meta"], transposed=case["transposed"],
                       chunk_rows=case["chunk_rows"], compression=case["compression"])
        except InputError as exc:
            assert exact_dup and "duplicated" in str(exc)
            assert not path.exists() and not list(Path(tmp).iterdir())
            return
        assert not exact_dup
        # the reader strips surrounding whitespace from ids and string fields
        sigs = [s.strip() for s in case["sig_ids"]]
        genes = [g.strip() for g in case["gene_ids"]]
        stripped_dup = pd.Index(sigs).has_duplicates or pd.Index(genes).has_duplicates
        try:
            adata = read_gctx(path, rids=case["rids"], cids=case["cids"],
                              block_bytes=case["block_bytes"])
        except InputError as exc:
            assert str(path) in str(exc)
            assert stripped_dup or case["spoil"] != "none", str(exc)
            return
        assert not stripped_dup and case["spoil"] == "none"
        cids = sigs if case["cids"] is None else case["cids"]
        rids = genes if case["rids"] is None else case["rids"]
        rows = [sigs.index(c) for c in cids]
        cols = [genes.index(r) for r in rids]
        np.testing.assert_array_equal(adata.X, case["X"][np.ix_(rows, cols)])
        assert list(adata.obs_names) == cids and list(adata.var_names) == rids
        for name, values in case["meta"].items():
            got = adata.obs[name].to_numpy()
            want = np.asarray(values)[rows]
            if name.endswith("_str"):
                want = np.array([str(v).strip() for v in want], dtype=object)
            np.testing.assert_array_equal(got, want, err_msg=name)
        rows_meta, cols_meta = read_gctx_meta(path)
        assert list(cols_meta.index) == sigs and list(rows_meta.index) == genes


def test_gctx_utf8_ids_written_by_others_are_read(tmp_path):
    path = tmp_path / "utf8.gctx"
    with h5py.File(path, "w") as handle:
        handle[MATRIX] = np.arange(6, dtype=np.float32).reshape(3, 2)
        handle["/0/META/ROW/id"] = np.array([b"7157", b"1956"])
        handle["/0/META/COL/id"] = np.array([s.encode("utf-8") for s in
                                             ("Zürich_A549:1", "β-arrestin:2", "plain:3")])
    adata = read_gctx(path, cids=["β-arrestin:2", "Zürich_A549:1"])
    assert list(adata.obs_names) == ["β-arrestin:2", "Zürich_A549:1"]
    np.testing.assert_array_equal(adata.X, [[2, 3], [0, 1]])


def test_gctx_non_ascii_ids_round_trip(tmp_path):
    X = np.arange(4, dtype=np.float32).reshape(2, 2)
    path = write_gctx(tmp_path / "u.gctx", X, ["Zürich:1", "β:2"], ["7157", "1956"],
                      col_meta=pd.DataFrame({"cell_iname": ["MCF7", "Hélà"]}))
    adata = read_gctx(path)
    assert list(adata.obs_names) == ["Zürich:1", "β:2"]
    assert list(adata.obs["cell_iname"]) == ["MCF7", "Hélà"]


def test_write_gctx_metadata_column_named_id(tmp_path):
    X = np.zeros((2, 2), np.float32)
    with pytest.raises(InputError, match="'id'"):
        write_gctx(tmp_path / "m.gctx", X, ["a", "b"], ["1", "2"],
                   col_meta=pd.DataFrame({"id": ["x", "y"], "cell": ["A549", "PC3"]}))
    assert list(tmp_path.iterdir()) == []


def test_write_gctx_without_signatures(tmp_path):
    path = tmp_path / "empty.gctx"
    try:
        write_gctx(path, np.zeros((0, 3), np.float32), [], ["1", "2", "3"])
    except InputError as exc:
        assert "empty.gctx" in str(exc)
        return
    assert read_gctx(path).shape == (0, 3)


def _layout(handle, kind: str) -> None:
    """Write a malformed GCTX layout of the given kind into an open HDF5 file."""
    rows, cols = np.array([b"1", b"2", b"3"]), np.array([b"a", b"b"])
    matrix = np.zeros((2, 3), np.float32)
    if kind == "matrix-3d":
        matrix = np.zeros((2, 3, 1), np.float32)
    if kind == "matrix-is-group":
        handle.create_group(MATRIX)
    elif kind == "matrix-of-strings":
        handle[MATRIX] = np.array([[b"x"] * 3] * 2)
    else:
        handle[MATRIX] = matrix
    if kind == "no-row-ids":
        handle.create_group("/0/META/ROW")
    elif kind == "row-id-is-group":
        handle.create_group("/0/META/ROW/id")
    elif kind == "row-id-scalar":
        handle["/0/META/ROW/id"] = b"1"
    else:
        handle["/0/META/ROW/id"] = rows
    if kind == "col-id-2d":
        handle["/0/META/COL/id"] = cols.reshape(1, 2)
    elif kind == "col-id-bad-utf8":
        handle["/0/META/COL/id"] = np.array([b"a", b"\xff\xfe"])
    else:
        handle["/0/META/COL/id"] = cols
    if kind == "meta-wrong-length":
        handle["/0/META/COL/cell_iname"] = np.array([b"A549", b"MCF7", b"PC3"])




@pytest.mark.parametrize("kind", [
    "matrix-3d", "no-row-ids", "col-id-2d",
    pytest.param("matrix-is-group"),
    pytest.param("matrix-of-strings"),
    pytest.param("row-id-is-group"),
    pytest.param("row-id-scalar"),
    pytest.param("col-id-bad-utf8"),
])
def test_malformed_gctx_layout_is_input_error(tmp_path, kind):
    path = tmp_path / f"{kind}.gctx"
    with h5py.File(path, "w") as handle:
        _layout(handle, kind)
    with pytest.raises(InputError, match=kind):
        read_gctx(path)


def test_metadata_field_of_wrong_length_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "meta-wrong-length.gctx"
    with h5py.File(path, "w") as handle:
        _layout(handle, "meta-wrong-length")
    adata = read_gctx(path)
    assert adata.shape == (2, 3) and "cell_iname" not in adata.obs
    assert "ignoring /0/META/COL/cell_iname" in caplog.text


@pytest.fixture(scope="module")
def gzip_gctx(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 20)).astype(np.float32)
    path = tmp_path_factory.mktemp("gz") / "base.gctx"
    write_gctx(path, X, [f"s{i}" for i in range(50)], [str(i) for i in range(20)],
               chunk_rows=8, compression="gzip",
               col_meta=pd.DataFrame({"cell_iname": ["A549", "MCF7"] * 25}))
    return path.read_bytes(), X


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=150, deadline=None, derandomize=True)
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=4))
def test_damaged_bytes_give_input_error_or_the_original(gzip_gctx, edits):
    """Bit rot anywhere in the file: an InputError, or (damage in unused bytes) the data.

    Damage inside an id or string field can still yield different ids (HDF5 keeps
    no checksum on them); prepare then fails on the id check, see reliability.md.
    """
    data, _ = gzip_gctx
    damaged = bytearray(data)
    for where, value in edits:
        damaged[int(where * len(damaged))] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.gctx"
        path.write_bytes(bytes(damaged))
        try:
            read_gctx(path)
        except InputError as exc:
            assert str(path) in str(exc)


# --------------------------------------------------------------------------- LINCS tables


def _write_tsv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, sep="\t", index=False)
    return path


@st.composite
def siginfo_case(draw):
    n = draw(st.integers(1, 25))
    ids = draw(st.lists(st.text(ID_CHARS.replace(" ", ""), min_size=1, max_size=10)
                        .map(lambda s: "S" + s), min_size=n, max_size=n, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    frame = pd.DataFrame({
        "sig_id": ids,
        "pert_id": [f"BRD-K{v:08d}" for v in rng.integers(0, 50, n)],
        "pert_type": rng.choice(["trt_cp", "trt_xpr", "ctl_vehicle"], n),
        "cell_iname": rng.choice(["A549", "MCF7", "0042", "HT 29"], n),  # '0042' stays text
        "cmap_name": rng.choice(["rapamycin", "001-drug", "NA drug"], n),
        "pert_time": rng.choice([6.0, 24.0, np.nan], n),
        "tas": np.where(rng.random(n) < 0.2, np.nan, rng.random(n).round(4)),
    })
    for k in range(draw(st.integers(0, 3))):
        frame[f"extra_{k}"] = rng.choice(["x", "", "y z"], n)
    order = draw(st.permutations(list(frame.columns)))
    dup = draw(st.booleans()) and n > 1
    drop = draw(st.sampled_from([None, None, None, "sig_id", "pert_type", "cell_iname"]))
    return frame[order], dup, drop


@FAST
@given(case=siginfo_case())
def test_read_siginfo_property(case):
    frame, dup, drop = case
    with tempfile.TemporaryDirectory() as tmp:
        written = frame
        if dup:
            written = pd.concat([frame, frame.iloc[[len(frame) // 2]]])
        if drop:
            written = written.drop(columns=[drop])
        path = _write_tsv(written, Path(tmp) / "siginfo_beta.txt")
        try:
            got = read_siginfo(path)
        except InputError as exc:
            assert str(path) in str(exc)
            if drop:
                assert drop in str(exc) and "lacks required columns" in str(exc)
            else:
                assert dup and repr(frame.sig_id.iloc[len(frame) // 2]) in str(exc)
            return
        assert not dup and not drop
        assert list(got.index) == list(frame.sig_id)
        for column in frame.columns:
            want = frame[column].to_numpy()
            have = got.loc[frame.sig_id, column].to_numpy()
            if column in ("pert_time", "tas"):
                np.testing.assert_array_equal(have.astype(float), want.astype(float))
            elif column.startswith("extra_"):
                want = np.where(want == "", np.nan, want).astype(object)
                assert [str(v) for v in have] == [str(v) for v in want], column
            else:
                assert list(have) == list(want), column


@FAST
@given(
    n=st.integers(1, 30),
    pad=st.booleans(),
    dup=st.booleans(),
    extra=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_read_geneinfo_property(n, pad, dup, extra, seed):
    rng = np.random.default_rng(seed)
    ids = [str(v) for v in rng.choice(np.arange(1, 10**6), n, replace=False)]
    ids[0] = "0" + ids[0]  # a leading zero must survive (ids are text)
    frame = pd.DataFrame({"gene_id": [f" {g} " if pad else g for g in ids],
                          "gene_symbol": [f"G{i}" for i in range(n)],
                          "feature_space": rng.choice(["landmark", "best inferred",
                                                       "inferred"], n)})
    for k in range(extra):
        frame.insert(0, f"x{k}", rng.integers(0, 9, n))
    frame = frame[list(rng.permutation(frame.columns))]
    if dup and n > 1:
        frame = pd.concat([frame, frame.iloc[[n - 1]]])
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_tsv(frame, Path(tmp) / "geneinfo_beta.txt")
        try:
            got = read_geneinfo(path)
        except InputError as exc:
            assert dup and n > 1 and repr(ids[-1]) in str(exc) and str(path) in str(exc)
            return
        assert not (dup and n > 1)
        assert list(got.index) == ids
        assert list(got.loc[ids, "gene_symbol"]) == [f"G{i}" for i in range(n)]


@FAST
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 9), st.lists(st.sampled_from(["EGFR", "MTOR", "HDAC1",
                                                               "TP53", ""]), max_size=3),
                  st.sampled_from(["|", ", ", ","])),
        min_size=1, max_size=20),
    keep_optional=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_compoundinfo_and_targets_property(rows, keep_optional, seed):
    """One row per compound-target pair or several targets per cell: same target sets."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "pert_id": [f"BRD-K{c:08d}" for c, _, _ in rows],
        "cmap_name": [f"drug{c}" for c, _, _ in rows],
        "target": [sep.join(t) for _, t, sep in rows],
        "moa": "some MoA",
        "canonical_smiles": "C",
    })
    if not keep_optional:
        frame = frame.drop(columns=["target", "moa", "canonical_smiles"])
    frame = frame[list(rng.permutation(frame.columns))]
    with tempfile.TemporaryDirectory() as tmp:
        got = read_compoundinfo(_write_tsv(frame, Path(tmp) / "compoundinfo_beta.txt"))
    for column in ("target", "moa", "canonical_smiles", "inchi_key"):
        assert column in got.columns
    want: dict[str, set[str]] = {}
    if keep_optional:
        for c, targets, _ in rows:
            genes = {t for t in targets if t}
            if genes:
                want.setdefault(f"BRD-K{c:08d}", set()).update(genes)
    # a cell of separators only ('|') may give an empty set: the same as no entry
    assert {c: t for c, t in compound_targets(got).items() if t} == want


ID_SPELLINGS = ["pert_id", "BRD-ID", "brd_id", "BRD ID", "Broad_ID", "compound_id", "PERT_ID"]
MOA_SPELLINGS = ["moa", "MOA", "Mechanism", "mechanism_of_action", "MoA"]
NAME_SPELLINGS = ["cmap_name", "Drug name", "drug_name", "pert_iname", "Name", None]
MOA_WORDS = ["HDAC inhibitor", "MTOR inhibitor", "EGFR inhibitor", "glucocorticoid receptor "
             "agonist", "tubulin inhibitor, vinca", "5-HT3/receptor antagonist"]


@FAST
@given(
    entries=st.lists(st.tuples(st.integers(0, 15), st.integers(0, len(MOA_WORDS) - 1),
                               st.booleans()), min_size=1, max_size=30),
    id_col=st.sampled_from(ID_SPELLINGS), moa_col=st.sampled_from(MOA_SPELLINGS),
    name_col=st.sampled_from(NAME_SPELLINGS), ext=st.sampled_from([".csv", ".tsv", ".txt"]),
    blanks=st.integers(0, 3), extra=st.booleans(), seed=st.integers(0, 2**16),
)
def test_read_moa_table_property(entries, id_col, moa_col, name_col, ext, blanks, extra,
                                 seed):
    rng = np.random.default_rng(seed)
    records = []
    for cpd, moa, pad in entries:
        pid = f"BRD-K{cpd:08d}"
        records.append({id_col: f"  {pid} " if pad else pid,
                        moa_col: f"{MOA_WORDS[moa]} " if pad else MOA_WORDS[moa],
                        **({name_col: f"drug {cpd}"} if name_col else {}),
                        **({"notes": "checked"} if extra else {})})
    for _ in range(blanks):  # rows lacking an id or a MoA are skipped
        records.append({id_col: f"BRD-K{rng.integers(100, 200):08d}", moa_col: ""})
        records.append({id_col: "", moa_col: "orphan MoA"})
    frame = pd.DataFrame(records)
    frame = frame[list(rng.permutation(frame.columns))].sample(frac=1.0, random_state=seed)
    moas: dict[str, set[str]] = {}
    for cpd, moa, _ in entries:
        moas.setdefault(f"BRD-K{cpd:08d}", set()).add(MOA_WORDS[moa])
    conflicts = sorted(c for c, m in moas.items() if len(m) > 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"labels{ext}"
        frame.to_csv(path, sep="," if ext == ".csv" else "\t", index=False)
        try:
            got = read_moa_table(path)
        except InputError as exc:
            assert conflicts and "more than one MoA" in str(exc) and str(path) in str(exc)
            assert repr(conflicts[0]) in str(exc)
            return
    assert not conflicts
    assert dict(zip(got.index, got["moa"], strict=True)) == {c: m.pop() for c, m in
                                                              moas.items()}
    if name_col:
        assert all(got.loc[c, "cmap_name"] == f"drug {int(c[5:])}" for c in got.index)


# --------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_release")
    info = make_lincs(root / "lincs")
    p = info["paths"]
    reference = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"],
                        p["moa_labels"], min_compounds_per_moa=2, genes="all", progress=False)
    return info, reference


@settings(max_examples=8, deadline=None, derandomize=not EXPLORE,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), transposed=st.booleans(), extra_cols=st.booleans())
def test_prepare_is_invariant_to_file_order(release, seed, transposed, extra_cols):
    """Shuffle the matrix rows and columns, the rows and columns of every table and the
    MoA table: every value and label must still sit with its own signature and gene."""
    info, reference = release
    rng = np.random.default_rng(seed)
    si = info["siginfo"]
    cp = si[si.pert_type == "trt_cp"].reset_index(drop=True)
    X = info["X_cp"]
    genes = np.asarray(info["gene_ids"])
    assume(not transposed or len(cp) != len(genes))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = info["paths"]
        sig_order, gene_order = rng.permutation(len(cp)), rng.permutation(len(genes))
        write_gctx(tmp / "m.gctx", X[np.ix_(sig_order, gene_order)],
                   cp.sig_id.to_numpy()[sig_order], genes[gene_order], transposed=transposed, chunk_rows=int(rng.integers(1, 64)))
        siginfo = si.sample(frac=1.0, random_state=seed)
        if extra_cols:
            siginfo = siginfo.assign(zz_note="x", aa_batch=rng.integers(0, 5, len(siginfo)))
        siginfo = siginfo[list(rng.permutation(siginfo.columns))]
        siginfo.to_csv(tmp / "siginfo.txt", sep="\t", index=False)
        gi = pd.read_csv(src["geneinfo"], sep="\t", dtype=str)
        gi = gi.sample(frac=1.0, random_state=seed)
        gi[list(rng.permutation(gi.columns))].to_csv(tmp / "geneinfo.txt", sep="\t",
                                                     index=False)
        ci = pd.read_csv(src["compoundinfo"], sep="\t", dtype=str).sample(frac=1.0,
                                                                        random_state=seed)
        ci.to_csv(tmp / "compoundinfo.txt", sep="\t", index=False)
        labels = pd.read_csv(src["moa_labels"], dtype=str).sample(frac=1.0, random_state=seed)
        labels[list(rng.permutation(labels.columns))].to_csv(tmp / "labels.csv", index=False)
        got = prepare(tmp / "m.gctx", tmp / "siginfo.txt", tmp / "geneinfo.txt",
                      tmp / "compoundinfo.txt", tmp / "labels.csv", min_compounds_per_moa=2,
                      genes="all", progress=False)
    assert sorted(got.obs_names) == sorted(reference.obs_names)
    assert sorted(got.var_names) == sorted(reference.var_names)
    got = got[reference.obs_names, reference.var_names]
    np.testing.assert_array_equal(got.X, reference.X)
    for column in ("pert_id", "cmap_name", "moa", "cell_iname", "pert_time", "tas"):
        assert got.obs[column].tolist() == reference.obs[column].tolist(), column
    assert got.var["gene_symbol"].tolist() == reference.var["gene_symbol"].tolist()

