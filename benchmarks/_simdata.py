"""Simulated data for the benchmarks: one call per step they all repeat.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this sibling module
is importable as ``_simdata``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace.datasets import SimulationConfig, simulate
from moaspace.pp._prepare import prepare

#: simulate()'s outputs that are prepare()'s positional inputs, in order
PREPARE_INPUTS = ("gctx", "siginfo", "geneinfo", "compoundinfo", "moa_labels")


def simulate_prepared(out_dir: Path, config: SimulationConfig) -> tuple[dict, ad.AnnData]:
    """Write a simulated release to ``out_dir`` and prepare its compound signatures with
    the default filters (as ``moaspace simulate`` + ``moaspace prepare``); returns the
    release's paths and the prepared AnnData."""
    paths = simulate(out_dir, config)
    return paths, prepare(*(paths[k] for k in PREPARE_INPUTS), progress=False)


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: the prepared default simulation, for the scripts that can reuse it."""
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared h5ad of `moaspace simulate --seed 0` (made if absent)")


def add_run_arguments(parser: argparse.ArgumentParser, schemes: str = "compound,cell") -> None:
    """``--schemes``, ``--seeds``, ``--max-epochs``: which splits, seeds and epoch budget."""
    parser.add_argument("--schemes", default=schemes)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-epochs", type=int, default=30)


def default_data(path: Path | None) -> ad.AnnData:
    """``path`` read, or, when None, ``moaspace simulate --seed 0`` + default ``prepare``
    made in a temporary directory."""
    if path is not None:
        return ad.read_h5ad(path)
    return simulate_prepared(Path(tempfile.mkdtemp()) / "sim", SimulationConfig(seed=0))[1]


def prepare_knockdowns(paths: dict) -> ad.AnnData:
    """The release's CRISPR knockdown signatures (all time points), prepared."""
    return prepare(paths["gctx_xpr"], paths["siginfo"], paths["geneinfo"],
                   pert_type="trt_xpr", times=None, progress=False)


def raw_reference(adata: ad.AnnData) -> ad.AnnData:
    """The training signatures' z-scores as an atlas for the raw-signature kNN baseline."""
    train = adata[adata.obs["split"] == "train"]
    return ad.AnnData(np.asarray(train.X), obs=train.obs[["pert_id", "moa"]].astype(str),
                      var=pd.DataFrame(index=train.var_names))
