"""Drawing the level-5 signatures of a planted world, in fixed blocks of rows.

Block ``b`` of the compound (``"cp"``) or knockdown (``"kd"``) design draws from its
own random stream, so a block is the same whether the matrix is written to disk block
by block or built in memory.
"""

from __future__ import annotations

import numpy as np

from moaspace.datasets._simulate.config import (
    _BLOCK,
    _CLIP,
    _NOISE_NORM,
    _OUTLIER_P,
    _OUTLIER_SD,
    _TIME_EFFECT,
    _TIME_GENERIC,
)
from moaspace.datasets._simulate.streams import (
    _S_BLOCK_CP,
    _S_BLOCK_KD,
    _S_KD,
    _S_KDXI,
    _S_MODULE_NOISE,
    _S_XI,
    _rng,
    _unit,
)
from moaspace.datasets._simulate.world import SimulatedWorld


def _pair_directions(
    world: SimulatedWorld, kind: str, ent: np.ndarray, cell: np.ndarray, extra: np.ndarray | None = None
) -> np.ndarray:
    """Unit-scale response direction of entity (compound / knocked-down gene) in a cell."""
    coef = world.cpd_coef if kind == "cp" else world.kd_coef
    idio = world.cpd_idio if kind == "cp" else world.kd_idio
    d = (coef[ent] * world.cell_pw_gain[cell]) @ world.programs
    d += idio[ent] * world.cell_gene_gain[cell]
    tag = _S_XI if kind == "cp" else _S_KDXI
    omega = world.cfg.interaction * (1.0 if kind == "cp" else 1.3)
    n_pw = world.programs.shape[0]
    pairs, inverse = np.unique(np.stack([ent, cell], 1), axis=0, return_inverse=True)
    xi_u = np.empty((len(pairs), world.n_lm))
    for i, (e, k) in enumerate(pairs):
        r = _rng(world.cfg.seed, tag, int(e), int(k))
        # cell x compound interaction: part pathway, part gene level
        pw = np.nonzero(r.random(n_pw) < 0.03)[0]
        v = r.standard_normal(len(pw))
        z = r.standard_normal(world.n_lm) * (r.random(world.n_lm) < 0.1)
        xi_u[i] = _unit(_unit(v @ world.programs[pw] if len(pw) else z) + _unit(z))
    xi = xi_u[inverse.ravel()]
    d += omega * xi
    if extra is not None:
        d += extra
    return d


def _compound_amplitude(world: SimulatedWorld, rows, cell: np.ndarray):
    """Compound rows: ``(compound index, response amplitude before the time and cell
    factors (efficacy x Hill curve of the dose x lineage), cytotoxicity, None)``."""
    ent = rows["cpd"].to_numpy()
    cpd = world.cpd
    moa_idx = cpd["moa_index"].to_numpy()[ent]
    ec50 = 10.0 ** cpd["log10_ec50_um"].to_numpy()[ent]
    hill = cpd["hill"].to_numpy()[ent]
    dose = rows["dose"].to_numpy()
    frac = dose**hill / (dose**hill + ec50**hill)
    amp = cpd["efficacy"].to_numpy()[ent] * frac * world.moa_cell[moa_idx, cell]
    cyto = cpd["cytotoxic"].to_numpy()[ent]
    return ent, amp, cyto, None


def _knockdown_amplitude(world: SimulatedWorld, rows, cell: np.ndarray):
    """Knockdown rows: ``(knocked-down gene index, amplitude (strength x guide efficiency x
    lineage x cell dependence), cytotoxicity, guide seed effect)``."""
    cfg = world.cfg
    ent = rows["kd"].to_numpy()
    kdg = world.kd_genes
    guide = rows["guide"].to_numpy()
    eff = world.guides["efficiency"].to_numpy()[guide]
    # cell dependence: lineage multipliers of the MoAs that target the gene
    lineage = np.ones(len(rows))
    for i, (g, k) in enumerate(zip(ent, cell, strict=True)):
        ms = [j for j, s in enumerate(world.moas) if s.name in kdg.at[g, "expected_moas"]]
        if ms:
            lineage[i] = max(world.moa_cell[j, k] for j in ms)
    dep = np.exp(_rng(cfg.seed, _S_KD, 7).normal(0, 0.4, (len(kdg), len(world.cells))))
    amp = cfg.knockdown_scale * kdg["strength"].to_numpy()[ent] * eff * lineage * dep[ent, cell]
    cyto = kdg["cytotoxic"].to_numpy()[ent]
    return ent, amp, cyto, world.guide_seed[guide]


