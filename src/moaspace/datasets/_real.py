"""Real data shipped with moaspace: LINCS L1000 consensus signatures of 1,170 DrugBank drugs.

The files live in ``moaspace/resources/lincs_consensus/`` as published (byte-identical
copies; their sources, licences and citations are in ``PROVENANCE.md`` beside them), so the
real-data results in the docs run from a clone or a wheel with nothing else. Like scanpy's
``sc.datasets`` loaders, :func:`lincs_consensus` returns an AnnData ready for
:func:`moaspace.pp.split` and :class:`moaspace.MoaModel`.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import anndata as ad
import pandas as pd

from moaspace.errors import InputError
from moaspace.io.matrix import open_matrix
from moaspace.pp._prepare import CONSENSUS_CELL, bundled_geneinfo

logger = logging.getLogger(__name__)

#: folder of the shipped files inside ``moaspace.resources``
FOLDER = "lincs_consensus"
#: file names of the shipped set (keys of :func:`lincs_consensus_paths`)
FILES = {
    "matrix": "consensi_drugbank_n1170x978.tsv.gz",
    "moa_labels": "consensi_drugbank_moa.tsv",
    "genes": "landmark_entrez_symbol.tsv",
    "provenance": "PROVENANCE.md",
}
MULTI_MOA = ("keep", "drop")


def lincs_consensus_paths() -> dict[str, Path]:
    """Paths of the shipped consensus files.

    ``matrix`` and ``moa_labels`` are what ``moaspace prepare --matrix M --moa-labels L``
    reads (as in ``docs/benchmarks.md``); ``provenance`` documents sources and licences.

    Returns
    -------
    dict of str to pathlib.Path
        Keys ``matrix``, ``moa_labels``, ``genes`` and ``provenance``.

    Raises
    ------
    InputError
        If a file is missing from the installed package.
    """
    base = resources.files("moaspace.resources") / FOLDER
    paths = {key: Path(str(base / name)) for key, name in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"the shipped LINCS consensus set is missing files: {missing}; "
                         "reinstall moaspace (package data moaspace/resources/lincs_consensus)")
    return paths


def _labels(path: Path) -> pd.DataFrame:
    """The MoA table: one row per drug, ``moa_set`` as published, ``moa`` if single."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    needed = ["drugbank_id", "name", "inchikey", "moa"]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise InputError(f"{path}: columns {absent} are missing")
    table = table.apply(lambda col: col.str.strip())
    if table["drugbank_id"].duplicated().any():
        raise InputError(f"{path}: column 'drugbank_id' has duplicated ids")
    moa_set = table["moa"].replace("", pd.NA)
    single = moa_set.where(~moa_set.str.contains("|", regex=False, na=False))
    return pd.DataFrame({"cmap_name": table["name"].to_numpy(),
                         "inchikey": table["inchikey"].replace("", pd.NA).to_numpy(),
                         "moa": single.to_numpy(), "moa_set": moa_set.to_numpy()},
                        index=pd.Index(table["drugbank_id"], name=None))


def _select(obs: pd.DataFrame, min_compounds_per_moa: int | None, multi_moa: str
            ) -> tuple[pd.Series, list[dict]]:
    """Rows kept and one record per filter (rows and MoAs left after it)."""
    keep = pd.Series(True, index=obs.index)
    steps = [("all drugs", keep.copy())]
    multi = obs["moa_set"].notna() & obs["moa"].isna()
    if multi_moa == "drop":
        keep &= ~multi
        steps.append(("drop drugs with several MoAs", keep.copy()))
    if min_compounds_per_moa is not None:
        keep &= obs["moa_set"].notna()
        steps.append(("drop drugs without a MoA", keep.copy()))
        counts = obs.loc[keep, "moa"].value_counts()
        small = obs["moa"].isin(counts.index[counts < min_compounds_per_moa])
        keep &= ~small
        steps.append((f">= {min_compounds_per_moa} single-MoA drugs per MoA", keep.copy()))
    log = [{"step": name, "compounds": int(mask.sum()),
            "moas": int(obs.loc[mask, "moa"].nunique())} for name, mask in steps]
    return keep, log


