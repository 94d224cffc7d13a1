"""Dataset command: ``dataset`` writes a data set shipped with moaspace as an ``.h5ad``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moaspace._utils import check_output
from moaspace.cli._common import handle_errors, print_summary

#: data sets ``moaspace dataset NAME`` can write
DATASETS = ("lincs-consensus",)


@handle_errors
def dataset(
    name: Annotated[str, typer.Argument(
        help="lincs-consensus: real LINCS L1000 consensus signatures of 1,170 DrugBank "
             "drugs with Drug Repurposing Hub MoAs (shipped, no download).")],
    out: Annotated[Path, typer.Option(help="Output .h5ad (written atomically).")],
    min_compounds_per_moa: Annotated[int | None, typer.Option(
        help="Keep a training set: drop drugs without a MoA and single-MoA drugs of MoAs "
             "with fewer than N single-MoA drugs (default: keep every drug).", min=1)] = None,
    multi_moa: Annotated[str, typer.Option(
        help="Drugs with several MoAs: keep (obs moa missing, all MoAs in obs moa_set) or "
             "drop.")] = "keep",
) -> None:
    """Write a data set shipped with moaspace as an .h5ad (sources and licences:
    moaspace/resources/lincs_consensus/PROVENANCE.md).

    Example (the 519 drugs and 44 MoAs of the README's real-data row):

        moaspace dataset lincs-consensus --min-compounds-per-moa 5 --multi-moa drop
        --out real.h5ad

    Every drug (1,170; obs moa missing for those with no or several MoAs):

        moaspace dataset lincs-consensus --out all_drugs.h5ad
    """
    from moaspace.datasets._real import lincs_consensus
    from moaspace.pp._prepare import write_h5ad

    if name not in DATASETS:
        raise typer.BadParameter(f"unknown data set {name!r}; choose from {list(DATASETS)}")
    check_output(out, [])
    adata = lincs_consensus(min_compounds_per_moa=min_compounds_per_moa, multi_moa=multi_moa)
    write_h5ad(adata, out)
    obs = adata.obs
    print_summary("dataset", [
        ("output", out), ("drugs", adata.n_obs), ("genes", adata.n_vars),
        ("drugs with one MoA", int(obs["moa"].notna().sum())),
        ("drugs with several MoAs", int((obs["moa_set"].notna() & obs["moa"].isna()).sum())),
        ("MoAs", obs["moa"].nunique()),
    ])
