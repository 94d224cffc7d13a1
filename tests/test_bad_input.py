"""Bad input through the CLI and the API: one clear error, the right exit code, no output.

Every failure case checks that

* the CLI exits 1 (2 for usage errors) with a last stderr line ``Error: ...`` that
  names the file / ids / columns at fault, and no traceback (``--verbose`` off);
* the library raises :class:`moaspace.errors.MoaspaceError` (``InputError``) with
  the same information, never another exception type;
* no output appears, a pre-existing output is byte-identical afterwards and no
  temporary file is left beside it.

Most CLI calls run in-process (``typer.testing.CliRunner``: real exit codes and a
separate stderr; an uncaught exception shows up as ``result.exception``); a few
representative ones run ``python -m moaspace.cli`` in a subprocess so that the
exit status and stderr are those a shell sees. A case the code gets wrong would be
``xfail(strict=True)`` with the reason and listed in ``docs/reliability.md`` (none today).

Already covered elsewhere (not repeated): tests/test_prepare.py (API errors for
missing/extra/duplicated siginfo ids, empty selection by time, MoA-table columns,
conflicts and single MoA, symbols as row ids, swapped ids), tests/test_cli.py
(one-line error + ``--verbose`` traceback, failed run keeps old output, usage
errors, unwritable prepare output), tests/test_gctx.py (non-HDF5, truncated,
duplicated/missing ids, NaN, shape mismatch) and tests/test_model.py (load errors,
gene order, missing genes, symbol hint at the API level).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from _cli import assert_clean_failure, cli, cli_proc, snapshot
from _synthetic import make_synthetic
from moaspace.errors import InputError, MoaspaceError
from moaspace.io import read_gctx, write_gctx
from moaspace.model import MoaModel
from moaspace.pp._prepare import prepare, read_h5ad, write_h5ad

MATRIX = "/0/DATA/0/matrix"


# --------------------------------------------------------------------------- helpers


def _prepare_args(p: dict, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--gctx", p["gctx"], "--siginfo", p["siginfo"], "--geneinfo",
            p["geneinfo"], "--compoundinfo", p["compoundinfo"], "--moa-labels",
            p["moa_labels"], "--out", out, "--min-compounds-per-moa", "2", *extra]


def _api_kwargs(extra: tuple[str, ...]) -> dict:
    """The CLI options used below, as prepare() keyword arguments."""
    kwargs: dict = {"min_compounds_per_moa": 2, "progress": False}
    flags = dict(zip(extra[::2], extra[1::2], strict=True))
    if "--pert-type" in flags:
        kwargs["pert_type"] = flags["--pert-type"]
    if "--min-tas" in flags:
        kwargs["min_tas"] = float(flags["--min-tas"])
    return kwargs


@pytest.fixture
def outdir(tmp_path) -> tuple[Path, Path, dict]:
    """An output folder holding a previous good result ``data.h5ad``."""
    folder = tmp_path / "out"
    folder.mkdir()
    old = folder / "data.h5ad"
    write_h5ad(ad.AnnData(np.arange(6, dtype=np.float32).reshape(2, 3)), old)
    return folder, old, snapshot(folder)


# --------------------------------------------------------------------------- mutations
# Each takes the release paths (a dict it may change), the fixture info and a
# scratch dir, and returns the strings the error message must contain.


def _gctx_truncated(p, info, tmp):
    data = p["gctx"].read_bytes()
    p["gctx"].write_bytes(data[: int(len(data) * 0.6)])
    return [p["gctx"].name]


def _gctx_text(p, info, tmp):
    p["gctx"].write_text("sig_id\tgene\tvalue\nA\t1\t0.5\n")
    return [p["gctx"].name, "cannot open as HDF5/GCTX"]


def _gctx_empty_file(p, info, tmp):
    p["gctx"].write_bytes(b"")
    return [p["gctx"].name, "cannot open as HDF5/GCTX"]


def _gctx_no_matrix(p, info, tmp):
    with h5py.File(p["gctx"], "r+") as handle:
        del handle[MATRIX]
    return [p["gctx"].name, "missing dataset /0/DATA/0/matrix"]


def _gctx_bad_utf8_ids(p, info, tmp):
    with h5py.File(p["gctx"], "r+") as handle:
        ids = handle["/0/META/COL/id"][()]
        ids[0] = b"\xff\xfeBROKEN"
        del handle["/0/META/COL/id"]
        handle["/0/META/COL/id"] = ids
    return [p["gctx"].name]


def _gctx_corrupt_chunk(p, info, tmp):
    """A gzip-compressed gctx whose first chunk is damaged (bit rot, bad copy)."""
    a = read_gctx(p["gctx"])
    write_gctx(p["gctx"], a.X, a.obs_names, a.var_names, compression="gzip", chunk_rows=16)
    with h5py.File(p["gctx"], "r") as handle:
        chunk = handle[MATRIX].id.get_chunk_info(0)
    data = bytearray(p["gctx"].read_bytes())
    mid = chunk.byte_offset + chunk.size // 2
    data[mid : mid + 64] = bytes(range(64))
    p["gctx"].write_bytes(bytes(data))
    return [p["gctx"].name]


def _ids_swapped(p, info, tmp):
    with h5py.File(p["gctx"], "r+") as handle:
        rows, cols = handle["/0/META/ROW/id"][()], handle["/0/META/COL/id"][()]
        del handle["/0/META/ROW/id"], handle["/0/META/COL/id"]
        handle["/0/META/ROW/id"], handle["/0/META/COL/id"] = cols, rows
    return [p["gctx"].name, "swapped", "siginfo_beta.txt"]


def _siginfo_lacks_matrix_ids(p, info, tmp):
    si = pd.read_csv(p["siginfo"], sep="\t")
    si.iloc[2:].to_csv(p["siginfo"], sep="\t", index=False)
    n_matrix = int((si.pert_type == "trt_cp").sum())
    return [f"2 of {n_matrix} signature ids in the matrix are not in", "siginfo_beta.txt",
            repr(si.sig_id.iloc[0])]


def _siginfo_has_ids_not_in_matrix(p, info, tmp):
    si = pd.read_csv(p["siginfo"], sep="\t")
    ghost = si.iloc[[5]].assign(sig_id="GHOST_PLATE_A549_24H:BRD-K00000001:10")
    pd.concat([si, ghost]).to_csv(p["siginfo"], sep="\t", index=False)
    return ["siginfo_beta.txt", "not in the matrix", p["gctx"].name,
            "'GHOST_PLATE_A549_24H:BRD-K00000001:10'"]


def _siginfo_blank_sig_id(p, info, tmp):
    si = pd.read_csv(p["siginfo"], sep="\t")
    blank = si.iloc[[0]].assign(sig_id="")
    pd.concat([si, blank]).to_csv(p["siginfo"], sep="\t", index=False)
    return ["siginfo_beta.txt", "sig_id"]


def _duplicate_sig_in_matrix(p, info, tmp):
    with h5py.File(p["gctx"], "r+") as handle:
        ids = handle["/0/META/COL/id"][()]
        dup = ids[0].decode()
        ids[7] = ids[0]
        del handle["/0/META/COL/id"]
        handle["/0/META/COL/id"] = ids
    return [p["gctx"].name, "duplicated signature ids", repr(dup)]


def _duplicate_gene_in_matrix(p, info, tmp):
    """A non-landmark row re-labelled with a landmark id: two rows claim gene 16."""
    with h5py.File(p["gctx"], "r+") as handle:
        ids = handle["/0/META/ROW/id"][()]
        ids[-1] = b"16"
        del handle["/0/META/ROW/id"]
        handle["/0/META/ROW/id"] = ids
    return [p["gctx"].name, "duplicated row ids", "'16'"]


def _duplicate_gene_in_geneinfo(p, info, tmp):
    gi = pd.read_csv(p["geneinfo"], sep="\t", dtype=str)
    pd.concat([gi, gi.iloc[[4]]]).to_csv(p["geneinfo"], sep="\t", index=False)
    return ["geneinfo_beta.txt", "duplicated gene_id", repr(gi.gene_id.iloc[4])]


def _geneinfo_ids_are_symbols(p, info, tmp):
    gi = pd.read_csv(p["geneinfo"], sep="\t", dtype=str)
    gi.assign(gene_id=gi.gene_symbol).to_csv(p["geneinfo"], sep="\t", index=False)
    return ["none of the 978 landmark gene ids of", "geneinfo_beta.txt", "row ids of the matrix"]


def _matrix_keyed_by_outdated_symbols(p, info, tmp):
    """Row ids are symbols from an older release: a third renamed since (not in geneinfo)."""
    gi = pd.read_csv(p["geneinfo"], sep="\t", dtype=str)
    sym = dict(zip(gi.gene_id, gi.gene_symbol, strict=True))
    a = read_gctx(p["gctx"])
    names = [sym[g] + ("_OLD" if k % 3 == 0 else "") for k, g in enumerate(a.var_names)]
    write_gctx(p["gctx"], a.X, a.obs_names, names)
    n_current = sum(not n.endswith("_OLD") for n in names)
    return [p["gctx"].name, f"{n_current} of them look like gene symbols", "Entrez"]


def _some_landmarks_as_symbols(p, info, tmp):
    """Five landmark rows keyed by symbol, the rest by id (a bad merge)."""
    gi = pd.read_csv(p["geneinfo"], sep="\t", dtype=str)
    sym = dict(zip(gi.gene_id, gi.gene_symbol, strict=True))
    a = read_gctx(p["gctx"])
    names = [sym[g] if k < 5 else g for k, g in enumerate(a.var_names)]
    write_gctx(p["gctx"], a.X, a.obs_names, names)
    return ["5 landmark genes of", "missing from the matrix", repr(str(a.var_names[0]))]


def _nan_and_inf_in_kept_signatures(p, info, tmp):
    si = info["siginfo"]
    cp = si[si.pert_type == "trt_cp"].reset_index(drop=True)
    kept = cp.index[(cp.is_hiq == 1) & cp.pert_time.isin([6, 24])
                    & (cp.cmap_name == "rapamycin")]
    X = info["X_cp"].copy()
    X[kept[0], 3] = np.nan
    X[kept[1], 700] = -np.inf
    write_gctx(p["gctx"], X, cp.sig_id, info["gene_ids"])
    return [p["gctx"].name, "NaN or inf", repr(cp.sig_id[kept[0]]), repr(cp.sig_id[kept[1]])]


def _siginfo_not_a_table(p, info, tmp):
    p["siginfo"].write_bytes(bytes(range(256)) * 40)
    return ["siginfo_beta.txt", "cannot parse siginfo"]


def _siginfo_comma_separated(p, info, tmp):
    pd.read_csv(p["siginfo"], sep="\t").to_csv(p["siginfo"], index=False)
    return ["siginfo_beta.txt", "lacks required columns"]


def _pert_time_as_text(p, info, tmp):
    si = pd.read_csv(p["siginfo"], sep="\t")
    si.assign(pert_time=si.pert_time.astype(str) + " h").to_csv(p["siginfo"], sep="\t",
                                                                   index=False)
    return ["no signatures left after filter 'pert_time in [6.0, 24.0]'"]


def _no_change(p, info, tmp):
    return []


def _compoundinfo_lacks_cmap_name(p, info, tmp):
    ci = pd.read_csv(p["compoundinfo"], sep="\t").drop(columns=["cmap_name"])
    ci.to_csv(p["compoundinfo"], sep="\t", index=False)
    return ["compoundinfo_beta.txt", "lacks required columns ['cmap_name']"]


def _moa_table_lacks_moa_column(p, info, tmp):
    m = pd.read_csv(p["moa_labels"]).drop(columns=["MOA"])
    m.to_csv(p["moa_labels"], index=False)
    return ["moa_labels.csv", "lacks required columns", "moa"]


def _moa_table_unknown_ids(p, info, tmp):
    m = pd.read_csv(p["moa_labels"])
    m.assign(**{"BRD-ID": m["BRD-ID"].str.replace("BRD-K", "BRD-A")}).to_csv(
        p["moa_labels"], index=False)
    return ["moa_labels.csv", "none of its 9 compound ids are pert_ids of", "'BRD-A00000001'"]


def _moa_table_one_moa(p, info, tmp):
    m = pd.read_csv(p["moa_labels"])
    m.assign(MOA="MTOR inhibitor").to_csv(p["moa_labels"], index=False)
    return ["only one MoA ('MTOR inhibitor')"]


def _moa_table_empty_file(p, info, tmp):
    p["moa_labels"].write_text("")
    return ["moa_labels.csv", "cannot read MoA table"]


def _moa_table_corrupt_xlsx(p, info, tmp):
    bad = tmp / "moa_labels.xlsx"
    bad.write_bytes(b"PK\x03\x04 this was cut during download")
    p["moa_labels"] = bad
    return ["moa_labels.xlsx", "cannot read MoA table"]


def _moa_table_zip_not_xlsx(p, info, tmp):
    bad = tmp / "moa_labels.xlsx"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("moa_labels.csv", p["moa_labels"].read_text())
    p["moa_labels"] = bad
    return ["moa_labels.xlsx", "cannot read MoA table"]



PREPARE_FAILURES = [
    pytest.param(_gctx_truncated, (), id="gctx-truncated"),
    pytest.param(_gctx_text, (), id="gctx-is-text"),
    pytest.param(_gctx_empty_file, (), id="gctx-empty-file"),
    pytest.param(_gctx_no_matrix, (), id="gctx-without-matrix"),
    pytest.param(_gctx_bad_utf8_ids, (), id="gctx-ids-not-utf8"),
    pytest.param(_gctx_corrupt_chunk, (), id="gctx-corrupt-chunk"),
    pytest.param(_ids_swapped, (), id="rows-columns-swapped"),
    pytest.param(_siginfo_lacks_matrix_ids, (), id="matrix-sigs-missing-from-siginfo"),
    pytest.param(_siginfo_has_ids_not_in_matrix, (), id="siginfo-sigs-missing-from-matrix"),
    pytest.param(_siginfo_blank_sig_id, (), id="siginfo-blank-sig-id"),
    pytest.param(_duplicate_sig_in_matrix, (), id="duplicate-sig-in-matrix"),
    pytest.param(_duplicate_gene_in_matrix, (), id="duplicate-gene-in-matrix"),
    pytest.param(_duplicate_gene_in_geneinfo, (), id="duplicate-gene-in-geneinfo"),
    pytest.param(_geneinfo_ids_are_symbols, (), id="geneinfo-gene-id-holds-symbols"),
    pytest.param(_matrix_keyed_by_outdated_symbols, (), id="matrix-rows-outdated-symbols"),
    pytest.param(_some_landmarks_as_symbols, (), id="five-landmarks-as-symbols"),
    pytest.param(_nan_and_inf_in_kept_signatures, (), id="nan-inf-in-matrix"),
    pytest.param(_siginfo_not_a_table, (), id="siginfo-binary"),
    pytest.param(_siginfo_comma_separated, (), id="siginfo-comma-separated"),
    pytest.param(_pert_time_as_text, (), id="empty-after-time-filter-text-times"),
    pytest.param(_no_change, ("--pert-type", "trt_foo"), id="empty-after-pert-type"),
    pytest.param(_no_change, ("--min-tas", "2"), id="empty-after-min-tas"),
    pytest.param(_compoundinfo_lacks_cmap_name, (), id="compoundinfo-missing-column"),
    pytest.param(_moa_table_lacks_moa_column, (), id="moa-table-missing-column"),
    pytest.param(_moa_table_unknown_ids, (), id="moa-table-unknown-compounds"),
    pytest.param(_moa_table_one_moa, (), id="moa-table-one-moa"),
    pytest.param(_moa_table_empty_file, (), id="moa-table-empty-file"),
    pytest.param(_moa_table_corrupt_xlsx, (), id="moa-table-corrupt-xlsx"),
    pytest.param(_moa_table_zip_not_xlsx, (), id="moa-table-zip-not-xlsx"),
]
# the empty-selection messages name the filter that emptied it
FILTER_NEEDLES = {("--pert-type", "trt_foo"): ["after filter 'pert_type in ['trt_foo']'"],
                  ("--min-tas", "2"): ["after filter 'tas >= 2.0'"]}


@pytest.mark.parametrize(("mutate", "extra"), PREPARE_FAILURES)
def test_prepare_rejects_bad_input(tiny_lincs, tmp_path, outdir, mutate, extra):
    p = dict(tiny_lincs["paths"])
    needles = mutate(p, tiny_lincs, tmp_path) + FILTER_NEEDLES.get(extra, [])
    folder, old, before = outdir
    # CLI: onto an existing output, and onto a fresh path
    assert_clean_failure(cli(*_prepare_args(p, old, *extra)), *needles)
    assert_clean_failure(cli(*_prepare_args(p, folder / "new.h5ad", *extra)), *needles)
    assert snapshot(folder) == before  # old output intact, nothing new, no temp files
    # API: the same information in an InputError
    with pytest.raises(MoaspaceError) as err:
        prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"], p["moa_labels"],
                **_api_kwargs(extra))
    message = " ".join(str(err.value).split())
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("mutate", [_gctx_truncated, _ids_swapped,
                                    _nan_and_inf_in_kept_signatures])
def test_prepare_failures_in_a_real_process(tiny_lincs, tmp_path, outdir, mutate):
    """Exit status and stderr as a shell sees them (not the in-process runner)."""
    p = dict(tiny_lincs["paths"])
    needles = mutate(p, tiny_lincs, tmp_path)
    folder, old, before = outdir
    res = cli_proc(*_prepare_args(p, old))
    assert_clean_failure(res, *needles)
    assert len(res.stderr.strip().splitlines()[-1]) < 1000 and res.stdout == ""
    assert snapshot(folder) == before


# --------------------------------------------------------------------------- messy but valid


def test_messy_but_valid_inputs_give_exact_output(tiny_lincs, tmp_path):
    """Stored transposed, NaN in a filtered-out signature, a MoA table with unknown
    compounds, duplicated identical rows, stray whitespace and extra columns:
    prepare succeeds and every value and label sits with its own id."""
    p = dict(tiny_lincs["paths"])
    reference = prepare(p["gctx"], p["siginfo"], p["geneinfo"], p["compoundinfo"],
                        p["moa_labels"], min_compounds_per_moa=2, progress=False)
    si = tiny_lincs["siginfo"]
    cp = si[si.pert_type == "trt_cp"].reset_index(drop=True)
    X = tiny_lincs["X_cp"].copy()
    dropped = cp.index[cp.pert_time == 3][0]  # removed by the time filter
    X[dropped, :] = np.nan
    write_gctx(p["gctx"], X, cp.sig_id, tiny_lincs["gene_ids"], transposed=True)
    labels = pd.read_csv(p["moa_labels"])
    messy = pd.concat([labels, labels.iloc[[0, 3]],
                       pd.DataFrame({"BRD-ID": ["BRD-Z99999999"], "Drug name": ["ghost"],
                                     "MOA": ["Ghost inhibitor"]})])
    messy["BRD-ID"] = "  " + messy["BRD-ID"] + " "
    messy["MOA"] = messy["MOA"] + "  "
    messy.insert(0, "note", "curated")
    messy = messy.sample(frac=1.0, random_state=3)
    messy.to_csv(p["moa_labels"], index=False)
    out = tmp_path / "messy.h5ad"
    res = cli(*_prepare_args(p, out))
    assert res.code == 0 and res.exception is None, res.stderr[-2000:]
    got = read_h5ad(out)
    assert list(got.obs_names) == list(reference.obs_names)
    assert list(got.var_names) == list(reference.var_names)
    np.testing.assert_array_equal(got.X, reference.X)
    assert got.obs["moa"].tolist() == reference.obs["moa"].tolist()
    assert "Ghost inhibitor" not in set(got.obs["moa"])
    assert [f.name for f in tmp_path.glob("*messy*")] == ["messy.h5ad"]


def test_prepare_output_is_a_directory(tiny_lincs, tmp_path):
    folder = tmp_path / "out"
    target = folder / "data.h5ad"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    res = cli(*_prepare_args(tiny_lincs["paths"], target))
    assert_clean_failure(res, "data.h5ad")
    assert snapshot(folder) == {"data.h5ad/keep.txt": b"mine"}
    assert [f.name for f in folder.iterdir()] == ["data.h5ad"]


def test_usage_errors_exit_2(tiny_lincs, tmp_path):
    p = tiny_lincs["paths"]
    for bad in (("--min-tas", "high"), ("--min-sigs-per-compound", "ten"), ("--bogus", "1")):
        res = cli(*_prepare_args(p, tmp_path / "u.h5ad", *bad))
        assert res.code == 2 and res.exception is None, res.stderr
        assert "Traceback" not in res.stderr and bad[0] in res.stderr
    res = cli(*_prepare_args(p, tmp_path / "u.h5ad", "--genes", "some"))
    assert_clean_failure(res, "genes must be 'landmark' or 'all'", "'some'")
    assert not list(tmp_path.glob("*u.h5ad*"))


# --------------------------------------------------------------------------- predict / model


@pytest.fixture(scope="module")
def trained(saved_model):
    """The session's tiny model: (model dir, test signatures, its directory)."""
    return saved_model["model_dir"], saved_model["query"], saved_model["root"]


