"""The planted world: everything fixed before signatures are drawn.

Genes, Reactome pathway programs, the chosen MoAs and their directions, cell-line
effects, compounds, knockdowns, the inference map to non-landmark genes and the
design (which signature is profiled where). :func:`simulate_world` returns it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

from moaspace.datasets._simulate.catalogue import MOA_CATALOGUE, MoaSpec
from moaspace.datasets._simulate.config import (
    _CORE_CELLS,
    _DOSE_P,
    _GENERIC_PATHWAYS,
    _KD_TIME,
    _N_BEST_INFERRED,
    _N_INFERRED,
    _NSAMPLE,
    _NSAMPLE_P,
    _REQUIRED_CELLS,
    _TIME_GENERIC,
    _TIME_P,
    _TIMES,
    CELL_LINES,
    STANDARD_DOSES,
    SYNTHETIC_GENE_ID_START,
    SimulationConfig,
    _config,
    _dose_str,
)
from moaspace.datasets._simulate.perturbagens import _SYMBOL, _compounds, _knockdowns
from moaspace.datasets._simulate.streams import (
    _S_CELL,
    _S_DESIGN,
    _S_INFER,
    _S_MOA,
    _S_MODULES,
    _S_PATHWAY,
    _S_TECH,
    _rng,
    _unit,
)
from moaspace.io.genesets import bundled_gmt, read_gmt

logger = logging.getLogger(__package__)

__all__ = ["SimulatedWorld", "simulate_world"]


@dataclass
class SimulatedWorld:
    """Everything fixed before signatures are drawn (small: no per-signature data).

    The planted truth behind a simulated release: arrays are indexed by the orders of
    ``pathways``, ``moas``, ``cells``, the rows of ``cpd`` (compounds), ``kd_genes``
    and ``guides``; gene vectors run over the landmark genes (``symbols[:n_lm]``).
    """

    cfg: SimulationConfig
    gene_ids: list[str]  # all simulated genes (landmarks first)
    symbols: list[str]
    feature_space: list[str]
    titles: list[str]
    n_lm: int
    pathways: list[str]  # pathway universe (>= min landmark members)
    programs: np.ndarray  # (n_pathways, n_lm) unit vectors
    members: dict[str, list[str]]  # pathway -> landmark symbols it weights
    generic: np.ndarray  # (n_lm,) unit vector
    moas: list[MoaSpec]
    moa_pw: list[list[int]]  # pathway indices per MoA
    moa_coef: np.ndarray  # (n_moas, n_pathways)
    moa_idio: np.ndarray  # (n_moas, n_lm)
    cells: list[str]
    cell_resp: np.ndarray  # (n_cells,)
    cell_pw_gain: np.ndarray  # (n_cells, n_pathways)
    cell_gene_gain: np.ndarray  # (n_cells, n_lm)
    cell_generic: np.ndarray  # (n_cells,)
    cell_base: np.ndarray  # (n_cells, n_lm)
    moa_cell: np.ndarray  # (n_moas, n_cells) lineage multipliers
    cpd: pd.DataFrame  # one row per compound
    cpd_coef: np.ndarray  # (n_cpd, n_pathways)
    cpd_idio: np.ndarray  # (n_cpd, n_lm)
    kd_genes: pd.DataFrame  # one row per knocked-down gene
    kd_coef: np.ndarray
    kd_idio: np.ndarray
    guides: pd.DataFrame  # one row per guide (pert_id)
    guide_seed: np.ndarray  # (n_guides, n_lm)
    tech_factors: np.ndarray  # (n_factors, n_lm)
    infer_w: np.ndarray | None = None  # (n_lm, n_other) for genes="all"
    infer_r2: np.ndarray | None = None
    design_cp: pd.DataFrame = field(default_factory=pd.DataFrame)
    design_kd: pd.DataFrame = field(default_factory=pd.DataFrame)
    plates: list[str] = field(default_factory=list)
    plate_effect: np.ndarray | None = None
    plate_quality: np.ndarray | None = None
    modules: np.ndarray | None = None  # (n_modules, n_lm) unit loadings, correlated regime
    module_cell_gain: np.ndarray | None = None  # (n_cells, n_modules)

    @staticmethod
    def generic_weight(time_h: float) -> float:
        """Weight of the generic proliferation/stress program at ``time_h`` hours (the
        simulator multiplies it by a compound's cytotoxicity and the cell's gain)."""
        return _TIME_GENERIC[time_h]


def simulate_world(config: SimulationConfig | None = None, **overrides) -> SimulatedWorld:
    """The planted world of a simulation: what :func:`simulate` draws its signatures from.

    Pathway programs, the MoA directions (``moa_coef`` over ``programs`` plus
    ``moa_idio``), cell-line effects, compounds (``cpd``: MoA, efficacy, potency, ...),
    knockdowns and the design of the release that :func:`simulate` with the same
    ``config`` writes (same ``seed``: same world). Keyword ``overrides`` replace fields
    of ``config``. For oracles and checks that need the truth behind the data
    (``benchmarks/bench_ceiling.py``).
    """
    return _build_world(_config(config, overrides))


# --------------------------------------------------------------------------- genes, pathways


def _read_landmarks() -> pd.DataFrame:
    path = resources.files("moaspace.resources") / "landmark_genes.csv"
    with resources.as_file(path) as p:
        frame = pd.read_csv(p, dtype={"pr_gene_id": str})
    return frame


def _genes(cfg: SimulationConfig, gmt: dict[str, list[str]]):
    lm = _read_landmarks()
    ids = lm["pr_gene_id"].astype(str).tolist()
    symbols = lm["pr_gene_symbol"].astype(str).tolist()
    titles = lm["pr_gene_title"].fillna("").astype(str).tolist()
    space = ["landmark"] * len(ids)
    if cfg.genes == "all":
        taken = set(symbols)
        extra = sorted({g for genes in gmt.values() for g in genes if _SYMBOL.match(g)} - taken)
        order = _rng(cfg.seed, _S_INFER, 0).permutation(len(extra))
        extra = [extra[i] for i in order[: _N_BEST_INFERRED + _N_INFERRED]]
        n_best = min(_N_BEST_INFERRED, len(extra))
        ids += [str(SYNTHETIC_GENE_ID_START + i) for i in range(len(extra))]
        symbols += extra
        titles += [""] * len(extra)
        space += ["best inferred"] * n_best + ["inferred"] * (len(extra) - n_best)
    return ids, symbols, space, titles, len(lm)


def _pathway_programs(cfg, gmt, lm_symbols):
    """Unit gene-weight vectors for Reactome pathways with enough landmark members.

    Each gene has a global response sign (co-regulated genes move together in
    every pathway that contains them), flipped in a pathway with probability
    0.2; weights are Gamma(2) so a few genes dominate a program.
    """
    rng = _rng(cfg.seed, _S_PATHWAY)
    index = {s: i for i, s in enumerate(lm_symbols)}
    gene_sign = rng.choice([-1.0, 1.0], size=len(lm_symbols))
    names, rows, members = [], [], {}
    for name in sorted(gmt):
        idx = sorted({index[g] for g in gmt[name] if g in index})
        if len(idx) < cfg.min_pathway_genes:
            continue
        sub = _rng(cfg.seed, _S_PATHWAY, int(hashlib.md5(name.encode()).hexdigest()[:8], 16))
        weights = sub.gamma(2.0, 1.0, len(idx))
        flip = np.where(sub.random(len(idx)) < 0.2, -1.0, 1.0)
        vec = np.zeros(len(lm_symbols))
        vec[idx] = gene_sign[idx] * flip * weights
        names.append(name)
        rows.append(vec / np.linalg.norm(vec))
        members[name] = [lm_symbols[i] for i in idx]
    return names, np.vstack(rows), members


def _choose_moas(cfg, rng) -> list[MoaSpec]:
    if cfg.moas is not None:
        by_name = {m.name: m for m in MOA_CATALOGUE}
        return [by_name[m] for m in cfg.moas]
    # stratified by strength, in the proportions of the catalogue (largest remainder)
    strengths = ("strong", "medium", "weak")
    pools = {k: [i for i, m in enumerate(MOA_CATALOGUE) if m.strength == k] for k in strengths}
    quota = {k: cfg.n_moas * len(pools[k]) / len(MOA_CATALOGUE) for k in strengths}
    take = {k: int(np.floor(q)) for k, q in quota.items()}
    for k in sorted(strengths, key=lambda k: take[k] - quota[k])[: cfg.n_moas - sum(take.values())]:
        take[k] += 1
    keep = sorted(
        int(i) for k in strengths for i in rng.choice(pools[k], size=take[k], replace=False)
    )
    return [MOA_CATALOGUE[i] for i in keep]


def _moa_pathways(cfg, spec: MoaSpec, pw_index, gmt, sizes, rng) -> list[int]:
    chosen = [pw_index[p] for p in spec.pathways if p in pw_index]
    if not chosen:  # fall back to the smallest usable pathways that contain a target
        cands = [
            p
            for p, members in gmt.items()
            if p in pw_index and any(t in members for t in spec.targets)
        ]
        cands = sorted(cands, key=lambda p: sizes[p])[:3]
        if not cands:
            cands = list(rng.choice(sorted(pw_index), size=2, replace=False))
        chosen = [pw_index[p] for p in cands]
        logger.warning("MoA %r: curated pathways unusable; using %s", spec.name, cands)
    return chosen


# --------------------------------------------------------------------------- MoAs, cells


def _generic_program(programs: np.ndarray, pw_index: dict[str, int]) -> np.ndarray:
    """Unit direction of the generic response of cytotoxic compounds (proliferation down,
    stress up): a weighted sum of the programs of :data:`_GENERIC_PATHWAYS`."""
    generic = np.zeros(programs.shape[1])
    for name, weight in _GENERIC_PATHWAYS:
        if name in pw_index:
            generic += weight * programs[pw_index[name]]
    return _unit(generic)


def _moa_directions(cfg, gmt, programs, pw_names, members):
    """Choose the MoAs and plant their directions: ``(moas, pathway indices per MoA,
    pathway coefficients, idiosyncratic gene part)``, each direction of unit norm."""
    n_pw, n_lm = programs.shape
    sizes = {p: len(members[p]) for p in pw_names}
    pw_index = {p: i for i, p in enumerate(pw_names)}
    rng = _rng(cfg.seed, _S_MOA)
    moas = _choose_moas(cfg, rng)
    moa_pw, moa_coef, moa_idio = [], np.zeros((len(moas), n_pw)), np.zeros((len(moas), n_lm))
    for m, spec in enumerate(moas):
        pws = _moa_pathways(cfg, spec, pw_index, gmt, sizes, rng)
        moa_pw.append(pws)
        coef = rng.uniform(0.6, 1.0, len(pws))
        coef[0] = 1.0
        moa_coef[m, pws] = coef
        # idiosyncratic part: sparse gene direction (~8% of genes), 35-65% of the norm
        mask = rng.random(n_lm) < 0.08
        idio = rng.standard_normal(n_lm) * mask
        path_part = programs[pws].T @ coef
        share = rng.uniform(0.35, 0.65)
        idio = _unit(idio) * np.linalg.norm(path_part) * share / np.sqrt(1 - share**2)
        moa_idio[m] = idio
        total = np.linalg.norm(path_part + idio)
        moa_coef[m] /= total
        moa_idio[m] /= total
    return moas, moa_pw, moa_coef, moa_idio


def _choose_cells(cfg: SimulationConfig) -> list[str]:
    if cfg.cells is not None:
        return list(cfg.cells)
    cells = list(CELL_LINES[: cfg.n_cells])
    # the reference study's held-out lines are always present
    for req in _REQUIRED_CELLS:
        if req not in cells and len(cells) >= 4:
            drop = next(c for c in reversed(cells) if c not in _REQUIRED_CELLS)
            cells[cells.index(drop)] = req
    return cells


def _cell_effects(cfg, cells: list[str], moas: list[MoaSpec], n_pw: int, n_lm: int) -> dict:
    """Per-cell-line responsiveness, pathway and gene gains, generic gain and baseline, and
    the MoAs' lineage multipliers (``SimulatedWorld`` fields by name)."""
    crng = _rng(cfg.seed, _S_CELL)
    n_cells = len(cells)
    effects = {
        "cell_resp": np.exp(crng.normal(0, 0.3, n_cells)),
        "cell_pw_gain": np.exp(crng.normal(0, 0.45, (n_cells, n_pw))),
        "cell_gene_gain": np.exp(crng.normal(0, 0.3, (n_cells, n_lm))),
        "cell_generic": np.exp(crng.normal(0, 0.35, n_cells)),
        "cell_base": crng.standard_normal((n_cells, n_lm)) * cfg.cell_baseline,
    }
    moa_cell = np.ones((len(moas), n_cells))
    for m, spec in enumerate(moas):
        special = dict(spec.cells)
        for k, cell in enumerate(cells):
            moa_cell[m, k] = special.get(cell, spec.other_cells)
    effects["moa_cell"] = moa_cell
    return effects


