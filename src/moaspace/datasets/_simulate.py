"""Simulate LINCS 2020 (beta) level-5 releases with planted mechanism-of-action structure.

The files written by :func:`simulate` have the names, columns and layout of the
real release (``level5_beta_trt_cp.gctx``, ``level5_beta_trt_xpr.gctx``,
``siginfo_beta.txt``, ``geneinfo_beta.txt``, ``compoundinfo_beta.txt``) plus a
compound -> MoA table (``moa_labels.csv``, columns of the Huang et al. table)
and ``truth.json`` with the planted ground truth.

The generative model is hierarchical (see ``docs/simulator.md`` for the
equations)::

    Reactome pathway programs (gene weights with sign structure)
      -> MoA direction: 1-3 pathway programs + idiosyncratic genes
        -> compound: noisy MoA direction + off-target + own direction,
                     efficacy, potency (EC50, Hill slope); some inactive
          -> signature: cell line (pathway gains, responsiveness, baseline),
                        dose (Hill curve), time, cell x compound interaction,
                        generic proliferation/stress program, plate effect,
                        replicates with low-rank + Student-t noise -> MODZ
    knockdown of gene G: pathway programs of the MoAs that target G (weaker,
                         cell-dependent) + guide seed effect + loss of G itself

Randomness comes from one ``seed``: every component draws from its own
``numpy`` generator keyed by ``(seed, component[, index])``, so signatures are
generated in fixed blocks of rows, identically whether the matrix is written
to disk block by block (:func:`simulate`) or built in memory
(:func:`simulate_adata`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._utils import atomic_path, atomic_write_text
from moaspace._version import __version__
from moaspace.errors import InputError
from moaspace.io.gctx import write_gctx
from moaspace.io.genesets import bundled_gmt, read_gmt

logger = logging.getLogger(__name__)

__all__ = [
    "CELL_LINES",
    "DEMO_CONFIG",
    "FILE_NAMES",
    "MOA_CATALOGUE",
    "MoaSpec",
    "SimulationConfig",
    "knn_calibration",
    "load_demo_paths",
    "simulate",
    "simulate_adata",
]

#: keys of the dict returned by :func:`simulate` / :func:`load_demo_paths` -> file names.
#: The first five keys are the parameter names of :func:`moaspace.pp._prepare.prepare`.
FILE_NAMES = {
    "gctx": "level5_beta_trt_cp.gctx",
    "siginfo": "siginfo_beta.txt",
    "geneinfo": "geneinfo_beta.txt",
    "compoundinfo": "compoundinfo_beta.txt",
    "moa_labels": "moa_labels.csv",
    "gctx_xpr": "level5_beta_trt_xpr.gctx",
    "truth": "truth.json",
}

#: Real L1000 cell line names. The first nine are the LINCS "core" lines (profiled
#: most often); A549, NCIH508, MDAMB231 and LNCAP are always included because the
#: reference study holds them out.
CELL_LINES = (
    "A549",
    "MCF7",
    "PC3",
    "VCAP",
    "HT29",
    "A375",
    "HA1E",
    "HCC515",
    "HEPG2",
    "NCIH508",
    "MDAMB231",
    "LNCAP",
    "NPC",
    "MCF10A",
    "YAPC",
    "HELA",
    "SKBR3",
    "HUVEC",
    "ASC",
    "JURKAT",
    "HEK293T",
    "K562",
    "PHH",
    "SKL",
)
_CORE_CELLS = frozenset(CELL_LINES[:9])
_REQUIRED_CELLS = ("A549", "NCIH508", "MDAMB231", "LNCAP")

#: LINCS standard doses (uM) and how often each is profiled.
STANDARD_DOSES = (0.04, 0.12, 0.37, 1.11, 3.33, 10.0)
_DOSE_P = (0.06, 0.06, 0.08, 0.10, 0.15, 0.55)
_TIMES = (3.0, 6.0, 24.0, 48.0)
_TIME_P = (0.03, 0.38, 0.56, 0.03)
_KD_TIME = 96.0
# relative effect size and weight of the generic (proliferation/stress) program per time
_TIME_EFFECT = {3.0: 0.55, 6.0: 0.8, 24.0: 1.0, 48.0: 1.05, 96.0: 1.0}
_TIME_GENERIC = {3.0: 0.2, 6.0: 0.45, 24.0: 1.0, 48.0: 1.25, 96.0: 1.0}
_NSAMPLE = (2, 3, 4, 5)
_NSAMPLE_P = (0.15, 0.62, 0.15, 0.08)

# first synthetic gene id for non-landmark genes (genes="all"); Entrez Gene has
# not assigned ids in this range (real ids are below 1.3e8 as of 2024)
SYNTHETIC_GENE_ID_START = 990_000_001
_N_BEST_INFERRED = 9196  # as in geneinfo_beta.txt: 978 landmark, 9196 best inferred, 2154 inferred
_N_INFERRED = 2154
_BLOCK = 512  # rows per generation block (fixed: part of the random-stream layout)
_OUTLIER_P, _OUTLIER_SD = 0.06, 3.5
_NOISE_NORM = float(1 / np.sqrt(1 - _OUTLIER_P + _OUTLIER_P * _OUTLIER_SD**2))
_CLIP = 10.0

# component tags of the random streams
_S_PATHWAY, _S_MOA, _S_CPD, _S_CELL, _S_DESIGN, _S_KD, _S_TECH, _S_INFER = range(1, 9)
_S_BLOCK_CP, _S_BLOCK_KD, _S_XI, _S_KDXI, _S_IDS, _S_CHEM, _S_SERIES = range(11, 18)
_S_MODULES, _S_MODULE_NOISE = 18, 19

STRENGTH = {"strong": 1.0, "medium": 0.68, "weak": 0.38}
P_INACTIVE = {"strong": 0.10, "medium": 0.22, "weak": 0.45}
TIGHTNESS = {"strong": 0.66, "medium": 0.6, "weak": 0.52}  # mean cosine compound vs MoA
LOG10_EC50 = {"strong": -0.6, "medium": -0.1, "weak": 0.5}  # uM


@dataclass(frozen=True)
class MoaSpec:
    """One mechanism of action of the catalogue the simulator draws from.

    ``pathways`` are Reactome pathway names (exactly as in the bundled GMT);
    ``targets`` gene symbols; ``strength`` one of strong/medium/weak
    (transcriptional activity); ``cytotoxic`` the weight of the generic
    proliferation/stress program; ``prevalence`` how many compounds the MoA
    tends to have (weak CNS-type classes are the large ones in LINCS);
    ``cells`` multiplies the response in named cell lines (lineage dependence;
    other lines get ``other_cells``).
    """

    name: str
    targets: tuple[str, ...]
    pathways: tuple[str, ...]
    strength: str = "medium"
    cytotoxic: float = 0.0
    prevalence: float = 1.0
    cells: tuple[tuple[str, float], ...] = ()
    other_cells: float = 1.0


MOA_CATALOGUE: tuple[MoaSpec, ...] = (
    MoaSpec(
        "HDAC inhibitor",
        ("HDAC1", "HDAC2", "HDAC3", "HDAC6"),
        (
            "Chromatin modifying enzymes",
            "Cellular Senescence",
            "Transcriptional regulation by RUNX1",
        ),
        "strong",
        0.5,
        1.0,
    ),
    MoaSpec(
        "MTOR inhibitor",
        ("MTOR", "RPTOR"),
        ("PIP3 activates AKT signaling", "Cellular response to starvation", "Translation"),
        "strong",
        0.25,
        0.7,
    ),
    MoaSpec(
        "PI3K inhibitor",
        ("PIK3CA", "PIK3CB", "PIK3CD", "PIK3CG"),
        (
            "PI3K/AKT Signaling in Cancer",
            "PIP3 activates AKT signaling",
            "Negative regulation of the PI3K/AKT network",
        ),
        "medium",
        0.2,
        1.0,
    ),
    MoaSpec(
        "AKT inhibitor",
        ("AKT1", "AKT2", "AKT3"),
        ("PI3K/AKT Signaling in Cancer", "FOXO-mediated transcription"),
        "medium",
        0.1,
        0.5,
    ),
    MoaSpec(
        "EGFR inhibitor",
        ("EGFR", "ERBB2"),
        ("Signaling by EGFR", "Signaling by ERBB2", "MAPK1/MAPK3 signaling"),
        "medium",
        0.1,
        1.0,
        (("HCC515", 1.8), ("A549", 0.6)),
    ),
    MoaSpec(
        "MEK inhibitor",
        ("MAP2K1", "MAP2K2"),
        ("RAF/MAP kinase cascade", "MAPK targets/ Nuclear events mediated by MAP kinases"),
        "strong",
        0.1,
        0.6,
        (("A375", 2.0), ("HT29", 1.7)),
    ),
    MoaSpec(
        "RAF inhibitor",
        ("BRAF", "RAF1"),
        ("RAF/MAP kinase cascade", "Signalling to ERKs"),
        "medium",
        0.05,
        0.4,
        (("A375", 2.2), ("HT29", 1.8)),
    ),
    MoaSpec(
        "CDK inhibitor",
        ("CDK1", "CDK2", "CDK4", "CDK6", "CDK9"),
        (
            "Cyclin E associated events during G1/S transition",
            "G1/S Transition",
            "Mitotic G1 phase and G1/S transition",
        ),
        "strong",
        0.7,
        0.8,
    ),
    MoaSpec(
        "Aurora kinase inhibitor",
        ("AURKA", "AURKB"),
        ("Mitotic Prometaphase", "Regulation of PLK1 Activity at G2/M Transition"),
        "medium",
        0.6,
        0.5,
    ),
    MoaSpec(
        "PLK inhibitor",
        ("PLK1",),
        ("Regulation of PLK1 Activity at G2/M Transition", "Mitotic G2-G2/M phases"),
        "medium",
        0.6,
        0.3,
    ),
    MoaSpec(
        "tubulin polymerization inhibitor",
        ("TUBB", "TUBA1A", "TUBB4B"),
        ("Mitotic Metaphase and Anaphase", "Mitotic Spindle Checkpoint"),
        "strong",
        0.8,
        0.6,
    ),
    MoaSpec(
        "topoisomerase inhibitor",
        ("TOP1", "TOP2A", "TOP2B"),
        (
            "G2/M DNA damage checkpoint",
            "p53-Dependent G1 DNA Damage Response",
            "Transcriptional Regulation by TP53",
        ),
        "strong",
        0.7,
        0.7,
    ),
    MoaSpec(
        "ribonucleotide reductase inhibitor",
        ("RRM1", "RRM2"),
        ("DNA Replication", "S Phase"),
        "medium",
        0.5,
        0.3,
    ),
    MoaSpec(
        "proteasome inhibitor",
        ("PSMB5", "PSMB1", "PSMB2"),
        (
            "Antigen processing: Ubiquitination & Proteasome degradation",
            "Regulation of HSF1-mediated heat shock response",
            "Unfolded Protein Response (UPR)",
        ),
        "strong",
        0.6,
        0.3,
    ),
    MoaSpec(
        "HSP inhibitor",
        ("HSP90AA1", "HSP90AB1"),
        ("Regulation of HSF1-mediated heat shock response", "Cellular response to heat stress"),
        "strong",
        0.4,
        0.4,
    ),
    MoaSpec(
        "glucocorticoid receptor agonist",
        ("NR3C1",),
        (
            "FOXO-mediated transcription",
            "Circadian Clock",
            "Interleukin-4 and Interleukin-13 signaling",
        ),
        "medium",
        0.0,
        0.9,
        (("A549", 2.0),),
    ),
    MoaSpec(
        "estrogen receptor agonist",
        ("ESR1", "ESR2"),
        ("Estrogen-dependent gene expression", "Extra-nuclear estrogen signaling"),
        "medium",
        0.0,
        0.7,
        (("MCF7", 3.0),),
        0.3,
    ),
    MoaSpec(
        "androgen receptor antagonist",
        ("AR",),
        ("Signaling by Nuclear Receptors", "Transcriptional regulation by RUNX2"),
        "medium",
        0.0,
        0.5,
        (("VCAP", 3.0), ("LNCAP", 3.0)),
        0.3,
    ),
    MoaSpec(
        "JAK inhibitor",
        ("JAK1", "JAK2", "JAK3"),
        ("Interleukin-4 and Interleukin-13 signaling", "Interferon Signaling"),
        "medium",
        0.05,
        0.5,
    ),
    MoaSpec(
        "IKK inhibitor",
        ("IKBKB", "CHUK"),
        (
            "TNFR2 non-canonical NF-kB pathway",
            "Interleukin-1 signaling",
            "FCERI mediated NF-kB activation",
        ),
        "medium",
        0.1,
        0.4,
    ),
    MoaSpec(
        "p38 MAPK inhibitor",
        ("MAPK14", "MAPK11"),
        (
            "MAPK targets/ Nuclear events mediated by MAP kinases",
            "Interleukin-17 signaling",
            "Oxidative Stress Induced Senescence",
        ),
        "weak",
        0.0,
        0.5,
    ),
    MoaSpec(
        "VEGFR inhibitor",
        ("KDR", "FLT1", "FLT4", "PDGFRB", "KIT"),
        ("Signaling by VEGF", "VEGFA-VEGFR2 Pathway", "Signaling by SCF-KIT"),
        "weak",
        0.05,
        0.7,
        (("HUVEC", 2.5),),
    ),
    MoaSpec(
        "Bcr-Abl kinase inhibitor",
        ("ABL1", "BCR"),
        ("RHO GTPase Effectors", "Regulation of actin dynamics for phagocytic cup formation"),
        "weak",
        0.1,
        0.4,
        (("K562", 3.0),),
    ),
    MoaSpec(
        "ATPase inhibitor",
        ("ATP1A1",),
        ("Translation", "Response to elevated platelet cytosolic Ca2+"),
        "strong",
        0.5,
        0.4,
    ),
    MoaSpec(
        "BCL inhibitor",
        ("BCL2", "BCL2L1", "MCL1"),
        ("Intrinsic Pathway for Apoptosis", "Activation of BH3-only proteins"),
        "weak",
        0.2,
        0.3,
    ),
    MoaSpec(
        "PPAR receptor agonist",
        ("PPARG", "PPARA", "PPARD"),
        (
            "PPARA activates gene expression",
            "Regulation of lipid metabolism by PPARalpha",
            "Fatty acid metabolism",
        ),
        "weak",
        0.0,
        0.8,
        (("HEPG2", 2.0),),
    ),
    MoaSpec(
        "retinoid receptor agonist",
        ("RARA", "RARB", "RXRA"),
        ("Signaling by Nuclear Receptors", "Transcriptional regulation by RUNX1"),
        "medium",
        0.0,
        0.5,
    ),
    MoaSpec(
        "bromodomain inhibitor",
        ("BRD4", "BRD2", "BRD3"),
        (
            "RNA Polymerase II Transcription",
            "Transcriptional regulation by RUNX1",
            "Chromatin modifying enzymes",
        ),
        "strong",
        0.3,
        0.4,
    ),
    MoaSpec("HMGCR inhibitor", ("HMGCR",), ("Metabolism of steroids",), "medium", 0.0, 0.6),
    MoaSpec(
        "adrenergic receptor antagonist",
        ("ADRA1A", "ADRA2A", "ADRB1", "ADRB2"),
        ("G alpha (q) signalling events", "GPCR downstream signalling"),
        "weak",
        0.0,
        2.0,
    ),
    MoaSpec(
        "dopamine receptor antagonist",
        ("DRD2", "DRD1", "DRD3"),
        ("G alpha (i) signalling events", "GPCR downstream signalling"),
        "weak",
        0.0,
        1.8,
    ),
    MoaSpec(
        "serotonin receptor antagonist",
        ("HTR2A", "HTR2C", "HTR1A"),
        ("G alpha (q) signalling events", "G alpha (i) signalling events"),
        "weak",
        0.0,
        1.8,
    ),
    MoaSpec(
        "histamine receptor antagonist",
        ("HRH1", "HRH2"),
        ("G alpha (q) signalling events", "Signaling by GPCR"),
        "weak",
        0.0,
        1.2,
    ),
    MoaSpec(
        "acetylcholine receptor antagonist",
        ("CHRM1", "CHRM2", "CHRM3"),
        ("G alpha (q) signalling events", "Signaling by GPCR"),
        "weak",
        0.0,
        1.5,
    ),
    MoaSpec(
        "cyclooxygenase inhibitor",
        ("PTGS1", "PTGS2"),
        ("Interleukin-4 and Interleukin-13 signaling", "Fatty acid metabolism"),
        "weak",
        0.0,
        1.5,
    ),
    MoaSpec(
        "phosphodiesterase inhibitor",
        ("PDE4A", "PDE4B", "PDE4D", "PDE5A"),
        ("G alpha (s) signalling events", "GPCR downstream signalling"),
        "weak",
        0.0,
        1.0,
    ),
    MoaSpec(
        "calcium channel blocker",
        ("CACNA1C", "CACNA1D"),
        ("Regulation of insulin secretion", "Response to elevated platelet cytosolic Ca2+"),
        "weak",
        0.0,
        1.0,
    ),
    MoaSpec(
        "sodium channel blocker",
        ("SCN5A", "SCN1A", "SCN9A"),
        ("Response to elevated platelet cytosolic Ca2+",),
        "weak",
        0.0,
        1.0,
    ),
    MoaSpec(
        "bacterial cell wall synthesis inhibitor",
        (),
        ("The citric acid (TCA) cycle and respiratory electron transport",),
        "weak",
        0.0,
        1.5,
    ),
)

# generic response shared by cytotoxic compounds (proliferation down, stress up)
_GENERIC_PATHWAYS = (
    ("Cell Cycle, Mitotic", 1.0),
    ("Cellular Senescence", 0.6),
    ("Transcriptional Regulation by TP53", 0.4),
)


@dataclass
class SimulationConfig:
    """Size and difficulty of a simulated release. One ``seed`` fixes everything.

    The defaults give ~8,500 compound signatures of ~490 compounds in 32 MoAs
    and 14 cell lines, of which the default :func:`~moaspace.pp._prepare.prepare`
    filters keep ~5,500 signatures, ~20 MoAs. ``effect_scale`` and
    ``noise_scale`` set the signal-to-noise ratio (the difficulty).

    ``compound_series`` > 0 splits every MoA into that many chemical series
    (selectivity profiles): a compound's direction beyond its MoA's is then
    ``series_weight`` (a share of its squared norm) a direction common to its
    series and the rest its own. Off by default: then nothing below the MoA
    level is shared between compounds (``benchmarks/bench_predictors.py`` and the
    README measure what the compound loss does with and without series).

    ``noise_modules`` > 0 adds the *correlated-noise regime* (off by default): that
    many co-regulated gene modules (random sparse gene loadings) whose activity varies
    from signature to signature independently of the compound (biological variation
    that MODZ averaging of replicates does not remove), with a gain per cell line and
    module; ``module_noise`` is its per-gene RMS in z-score units. ``saturation`` > 0
    passes every response through ``saturation * tanh(response / saturation)``
    (saturating responses). Both draw from their own random streams, so the default
    world is unchanged. See ``docs/simulator.md``.
    """

    seed: int = 0
    n_compounds: int = 700
    n_moas: int = 28
    n_cells: int = 14
    genes: str = "landmark"
    sigs_per_compound: tuple[int, int] = (5, 60)
    frac_unlabeled: float = 0.08
    moa_size_skew: float = 0.6
    n_null_knockdowns: int = 12
    guides_per_gene: tuple[int, int] = (2, 3)
    cells_per_guide: tuple[int, int] = (3, 7)
    effect_scale: float = 1.0
    noise_scale: float = 1.0
    knockdown_scale: float = 0.7
    cell_baseline: float = 0.4
    interaction: float = 0.7
    compound_series: int = 0
    series_weight: float = 0.6
    noise_modules: int = 0
    module_noise: float = 0.5
    saturation: float | None = None
    hiq_min_cc: float = 0.1
    min_pathway_genes: int = 10
    max_pathway_genes: int = 120
    round_decimals: int | None = None
    compression: str | None = None
    moas: Sequence[str] | None = None
    cells: Sequence[str] | None = None

    def __post_init__(self):
        if self.genes not in ("landmark", "all"):
            raise InputError(f"genes must be 'landmark' or 'all', got {self.genes!r}")
        self.sigs_per_compound = tuple(int(v) for v in self.sigs_per_compound)
        self.guides_per_gene = tuple(int(v) for v in self.guides_per_gene)
        self.cells_per_guide = tuple(int(v) for v in self.cells_per_guide)
        for name in ("sigs_per_compound", "guides_per_gene", "cells_per_guide"):
            lo, hi = getattr(self, name)
            if lo < 1 or hi < lo:
                raise InputError(f"{name} must be (low, high) with 1 <= low <= high, got {lo, hi}")
        if self.n_compounds < 2:
            raise InputError(f"n_compounds must be >= 2, got {self.n_compounds}")
        if self.moas is not None:
            self.moas = tuple(self.moas)
            known = {m.name for m in MOA_CATALOGUE}
            unknown = [m for m in self.moas if m not in known]
            if unknown:
                raise InputError(f"unknown MoAs {unknown}; choose from {sorted(known)}")
            self.n_moas = len(self.moas)
        if not 2 <= self.n_moas <= len(MOA_CATALOGUE):
            raise InputError(
                f"n_moas must be between 2 and {len(MOA_CATALOGUE)} (the catalogue), "
                f"got {self.n_moas}"
            )
        if self.cells is not None:
            self.cells = tuple(self.cells)
            if len(set(self.cells)) != len(self.cells) or not self.cells:
                raise InputError(f"cells must be distinct names, got {self.cells}")
            self.n_cells = len(self.cells)
        if not 1 <= self.n_cells <= len(CELL_LINES):
            raise InputError(f"n_cells must be between 1 and {len(CELL_LINES)}, got {self.n_cells}")
        if not 0 <= self.frac_unlabeled < 1:
            raise InputError(f"frac_unlabeled must be in [0, 1), got {self.frac_unlabeled}")
        if self.effect_scale < 0 or self.noise_scale <= 0:
            raise InputError("effect_scale must be >= 0 and noise_scale > 0")
        if self.compound_series < 0:
            raise InputError(f"compound_series must be >= 0, got {self.compound_series}")
        if not 0 <= self.series_weight <= 1:
            raise InputError(f"series_weight must be in [0, 1], got {self.series_weight}")
        if self.noise_modules < 0 or self.module_noise < 0:
            raise InputError(f"noise_modules and module_noise must be >= 0, got "
                             f"{self.noise_modules}, {self.module_noise}")
        if self.saturation is not None and self.saturation <= 0:
            raise InputError(f"saturation must be > 0 (or None: off), got {self.saturation}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


def _unit(v: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(v, axis=axis, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def _unique_ints(rng: np.random.Generator, low: int, high: int, n: int) -> np.ndarray:
    """``n`` distinct integers in ``[low, high)`` in random order (without a full permutation)."""
    if n > high - low:
        raise InputError(f"cannot draw {n} distinct ids from a range of {high - low}")
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        draw = rng.integers(low, high, size=2 * (n - len(out)) + 8)
        out = np.concatenate([out, draw])
        _, first = np.unique(out, return_index=True)
        out = out[np.sort(first)]
    return out[:n]


def _dose_str(dose: float) -> str:
    return f"{dose:g}"


def _read_landmarks() -> pd.DataFrame:
    path = resources.files("moaspace.resources") / "landmark_genes.csv"
    with resources.as_file(path) as p:
        frame = pd.read_csv(p, dtype={"pr_gene_id": str})
    return frame


_SYMBOL = re.compile(r"^[A-Z][A-Z0-9-]*[A-Z0-9]$|^[A-Z]$")


# --------------------------------------------------------------------------- the world


@dataclass
class _World:
    """Everything fixed before signatures are drawn (small: no per-signature data)."""

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


def _build_world(cfg: SimulationConfig) -> _World:
    gmt = read_gmt(bundled_gmt("reactome"))
    gene_ids, symbols, space, titles, n_lm = _genes(cfg, gmt)
    lm_symbols = symbols[:n_lm]
    pw_names, programs, members = _pathway_programs(cfg, gmt, lm_symbols)
    sizes = {p: len(members[p]) for p in pw_names}
    pw_index = {p: i for i, p in enumerate(pw_names)}
    n_pw = len(pw_names)

    generic = np.zeros(n_lm)
    for name, weight in _GENERIC_PATHWAYS:
        if name in pw_index:
            generic += weight * programs[pw_index[name]]
    generic = _unit(generic)

    # ---- MoAs -------------------------------------------------------------
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

    # ---- cell lines -------------------------------------------------------
    cells = _choose_cells(cfg)
    crng = _rng(cfg.seed, _S_CELL)
    n_cells = len(cells)
    cell_resp = np.exp(crng.normal(0, 0.3, n_cells))
    cell_pw_gain = np.exp(crng.normal(0, 0.45, (n_cells, n_pw)))
    cell_gene_gain = np.exp(crng.normal(0, 0.3, (n_cells, n_lm)))
    cell_generic = np.exp(crng.normal(0, 0.35, n_cells))
    cell_base = crng.standard_normal((n_cells, n_lm)) * cfg.cell_baseline
    moa_cell = np.ones((len(moas), n_cells))
    for m, spec in enumerate(moas):
        special = dict(spec.cells)
        for k, cell in enumerate(cells):
            moa_cell[m, k] = special.get(cell, spec.other_cells)

    # ---- compounds --------------------------------------------------------
    cpd, cpd_coef, cpd_idio = _compounds(cfg, moas, moa_coef, moa_idio, programs, n_lm)

    # ---- knockdowns -------------------------------------------------------
    kd_genes, kd_coef, kd_idio, guides, guide_seed = _knockdowns(
        cfg, moas, moa_pw, moa_coef, programs, pw_names, members, lm_symbols, gmt
    )

    trng = _rng(cfg.seed, _S_TECH)
    tech = trng.standard_normal((6, n_lm)) / np.sqrt(n_lm) * np.sqrt(n_lm / 6)

    world = _World(
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
        cell_resp=cell_resp,
        cell_pw_gain=cell_pw_gain,
        cell_gene_gain=cell_gene_gain,
        cell_generic=cell_generic,
        cell_base=cell_base,
        moa_cell=moa_cell,
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
        world.modules, world.module_cell_gain = _noise_modules(cfg, n_lm, n_cells)
    if cfg.genes == "all":
        world.infer_w, world.infer_r2 = _inference_weights(cfg, world, gmt)
    _design(world)
    return world


def _noise_modules(cfg: SimulationConfig, n_lm: int, n_cells: int):
    """Co-regulated gene modules of the correlated-noise regime: sparse unit loadings
    (each gene in a module with probability 8%, random signs and sizes) and a
    log-normal gain per cell line and module."""
    rng = _rng(cfg.seed, _S_MODULES)
    mask = rng.random((cfg.noise_modules, n_lm)) < 0.08
    loadings = rng.standard_normal((cfg.noise_modules, n_lm)) * mask
    gain = np.exp(rng.normal(0, 0.5, (n_cells, cfg.noise_modules)))
    return _unit(loadings), gain


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


def _compounds(cfg, moas, moa_coef, moa_idio, programs, n_lm):
    """Compounds: MoA membership (long-tailed), direction, efficacy, potency."""
    rng = _rng(cfg.seed, _S_CPD)
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
    n_pw = programs.shape[0]
    # off-target programs: focused pathways, not umbrella sets such as "Signal Transduction"
    n_members = (programs != 0).sum(1)
    focused = np.nonzero(n_members <= cfg.max_pathway_genes)[0]
    coef = np.zeros((n, n_pw))
    idio = np.zeros((n, n_lm))
    # optional chemical series inside each MoA: compounds of one series share part of their
    # off-MoA direction (a selectivity profile). Own random stream, so that with
    # compound_series=0 (the default) every other draw is unchanged.
    n_series = cfg.compound_series
    if n_series:
        srng = _rng(cfg.seed, _S_SERIES)
        series_dir = srng.standard_normal((n_moa, n_series, n_lm))
        series_dir *= srng.random((n_moa, n_series, n_lm)) < 0.12
        series_of = srng.integers(n_series, size=n)
    rows = []
    for c in range(n):
        m = moa_of[c]
        spec = moas[m]
        # cosine to the MoA direction: Beta around the class tightness
        t = TIGHTNESS[spec.strength]
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
        if n_series:
            w = cfg.series_weight
            size = np.linalg.norm(programs.T @ o_c + o_z)
            o_c = np.sqrt(1 - w) * o_c
            o_z = np.sqrt(1 - w) * o_z + np.sqrt(w) * size * _unit(series_dir[m, series_of[c]])
        # orthogonalise the remainder against the MoA direction, then mix
        d = programs.T @ moa_coef[m] + moa_idio[m]
        o = programs.T @ o_c + o_z
        proj = float(o @ d)
        o_c = o_c - proj * moa_coef[m]
        o_z = o_z - proj * moa_idio[m]
        o_norm = np.linalg.norm(programs.T @ o_c + o_z)
        s = np.sqrt(max(1 - cos**2, 0.0)) / o_norm
        coef[c] = cos * moa_coef[m] + s * o_c
        idio[c] = cos * moa_idio[m] + s * o_z
        total = np.linalg.norm(programs.T @ coef[c] + idio[c])
        coef[c] /= total
        idio[c] /= total
        efficacy = STRENGTH[spec.strength] * np.exp(rng.normal(0, 0.35))
        active = rng.random() >= P_INACTIVE[spec.strength]
        if not active:
            efficacy *= rng.uniform(0.03, 0.15)
        rows.append(
            {
                "moa_index": m,
                "moa": spec.name,
                "labeled": bool(labeled[c]),
                "efficacy": efficacy,
                "active": bool(active),
                "moa_cosine": cos,
                "log10_ec50_um": rng.normal(LOG10_EC50[spec.strength], 0.6),
                "hill": rng.uniform(0.8, 2.0),
                "cytotoxic": spec.cytotoxic * np.exp(rng.normal(0, 0.3)),
                "offtarget_moa": moas[off_moa].name if off_moa >= 0 else "",
            }
        )
    frame = pd.DataFrame(rows)
    if n_series:
        frame["series"] = series_of
    # identifiers, names, structures, targets
    irng = _rng(cfg.seed, _S_IDS)
    numbers = _unique_ints(irng, 10_000_000, 100_000_000, n)
    prefix = np.where(irng.random(n) < 0.9, "K", "A")
    frame["pert_id"] = [f"BRD-{p}{num:08d}" for p, num in zip(prefix, numbers, strict=True)]
    names = _unique_ints(irng, 1000, 100_000, n)
    frame["cmap_name"] = [f"SIM-{num:05d}" for num in names]
    frame["project"] = irng.choice(["CPC", "REP.A", "PAC"], size=n, p=[0.45, 0.4, 0.15])
    frame["canonical_smiles"] = _smiles(cfg, frame["moa_index"].to_numpy(), len(moas))
    frame["inchi_key"] = [_fake_inchikey(s, i) for i, s in enumerate(frame["canonical_smiles"])]
    targets = []
    for c in range(n):
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
    frame["targets"] = targets
    return frame, coef, idio


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


def _inference_weights(cfg, world: _World, gmt):
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


def _design(world: _World) -> None:
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


# --------------------------------------------------------------------------- signatures


def _pair_directions(
    world: _World, kind: str, ent: np.ndarray, cell: np.ndarray, extra: np.ndarray | None = None
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


def _block(world: _World, kind: str, b: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Level-5 rows ``[b*_BLOCK, (b+1)*_BLOCK)`` of the cp or kd design, and their QC."""
    cfg = world.cfg
    design = world.design_cp if kind == "cp" else world.design_kd
    sl = slice(b * _BLOCK, min((b + 1) * _BLOCK, len(design)))
    rows = design.iloc[sl]
    n = len(rows)
    n_lm = world.n_lm
    rng = _rng(cfg.seed, _S_BLOCK_CP if kind == "cp" else _S_BLOCK_KD, b)
    cell = rows["cell"].to_numpy()
    time_h = rows["time"].to_numpy()
    tau = np.array([_TIME_EFFECT[t] for t in time_h])
    wgen = np.array([_TIME_GENERIC[t] for t in time_h])
    if kind == "cp":
        ent = rows["cpd"].to_numpy()
        cpd = world.cpd
        moa_idx = cpd["moa_index"].to_numpy()[ent]
        ec50 = 10.0 ** cpd["log10_ec50_um"].to_numpy()[ent]
        hill = cpd["hill"].to_numpy()[ent]
        dose = rows["dose"].to_numpy()
        frac = dose**hill / (dose**hill + ec50**hill)
        amp = cpd["efficacy"].to_numpy()[ent] * frac * world.moa_cell[moa_idx, cell]
        cyto = cpd["cytotoxic"].to_numpy()[ent]
        extra_ent = None
    else:
        ent = rows["kd"].to_numpy()
        kdg = world.kd_genes
        guide = rows["guide"].to_numpy()
        eff = world.guides["efficiency"].to_numpy()[guide]
        # cell dependence: lineage multipliers of the MoAs that target the gene
        lineage = np.ones(n)
        for i, (g, k) in enumerate(zip(ent, cell, strict=True)):
            ms = [j for j, s in enumerate(world.moas) if s.name in kdg.at[g, "expected_moas"]]
            if ms:
                lineage[i] = max(world.moa_cell[j, k] for j in ms)
        dep = np.exp(_rng(cfg.seed, _S_KD, 7).normal(0, 0.4, (len(kdg), len(world.cells))))
        amp = cfg.knockdown_scale * kdg["strength"].to_numpy()[ent] * eff * lineage * dep[ent, cell]
        cyto = kdg["cytotoxic"].to_numpy()[ent]
        extra_ent = world.guide_seed[guide]
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
        activity = mrng.standard_normal((n, len(world.modules))) * world.module_cell_gain[cell]
        scale = cfg.module_noise * np.sqrt(n_lm / len(world.modules))
        shared = shared + scale * activity @ world.modules
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

    def __init__(self, world: _World, kind: str):
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


