"""Text matrices (GCT 1.2/1.3, TSV, CSV, either orientation) and prepare without siginfo."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from moaspace.cli import app
from moaspace.errors import InputError
from moaspace.io.matrix import open_matrix
from moaspace.pp._prepare import bundled_geneinfo, prepare, read_h5ad

GENES = bundled_geneinfo().index[:978].tolist()


def _consensus(n_per_moa: int = 6, n_moas: int = 4, seed: int = 0):
    """Compounds x landmark genes (one signature per compound) and a MoA table with a
    multi-MoA compound, a compound without MoA and one absent from the matrix."""
    rng = np.random.default_rng(seed)
    ids = [f"DB{i:05d}" for i in range(n_per_moa * n_moas)]
    moas = [f"moa {i // n_per_moa}" for i in range(len(ids))]
    centres = rng.normal(size=(n_moas, len(GENES))) * 2
    x = centres[[i // n_per_moa for i in range(len(ids))]] + rng.normal(size=(len(ids),
                                                                               len(GENES)))
    frame = pd.DataFrame(x.round(4), index=pd.Index(ids, name="perturbagen"), columns=GENES)
    table = pd.DataFrame({"drugbank_id": [*ids, "DB99999"], "name": [*ids, "absent"],
                          "moa": [*moas, "moa 0"]})
    table.loc[0, "moa"] = "moa 0|moa 1"  # several MoAs: no single label, dropped
    table.loc[1, "moa"] = ""  # no MoA
    return frame, table


def _write_gct13(frame: pd.DataFrame, path) -> None:
    """Genes in rows, one row-metadata and one column-metadata field, as GCT 1.3."""
    genes_x_sigs = frame.T
    with open(path, "w") as fh:
        fh.write("#1.3\n")
        fh.write(f"{genes_x_sigs.shape[0]}\t{genes_x_sigs.shape[1]}\t1\t1\n")
        fh.write("id\tpr_gene_symbol\t" + "\t".join(genes_x_sigs.columns) + "\n")
        fh.write("cell_id\tna\t" + "\t".join(["consensus"] * genes_x_sigs.shape[1]) + "\n")
        for gene, row in genes_x_sigs.iterrows():
            fh.write(f"{gene}\tSYM{gene}\t" + "\t".join(f"{v:.4f}" for v in row) + "\n")


def _write_gct12(frame: pd.DataFrame, path) -> None:
    genes_x_sigs = frame.T
    with open(path, "w") as fh:
        fh.write(f"#1.2\n{genes_x_sigs.shape[0]}\t{genes_x_sigs.shape[1]}\n")
        fh.write("Name\tDescription\t" + "\t".join(genes_x_sigs.columns) + "\n")
        for gene, row in genes_x_sigs.iterrows():
            fh.write(f"{gene}\tna\t" + "\t".join(f"{v:.4f}" for v in row) + "\n")


@pytest.mark.parametrize("layout", ["tsv", "tsv_genes_in_rows", "csv", "tsv.gz", "gct13",
                                    "gct12"])
def test_every_layout_reads_the_same_matrix(tmp_path, layout):
    frame, _ = _consensus()
    path = tmp_path / f"m.{layout.split('_')[0]}"
    if layout == "tsv":
        frame.to_csv(path, sep="\t")
    elif layout == "tsv_genes_in_rows":
        frame.T.to_csv(path, sep="\t")
    elif layout == "csv":
        frame.to_csv(path)
    elif layout == "tsv.gz":
        with gzip.open(path, "wt") as fh:
            frame.to_csv(fh, sep="\t")
    elif layout == "gct13":
        path = tmp_path / "m.gct"
        _write_gct13(frame, path)
    else:
        path = tmp_path / "m.gct"
        _write_gct12(frame, path)
    source = open_matrix(path, gene_ids=GENES)
    assert list(source.signatures) == list(frame.index)
    assert set(source.genes) == set(GENES)
    got = source.read(GENES[:5], list(frame.index[[3, 0]]))
    np.testing.assert_allclose(got.X, frame.loc[frame.index[[3, 0]], GENES[:5]].to_numpy(),
                               atol=1e-4)
    assert list(got.obs_names) == list(frame.index[[3, 0]])


def test_text_matrix_problems_are_named(tmp_path):
    frame, _ = _consensus()
    bad = frame.astype(object)
    bad.iloc[2, 7] = "n/a?"
    path = tmp_path / "bad.tsv"
    bad.to_csv(path, sep="\t")
    with pytest.raises(InputError, match=r"bad.tsv: non-numeric value 'n/a\?' at row "
                                         r"'DB00002', column"):
        open_matrix(path, gene_ids=GENES)
    trunc = tmp_path / "trunc.gct"
    _write_gct13(frame, trunc)
    trunc.write_text("\n".join(trunc.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(InputError, match="trunc.gct: the header says 978 rows"):
        open_matrix(trunc, gene_ids=GENES)
    with pytest.raises(InputError, match="unknown matrix format"):
        open_matrix(_touch(tmp_path / "m.xlsx"))


def _touch(path):
    path.write_text("x")
    return path


def test_prepare_without_siginfo_gives_one_signature_per_compound(tmp_path):
    frame, table = _consensus()
    matrix, labels = tmp_path / "consensi.tsv.gz", tmp_path / "moa.tsv"
    with gzip.open(matrix, "wt") as fh:
        frame.T.to_csv(fh, sep="\t")  # genes in rows, this time
    table.to_csv(labels, sep="\t", index=False)
    adata = prepare(matrix, moa_labels=labels, min_sigs_per_compound=1,
                    min_compounds_per_moa=5, progress=False, multi_moa="drop")
    # DB00000 (two MoAs) and DB00001 (none) are dropped; moa 0 keeps 4 compounds < 5
    assert sorted(adata.obs["moa"].unique()) == ["moa 1", "moa 2", "moa 3"]
    assert adata.n_obs == 18 and adata.n_vars == 978
    assert (adata.obs["pert_id"] == adata.obs_names).all()
    assert (adata.obs["cell_iname"] == "consensus").all()
    assert adata.X.dtype == np.float32
    np.testing.assert_allclose(adata[["DB00010"]].X[0], frame.loc["DB00010", GENES].to_numpy(),
                               atol=1e-4)
    assert adata.var.loc["16", "gene_symbol"] == "AARS"
    with pytest.raises(InputError, match="min_tas needs siginfo"):
        prepare(matrix, moa_labels=labels, min_sigs_per_compound=1, min_tas=0.2,
                progress=False)
    with pytest.raises(InputError, match="without siginfo .* need a MoA table"):
        prepare(matrix, min_sigs_per_compound=1, progress=False)


def test_cli_prepare_matrix_then_cv_benchmark(tmp_path):
    frame, table = _consensus(n_per_moa=8)
    matrix, labels = tmp_path / "consensi.csv", tmp_path / "moa.tsv"
    frame.to_csv(matrix)
    table.to_csv(labels, sep="\t", index=False)
    out = tmp_path / "real.h5ad"
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "--matrix", str(matrix), "--moa-labels", str(labels),
                              "--min-sigs-per-compound", "1", "--min-compounds-per-moa", "5",
                              "--times", "all", "--out", str(out)])
    assert res.exit_code == 0, res.output
    adata = read_h5ad(out)
    # DB00000 (two MoAs) is kept by default, with its MoA set and no single MoA
    assert adata.n_obs == 31 and adata.obs["moa"].nunique() == 4
    assert adata.obs["moa"].isna().sum() == 1 and "|" in adata.obs.loc[
        adata.obs["moa"].isna(), "moa_set"].iloc[0]
    bench = tmp_path / "bench"
    res = runner.invoke(app, ["benchmark", str(out), "--out", str(bench), "--cv", "3",
                              "--seeds", "0,1", "--methods", "lda,linear_svm,raw_knn"])
    assert res.exit_code == 0, res.output
    records = pd.read_json(bench / "results.json")
    assert set(records["scheme"]) == {"cv3"} and len(records) == 6
    # every compound predicted once per seed: pooled over the folds
    # every single-MoA signature is tested once (the multi-MoA one has set metrics only)
    assert (records["n_test"] == adata.obs["moa"].notna().sum()).all()
    # four well-separated MoAs: the linear baselines find them
    assert records.loc[records["method"] == "lda", "macro_f1"].min() > 0.8
    assert "Paired per seed" not in (bench / "results.md").read_text()  # no moaspace here
