"""Filter and join LINCS files into one AnnData (signatures x genes).

The order of the filters is fixed and every step is logged and recorded in
``adata.uns["moaspace"]["prepare"]["filters"]`` (signatures removed and
remaining, compounds and MoAs remaining), so a user can see which filter
removed what and which one emptied the selection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import atomic_path, deferred_interrupt, preview
from moaspace._version import __version__
from moaspace.errors import InputError
from moaspace.io.labels import read_moa_table
from moaspace.io.lincs import landmark_gene_ids, read_compoundinfo, read_geneinfo, read_siginfo
from moaspace.io.matrix import open_matrix
from moaspace.io.query import read_query
from moaspace.pp._moa_groups import MULTI_MOA, label_compounds

logger = logging.getLogger(__name__)

COMPOUND_TYPES = ("trt_cp",)
KNOCKDOWN_TYPES = ("trt_xpr", "trt_sh", "trt_sh.cgs", "trt_oe")
#: ``obs["cell_iname"]`` of signatures prepared without siginfo (one per compound)
CONSENSUS_CELL = "consensus"
OBS_COLUMNS = (
    "sig_id", "pert_id", "cmap_name", "moa", "moa_set", "cell_iname", "pert_dose", "pert_dose_unit",
    "pert_idose", "pert_time", "tas", "pert_type", "is_hiq", "target_gene",
)


@dataclass
class PrepareConfig:
    """Filters applied by :func:`prepare` (defaults follow the reference study).

    In the order applied: perturbation type, quality, time, TAS; then, for compounds,
    MoA label, single MoA (``multi_moa="drop"`` only), signatures per compound and
    compounds per MoA. Compounds fall in four groups (``docs/data_labels.md``):
    single-MoA, multi-MoA, rare-MoA and unlabelled; the defaults keep the first two.

    Parameters
    ----------
    pert_type : sequence of str or str, default ("trt_cp",)
        siginfo ``pert_type`` values kept; a comma-separated string is split. Only
        ``trt_cp`` counts as compounds (MoA labels); other types (e.g. ``trt_xpr``,
        ``trt_sh``) are treated as knockdowns.
    times : sequence of float, optional, default (6.0, 24.0)
        ``pert_time`` values kept, in hours; None: all.
    hiq_only : bool, default True
        Keep only signatures with ``is_hiq == 1``.
    min_tas : float, optional
        Minimum transcriptional activity score (``tas``); default None: no TAS filter.
    min_sigs_per_compound : int, default 10
        Compounds with fewer remaining signatures are dropped.
    min_compounds_per_moa : int, default 10
        MoAs with fewer remaining single-MoA compounds are rare: their compounds are
        dropped (unless ``keep_rare_moas``). Multi-MoA compounds are not counted.
    multi_moa : {"keep", "drop"}, default "keep"
        Compounds with several MoAs (a MoA table cell ``a|b``, or several rows): kept with
        ``obs["moa"]`` missing and ``obs["moa_set"]`` the sorted ``|``-joined set
        (whatever the size of their MoAs), or dropped.
    keep_rare_moas : bool, default False
        Keep the compounds of rare MoAs, with their MoA (more, smaller classes).
    keep_unlabelled : bool, default False
        Keep compounds without a MoA in the table (``moa`` and ``moa_set`` missing); they
        still need ``min_sigs_per_compound`` signatures.
    genes : {"landmark", "all"}, default "landmark"
        The landmark genes, or every geneinfo gene present in the matrix.
    max_missing_sig_report : int, default 10
        Not read by the filters; recorded with the rest of the configuration.

    Raises
    ------
    InputError
        If ``genes`` is neither ``"landmark"`` nor ``"all"``, or ``multi_moa`` is invalid.
    """

    pert_type: Sequence[str] = ("trt_cp",)
    times: Sequence[float] | None = (6.0, 24.0)
    hiq_only: bool = True
    min_tas: float | None = None
    min_sigs_per_compound: int = 10
    min_compounds_per_moa: int = 10
    genes: str = "landmark"
    max_missing_sig_report: int = 10
    multi_moa: str = "keep"
    keep_rare_moas: bool = False
    keep_unlabelled: bool = False

    def __post_init__(self):
        if isinstance(self.pert_type, str):
            self.pert_type = tuple(p.strip() for p in self.pert_type.split(",") if p.strip())
        self.pert_type = tuple(self.pert_type)
        if self.genes not in ("landmark", "all"):
            raise InputError(f"genes must be 'landmark' or 'all', got {self.genes!r}")
        if self.multi_moa not in MULTI_MOA:
            raise InputError(f"multi_moa must be one of {list(MULTI_MOA)}, got "
                             f"{self.multi_moa!r}")
        if self.times is not None:
            self.times = tuple(float(t) for t in self.times)

    @property
    def is_compound(self) -> bool:
        return all(p in COMPOUND_TYPES for p in self.pert_type)


@dataclass
class FilterLog:
    steps: list[dict] = field(default_factory=list)
    groups: pd.DataFrame | None = None  # what each group of compounds contributed

    def record(self, step: str, before: pd.DataFrame, after: pd.DataFrame, moa: bool) -> None:
        entry = {
            "step": step,
            "removed_signatures": int(len(before) - len(after)),
            "signatures": len(after),
            "compounds": int(after["pert_id"].nunique()) if len(after) else 0,
        }
        if moa and "moa" in after.columns:
            entry["moas"] = int(after["moa"].nunique()) if len(after) else 0
        self.steps.append(entry)
        logger.info(
            "%-28s removed %7d signatures; %7d signatures, %5d compounds%s remain",
            step, entry["removed_signatures"], entry["signatures"], entry["compounds"],
            f", {entry['moas']} MoAs" if "moas" in entry else "",
        )
        if len(after) == 0:
            raise InputError(
                f"no signatures left after filter '{step}' "
                f"({len(before)} before it); relax that filter"
            )


def _select_genes(
    geneinfo: pd.DataFrame, matrix_genes: pd.Index, genes: str, gctx: Path, geneinfo_path
) -> list[str]:
    wanted = landmark_gene_ids(geneinfo) if genes == "landmark" else geneinfo.index.tolist()
    if genes == "landmark" and not wanted:
        raise InputError(f"{geneinfo_path}: no gene has feature_space == 'landmark'")
    present = matrix_genes.intersection(pd.Index(wanted))
    if len(present) == 0:
        symbols = set(geneinfo["gene_symbol"].astype(str))
        as_symbols = matrix_genes.isin(list(symbols)).sum()
        hint = (
            f"; {as_symbols} of them look like gene symbols: the matrix must be keyed by "
            "Entrez gene id (geneinfo gene_id)" if as_symbols else ""
        )
        raise InputError(
            f"{gctx}: none of the {len(wanted)} {genes} gene ids of {geneinfo_path} are "
            f"row ids of the matrix (row ids look like {preview(matrix_genes, 5)}){hint}"
        )
    missing = pd.Index(wanted).difference(matrix_genes)
    if genes == "landmark" and len(missing):
        raise InputError(
            f"{gctx}: {len(missing)} landmark genes of {geneinfo_path} are missing from the "
            f"matrix: {preview(missing)}"
        )
    if len(missing):
        logger.warning("%d genes of geneinfo are not in the matrix; skipped", len(missing))
    # keep geneinfo order (landmarks first in the published file)
    present_set = set(present)
    return [g for g in wanted if g in present_set]


def bundled_geneinfo() -> pd.DataFrame:
    """The 978 landmark genes as a geneinfo table, from the package's resources.

    For matrices that come without a ``geneinfo_beta.txt``.

    Returns
    -------
    pandas.DataFrame
        One row per landmark gene, indexed by Entrez gene id (text, unnamed index), with
        columns ``gene_id``, ``gene_symbol`` and ``feature_space`` (``"landmark"``).
    """
    from importlib import resources

    path = resources.files("moaspace.resources") / "landmark_genes.csv"
    with resources.as_file(path) as local:
        table = pd.read_csv(local, dtype={"pr_gene_id": str})
    out = pd.DataFrame({"gene_id": table["pr_gene_id"].str.strip(),
                        "gene_symbol": table["pr_gene_symbol"].astype(str),
                        "feature_space": "landmark"})
    return out.set_index("gene_id", drop=False).rename_axis(None)


def _geneinfo_for(matrix, geneinfo, genes: str) -> tuple[pd.DataFrame, str]:
    """geneinfo (read, or the bundled landmarks plus the matrix's other genes) and its name."""
    if geneinfo is not None:
        return read_geneinfo(geneinfo), str(geneinfo)
    table = bundled_geneinfo()
    extra = matrix.genes.difference(table.index)
    if genes == "all" and len(extra):
        more = pd.DataFrame({"gene_id": extra, "gene_symbol": "", "feature_space": "unknown"},
                            index=extra)
        table = pd.concat([table, more])
    logger.info("no geneinfo: genes from the bundled landmark table (%d landmark genes)",
                int((table["feature_space"] == "landmark").sum()))
    return table, "the bundled landmark gene table"


def _consensus_siginfo(matrix, config: PrepareConfig, has_labels: bool) -> pd.DataFrame:
    """A siginfo for a matrix without one: one signature per compound, named by its id."""
    if not config.is_compound:
        raise InputError(f"pert_type {list(config.pert_type)} needs a siginfo (the knocked-down "
                         "gene of each signature); without siginfo every signature is a compound")
    if not has_labels:
        raise InputError(f"{matrix.path}: without siginfo the matrix's signature ids are compound "
                         "ids and need a MoA table (moa_labels or compoundinfo); unlabelled "
                         "query signatures: prepare_query")
    if config.min_tas is not None:
        raise InputError("min_tas needs siginfo's 'tas' column; without siginfo there is no TAS")
    logger.info("no siginfo: each of the %d signatures of %s is one compound (cell 'consensus'); "
                "the quality and time filters do not apply", len(matrix.signatures), matrix.path)
    ids = matrix.signatures.astype(str)
    return pd.DataFrame({"sig_id": ids, "pert_id": ids, "pert_type": "trt_cp",
                         "cell_iname": CONSENSUS_CELL}, index=ids)


def prepare(
    gctx: str | os.PathLike,
    siginfo: str | os.PathLike | None = None,
    geneinfo: str | os.PathLike | None = None,
    compoundinfo: str | os.PathLike | None = None,
    moa_labels: str | os.PathLike | None = None,
    config: PrepareConfig | None = None,
    *,
    progress: bool = True,
    **overrides,
) -> ad.AnnData:
    """Filter LINCS signatures and return an AnnData with ``X`` float32 z-scores.

    Filters are applied in a fixed order (see :class:`PrepareConfig`), each logged and
    recorded; a filter that leaves no signature is an error naming it.

    For knockdowns (``pert_type`` ``trt_xpr``/``trt_sh``) the knocked-down gene
    (``cmap_name``, else ``pert_id``) is written to ``obs["target_gene"]`` and no MoA,
    per-compound or per-MoA filter is applied.

    Parameters
    ----------
    gctx : str or os.PathLike
        The signature matrix: a level-5 ``.gctx`` (streamed, never loaded whole),
        or a GCT 1.2/1.3, TSV or CSV text matrix (optionally ``.gz``) with genes in
        rows or in columns (:func:`moaspace.io.matrix.open_matrix`). Gene ids are
        Entrez ids.
    siginfo : str or os.PathLike, optional
        ``siginfo_beta.txt``; every signature id of the matrix must be in it.
        None: the matrix holds one signature per compound (e.g. per-compound
        consensus signatures), its signature ids are the compound ids of the MoA
        table, ``obs["cell_iname"]`` is ``"consensus"``, and the quality, time and
        TAS filters do not apply.
    geneinfo : str or os.PathLike, optional
        ``geneinfo_beta.txt``; None: the bundled table of the 978 landmark genes
        (with ``genes="all"`` the matrix's other genes are kept without symbols).
    compoundinfo : str or os.PathLike, optional
        ``compoundinfo_beta.txt``; for compounds the MoAs come from its ``moa`` column
        (all rows of a compound) unless ``moa_labels`` is given. Also a source of
        ``cmap_name``.
    moa_labels : str or os.PathLike, optional
        A compound -> MoA table (:func:`moaspace.io.read_moa_table`, read with
        ``multi_moa="keep"``); takes precedence over compoundinfo.
    config : PrepareConfig, optional
        Filters; default None: ``PrepareConfig()``.
    progress : bool, default True
        Show a progress bar while reading the matrix.
    **overrides
        :class:`PrepareConfig` fields replacing those of ``config``.

    Returns
    -------
    anndata.AnnData
        ``X``: float32 z-scores, signatures x genes (genes in geneinfo order). ``obs``,
        indexed by ``sig_id``: those of ``sig_id``, ``pert_id``, ``cmap_name``, ``moa``,
        ``moa_set``, ``cell_iname``, ``pert_dose``, ``pert_dose_unit``, ``pert_idose``,
        ``pert_time``, ``tas``, ``pert_type``, ``is_hiq`` and ``target_gene`` that exist
        (``pert_dose``, ``pert_time``, ``tas`` and ``is_hiq`` numeric; text missing as
        ``""``, except compounds' ``moa`` and ``moa_set``: NaN, see
        :class:`PrepareConfig`). ``var``, indexed by gene id: ``gene_symbol`` and
        ``feature_space``. ``uns["moaspace"]["prepare"]``: ``version``, ``config``,
        ``files`` (the input paths), ``filters`` (one row per filter: ``step``,
        ``removed_signatures``, ``signatures``, ``compounds`` and, from the MoA filter on,
        ``moas``, the single-MoA classes) and, for compounds, ``groups`` (one row per
        group: signatures and compounds in, kept and dropped, and ``dropped_by``).

    Raises
    ------
    InputError
        If an input file is missing or malformed; the matrix has no or duplicated
        signature ids, or ids not in siginfo; none of the selected genes are matrix ids
        (e.g. a matrix keyed by symbols) or landmark genes are missing; siginfo lists
        signatures of the selected types that the matrix lacks; a column a filter needs is
        missing; a filter leaves no signature; compounds have no MoA source, or none of
        the MoA table's compounds are in siginfo; fewer than two MoAs remain; without
        siginfo, the run needs one (knockdowns, ``min_tas``, no MoA source); or
        ``genes`` is invalid.
    TypeError
        If an override is not a :class:`PrepareConfig` field.
    """
    config = config or PrepareConfig()
    if overrides:
        config = PrepareConfig(**{**asdict(config), **overrides})
    gctx = Path(gctx)
    cinfo = read_compoundinfo(compoundinfo) if compoundinfo is not None else None
    labels = read_moa_table(moa_labels, multi_moa="keep") if moa_labels is not None else None
    known_genes = (read_geneinfo(geneinfo).index if geneinfo is not None
                   else bundled_geneinfo().index)
    matrix = open_matrix(gctx, gene_ids=known_genes)
    genes_df, geneinfo_name = _geneinfo_for(matrix, geneinfo, config.genes)
    if siginfo is not None:
        sig = read_siginfo(siginfo)
        siginfo_name = str(siginfo)
    else:
        sig = _consensus_siginfo(matrix, config, labels is not None or cinfo is not None)
        siginfo_name = "the matrix (no siginfo)"
        config = PrepareConfig(**{**asdict(config), "hiq_only": False, "times": None})
    _check_signature_ids(matrix, sig, siginfo_name, gctx)
    # genes first: a matrix keyed by symbols should fail before any filtering
    gene_ids = _select_genes(genes_df, matrix.genes, config.genes, gctx, geneinfo_name)
    frame, log = _filter_signatures(matrix, sig, siginfo_name, config, gctx)
    frame = _label_signatures(frame, sig, cinfo, labels, config, log, compoundinfo,
                              moa_labels, siginfo_name)

    logger.info("reading %d signatures x %d genes from %s", len(frame), len(gene_ids), gctx)
    adata = matrix.read(gene_ids, frame.index.tolist(), progress=progress)
    adata.obs = _obs_frame(frame)
    var = pd.DataFrame(index=pd.Index(gene_ids))
    var["gene_symbol"] = genes_df.loc[gene_ids, "gene_symbol"].astype(str).values
    var["feature_space"] = genes_df.loc[gene_ids, "feature_space"].astype(str).values
    adata.var = var
    adata.uns["moaspace"] = {
        "prepare": {
            "version": __version__,
            "config": json.loads(json.dumps(asdict(config))),
            "files": {
                "gctx": str(gctx), "siginfo": str(siginfo or ""),
                "geneinfo": str(geneinfo or ""),
                "compoundinfo": str(compoundinfo) if compoundinfo else "",
                "moa_labels": str(moa_labels) if moa_labels else "",
            },
            # a table (not a list of dicts) so that it survives the .h5ad round trip
            "filters": pd.DataFrame(log.steps).astype({"step": str}),
        }
    }
    if log.groups is not None:
        adata.uns["moaspace"]["prepare"]["groups"] = log.groups
    return adata


def prepare_query(matrix: str | os.PathLike, geneinfo: str | os.PathLike | None = None, *,
                  genes: str = "landmark") -> ad.AnnData:
    """Unlabelled query signatures (no siginfo, no MoA table), laid out as :func:`prepare`'s.

    Read by :func:`moaspace.io.read_query` (column metadata to ``obs``, rows by
    ``pr_gene_id`` or landmark probe id); no filter applies and no MoA is joined.

    Parameters
    ----------
    matrix : str or os.PathLike
        The query file: GCT, GCTX, TSV, CSV or ``.h5ad``.
    geneinfo : str or os.PathLike, optional
        ``geneinfo_beta.txt``; None: the bundled landmark table.
    genes : {"landmark", "all"}, default "landmark"
        As in :class:`PrepareConfig` (missing landmark genes are named).

    Returns
    -------
    anndata.AnnData
        Float32 ``X``, ``obs`` the file's metadata and ``sig_id``, ``var`` and ``uns``.

    Raises
    ------
    InputError
        If the file cannot be read, ``genes`` is invalid or selected genes are missing.
    """
    PrepareConfig(genes=genes)  # checks genes
    path = Path(matrix)
    adata = read_query(path, gene_ids=(read_geneinfo(geneinfo).index if geneinfo is not None
                                       else bundled_geneinfo().index))
    table, table_name = _geneinfo_for(SimpleNamespace(genes=adata.var_names), geneinfo, genes)
    gene_ids = _select_genes(table, adata.var_names, genes, path, table_name)
    x = adata[:, gene_ids].X
    out = ad.AnnData(X=np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float32),
                     obs=adata.obs.copy(), var=table.loc[gene_ids, ["gene_symbol",
                                                                   "feature_space"]].astype(str))
    out.obs.insert(0, "sig_id", out.obs_names.astype(str))
    steps = pd.DataFrame({"step": ["query (no filter)"], "signatures": [out.n_obs]})
    out.uns["moaspace"] = {"prepare": {"version": __version__, "files": {"gctx": str(path)},
                                       "config": {"genes": genes, "query": True},
                                       "filters": steps}}
    return out