def _noise_modules(cfg: SimulationConfig, n_lm: int, n_cells: int):
    """Co-regulated gene modules of the correlated-noise regime: sparse unit loadings
    (each gene in a module with probability 8%, random signs and sizes) and a
    log-normal gain per cell line and module."""
    rng = _rng(cfg.seed, _S_MODULES)
    mask = rng.random((cfg.noise_modules, n_lm)) < 0.08
    loadings = rng.standard_normal((cfg.noise_modules, n_lm)) * mask
    gain = np.exp(rng.normal(0, 0.5, (n_cells, cfg.noise_modules)))
    return _unit(loadings), gain


# --------------------------------------------------------------------------- the world


def _build_world(cfg: SimulationConfig) -> SimulatedWorld:
    gmt = read_gmt(bundled_gmt("reactome"))
    gene_ids, symbols, space, titles, n_lm = _genes(cfg, gmt)
    lm_symbols = symbols[:n_lm]
    pw_names, programs, members = _pathway_programs(cfg, gmt, lm_symbols)
    pw_index = {p: i for i, p in enumerate(pw_names)}
    generic = _generic_program(programs, pw_index)
    moas, moa_pw, moa_coef, moa_idio = _moa_directions(cfg, gmt, programs, pw_names, members)
    cells = _choose_cells(cfg)
    cell_effects = _cell_effects(cfg, cells, moas, len(pw_names), n_lm)
    cpd, cpd_coef, cpd_idio = _compounds(cfg, moas, moa_coef, moa_idio, programs, n_lm)
    kd_genes, kd_coef, kd_idio, guides, guide_seed = _knockdowns(
        cfg, moas, moa_pw, moa_coef, programs, pw_names, members, lm_symbols, gmt
    )
    trng = _rng(cfg.seed, _S_TECH)
    tech = trng.standard_normal((6, n_lm)) / np.sqrt(n_lm) * np.sqrt(n_lm / 6)

    world = SimulatedWorld(
        cfg=cfg,
        gene_ids=gene_ids,
        symbols=symbols,
        feature_space=space,
        titles=titles,
        n_lm=n_lm,
        pathways=pw_names,
        programs=programs,
        members=members,
        generic=generic,
        moas=moas,
        moa_pw=moa_pw,
        moa_coef=moa_coef,
        moa_idio=moa_idio,
        cells=cells,
        **cell_effects,
        cpd=cpd,
        cpd_coef=cpd_coef,
        cpd_idio=cpd_idio,
        kd_genes=kd_genes,
        kd_coef=kd_coef,
        kd_idio=kd_idio,
        guides=guides,
        guide_seed=guide_seed,
        tech_factors=tech,
    )
    if cfg.noise_modules > 0:
        world.modules, world.module_cell_gain = _noise_modules(cfg, n_lm, len(cells))
    if cfg.genes == "all":
        world.infer_w, world.infer_r2 = _inference_weights(cfg, world, gmt)
    _design(world)
    return world


