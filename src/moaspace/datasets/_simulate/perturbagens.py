"""The perturbagens of the planted world: compounds (MoA membership, response direction,
efficacy, potency, identifiers, fake structures, targets) and knocked-down genes."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from moaspace.datasets._simulate.catalogue import MOA_CATALOGUE, MoaSpec
from moaspace.datasets._simulate.config import (
    LOG10_EC50,
    P_INACTIVE,
    STRENGTH,
    TIGHTNESS,
    SimulationConfig,
)
from moaspace.datasets._simulate.streams import (
    _S_CHEM,
    _S_CPD,
    _S_IDS,
    _S_KD,
    _S_MULTI,
    _S_SERIES,
    _rng,
    _unique_ints,
    _unit,
)
from moaspace.io.labels import moa_set_string

_SYMBOL = re.compile(r"^[A-Z][A-Z0-9-]*[A-Z0-9]$|^[A-Z]$")


# --------------------------------------------------------------------------- compounds


def _size_ranks(moas: list[MoaSpec], rng: np.random.Generator) -> np.ndarray:
    """Size rank of each MoA (0 = largest).

    Strength classes are interleaved so every prefix of the ranking holds them
    in about the proportions of the chosen MoAs (weak first on ties: in LINCS
    the largest classes are weakly active CNS-type mechanisms); within a class
    MoAs with a larger ``prevalence`` tend to rank first.
    """
    strengths = ("weak", "medium", "strong")
    queues = {}
    for k in strengths:
        idx = [i for i, m in enumerate(moas) if m.strength == k]
        key = [moas[i].prevalence * np.exp(rng.normal(0, 0.4)) for i in idx]
        queues[k] = [idx[j] for j in np.argsort(key)[::-1]]
    total = {k: len(q) for k, q in queues.items()}
    used = dict.fromkeys(strengths, 0)
    rank = np.empty(len(moas))
    for r in range(len(moas)):
        k = min(
            (k for k in strengths if used[k] < total[k]),
            key=lambda k: ((used[k] + 0.5) / total[k], strengths.index(k)),
        )
        rank[queues[k][used[k]]] = r
        used[k] += 1
    return rank


def _moa_membership(
    cfg: SimulationConfig, moas: list[MoaSpec], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """MoA index of every compound (long-tailed class sizes) and whether it is labelled."""
    n_moa = len(moas)
    rank = _size_ranks(moas, rng)
    # Zipf-like class sizes over the ranks: a few large MoAs and a long tail
    weights = (rank + 1.0) ** -cfg.moa_size_skew * np.exp(rng.normal(0, 0.15, n_moa))
    weights /= weights.sum()
    n = cfg.n_compounds
    # every MoA gets at least 2 compounds; the rest follows the long-tailed weights
    counts = np.full(n_moa, min(2, n // n_moa))
    counts += rng.multinomial(n - counts.sum(), weights)
    moa_of = np.repeat(np.arange(n_moa), counts)
    rng.shuffle(moa_of)
    labeled = rng.random(n) >= cfg.frac_unlabeled
    return moa_of, labeled


def _series_directions(cfg: SimulationConfig, n_moa: int, n_lm: int):
    """Optional chemical series inside each MoA: ``(direction per MoA and series, series of
    each compound)``, or ``(None, None)`` with ``compound_series=0``.

    Compounds of one series share part of their off-MoA direction (a selectivity profile).
    Own random stream, so that with compound_series=0 (the default) every other draw is
    unchanged.
    """
    n_series = cfg.compound_series
    if not n_series:
        return None, None
    srng = _rng(cfg.seed, _S_SERIES)
    series_dir = srng.standard_normal((n_moa, n_series, n_lm))
    series_dir *= srng.random((n_moa, n_series, n_lm)) < 0.12
    series_of = srng.integers(n_series, size=cfg.n_compounds)
    return series_dir, series_of


def _compound_direction(
    cfg, rng, strength, m, moa_coef, moa_idio, programs, focused, series_dir, coef, idio
) -> tuple[float, int]:
    """Draw one compound's response direction in MoA ``m`` into the rows ``coef`` (pathway
    coefficients) and ``idio`` (gene part); return ``(cosine to the MoA direction,
    off-target MoA index or -1)``.

    The direction mixes the MoA's with an orthogonal remainder: an off-target part
    (another MoA's direction or a focused pathway), the compound's own sparse genes and,
    with chemical series, the ``series_dir`` of its series.
    """
    n_moa = len(moa_coef)
    n_pw, n_lm = programs.shape
    # cosine to the MoA direction: Beta around the class tightness
    t = TIGHTNESS[strength]
    cos = rng.beta(t * 12, (1 - t) * 12)
    # off-target: another MoA's direction (polypharmacology) or a random pathway
    off_moa = -1
    off_c = np.zeros(n_pw)
    off_z = np.zeros(n_lm)
    u = rng.random()
    if u < 0.15 and n_moa > 1:
        off_moa = int(rng.choice([j for j in range(n_moa) if j != m]))
        off_c, off_z = moa_coef[off_moa].copy(), moa_idio[off_moa].copy()
    elif u < 0.45:
        off_c[rng.choice(focused)] = 1.0
    own = rng.standard_normal(n_lm) * (rng.random(n_lm) < 0.12)
    off_vec = programs.T @ off_c + off_z
    own = _unit(own) * (np.linalg.norm(off_vec) if off_vec.any() else 1.0)
    o_c, o_z = off_c, off_z + own
    if series_dir is not None:
        w = cfg.series_weight
        size = np.linalg.norm(programs.T @ o_c + o_z)
        o_c = np.sqrt(1 - w) * o_c
        o_z = np.sqrt(1 - w) * o_z + np.sqrt(w) * size * _unit(series_dir)
    # orthogonalise the remainder against the MoA direction, then mix
    d = programs.T @ moa_coef[m] + moa_idio[m]
    o = programs.T @ o_c + o_z
    proj = float(o @ d)
    o_c = o_c - proj * moa_coef[m]
    o_z = o_z - proj * moa_idio[m]
    o_norm = np.linalg.norm(programs.T @ o_c + o_z)
    s = np.sqrt(max(1 - cos**2, 0.0)) / o_norm
    coef[:] = cos * moa_coef[m] + s * o_c
    idio[:] = cos * moa_idio[m] + s * o_z
    total = np.linalg.norm(programs.T @ coef + idio)
    coef /= total
    idio /= total
    return cos, off_moa


def _compound_properties(rng, spec: MoaSpec, moas, m, labeled, cos, off_moa) -> dict:
    """Efficacy (inactive compounds keep 3-15% of it), potency and cytotoxicity of one
    compound (one row of ``world.cpd``)."""
    efficacy = STRENGTH[spec.strength] * np.exp(rng.normal(0, 0.35))
    active = rng.random() >= P_INACTIVE[spec.strength]
    if not active:
        efficacy *= rng.uniform(0.03, 0.15)
    return {
        "moa_index": m,
        "moa": spec.name,
        "labeled": bool(labeled),
        "efficacy": efficacy,
        "active": bool(active),
        "moa_cosine": cos,
        "log10_ec50_um": rng.normal(LOG10_EC50[spec.strength], 0.6),
        "hill": rng.uniform(0.8, 2.0),
        "cytotoxic": spec.cytotoxic * np.exp(rng.normal(0, 0.3)),
        "offtarget_moa": moas[off_moa].name if off_moa >= 0 else "",
    }


def _compounds(cfg, moas, moa_coef, moa_idio, programs, n_lm):
    """Compounds: MoA membership (long-tailed), direction, efficacy, potency."""
    rng = _rng(cfg.seed, _S_CPD)
    moa_of, labeled = _moa_membership(cfg, moas, rng)
    n = cfg.n_compounds
    n_pw = programs.shape[0]
    # off-target programs: focused pathways, not umbrella sets such as "Signal Transduction"
    n_members = (programs != 0).sum(1)
    focused = np.nonzero(n_members <= cfg.max_pathway_genes)[0]
    coef = np.zeros((n, n_pw))
    idio = np.zeros((n, n_lm))
    series_dir, series_of = _series_directions(cfg, len(moas), n_lm)
    rows = []
    for c in range(n):
        m = moa_of[c]
        spec = moas[m]
        own_series = None if series_dir is None else series_dir[m, series_of[c]]
        cos, off_moa = _compound_direction(
            cfg, rng, spec.strength, m, moa_coef, moa_idio, programs, focused, own_series,
            coef[c], idio[c],
        )
        rows.append(_compound_properties(rng, spec, moas, m, labeled[c], cos, off_moa))
    frame = pd.DataFrame(rows)
    if series_of is not None:
        frame["series"] = series_of
    _compound_identity(cfg, frame, moas)
    _second_moas(cfg, moas, moa_coef, moa_idio, programs, focused, frame, coef, idio)
    return frame, coef, idio


def _second_moas(cfg, moas, moa_coef, moa_idio, programs, focused, frame, coef, idio) -> None:
    """Multi-MoA compounds (``multi_moa_fraction``; nothing with 0): a second MoA, mixed
    into the compound's direction (rows of ``coef`` and ``idio``), and the columns
    ``moa2`` (``""`` for none), ``moa_set`` (sorted ``|``-joined), ``moa_weights``
    (``(w1, w2)``, ``(1, 0)`` for none) and, for labelled ones, a target of the second MoA.

    The direction becomes ``w1 * d1 + w2 * d2``: ``d1`` the compound's own (unit) direction
    in its first MoA, ``d2`` one drawn as for a member of the second MoA (no chemical
    series), ``w1, w2 ~ U(0.5, 0.7)``, not renormalised (each MoA's programme at 50-70%
    of a single-MoA compound's response). ``moa_cosine`` becomes the cosine to the first
    MoA after the mix. Own random stream: every other draw of the world is unchanged.
    """
    n_moa = len(moas)
    if cfg.multi_moa_fraction <= 0 or n_moa < 2:
        return
    rng = _rng(cfg.seed, _S_MULTI)
    n = len(frame)
    chosen = np.nonzero(rng.random(n) < cfg.multi_moa_fraction)[0]
    second = np.full(n, -1)
    weights = np.tile([1.0, 0.0], (n, 1))
    targets = [list(t) for t in frame["targets"]]
    n_pw, n_lm = programs.shape
    for c in chosen:
        m = int(frame.at[c, "moa_index"])
        m2 = int(rng.choice([j for j in range(n_moa) if j != m]))
        c2, z2 = np.zeros(n_pw), np.zeros(n_lm)
        _compound_direction(cfg, rng, moas[m2].strength, m2, moa_coef, moa_idio, programs,
                            focused, None, c2, z2)
        w = rng.uniform(0.5, 0.7, 2)
        coef[c] = w[0] * coef[c] + w[1] * c2
        idio[c] = w[0] * idio[c] + w[1] * z2
        d = programs.T @ coef[c] + idio[c]
        d1 = programs.T @ moa_coef[m] + moa_idio[m]
        frame.at[c, "moa_cosine"] = float(d @ d1 / np.linalg.norm(d) / np.linalg.norm(d1))
        second[c], weights[c] = m2, w
        if frame.at[c, "labeled"] and moas[m2].targets:
            extra = str(rng.choice(moas[m2].targets))
            targets[c] = sorted(dict.fromkeys([*targets[c], extra]))
    frame["moa2"] = [moas[j].name if j >= 0 else "" for j in second]
    frame["moa_set"] = [moa_set_string([a, b]) for a, b in zip(frame["moa"], frame["moa2"],
                                                                 strict=True)]
    frame["moa_weights"] = [tuple(map(float, w)) for w in weights]
    frame["targets"] = targets


def _compound_identity(cfg, frame: pd.DataFrame, moas: list[MoaSpec]) -> None:
    """Add identifiers, names, fake structures and targets to the compound table."""
    n = len(frame)
    irng = _rng(cfg.seed, _S_IDS)
    numbers = _unique_ints(irng, 10_000_000, 100_000_000, n)
    prefix = np.where(irng.random(n) < 0.9, "K", "A")
    frame["pert_id"] = [f"BRD-{p}{num:08d}" for p, num in zip(prefix, numbers, strict=True)]
    names = _unique_ints(irng, 1000, 100_000, n)
    frame["cmap_name"] = [f"SIM-{num:05d}" for num in names]
    frame["project"] = irng.choice(["CPC", "REP.A", "PAC"], size=n, p=[0.45, 0.4, 0.15])
    frame["canonical_smiles"] = _smiles(cfg, frame["moa_index"].to_numpy(), len(moas))
    frame["inchi_key"] = [_fake_inchikey(s, i) for i, s in enumerate(frame["canonical_smiles"])]
    frame["targets"] = _compound_targets(frame, moas, irng)


def _compound_targets(frame: pd.DataFrame, moas: list[MoaSpec], irng) -> list[list[str]]:
    """Annotated targets of each compound: 1-3 of its MoA's (the first one usually), plus,
    for half the compounds with an off-target MoA, one of that MoA's; none if unlabelled."""
    targets = []
    for c in range(len(frame)):
        spec = moas[frame.at[c, "moa_index"]]
        if not frame.at[c, "labeled"] or not spec.targets:
            targets.append([])
            continue
        k = int(irng.integers(1, min(3, len(spec.targets)) + 1))
        tg = [spec.targets[0]] if irng.random() < 0.7 else []
        rest = [t for t in spec.targets if t not in tg]
        tg += (
            list(irng.choice(rest, size=min(len(rest), k - len(tg)), replace=False)) if rest else []
        )
        off = frame.at[c, "offtarget_moa"]
        if off and irng.random() < 0.5:
            off_spec = next(s for s in moas if s.name == off)
            if off_spec.targets:
                tg.append(str(irng.choice(off_spec.targets)))
        targets.append(sorted(dict.fromkeys(str(t) for t in tg)))
    return targets


# --------------------------------------------------------------------------- chemistry

# SMILES fragments: the first atom of a scaffold takes the bond from the left and the
# last written atom (outside parentheses) the bond to the right; both have a free valence.
_SCAFFOLDS = (
    "c1ccc2[nH]ccc2c1",
    "c1ccc2ncccc2c1",
    "c1cnc2ccccc2c1",
    "c1ccc(cc1)",
    "c1ccncc1",
    "C1CCN(CC1)",
    "N1CCN(CC1)",
    "c1csc(n1)",
    "c1ccc2occc2c1",
    "C1C(=O)NC(=O)N1",
    "c1ccn(n1)",
    "C1CC2CCC1C2",
    "c1ccc2nc[nH]c2c1",
)
_LINKERS = ("C(=O)N", "NC(=O)", "CC", "O", "N", "S(=O)(=O)N", "C(=O)", "CCO", "C=C", "")
_LEFT_CAPS = ("F", "Cl", "CO", "N#C", "FC(F)(F)", "C", "OC(=O)", "CN(C)", "Br", "O")
_RIGHT_CAPS = ("F", "Cl", "OC", "C#N", "C(F)(F)F", "C", "O", "N(C)C", "Br", "C(=O)O")


def _smiles(cfg, moa_index: np.ndarray, n_moas: int) -> list[str]:
    """Syntactically valid fake SMILES; compounds of one MoA share a core scaffold."""
    rng = _rng(cfg.seed, _S_CHEM)
    cores = [rng.choice(len(_SCAFFOLDS), size=2, replace=False) for _ in range(n_moas)]
    out = []
    for m in moa_index:
        a, b = cores[m]
        if rng.random() < 0.25:  # scaffold hop
            a = rng.integers(len(_SCAFFOLDS))
        parts = [
            str(rng.choice(_LEFT_CAPS)),
            _SCAFFOLDS[a],
            str(rng.choice(_LINKERS)),
            _SCAFFOLDS[b],
        ]
        if rng.random() < 0.6:
            parts += [str(rng.choice(_LINKERS)), str(rng.choice(_SCAFFOLDS))]
        parts.append(str(rng.choice(_RIGHT_CAPS)))
        out.append("".join(parts))
    return out


def _fake_inchikey(smiles: str, i: int) -> str:
    """27-character InChIKey-shaped string (NOT a real InChIKey; hash of the fake SMILES)."""
    digest = hashlib.sha256(f"{i}:{smiles}".encode()).digest()
    letters = "".join(chr(ord("A") + b % 26) for b in digest)
    return f"{letters[:14]}-{letters[14:22]}SA-N"


# --------------------------------------------------------------------------- knockdowns


def _knockdowns(cfg, moas, moa_pw, moa_coef, programs, pw_names, members, lm_symbols, gmt):
    """Knocked-down genes: every MoA target, plus genes targeted by no MoA ("null")."""
    rng = _rng(cfg.seed, _S_KD)
    n_pw, n_lm = programs.shape
    lm_index = {s: i for i, s in enumerate(lm_symbols)}
    gene_moas: dict[str, list[int]] = {}
    for m, spec in enumerate(moas):
        for t in spec.targets:
            gene_moas.setdefault(t, []).append(m)
    used_pw = {p for pws in moa_pw for p in pws}
    all_targets = {t for spec in MOA_CATALOGUE for t in spec.targets}
    free_pw = [i for i in range(n_pw) if i not in used_pw and len(members[pw_names[i]]) <= 60]
    null_pool = sorted(
        {g for i in free_pw for g in gmt[pw_names[i]] if _SYMBOL.match(g) and g not in all_targets}
    )
    n_null = min(cfg.n_null_knockdowns, len(null_pool))
    null_genes = list(rng.choice(null_pool, size=n_null, replace=False)) if n_null else []
    rows, coefs, idios = [], [], []
    for gene in sorted(gene_moas) + sorted(null_genes):
        ms = gene_moas.get(gene, [])
        coef = np.zeros(n_pw)
        if ms:
            for m in ms:
                pws = moa_pw[m]
                # pathways that contain the gene carry most of its knockdown effect
                inside = [p for p in pws if gene in gmt.get(pw_names[p], ())]
                for p in pws:
                    coef[p] += moa_coef[m, p] * (1.0 if (p in inside or not inside) else 0.5)
            # knockdown of one target reproduces its MoA's pathways, not all of them equally
            coef *= np.exp(rng.normal(0, 0.3, n_pw)) * (coef != 0)
            strength = max(STRENGTH[moas[m].strength] for m in ms)
            cyto = 0.5 * max(moas[m].cytotoxic for m in ms)
        else:
            pool = [i for i in free_pw if gene in gmt[pw_names[i]]] or free_pw
            pick = rng.choice(pool, size=min(2, len(pool)), replace=False)
            coef[pick] = rng.uniform(0.6, 1.0, len(pick))
            strength = float(rng.choice([0.32, 0.65]))
            cyto = 0.0
        idio = rng.standard_normal(n_lm) * (rng.random(n_lm) < 0.06)
        path = programs.T @ coef
        idio = _unit(idio) * np.linalg.norm(path) * 0.6
        total = np.linalg.norm(path + idio)
        coefs.append(coef / total)
        idios.append(idio / total)
        rows.append(
            {
                "gene": gene,
                "expected_moas": [moas[m].name for m in ms],
                "strength": strength * np.exp(rng.normal(0, 0.25)),
                "cytotoxic": cyto,
                "self_index": lm_index.get(gene, -1),
            }
        )
    kd = pd.DataFrame(rows)
    guide_rows = []
    irng = _rng(cfg.seed, _S_IDS, 1)
    numbers = _unique_ints(irng, 10**9, 2 * 10**9, len(kd) * 8)
    k = 0
    for g, gene in enumerate(kd["gene"]):
        n_guides = int(rng.integers(cfg.guides_per_gene[0], cfg.guides_per_gene[1] + 1))
        for _ in range(n_guides):
            guide_rows.append(
                {
                    "kd_index": g,
                    "gene": gene,
                    "pert_id": f"BRDN{numbers[k]:010d}",
                    "efficiency": rng.uniform(0.5, 1.0),
                }
            )
            k += 1
    guides = pd.DataFrame(guide_rows)
    seed_fx = _unit(rng.standard_normal((len(guides), n_lm))) * 0.45
    return kd, np.vstack(coefs), np.vstack(idios), guides, seed_fx