def _check_signature_ids(matrix, sig: pd.DataFrame, siginfo, gctx: Path) -> None:
    """Every signature id of the matrix, once, in siginfo."""
    matrix_sigs = matrix.signatures
    if len(matrix_sigs) == 0:
        raise InputError(f"{gctx}: the matrix has no signatures")
    if matrix_sigs.has_duplicates:
        raise InputError(
            f"{gctx}: duplicated signature ids: {preview(matrix_sigs[matrix_sigs.duplicated()])}"
        )
    unknown = matrix_sigs.difference(sig.index)
    if len(unknown):
        overlap_rows = matrix.genes.isin(sig.index).sum()
        hint = (
            " (the matrix's row ids are signature ids: rows and columns look swapped)"
            if overlap_rows else ""
        )
        raise InputError(
            f"{gctx}: {len(unknown)} of {len(matrix_sigs)} signature ids in the matrix are "
            f"not in {siginfo}: {preview(unknown)}{hint}"
        )


def _filter_signatures(matrix, sig: pd.DataFrame, siginfo, config: PrepareConfig, gctx: Path
                       ) -> tuple[pd.DataFrame, FilterLog]:
    """Apply the type, quality, time and TAS filters to the matrix's signatures."""
    matrix_sigs = matrix.signatures
    log = FilterLog()
    frame = sig.loc[matrix_sigs]
    log.record("signatures in matrix", sig, frame, moa=False)

    before = frame
    frame = frame[frame["pert_type"].astype(str).isin(config.pert_type)]
    log.record(f"pert_type in {list(config.pert_type)}", before, frame, moa=False)
    absent = sig.index[sig["pert_type"].astype(str).isin(config.pert_type)].difference(matrix_sigs)
    if len(absent):
        raise InputError(
            f"{siginfo}: {len(absent)} signatures of pert_type {list(config.pert_type)} are "
            f"not in the matrix {gctx}: {preview(absent)}"
        )

    if config.hiq_only:
        if "is_hiq" not in frame.columns:
            raise InputError(f"{siginfo}: column 'is_hiq' is missing (needed by hiq_only)")
        before = frame
        frame = frame[pd.to_numeric(frame["is_hiq"], errors="coerce") == 1]
        log.record("is_hiq == 1", before, frame, moa=False)

    if config.times is not None:
        if "pert_time" not in frame.columns:
            raise InputError(f"{siginfo}: column 'pert_time' is missing (needed by times)")
        before = frame
        times = pd.to_numeric(frame["pert_time"], errors="coerce")
        frame = frame[times.isin(config.times)]
        log.record(f"pert_time in {list(config.times)}", before, frame, moa=False)

    if config.min_tas is not None:
        if "tas" not in frame.columns:
            raise InputError(f"{siginfo}: column 'tas' is missing (needed by min_tas)")
        before = frame
        frame = frame[pd.to_numeric(frame["tas"], errors="coerce") >= config.min_tas]
        log.record(f"tas >= {config.min_tas}", before, frame, moa=False)
    return frame.copy(), log