def _inference_weights(cfg, world: SimulatedWorld, gmt):
    """Linear map landmark z-scores -> non-landmark genes (as L1000 inference does).

    A gene in pathway p loads on p's landmark program (its sign structure);
    genes in no usable pathway load on 5 random landmarks. ``best inferred``
    genes are predicted with R^2 ~ U(0.5, 0.85), ``inferred`` with U(0.15, 0.45).
    """
    rng = _rng(cfg.seed, _S_INFER, 1)
    n_lm = world.n_lm
    others = world.symbols[n_lm:]
    pw_of: dict[str, list[int]] = {}
    pw_index = {p: i for i, p in enumerate(world.pathways)}
    for p, i in pw_index.items():
        for g in gmt[p]:
            pw_of.setdefault(g, []).append(i)
    w = np.zeros((n_lm, len(others)), dtype=np.float32)
    r2 = np.where(
        np.asarray(world.feature_space[n_lm:]) == "best inferred",
        rng.uniform(0.5, 0.85, len(others)),
        rng.uniform(0.15, 0.45, len(others)),
    )
    for j, g in enumerate(others):
        pws = pw_of.get(g, [])
        vec = np.zeros(n_lm)
        if pws:
            pick = pws if len(pws) <= 4 else list(rng.choice(pws, size=4, replace=False))
            vec += world.programs[pick].T @ rng.uniform(0.5, 1.0, len(pick))
        sparse = np.zeros(n_lm)
        sparse[rng.choice(n_lm, size=5, replace=False)] = rng.standard_normal(5)
        vec = _unit(vec) + 0.4 * _unit(sparse) if pws else _unit(sparse)
        w[:, j] = _unit(vec) * np.sqrt(r2[j])
    return w, r2