def _shared_signal(world: SimulatedWorld, kind: str, b: int, rows, rng) -> np.ndarray:
    """The part of each signature its replicates share: response (saturated in the
    correlated regime; a knockdown's own transcript drops) + cell baseline + plate effect
    (+ noise-module activity in the correlated regime)."""
    cfg = world.cfg
    n_lm = world.n_lm
    cell = rows["cell"].to_numpy()
    time_h = rows["time"].to_numpy()
    tau = np.array([_TIME_EFFECT[t] for t in time_h])
    wgen = np.array([_TIME_GENERIC[t] for t in time_h])
    amplitude = _compound_amplitude if kind == "cp" else _knockdown_amplitude
    ent, amp, cyto, extra_ent = amplitude(world, rows, cell)
    amp = cfg.effect_scale * amp * tau * world.cell_resp[cell]
    direction = _pair_directions(world, kind, ent, cell, extra_ent)
    generic = (cyto * wgen * world.cell_generic[cell])[:, None] * world.generic[None, :]
    signal = (amp[:, None] * np.sqrt(n_lm)) * (direction + generic)
    if cfg.saturation is not None:  # saturating responses (correlated regime)
        signal = cfg.saturation * np.tanh(signal / cfg.saturation)
    if kind == "kd":  # the knocked-down transcript itself drops (CRISPR: partial, NMD)
        self_idx = world.kd_genes["self_index"].to_numpy()[ent]
        has = self_idx >= 0
        signal[np.where(has)[0], self_idx[has]] -= (
            rng.uniform(1.5, 4.0, has.sum())
            * world.guides["efficiency"].to_numpy()[rows["guide"].to_numpy()[has]]
        )
    shared = signal + world.cell_base[cell] + world.plate_effect[rows["plate_index"].to_numpy()]
    if world.modules is not None:  # module activity of each signature (correlated regime)
        mrng = _rng(cfg.seed, _S_MODULE_NOISE, 0 if kind == "cp" else 1, b)
        activity = mrng.standard_normal((len(rows), len(world.modules)))
        activity = activity * world.module_cell_gain[cell]
        scale = cfg.module_noise * np.sqrt(n_lm / len(world.modules))
        shared = shared + scale * activity @ world.modules
    return shared