# --------------------------------------------------------------------------- tables


def _siginfo(world: _World, qcs: dict[str, dict]) -> pd.DataFrame:
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


def _geneinfo(world: _World) -> pd.DataFrame:
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


def _compoundinfo(world: _World) -> pd.DataFrame:
    rows = []
    for _, c in world.cpd.iterrows():
        moa = c["moa"] if c["labeled"] else ""
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


def _moa_labels(world: _World) -> pd.DataFrame:
    lab = world.cpd[world.cpd["labeled"]]
    return pd.DataFrame(
        {
            "BRD-ID": lab["pert_id"].to_numpy(),
            "Drug name": lab["cmap_name"].to_numpy(),
            "MOA": lab["moa"].to_numpy(),
        }
    )


def _truth(world: _World) -> dict:
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
    and ``truth``. The first five are the arguments of
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
    pert_time, tas, pert_type, is_hiq``; ``target_gene`` for knockdowns) and
    ``var`` indexed by gene id with ``gene_symbol`` and ``feature_space``.
    Unlabelled compounds have ``moa == ""`` (their true MoA is in
    ``truth["compounds"]``). ``truth`` is the content of ``truth.json``.
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
        moa_map = dict(
            zip(
                world.cpd["pert_id"],
                np.where(world.cpd["labeled"], world.cpd["moa"], ""),
                strict=True,
            )
        )
        sig["moa"] = sig["pert_id"].map(moa_map)
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
    if pert_type == "trt_xpr":
        columns.append("target_gene")
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