def _query(root: Path, name: str, adata: ad.AnnData) -> Path:
    path = root / f"{name}.h5ad"
    write_h5ad(adata, path)
    return path


def test_query_genes_reordered_gives_identical_predictions(trained, tmp_path):
    model_dir, query, root = trained
    perm = np.random.default_rng(7).permutation(query.n_vars)
    shuffled = _query(tmp_path, "shuffled", query[:, perm].copy())
    extra = query.copy()  # plus genes the model does not know: ignored
    extra.var_names = [f"{g}" if i % 2 else f"9{g}" for i, g in enumerate(extra.var_names)]
    both = ad.concat([query, extra[:, 0::2]], axis=1, merge="same")
    with_extra = _query(tmp_path, "extra", both)
    outs = {}
    for name, path in (("plain", root / "query.h5ad"), ("shuffled", shuffled),
                       ("extra", with_extra)):
        res = cli("predict", model_dir, path, "--out", tmp_path / f"pred_{name}.h5ad")
        assert res.code == 0 and res.exception is None, res.stderr[-2000:]
        outs[name] = read_h5ad(tmp_path / f"pred_{name}.h5ad")
    for name in ("shuffled", "extra"):
        np.testing.assert_array_equal(outs[name].obsm["X_moa"], outs["plain"].obsm["X_moa"])
        assert outs[name].obs["moa_pred"].tolist() == outs["plain"].obs["moa_pred"].tolist()
        np.testing.assert_array_equal(outs[name].obs["moa_pred_score"],
                                      outs["plain"].obs["moa_pred_score"])
        assert (tmp_path / f"pred_{name}.top_k.csv").read_bytes() == (
            tmp_path / "pred_plain.top_k.csv").read_bytes()