def _modz(world: SimulatedWorld, rows, shared: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Level-4 replicates of each signature and their MODZ consensus: ``(level-5 rows,
    75th percentile of the replicate correlations)``."""
    n, n_lm = shared.shape
    noise_sd = rows["noise"].to_numpy(dtype=np.float32)
    nsample = rows["nsample"].to_numpy()
    out = np.empty((n, n_lm), dtype=np.float32)
    cc_q75 = np.empty(n)
    shared = shared.astype(np.float32)
    n_fac = world.tech_factors.shape[0]
    tech = world.tech_factors.astype(np.float32)
    for ns in np.unique(nsample):
        idx = np.where(nsample == ns)[0]
        m = len(idx)
        # level-4 replicates: shared part + technical factors + heavy-tailed noise
        # (contaminated normal: 6% of values with 3.5x the spread; unit variance, kurtosis ~11)
        factors = rng.standard_normal((ns, m, n_fac), dtype=np.float32) * 0.45
        z = rng.standard_normal((ns, m, n_lm), dtype=np.float32)
        z *= np.where(
            rng.random((ns, m, n_lm), dtype=np.float32) < _OUTLIER_P, _OUTLIER_SD, 1.0
        ).astype(np.float32)
        z *= _NOISE_NORM
        reps = shared[idx][None] + noise_sd[idx][None, :, None] * (factors @ tech + z)
        # replicate agreement: correlation of replicates (clipped at +-4 against outliers)
        c = np.clip(reps, -4, 4)
        c -= c.mean(axis=2, keepdims=True)
        c /= np.linalg.norm(c, axis=2, keepdims=True)
        corr = np.einsum("img,jmg->mij", c, c)
        iu = np.triu_indices(ns, 1)
        # MODZ: weights = mean correlation to the other replicates (floored at 0.01)
        w = np.maximum((corr.sum(2) - 1) / (ns - 1), 0.01)
        w = (w / w.sum(1, keepdims=True)).astype(np.float32)
        out[idx] = np.einsum("mi,img->mg", w, reps)
        cc_q75[idx] = np.quantile(corr[:, iu[0], iu[1]], 0.75, axis=1)
    return out, cc_q75


def _block(world: SimulatedWorld, kind: str, b: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Level-5 rows ``[b*_BLOCK, (b+1)*_BLOCK)`` of the cp or kd design, and their QC."""
    cfg = world.cfg
    design = world.design_cp if kind == "cp" else world.design_kd
    rows = design.iloc[slice(b * _BLOCK, min((b + 1) * _BLOCK, len(design)))]
    n_lm = world.n_lm
    rng = _rng(cfg.seed, _S_BLOCK_CP if kind == "cp" else _S_BLOCK_KD, b)
    shared = _shared_signal(world, kind, b, rows, rng)
    out, cc_q75 = _modz(world, rows, shared, rng)
    out = np.clip(out, -_CLIP, _CLIP)
    ss_ngene = (np.abs(out) >= 2.0).sum(1)
    tas = np.clip(np.sqrt(ss_ngene * np.maximum(cc_q75, 0) / n_lm), 0, 1)
    qc = {"cc_q75": cc_q75, "ss_ngene": ss_ngene, "tas": tas}
    if world.infer_w is not None:
        pred = out @ world.infer_w
        resid = np.sqrt(1 - world.infer_r2)[None, :] * 0.8
        other = pred + resid * rng.standard_normal(pred.shape)
        out = np.hstack([out, np.clip(other, -_CLIP, _CLIP)])
    if cfg.round_decimals is not None:
        out = np.round(out, cfg.round_decimals)
    return out.astype(np.float32), qc


class _LazyMatrix:
    """Row-sliceable view that generates signature blocks on demand (for write_gctx).

    Rows are produced block by block and never all held in memory; QC values
    computed with each block are recorded in ``self.qc``.
    """

    def __init__(self, world: SimulatedWorld, kind: str):
        self.world = world
        self.kind = kind
        design = world.design_cp if kind == "cp" else world.design_kd
        self.shape = (len(design), len(world.gene_ids))
        self.qc = {k: np.full(len(design), np.nan) for k in ("cc_q75", "ss_ngene", "tas")}
        self._cache: tuple[int, np.ndarray] | None = None

    def block(self, b: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != b:
            x, qc = _block(self.world, self.kind, b)
            for key, values in qc.items():
                self.qc[key][b * _BLOCK : b * _BLOCK + len(values)] = values
            self._cache = (b, x)
        return self._cache[1]

    def __getitem__(self, item):
        if not isinstance(item, slice):
            raise TypeError("only row slices are supported")
        start, stop, step = item.indices(self.shape[0])
        if step != 1:
            raise TypeError("only contiguous row slices are supported")
        parts = []
        for b in range(start // _BLOCK, (max(stop, start + 1) - 1) // _BLOCK + 1):
            if stop <= start:
                break
            x = self.block(b)
            lo = max(start - b * _BLOCK, 0)
            hi = min(stop - b * _BLOCK, len(x))
            parts.append(x[lo:hi])
        if not parts:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        return np.concatenate(parts, axis=0)

    def materialize(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for b in range((self.shape[0] + _BLOCK - 1) // _BLOCK):
            x = self.block(b)
            out[b * _BLOCK : b * _BLOCK + len(x)] = x
        return out