def _config(config: SimulationConfig | None, overrides: dict) -> SimulationConfig:
    config = config or SimulationConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(SimulationConfig)}
        if unknown:
            raise InputError(f"unknown simulation settings: {sorted(unknown)}")
        config = dataclasses.replace(config, **overrides)
    return config


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


#: configuration of the embedded demo release (see scripts/make_demo_data.py)
DEMO_CONFIG = SimulationConfig(
    seed=2020,
    n_compounds=170,
    n_cells=10,
    sigs_per_compound=(12, 18),
    frac_unlabeled=0.05,
    moa_size_skew=0.2,
    n_null_knockdowns=4,
    guides_per_gene=(1, 2),
    cells_per_guide=(2, 3),
    round_decimals=2,
    compression="gzip",
    moas=(
        "HDAC inhibitor",
        "MTOR inhibitor",
        "PI3K inhibitor",
        "EGFR inhibitor",
        "MEK inhibitor",
        "CDK inhibitor",
        "topoisomerase inhibitor",
        "glucocorticoid receptor agonist",
        "adrenergic receptor antagonist",
        "cyclooxygenase inhibitor",
    ),
)


# --------------------------------------------------------------------------- calibration


def knn_calibration(
    adata: ad.AnnData,
    k: int = 10,
    n_splits: int = 5,
    seed: int = 0,
    label: str = "moa",
    group: str = "pert_id",
) -> dict:
    """Raw-signature cosine kNN on unseen compounds (a difficulty check, not a model).

    Compounds are split into ``n_splits`` folds (grouped by ``group``,
    stratified by ``label``); each held-out signature gets the majority MoA of
    its ``k`` most cosine-similar training signatures (ties: larger summed
    similarity). Returns signature-level accuracy and macro-F1 averaged over
    folds, compound-level accuracy (majority vote of a compound's
    signatures), and the majority-class rate.
    """
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedGroupKFold

    x = np.asarray(adata.X, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y_str = adata.obs[label].astype(str).to_numpy()
    classes, y = np.unique(y_str, return_inverse=True)
    groups = adata.obs[group].astype(str).to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    accs, f1s, caccs = [], [], []
    for train, test in splitter.split(x, y, groups):
        sims = x[test] @ x[train].T
        kk = min(k, len(train))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        votes = np.zeros((len(test), len(classes)))
        score = np.zeros((len(test), len(classes)))
        rows = np.repeat(np.arange(len(test)), kk)
        np.add.at(votes, (rows, y[train][top].ravel()), 1.0)
        np.add.at(score, (rows, y[train][top].ravel()), np.take_along_axis(sims, top, 1).ravel())
        pred = np.argmax(votes + 1e-6 * score, axis=1)
        accs.append(float(np.mean(pred == y[test])))
        f1s.append(
            float(
                f1_score(y[test], pred, average="macro", labels=np.unique(y[test]), zero_division=0)
            )
        )
        frame = pd.DataFrame({"g": groups[test], "p": pred, "y": y[test]})
        cmaj = frame.groupby("g").agg(
            p=("p", lambda s: s.value_counts().index[0]), y=("y", "first")
        )
        caccs.append(float(np.mean(cmaj["p"] == cmaj["y"])))
    counts = pd.Series(y_str).value_counts()
    return {
        "k": k,
        "n_splits": n_splits,
        "accuracy": float(np.mean(accs)),
        "macro_f1": float(np.mean(f1s)),
        "compound_accuracy": float(np.mean(caccs)),
        "accuracy_folds": accs,
        "majority_rate": float(counts.iloc[0] / counts.sum()),
        "n_signatures": int(adata.n_obs),
        "n_compounds": len(set(groups)),
        "n_moas": len(classes),
    }