def test_query_few_genes_missing_warns_and_predicts(trained, tmp_path):
    model_dir, query, _ = trained
    missing = list(query.var_names[[5, 17, 40]])
    fewer = _query(tmp_path, "fewer", query[:, ~query.var_names.isin(missing)].copy())
    res = cli("predict", model_dir, fewer, "--out", tmp_path / "pred.h5ad")
    assert res.code == 0 and res.exception is None, res.stderr[-2000:]
    assert "WARNING" in res.flat and "3 of 64 model genes are missing" in res.flat
    for gene in missing:
        assert repr(gene) in res.flat
    pred = read_h5ad(tmp_path / "pred.h5ad")
    assert pred.n_obs == query.n_obs and pred.obs["moa_pred"].notna().all()


@pytest.mark.filterwarnings("ignore:Element .* was written without encoding metadata")
@pytest.mark.parametrize("case", ["half-missing", "symbols", "nan", "not-h5ad", "gctx",
                                  "directory", "int-matrix"])
def test_predict_rejects_bad_query(trained, tmp_path, outdir, case):
    model_dir, query, _ = trained
    folder, old, before = outdir
    if case == "half-missing":
        path = _query(tmp_path, "q", query[:, 32:].copy())
        needles = ["32 of the model's 64 genes (50.0%) are missing", repr(query.var_names[0])]
    elif case == "symbols":
        bad = query.copy()
        bad.var_names = bad.var["gene_symbol"].astype(str).to_numpy()
        path = _query(tmp_path, "q", bad)
        needles = ["64 of the model's 64 genes", "look like gene symbols; use Entrez ids"]
    elif case == "nan":
        bad = query.copy()
        bad.X[4, 2] = np.nan
        path = _query(tmp_path, "q", bad)
        needles = ["NaN/inf"]
    elif case == "not-h5ad":
        path = tmp_path / "q.h5ad"
        path.write_text("sig_id,1000,1001\nS1,0.1,0.2\n")
        needles = ["q.h5ad", "cannot read as .h5ad"]
    elif case == "gctx":
        path = tmp_path / "q.h5ad"
        write_gctx(path, np.asarray(query.X), query.obs_names, query.var_names)
        needles = ["q.h5ad", "cannot read as .h5ad"]
    elif case == "directory":
        path = tmp_path / "q.h5ad"
        path.mkdir()
        needles = ["q.h5ad", "cannot read as .h5ad"]
    else:
        bad = ad.AnnData(np.ones(query.shape, dtype=np.int32), obs=query.obs, var=query.var)
        path = _query(tmp_path, "q", bad)
        needles = ["q.h5ad", "floating-point"]
    res = cli("predict", model_dir, path, "--out", old)
    assert_clean_failure(res, *needles)
    assert snapshot(folder) == before