# --------------------------------------------------------------------------- design


def _design(world: SimulatedWorld) -> None:
    """Signature conditions (compound x cell x dose x time, plates, replicates, quality)."""
    cfg = world.cfg
    rng = _rng(cfg.seed, _S_DESIGN)
    cells = world.cells
    n_cells = len(cells)
    cell_w = np.array([1.0 if c in _CORE_CELLS or c in _REQUIRED_CELLS else 0.55 for c in cells])
    lo, hi = cfg.sigs_per_compound
    rows = []
    for c, comp in world.cpd.iterrows():
        n_sig = int(np.round(np.exp(rng.uniform(np.log(lo), np.log(hi + 0.5)))))
        n_sig = min(max(n_sig, lo), hi)
        n_sub = int(rng.integers(min(3, n_cells), n_cells + 1))
        subset = rng.choice(n_cells, size=n_sub, replace=False, p=cell_w / cell_w.sum())
        cell_idx = rng.choice(subset, size=n_sig)
        doses = rng.choice(len(STANDARD_DOSES), size=n_sig, p=_DOSE_P)
        times = rng.choice(len(_TIMES), size=n_sig, p=_TIME_P)
        for k, d, t in zip(cell_idx, doses, times, strict=True):
            rows.append((c, comp["pert_id"], comp["project"], int(k), STANDARD_DOSES[d], _TIMES[t]))
    cp = pd.DataFrame(rows, columns=["cpd", "pert_id", "project", "cell", "dose", "time"])
    # plate maps: ~60 compounds per map within a project; repeated conditions go on re-run maps
    cp["map"] = 0
    for proj, sub in world.cpd.groupby("project", sort=True):
        order = rng.permutation(len(sub))
        map_of = dict(zip(sub.index[order], np.arange(len(sub)) // 60 + 1, strict=True))
        sel = cp["project"] == proj
        cp.loc[sel, "map"] = cp.loc[sel, "cpd"].map(map_of)
    occurrence = cp.groupby(["cpd", "cell", "time", "dose"]).cumcount()
    n_maps = cp.groupby("project")["map"].transform("max")
    cp["map"] = cp["map"] + occurrence * (n_maps + 1)
    cp["plate"] = [
        f"{p}{m:03d}_{cells[k]}_{int(t)}H"
        for p, m, k, t in zip(cp["project"], cp["map"], cp["cell"], cp["time"], strict=True)
    ]
    cp["sig_id"] = [
        f"{pl}:{pid}:{_dose_str(d)}"
        for pl, pid, d in zip(cp["plate"], cp["pert_id"], cp["dose"], strict=True)
    ]
    cp = cp.sort_values(["cpd", "cell", "time", "dose", "plate"], kind="stable")
    cp = cp.reset_index(drop=True)

    # knockdowns: each guide in a few cell lines, 96 h, one signature per (guide, cell)
    krows = []
    lo_c, hi_c = cfg.cells_per_guide
    for gi, guide in world.guides.iterrows():
        n_sub = int(rng.integers(min(lo_c, n_cells), min(hi_c, n_cells) + 1))
        subset = np.sort(rng.choice(n_cells, size=n_sub, replace=False, p=cell_w / cell_w.sum()))
        for k in subset:
            krows.append((gi, int(guide["kd_index"]), guide["pert_id"], guide["gene"], int(k)))
    kd = pd.DataFrame(krows, columns=["guide", "kd", "pert_id", "gene", "cell"])
    kd["map"] = kd["kd"] // 40 + 1
    kd["plate"] = [f"XPR{m:03d}_{cells[k]}_96H" for m, k in zip(kd["map"], kd["cell"], strict=True)]
    kd["sig_id"] = [f"{pl}:{pid}:-666" for pl, pid in zip(kd["plate"], kd["pert_id"], strict=True)]
    kd["time"] = _KD_TIME

    for frame in (cp, kd):
        n = len(frame)
        frame["nsample"] = rng.choice(_NSAMPLE, size=n, p=_NSAMPLE_P)
        bad = rng.random(n) < 0.06
        frame["noise"] = cfg.noise_scale * np.exp(rng.normal(0, 0.2, n)) * np.where(bad, 2.2, 1.0)
        frame["qc_pass"] = np.where(bad & (rng.random(n) < 0.6), 0, 1)
    plates = sorted(set(cp["plate"]) | set(kd["plate"]))
    pidx = {p: i for i, p in enumerate(plates)}
    cp["plate_index"] = cp["plate"].map(pidx).astype(int)
    kd["plate_index"] = kd["plate"].map(pidx).astype(int)
    prng = _rng(cfg.seed, _S_TECH, 1)
    world.plate_effect = prng.standard_normal((len(plates), world.n_lm)) * 0.2
    # a few failing plates: noisier, qc_pass = 0
    failing = prng.random(len(plates)) < 0.02
    world.plate_quality = np.where(failing, 1.8, 1.0)
    for frame in (cp, kd):
        fail = failing[frame["plate_index"].to_numpy()]
        frame.loc[fail, "qc_pass"] = 0
        frame["noise"] = frame["noise"] * world.plate_quality[frame["plate_index"].to_numpy()]
    bead = {p: f"b{int(prng.integers(15, 40))}" for p in plates}
    cp["bead_batch"] = cp["plate"].map(bead)
    kd["bead_batch"] = kd["plate"].map(bead)
    world.design_cp, world.design_kd, world.plates = cp, kd, plates
    if cp["sig_id"].duplicated().any() or kd["sig_id"].duplicated().any():  # pragma: no cover
        raise RuntimeError("simulator produced duplicated sig_ids")