def lincs_consensus(*, min_compounds_per_moa: int | None = None,
                    multi_moa: str = "keep") -> ad.AnnData:
    """Real LINCS L1000 consensus signatures of 1,170 DrugBank drugs with their MoAs.

    One signature per drug: the consensus of its L1000 (GSE92742-era) level-5 signatures
    over cell lines, doses and times (dhimmel/lincs), with Drug Repurposing Hub MoAs. The
    files ship with moaspace (``moaspace/resources/lincs_consensus/``, 2.7 MB; sources,
    licences and citations in its ``PROVENANCE.md``); nothing is downloaded.

    By default every drug is returned: 981 have a MoA, 122 of them several, 189 none. The
    real-data benchmark of ``docs/benchmarks.md`` (519 drugs, 44 MoAs) is
    ``lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")``; its ``X``, ``obs_names``
    and ``obs["moa"]`` are those of ``moaspace prepare --matrix ... --moa-labels ...
    --min-sigs-per-compound 1 --min-compounds-per-moa 5`` on the same files.

    Parameters
    ----------
    min_compounds_per_moa : int, optional
        Default None: no MoA filter. An integer N keeps a training set: drugs without a MoA
        are dropped, and so are single-MoA drugs whose MoA has fewer than N single-MoA
        drugs (counted after ``multi_moa``). Drugs with several MoAs are left to
        ``multi_moa``.
    multi_moa : {"keep", "drop"}, default "keep"
        Drugs whose Hub entry lists several MoAs: kept with ``obs["moa"]`` missing (their
        MoAs in ``obs["moa_set"]``), or dropped.

    Returns
    -------
    anndata.AnnData
        ``X``: float32 consensus z-scores, drugs x 978 landmark genes. ``obs``, indexed by
        DrugBank id, in the file's order:

        - ``sig_id``, ``pert_id``: the DrugBank id (one signature per compound);
        - ``cmap_name``: the drug's name (DrugBank);
        - ``inchikey``: its InChIKey (missing where DrugBank has none);
        - ``moa``: its single Repurposing Hub MoA (categorical); missing (NaN) for a drug
          with no MoA or with several;
        - ``moa_set``: every MoA of the drug, ``|``-separated as in the Hub (equal to
          ``moa`` for a single MoA); missing for a drug with no MoA;
        - ``cell_iname``: ``"consensus"`` and ``pert_type``: ``"trt_cp"``, as
          :func:`moaspace.pp.prepare` writes for a consensus matrix.

        ``var``, indexed by Entrez gene id (text): ``gene_symbol`` (2016-era landmark
        symbols) and ``feature_space`` (``"landmark"``), in the order of
        :func:`moaspace.pp.prepare`. ``uns["moaspace"]["dataset"]``: ``name``, the options,
        the files and ``filters`` (drugs and MoAs left after each step).

    Raises
    ------
    InputError
        If ``multi_moa`` is not ``"keep"``/``"drop"``, ``min_compounds_per_moa`` is below 1,
        or the shipped files are missing or malformed.

    Examples
    --------
    >>> import moaspace as ms
    >>> real = ms.datasets.lincs_consensus(min_compounds_per_moa=5, multi_moa="drop")
    >>> real.shape, real.obs["moa"].nunique()
    ((519, 978), 44)
    """
    if multi_moa not in MULTI_MOA:
        raise InputError(f"multi_moa must be one of {list(MULTI_MOA)}, got {multi_moa!r}")
    if min_compounds_per_moa is not None and min_compounds_per_moa < 1:
        raise InputError(f"min_compounds_per_moa must be >= 1, got {min_compounds_per_moa}")
    paths = lincs_consensus_paths()
    genes = bundled_geneinfo()
    matrix = open_matrix(paths["matrix"], gene_ids=genes.index)
    labels = _labels(paths["moa_labels"])
    missing = matrix.signatures.difference(labels.index)
    if len(missing):
        raise InputError(f"{paths['moa_labels']}: {len(missing)} drugs of the matrix have no "
                         f"row (column 'drugbank_id'), e.g. {list(missing[:3])}")
    absent = genes.index.difference(matrix.genes)
    if len(absent):
        raise InputError(f"{paths['matrix']}: {len(absent)} landmark genes are missing")
    obs = labels.loc[matrix.signatures]
    keep, log = _select(obs, min_compounds_per_moa, multi_moa)
    obs = obs[keep]
    adata = matrix.read(genes.index.tolist(), obs.index.tolist())
    adata.obs = _obs(obs)
    adata.var = genes.loc[adata.var_names, ["gene_symbol", "feature_space"]].copy()
    adata.uns["moaspace"] = {"dataset": {
        "name": "lincs_consensus",
        "options": {"min_compounds_per_moa": min_compounds_per_moa or 0,
                    "multi_moa": multi_moa},
        "files": {k: p.name for k, p in paths.items()},
        "filters": pd.DataFrame(log),
    }}
    logger.info("lincs_consensus: %d drugs x %d genes, %d MoAs", adata.n_obs, adata.n_vars,
                adata.obs["moa"].nunique())
    return adata


def _obs(labels: pd.DataFrame) -> pd.DataFrame:
    ids = labels.index.astype(str)
    moas = sorted(labels["moa"].dropna().unique())
    return pd.DataFrame({
        "sig_id": ids, "pert_id": ids,
        "cmap_name": labels["cmap_name"].astype(str).to_numpy(),
        "inchikey": labels["inchikey"].to_numpy(dtype=object),
        "moa": pd.Categorical(labels["moa"].to_numpy(), categories=moas),
        "moa_set": pd.Categorical(labels["moa_set"].to_numpy()),
        "cell_iname": CONSENSUS_CELL, "pert_type": "trt_cp",
    }, index=pd.Index(ids))