def test_predict_disjoint_genes_in_a_real_process(trained, tmp_path, outdir):
    model_dir, query, _ = trained
    disjoint = query.copy()
    disjoint.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    path = _query(tmp_path, "disjoint", disjoint)
    folder, old, before = outdir
    res = cli_proc("predict", model_dir, path, "--out", old)
    assert_clean_failure(res, "64 of the model's 64 genes (100.0%) are missing",
                         repr(query.var_names[0]))
    assert snapshot(folder) == before


def _model_copy(model_dir: Path, tmp_path: Path, edit=None, remove: str | None = None) -> Path:
    copy = tmp_path / "model_copy"
    shutil.copytree(model_dir, copy)
    if edit is not None:
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps(edit(config)))
    if remove:
        (copy / remove).unlink()
    return copy



MODEL_FAILURES = [
    pytest.param(lambda c: {**c, "format_version": 2}, None,
                 ["has model format 2", "reads format 1", "retrain"], id="other-format-version"),
    pytest.param(None, "model.pt", ["model.pt is missing"], id="missing-weights"),
    pytest.param(None, "config.json", ["config.json is missing"], id="missing-config"),
    pytest.param(lambda c: {k: v for k, v in c.items() if k != "genes"}, None,
                 ["config.json", "genes"], id="config-without-genes"),
    pytest.param(lambda c: [c], None, ["config.json"], id="config-not-an-object"),
    pytest.param(lambda c: _unsigned({**c, "moas": c["moas"][:-1]}), None,
                 ["model.pt", "cannot load weights"], id="config-moas-do-not-match-weights"),
    # the config is under its own checksum: a same-length reordering of the genes would
    # silently misalign every input (reliability round two, item 5)
    pytest.param(lambda c: {**c, "genes": c["genes"][::-1]}, None,
                 ["config.json", "does not match its checksum"], id="config-genes-shuffled"),
    pytest.param(lambda c: {**c, "genes": [c["genes"][1], *c["genes"][1:]]}, None,
                 ["config.json", "'genes' lists", "more than once"], id="config-duplicated-gene"),
    pytest.param(lambda c: {**c, "keys": list(c["keys"])}, None,
                 ["config.json", "'keys' must be an object"], id="config-keys-a-list"),
    pytest.param(lambda c: {**c, "files": list(c["files"])}, None,
                 ["config.json", "'files' must be an object"], id="config-files-a-list"),
    pytest.param(lambda c: {**c, "genes": [1, *c["genes"][1:]]}, None,
                 ["config.json", "'genes' must be a list of strings"], id="config-gene-a-number"),
]


