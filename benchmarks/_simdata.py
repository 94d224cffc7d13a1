"""Simulated data for the benchmarks: one call per step they all repeat.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this sibling module
is importable as ``_simdata``.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace.data.prepare import prepare
from moaspace.data.simulate import SimulationConfig, simulate

#: simulate()'s outputs that are prepare()'s positional inputs, in order
PREPARE_INPUTS = ("gctx", "siginfo", "geneinfo", "compoundinfo", "moa_labels")


def simulate_prepared(out_dir: Path, config: SimulationConfig) -> tuple[dict, ad.AnnData]:
    """Write a simulated release to ``out_dir`` and prepare its compound signatures with
    the default filters (as ``moaspace simulate`` + ``moaspace prepare``); returns the
    release's paths and the prepared AnnData."""
    paths = simulate(out_dir, config)
    return paths, prepare(*(paths[k] for k in PREPARE_INPUTS), progress=False)


def prepare_knockdowns(paths: dict) -> ad.AnnData:
    """The release's CRISPR knockdown signatures (all time points), prepared."""
    return prepare(paths["gctx_xpr"], paths["siginfo"], paths["geneinfo"],
                   pert_type="trt_xpr", times=None, progress=False)


def raw_reference(adata: ad.AnnData) -> ad.AnnData:
    """The training signatures' z-scores as an atlas for the raw-signature kNN baseline."""
    train = adata[adata.obs["split"] == "train"]
    return ad.AnnData(np.asarray(train.X), obs=train.obs[["pert_id", "moa"]].astype(str),
                      var=pd.DataFrame(index=train.var_names))
