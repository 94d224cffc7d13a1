"""The simulated release in LINCS formats: the gctx matrices, siginfo, geneinfo,
compoundinfo, the compound -> MoA table, ``truth.json`` and ``moa_truth.csv``
(:func:`simulate`), the same data in memory (:func:`simulate_adata`) and the embedded
demo release (:func:`load_demo_paths`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import atomic_path, atomic_write_text
from moaspace._version import __version__
from moaspace.datasets._simulate.config import (
    _GENERIC_PATHWAYS,
    FILE_NAMES,
    SYNTHETIC_GENE_ID_START,
    SimulationConfig,
    _config,
    _dose_str,
)
from moaspace.datasets._simulate.signatures import _LazyMatrix
from moaspace.datasets._simulate.world import SimulatedWorld, _build_world
from moaspace.errors import InputError
from moaspace.io.gctx import write_gctx

logger = logging.getLogger(__package__)

__all__ = ["MOA_TRUTH_FILE", "load_demo_paths", "simulate", "simulate_adata"]

#: every compound's true MoAs and whether the MoA table lists them (key ``moa_truth``
#: of :func:`simulate`; not part of the embedded demo release)
MOA_TRUTH_FILE = "moa_truth.csv"


def _moa_sets(world: SimulatedWorld) -> np.ndarray:
    """Every compound's MoAs as written for users (``a|b`` for multi-MoA compounds)."""
    cpd = world.cpd
    return (cpd["moa_set"] if "moa_set" in cpd.columns else cpd["moa"]).to_numpy()


# --------------------------------------------------------------------------- tables