def _unsigned(config: dict) -> dict:
    """As a config.json written before it carried its own checksum."""
    return {k: v for k, v in config.items() if k != "config_sha1"}


@pytest.mark.parametrize(("edit", "remove", "needles"), MODEL_FAILURES)
def test_predict_rejects_bad_model_dir(trained, tmp_path, outdir, edit, remove, needles):
    model_dir, _, root = trained
    bad = _model_copy(model_dir, tmp_path, edit, remove)
    folder, old, before = outdir
    assert_clean_failure(cli("predict", bad, root / "query.h5ad", "--out", old), *needles)
    assert snapshot(folder) == before
    with pytest.raises(MoaspaceError) as err:
        MoaModel.load(bad)
    for needle in needles:
        assert needle in str(err.value)


def test_damaged_atlas_without_checksums_names_the_file(trained, tmp_path):
    model_dir, _, root = trained
    bad = _model_copy(model_dir, tmp_path, lambda c: {k: v for k, v in c.items()
                                                       if k not in ("files", "config_sha1")})
    (bad / "atlas.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    res = cli("predict", bad, root / "query.h5ad", "--out", tmp_path / "p.h5ad")
    assert_clean_failure(res, "atlas.h5ad")


def test_model_from_newer_moaspace_same_format_still_predicts(trained, tmp_path):
    """format_version is the compatibility contract; the package version is informative."""
    model_dir, _, root = trained
    from moaspace.model.model import config_digest

    def newer_version(config):
        config = {**config, "moaspace_version": "9.9.9"}
        return {**config, "config_sha1": config_digest(config)}

    newer = _model_copy(model_dir, tmp_path, newer_version)
    a = cli("predict", model_dir, root / "query.h5ad", "--out", tmp_path / "a.h5ad")
    b = cli("predict", newer, root / "query.h5ad", "--out", tmp_path / "b.h5ad")
    assert a.code == b.code == 0, b.stderr
    np.testing.assert_array_equal(read_h5ad(tmp_path / "a.h5ad").obsm["moa_scores"],
                                  read_h5ad(tmp_path / "b.h5ad").obsm["moa_scores"])


def test_predict_unwritable_output_leaves_nothing(trained, tmp_path):
    model_dir, _, root = trained
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a folder should be")
    res = cli("predict", model_dir, root / "query.h5ad", "--out", blocker / "pred.h5ad")
    assert_clean_failure(res, "not_a_dir")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["not_a_dir"]
    with pytest.raises((MoaspaceError, OSError)):
        write_h5ad(ad.AnnData(np.zeros((1, 1), np.float32)), blocker / "x.h5ad")


def test_failed_predict_write_keeps_previous_outputs_consistent(trained, tmp_path,
                                                                monkeypatch):
    model_dir, query, root = trained
    out = tmp_path / "pred.h5ad"
    assert cli("predict", model_dir, root / "query.h5ad", "--out", out).code == 0
    other = _query(tmp_path / "q", "other", query[: query.n_obs // 2].copy())
    before = snapshot(tmp_path)

    def disk_full(self, filename=None, *args, **kwargs):
        raise OSError(28, "No space left on device", str(filename))

    monkeypatch.setattr(ad.AnnData, "write_h5ad", disk_full)
    res = cli("predict", model_dir, other, "--out", out)
    assert_clean_failure(res, "No space left on device")
    assert snapshot(tmp_path) == before


def test_unwritable_model_dir_for_train(trained, tmp_path):
    root = trained[2]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = root / "train_data.h5ad"
    if not data.exists():
        from moaspace.pp._split import split

        write_h5ad(split(make_synthetic(seed=0), "compound", seed=0), data)
    res = cli("train", data, "--out", blocker / "model", "--max-epochs", "1",
              "--accelerator", "cpu")
    assert_clean_failure(res, "cannot create output directory", str(blocker / "model"),
                         "Not a directory")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["file"]


def test_api_errors_are_moaspace_errors(trained, tmp_path):
    """Library users get the project error type (notebooks show its message)."""
    model_dir, query, _ = trained
    model = MoaModel.load(model_dir)
    with pytest.raises(InputError, match="missing from the query"):
        model.embed(query[:, :10].copy())
    with pytest.raises(InputError, match="duplicated gene ids"):
        dup = query.copy()
        dup.var_names = [query.var_names[0]] * 2 + list(query.var_names[2:])
        model.embed(dup)
    with pytest.raises(InputError, match="nowhere.h5ad"):
        read_h5ad(tmp_path / "nowhere.h5ad")