def _label_signatures(frame, sig, cinfo, labels, config, log, compoundinfo, moa_labels,
                      siginfo) -> pd.DataFrame:
    """MoA (compounds: with the per-compound and per-MoA filters) or target gene (knockdowns)."""
    if "cmap_name" not in frame.columns:
        if labels is not None and labels["cmap_name"].notna().any():
            frame["cmap_name"] = frame["pert_id"].astype(str).map(labels["cmap_name"])
        elif cinfo is not None:
            names = cinfo.drop_duplicates("pert_id").set_index("pert_id")["cmap_name"]
            frame["cmap_name"] = frame["pert_id"].map(names)
    if not config.is_compound:
        # knockdowns: the knocked-down gene is the perturbagen name
        target = frame["cmap_name"] if "cmap_name" in frame.columns else frame["pert_id"]
        frame["target_gene"] = target.astype(str)
        frame["moa"] = pd.NA
        return frame
    frame, log.groups = label_compounds(
        frame, sig, cinfo, labels, config, log,
        {"moa_labels": moa_labels, "compoundinfo": compoundinfo, "siginfo": siginfo})
    return frame


def _obs_frame(frame: pd.DataFrame) -> pd.DataFrame:
    obs = pd.DataFrame(index=frame.index)
    for column in OBS_COLUMNS:
        if column in frame.columns:
            obs[column] = frame[column].values
    for column in ("pert_dose", "pert_time", "tas", "is_hiq"):
        if column in obs.columns:
            obs[column] = pd.to_numeric(obs[column], errors="coerce")
    for column in obs.columns:
        if obs[column].dtype == object:
            missing = obs[column].isna().to_numpy()
            obs[column] = obs[column].astype("string").fillna("").astype(str)
            if column in ("moa_set",) or (column == "moa" and "moa_set" in obs.columns):
                # compounds: a missing MoA stays missing (NaN), as the obs contract says
                obs[column] = obs[column].where(~missing, np.nan)
    return obs


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike, compression: str | None = None) -> Path:
    """Write an AnnData atomically (temp file + rename): never a partial ``.h5ad``.

    Ctrl-C is held until the write ends; nullable string columns (pandas >= 3) are
    allowed where anndata has that setting.

    Parameters
    ----------
    adata : anndata.AnnData
        The data to write.
    path : str or os.PathLike
        Output ``.h5ad`` file; an existing file is replaced.
    compression : str, optional
        Compression of anndata's datasets (``"gzip"`` or ``"lzf"``); default None: none.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If ``path`` exists and is not a regular file.
    MoaspaceError
        If the output directory cannot be created or is not writable.
    """
    path = Path(path)
    # pandas >= 3 stores strings as StringArray, which anndata writes only when allowed
    allow = (ad.settings.override(allow_write_nullable_strings=True)
             if hasattr(ad.settings, "allow_write_nullable_strings")
             else contextlib.nullcontext())
    with atomic_path(path, suffix=".h5ad.tmp") as tmp, allow, deferred_interrupt():
        adata.write_h5ad(tmp, compression=compression)
    return path


def read_h5ad(path: str | os.PathLike) -> ad.AnnData:
    """Read an ``.h5ad`` with a clear error when it is missing or not an AnnData file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.h5ad`` file; read fully into memory.

    Returns
    -------
    anndata.AnnData
        The stored AnnData.

    Raises
    ------
    InputError
        If the file does not exist or cannot be read as ``.h5ad``, or its ``X`` (dense or
        sparse) is not floating-point (an AnnData without ``X`` is accepted).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"AnnData file not found: {path}")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for corrupt files
        raise InputError(f"{path}: cannot read as .h5ad ({type(exc).__name__}: {exc})") from exc
    # dense or sparse (CSR/CSC) alike: the dtype of the stored values
    dtype = getattr(adata.X, "dtype", None)
    if adata.X is not None and (dtype is None or not np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: X must hold floating-point z-scores (found {dtype})")
    return adata