def _siginfo(world: SimulatedWorld, qcs: dict[str, dict]) -> pd.DataFrame:
    """siginfo rows of the kinds in ``qcs`` ({"cp": qc, "kd": qc}), compounds first."""
    cfg = world.cfg
    cells = np.asarray(world.cells)
    cpd = world.cpd
    frames = []
    for key, kind in (("cp", "trt_cp"), ("kd", "trt_xpr")):
        if key not in qcs:
            continue
        design = world.design_cp if key == "cp" else world.design_kd
        qc = qcs[key]
        n = len(design)
        is_cp = kind == "trt_cp"
        cell_names = cells[design["cell"].to_numpy()]
        if is_cp:
            dose = design["dose"].to_numpy()
            cmap = cpd["cmap_name"].to_numpy()[design["cpd"].to_numpy()]
            mfc = [
                f"{p}-001-01-{int(h[:1], 16) % 10}"
                for p, h in zip(
                    design["pert_id"],
                    [hashlib.md5(s.encode()).hexdigest() for s in design["pert_id"]],
                    strict=True,
                )
            ]
        else:
            dose = np.full(n, np.nan)
            cmap = design["gene"].to_numpy()
            mfc = design["pert_id"].tolist()
        time_h = design["time"].to_numpy()
        det = [
            "|".join(f"{pl}_X{j}_{bb.upper()}" for j in range(1, ns + 1))
            for pl, ns, bb in zip(
                design["plate"], design["nsample"], design["bead_batch"], strict=True
            )
        ]
        cc = np.round(qc["cc_q75"], 4)
        is_hiq = ((design["qc_pass"].to_numpy() == 1) & (cc >= cfg.hiq_min_cc)).astype(int)
        frames.append(
            pd.DataFrame(
                {
                    "bead_batch": design["bead_batch"].to_numpy(),
                    "nearest_dose": dose,
                    "pert_dose": dose,
                    "pert_dose_unit": "uM" if is_cp else "",
                    "pert_idose": [f"{_dose_str(d)} uM" for d in dose] if is_cp else "",
                    "pert_time": time_h,
                    "pert_itime": [f"{int(t)} h" for t in time_h],
                    "pert_time_unit": "h",
                    "cell_mfc_name": cell_names,
                    "pert_mfc_id": mfc,
                    "nsample": design["nsample"].to_numpy(),
                    "cc_q75": cc,
                    "ss_ngene": qc["ss_ngene"].astype(int),
                    "tas": np.round(qc["tas"], 4),
                    "is_hiq": is_hiq,
                    "qc_pass": design["qc_pass"].to_numpy(),
                    "pert_id": design["pert_id"].to_numpy(),
                    "sig_id": design["sig_id"].to_numpy(),
                    "pert_type": kind,
                    "cell_iname": cell_names,
                    "det_plates": det,
                    "build_name": "",
                    "project_code": [p.split("_")[0].rstrip("0123456789") for p in design["plate"]],
                    "cmap_name": cmap,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _geneinfo(world: SimulatedWorld) -> pd.DataFrame:
    n = len(world.gene_ids)
    src = ["NCBI"] * world.n_lm + ["simulated"] * (n - world.n_lm)
    return pd.DataFrame(
        {
            "gene_id": world.gene_ids,
            "gene_symbol": world.symbols,
            "ensembl_id": "",
            "gene_title": world.titles,
            "gene_type": "protein-coding",
            "src": src,
            "feature_space": world.feature_space,
        }
    )


def _compoundinfo(world: SimulatedWorld) -> pd.DataFrame:
    rows = []
    moa_sets = _moa_sets(world)
    for i, c in world.cpd.iterrows():
        moa = moa_sets[i] if c["labeled"] else ""
        for target in c["targets"] or [""]:
            rows.append(
                {
                    "pert_id": c["pert_id"],
                    "cmap_name": c["cmap_name"],
                    "target": target,
                    "moa": moa,
                    "canonical_smiles": c["canonical_smiles"],
                    "inchi_key": c["inchi_key"],
                    "compound_aliases": "",
                }
            )
    return pd.DataFrame(rows)


def _moa_labels(world: SimulatedWorld) -> pd.DataFrame:
    labeled = world.cpd["labeled"].to_numpy()
    lab = world.cpd[labeled]
    return pd.DataFrame(
        {
            "BRD-ID": lab["pert_id"].to_numpy(),
            "Drug name": lab["cmap_name"].to_numpy(),
            "MOA": _moa_sets(world)[labeled],
        }
    )


def _moa_truth(world: SimulatedWorld) -> pd.DataFrame:
    """``moa_truth.csv``: ``pert_id``, ``moa_set`` (true MoAs, ``|``-joined, sorted),
    ``labelled`` (1: in the MoA table and compoundinfo, 0: left out), ``n_moas``."""
    moa_sets = _moa_sets(world)
    return pd.DataFrame({
        "pert_id": world.cpd["pert_id"].to_numpy(),
        "moa_set": moa_sets,
        "labelled": world.cpd["labeled"].astype(int).to_numpy(),
        "n_moas": [len(str(m).split("|")) for m in moa_sets],
    })


def _truth(world: SimulatedWorld) -> dict:
    cfg = world.cfg
    used = sorted(
        {p for pws in world.moa_pw for p in pws}
        | {int(i) for i in np.nonzero(world.kd_coef.any(0))[0]}
    )
    lm_sym = world.symbols[: world.n_lm]

    def program(i: int) -> dict[str, float]:
        vec = world.programs[i]
        return {lm_sym[g]: round(float(vec[g]), 4) for g in np.nonzero(vec)[0]}

    compounds = {}
    for _, c in world.cpd.iterrows():
        compounds[c["pert_id"]] = {
            "moa": c["moa"],
            "labeled": bool(c["labeled"]),
            "active": bool(c["active"]),
            "efficacy": round(float(c["efficacy"]), 4),
            "log10_ec50_um": round(float(c["log10_ec50_um"]), 4),
            "hill": round(float(c["hill"]), 4),
            "moa_cosine": round(float(c["moa_cosine"]), 4),
            "cytotoxic": round(float(c["cytotoxic"]), 4),
            "offtarget_moa": c["offtarget_moa"] or None,
            "targets": list(c["targets"]),
        }
        if "series" in c:
            compounds[c["pert_id"]]["series"] = int(c["series"])
        if c.get("moa2"):  # multi-MoA compounds only
            compounds[c["pert_id"]]["moa_set"] = str(c["moa_set"]).split("|")
            compounds[c["pert_id"]]["moa_weights"] = [round(w, 4) for w in c["moa_weights"]]
    kd = world.kd_genes
    return {
        "simulator": "moaspace.datasets._simulate",
        "moaspace_version": __version__,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "moa_pathways": {
            s.name: [world.pathways[p] for p in pws]
            for s, pws in zip(world.moas, world.moa_pw, strict=True)
        },
        "moa_targets": {s.name: list(s.targets) for s in world.moas},
        "moa_strength": {s.name: s.strength for s in world.moas},
        "moa_cytotoxicity": {s.name: s.cytotoxic for s in world.moas},
        "moa_cell_multipliers": {s.name: dict(s.cells) for s in world.moas if s.cells},
        "knockdown_moa": {g: list(m) for g, m in zip(kd["gene"], kd["expected_moas"], strict=True)},
        "null_knockdowns": [
            g for g, m in zip(kd["gene"], kd["expected_moas"], strict=True) if not m
        ],
        "knockdown_guides": {
            p: g for p, g in zip(world.guides["pert_id"], world.guides["gene"], strict=True)
        },
        "pathway_programs": {world.pathways[i]: program(i) for i in used},
        "generic_program": [name for name, _ in _GENERIC_PATHWAYS],
        "cell_lines": {
            c: {
                "responsiveness": round(float(world.cell_resp[k]), 4),
                "generic_gain": round(float(world.cell_generic[k]), 4),
            }
            for k, c in enumerate(world.cells)
        },
        "compounds": compounds,
        "genes": {
            "n_landmark": world.n_lm,
            "n_total": len(world.gene_ids),
            "synthetic_id_start": SYNTHETIC_GENE_ID_START if cfg.genes == "all" else None,
            "note": "non-landmark genes carry Reactome symbols and synthetic ids "
            ">= synthetic_id_start (not Entrez ids)",
        },
    }


# --------------------------------------------------------------------------- public API


def _write_table(frame: pd.DataFrame, path: Path, sep: str) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep=sep, index=False, float_format="%.6g", lineterminator="\n")


def simulate(
    out_dir: str | os.PathLike, config: SimulationConfig | None = None, **overrides
) -> dict[str, Path]:
    """Write a simulated LINCS beta release into ``out_dir``; return ``{key: path}``.

    Keys (see :data:`FILE_NAMES`): ``gctx`` (``level5_beta_trt_cp.gctx``),
    ``siginfo``, ``geneinfo``, ``compoundinfo``, ``moa_labels``, ``gctx_xpr``
    and ``truth``, and ``moa_truth`` (:data:`MOA_TRUTH_FILE`: every compound's true
    ``moa_set`` and ``labelled``, 0 for those the MoA table leaves out). The first five are the arguments of
    :func:`moaspace.pp._prepare.prepare`, e.g.
    ``prepare(**{k: paths[k] for k in ("gctx", "siginfo", "geneinfo", "compoundinfo",
    "moa_labels")})``. Signatures are generated and written block by block.
    Keyword ``overrides`` replace fields of ``config``.
    """
    cfg = _config(config, overrides)
    out = Path(out_dir)
    t0 = time.perf_counter()
    world = _build_world(cfg)
    paths = {key: out / name for key, name in FILE_NAMES.items()}
    logger.info(
        "simulating %d compound and %d knockdown signatures x %d genes into %s",
        len(world.design_cp),
        len(world.design_kd),
        len(world.gene_ids),
        out,
    )
    mats = {}
    for kind, key in (("cp", "gctx"), ("kd", "gctx_xpr")):
        lazy = _LazyMatrix(world, kind)
        design = world.design_cp if kind == "cp" else world.design_kd
        write_gctx(
            paths[key], lazy, design["sig_id"].tolist(), world.gene_ids, compression=cfg.compression
        )
        mats[kind] = lazy.qc
    _write_table(_siginfo(world, mats), paths["siginfo"], "\t")
    _write_table(_geneinfo(world), paths["geneinfo"], "\t")
    _write_table(_compoundinfo(world), paths["compoundinfo"], "\t")
    _write_table(_moa_labels(world), paths["moa_labels"], ",")
    atomic_write_text(paths["truth"], json.dumps(_truth(world), indent=1, sort_keys=True) + "\n")
    paths["moa_truth"] = out / MOA_TRUTH_FILE
    _write_table(_moa_truth(world), paths["moa_truth"], ",")
    for path in paths.values():  # temp files are created 0600; outputs are ordinary files
        path.chmod(0o644)
    logger.info("simulation written in %.1f s", time.perf_counter() - t0)
    return paths


def simulate_adata(
    config: SimulationConfig | None = None, *, pert_type: str = "trt_cp", **overrides
) -> tuple[ad.AnnData, dict]:
    """The data :func:`simulate` writes, in memory: ``(adata, truth)``.

    ``adata`` holds all signatures of ``pert_type`` (``trt_cp``, default, or
    ``trt_xpr``), unfiltered, in the file order, with ``X`` float32 (identical
    to the gctx values), ``obs`` indexed by ``sig_id`` with the columns
    :func:`~moaspace.pp._prepare.prepare` writes (``sig_id, pert_id,
    cmap_name, moa, cell_iname, pert_dose, pert_dose_unit, pert_idose,
    pert_time, tas, pert_type, is_hiq``, and ``moa_set``; ``target_gene`` for knockdowns)
    and ``var`` indexed by gene id with ``gene_symbol`` and ``feature_space``.
    Unlabelled compounds have ``moa == moa_set == ""`` (their true MoA is in
    ``truth["compounds"]``); multi-MoA compounds ``moa == ""`` and ``moa_set`` ``a|b``.
    ``truth`` is the content of ``truth.json``.

    Parameters
    ----------
    config : SimulationConfig, optional
        The world (default: ``SimulationConfig()``).
    pert_type : {"trt_cp", "trt_xpr"}, default "trt_cp"
        Compound or knockdown signatures.
    **overrides
        Fields of ``config`` to replace (e.g. ``seed=1``).

    Returns
    -------
    tuple of (anndata.AnnData, dict)
        The signatures and the planted truth.
    """
    if pert_type not in ("trt_cp", "trt_xpr"):
        raise InputError(f"pert_type must be 'trt_cp' or 'trt_xpr', got {pert_type!r}")
    cfg = _config(config, overrides)
    world = _build_world(cfg)
    kind = "cp" if pert_type == "trt_cp" else "kd"
    lazy = _LazyMatrix(world, kind)
    x = lazy.materialize()
    sig = _siginfo(world, {kind: lazy.qc})
    if pert_type == "trt_cp":
        labeled = world.cpd["labeled"].to_numpy()
        moa_sets = np.where(labeled, _moa_sets(world), "")
        single = np.char.find(moa_sets.astype(str), "|") < 0
        moa_map = dict(zip(world.cpd["pert_id"], np.where(single, moa_sets, ""), strict=True))
        sig["moa"] = sig["pert_id"].map(moa_map)
        sig["moa_set"] = sig["pert_id"].map(dict(zip(world.cpd["pert_id"], moa_sets,
                                                     strict=True)))
    else:
        sig["moa"] = ""
        sig["target_gene"] = sig["cmap_name"]
    columns = [
        "sig_id",
        "pert_id",
        "cmap_name",
        "moa",
        "cell_iname",
        "pert_dose",
        "pert_dose_unit",
        "pert_idose",
        "pert_time",
        "tas",
        "pert_type",
        "is_hiq",
    ]
    columns.append("target_gene" if pert_type == "trt_xpr" else "moa_set")
    obs = sig[columns].copy()
    for column in ("pert_dose", "pert_time", "tas"):
        obs[column] = obs[column].astype(float)
    obs["is_hiq"] = obs["is_hiq"].astype(int)
    obs.index = pd.Index(obs["sig_id"].astype(str).to_numpy())
    var = pd.DataFrame(
        {"gene_symbol": world.symbols, "feature_space": world.feature_space},
        index=pd.Index(world.gene_ids),
    )
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.uns["moaspace"] = {"simulate": {"config": json.loads(json.dumps(cfg.to_dict()))}}
    return adata, _truth(world)


def load_demo_paths() -> dict[str, Path]:
    """Paths of the embedded demo release (same keys as :func:`simulate`).

    Made by ``scripts/make_demo_data.py`` with :data:`DEMO_CONFIG`.
    """
    base = resources.files("moaspace.resources") / "demo"
    paths = {key: Path(str(base / name)) for key, name in FILE_NAMES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(
            f"embedded demo data is missing files: {missing}; "
            "regenerate with scripts/make_demo_data.py"
        )
    return paths
