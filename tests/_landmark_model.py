"""A tiny model on the 978 landmark genes, trained once per test session, for the tests that
predict real CMap files (rows by probe id / pr_gene_id) through the CLI and the service."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def landmark_model_dir() -> Path:
    """A saved model (2 epochs) whose genes are the landmark Entrez ids; removed at exit."""
    import torch

    from _synthetic import make_synthetic
    from conftest import landmarks
    from moaspace.model import MoaModel
    from moaspace.pp import split

    torch.set_num_threads(1)
    genes = landmarks()["pr_gene_id"].astype(str).tolist()
    adata = make_synthetic(n_genes=len(genes), seed=3)
    adata.var_names = genes
    adata = split(adata, "compound", seed=0)
    model = MoaModel(adata, hidden_dims=(64, 32), embedding_dim=16, input_whitening="on")
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu")
    root = Path(tempfile.mkdtemp(prefix="moaspace_landmark_model_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model.save(root / "model")
    return root / "model"
