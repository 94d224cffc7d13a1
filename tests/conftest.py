"""Shared fixtures: small deterministic LINCS-format releases written to tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not SHARED.exists():  # CI clones main elsewhere with shared/ beside it
    SHARED = Path(os.environ.get("MOASPACE_SHARED", "../shared")).resolve() / "data"


def landmarks() -> pd.DataFrame:
    from importlib import resources

    path = resources.files("moaspace.resources") / "landmark_genes.csv"
    with resources.as_file(path) as p:
        frame = pd.read_csv(p, dtype={"pr_gene_id": str})
    return frame


def make_lincs(out: Path, seed: int = 0, n_extra_genes: int = 22) -> dict:
    """Write a tiny LINCS beta release with known filter outcomes.

    MoAs: 'MTOR inhibitor' (3 compounds), 'HDAC inhibitor' (3), 'EGFR inhibitor' (2),
    plus one compound without a MoA label and one with too few signatures.
    """
    from moaspace.io import write_gctx

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    lm = landmarks()
    gene_ids = lm["pr_gene_id"].tolist() + [str(900000 + i) for i in range(n_extra_genes)]
    symbols = lm["pr_gene_symbol"].tolist() + [f"SIMG{i}" for i in range(n_extra_genes)]
    space = ["landmark"] * len(lm) + ["best inferred"] * n_extra_genes
    geneinfo = pd.DataFrame(
        {"gene_id": gene_ids, "gene_symbol": symbols, "ensembl_id": "-", "gene_title": "-",
         "gene_type": "protein-coding", "src": "NCBI", "feature_space": space}
    )
    compounds = [
        ("BRD-K00000001", "rapamycin", "MTOR inhibitor", "MTOR", 16),
        ("BRD-K00000002", "torin-1", "MTOR inhibitor", "MTOR", 16),
        ("BRD-K00000003", "everolimus", "MTOR inhibitor", "MTOR", 16),
        ("BRD-K00000004", "vorinostat", "HDAC inhibitor", "HDAC1|HDAC2", 16),
        ("BRD-K00000005", "panobinostat", "HDAC inhibitor", "HDAC1", 16),
        ("BRD-K00000006", "entinostat", "HDAC inhibitor", "HDAC1", 16),
        ("BRD-K00000007", "gefitinib", "EGFR inhibitor", "EGFR", 16),
        ("BRD-K00000008", "erlotinib", "EGFR inhibitor", "EGFR", 16),
        ("BRD-K00000009", "mystery", None, None, 16),
        ("BRD-K00000010", "rarely", "EGFR inhibitor", "EGFR", 5),
    ]
    cells = ["A549", "MCF7", "PC3", "HT29"]
    rows = []
    for pert_id, name, _moa, _t, n in compounds:
        for k in range(n):
            cell = cells[k % len(cells)]
            time = [6, 24, 24, 6, 3, 24][k % 6]
            rows.append(
                {
                    "sig_id": f"PLATE{k:02d}_{cell}_{time}H:{pert_id}:10",
                    "pert_id": pert_id, "cmap_name": name, "pert_type": "trt_cp",
                    "cell_iname": cell, "pert_dose": 10.0, "pert_dose_unit": "uM",
                    "pert_idose": "10 uM", "pert_time": time, "pert_time_unit": "h",
                    "pert_itime": f"{time} h", "tas": round(float(rng.uniform(0, 1)), 4),
                    "is_hiq": int(k % 7 != 3), "qc_pass": 1,
                }
            )
    for gene in ("MTOR", "HDAC1", "TP53"):
        for k in range(4):
            rows.append(
                {
                    "sig_id": f"XPR{k:02d}_A549_96H:{gene}:{k}", "pert_id": f"XPR_{gene}",
                    "cmap_name": gene, "pert_type": "trt_xpr", "cell_iname": "A549",
                    "pert_dose": np.nan, "pert_dose_unit": "", "pert_idose": "",
                    "pert_time": 96, "pert_time_unit": "h", "pert_itime": "96 h",
                    "tas": 0.5, "is_hiq": 1, "qc_pass": 1,
                }
            )
    siginfo = pd.DataFrame(rows)
    cp = siginfo[siginfo.pert_type == "trt_cp"]
    xpr = siginfo[siginfo.pert_type == "trt_xpr"]
    X_cp = rng.standard_normal((len(cp), len(gene_ids))).astype(np.float32)
    X_xpr = rng.standard_normal((len(xpr), len(gene_ids))).astype(np.float32)
    paths = {
        "gctx": out / "level5_beta_trt_cp.gctx",
        "gctx_xpr": out / "level5_beta_trt_xpr.gctx",
        "siginfo": out / "siginfo_beta.txt",
        "geneinfo": out / "geneinfo_beta.txt",
        "compoundinfo": out / "compoundinfo_beta.txt",
        "moa_labels": out / "moa_labels.csv",
    }
    write_gctx(paths["gctx"], X_cp, cp.sig_id.tolist(), gene_ids)
    write_gctx(paths["gctx_xpr"], X_xpr, xpr.sig_id.tolist(), gene_ids)
    siginfo.to_csv(paths["siginfo"], sep="\t", index=False)
    geneinfo.to_csv(paths["geneinfo"], sep="\t", index=False)
    cinfo = []
    for pert_id, name, moa, targets, _n in compounds:
        for target in (targets or "").split("|"):
            cinfo.append({"pert_id": pert_id, "cmap_name": name, "target": target or None,
                          "moa": moa, "canonical_smiles": "C", "inchi_key": "X",
                          "compound_aliases": ""})
    pd.DataFrame(cinfo).to_csv(paths["compoundinfo"], sep="\t", index=False)
    labels = pd.DataFrame(
        [(p, n, m) for p, n, m, _t, _n in compounds if m], columns=["BRD-ID", "Drug name", "MOA"]
    )
    labels.to_csv(paths["moa_labels"], index=False)
    return {"paths": paths, "siginfo": siginfo, "X_cp": X_cp, "X_xpr": X_xpr,
            "gene_ids": gene_ids, "n_landmark": len(lm)}


@pytest.fixture
def tiny_lincs(tmp_path):
    return make_lincs(tmp_path / "lincs")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> dict:
    """*A* trained model, for the tests that need one but not a particular one: trained once
    per session on the tiny synthetic set (compound split, seed 0) and saved.

    ``root`` holds ``model/``, ``data.h5ad`` (all signatures, with the split) and
    ``query.h5ad`` (the test signatures). Tests must not change these files: copy first
    (``shutil.copytree``) to damage or edit a model.
    """
    from _synthetic import make_synthetic
    from moaspace.model import MoaModel
    from moaspace.pp import split, write_h5ad

    root = tmp_path_factory.mktemp("saved_model")
    adata = split(make_synthetic(seed=0), "compound", seed=0)
    # one input candidate: these tests need a model, not the choice between two
    model = MoaModel(adata, hidden_dims=(64, 32), embedding_dim=16, input_whitening="on")
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu")
    model.save(root / "model")
    query = adata[adata.obs["split"] == "test"].copy()
    write_h5ad(adata, root / "data.h5ad")
    write_h5ad(query, root / "query.h5ad")
    return {"root": root, "model_dir": root / "model", "model": model, "adata": adata,
            "query": query}


@pytest.fixture(scope="module")
def openset_run(tmp_path_factory):
    """(root, model, adata, test): a small model trained on a ``moa`` split
    (tests/_openset.py), once per test module (tests may change the model)."""
    from _openset import train_openset_run

    return train_openset_run(tmp_path_factory)
