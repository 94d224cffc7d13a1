"""Constants of the simulated LINCS release and :class:`SimulationConfig`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moaspace.datasets._simulate.catalogue import MOA_CATALOGUE
from moaspace.errors import InputError

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

STRENGTH = {"strong": 1.0, "medium": 0.68, "weak": 0.38}
P_INACTIVE = {"strong": 0.10, "medium": 0.22, "weak": 0.45}
TIGHTNESS = {"strong": 0.66, "medium": 0.6, "weak": 0.52}  # mean cosine compound vs MoA
LOG10_EC50 = {"strong": -0.6, "medium": -0.1, "weak": 0.5}  # uM

# generic response shared by cytotoxic compounds (proliferation down, stress up)
_GENERIC_PATHWAYS = (
    ("Cell Cycle, Mitotic", 1.0),
    ("Cellular Senescence", 0.6),
    ("Transcriptional Regulation by TP53", 0.4),
)


def _dose_str(dose: float) -> str:
    return f"{dose:g}"


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

    ``multi_moa_fraction`` > 0 gives that share of the compounds a second MoA (off by
    default; own random stream, so every other draw is unchanged): the compound's direction
    is ``w1 * d1 + w2 * d2`` with ``w1, w2 ~ U(0.5, 0.7)``, ``d1`` its direction in its
    first MoA and ``d2`` one drawn as for a member of the second (potency, efficacy,
    cytotoxicity and lineage stay those of the first MoA); the MoA table and compoundinfo
    list both MoAs as ``a|b``. ``frac_unlabeled`` is the share left out of the MoA table
    (``moa_truth.csv`` and ``truth.json`` keep their MoAs); see ``docs/data_labels.md``.

    Parameters
    ----------
    seed : int, default 0
        Seeds every random stream of the world.
    n_compounds, n_moas, n_cells : int
        Compounds, MoAs (drawn from the bundled catalogue) and cell lines.
    genes : {"landmark", "all"}, default "landmark"
        Write the 978 landmark genes, or all 12,328 (the rest inferred, as in LINCS).
    sigs_per_compound : tuple of int, default (5, 60)
        Range of signatures per compound (over doses, times and cell lines).
    frac_unlabeled : float, default 0.08
        Share of compounds without a MoA in the MoA table and compoundinfo (their signatures
        are those of their true MoA, which ``truth.json`` and ``moa_truth.csv`` give). CLI
        ``--unlabelled-fraction``.
    multi_moa_fraction : float, default 0.0
        Share of compounds with a second MoA (above).
    moa_size_skew : float, default 0.6
        Power-law exponent of the MoA sizes (0: equal sizes).
    n_null_knockdowns : int, default 12
        Knocked-down genes that no MoA targets (negative controls).
    guides_per_gene, cells_per_guide : tuple of int
        Ranges of CRISPR guides per gene and of cell lines per guide.
    effect_scale, noise_scale : float, default 1.0
        Scale of the compound responses and of the noise (the signal-to-noise ratio).
    knockdown_scale : float, default 0.7
        Strength of knockdown responses relative to compound responses.
    cell_baseline : float, default 0.4
        RMS of each cell line's baseline shift.
    interaction : float, default 0.7
        Strength of the cell x compound interaction (part pathway, part gene level).
    compound_series, series_weight
        Chemical series per MoA and the share of a compound's own direction they hold
        (above).
    noise_modules, module_noise, saturation
        The correlated-noise regime (above).
    hiq_min_cc : float, default 0.1
        Minimum replicate correlation for ``is_hiq == 1`` (with a passed QC).
    min_pathway_genes, max_pathway_genes : int
        Size range (landmark genes) of the Reactome pathways used as programs.
    round_decimals : int or None, default None
        Round the written z-scores (None: full float32).
    compression : str or None, default None
        HDF5 compression of the written GCTX (e.g. ``"gzip"``).
    moas, cells : sequence of str or None
        Pick these catalogue MoAs / cell-line names instead of drawing them.
    """

    seed: int = 0
    n_compounds: int = 700
    n_moas: int = 28
    n_cells: int = 14
    genes: str = "landmark"
    sigs_per_compound: tuple[int, int] = (5, 60)
    frac_unlabeled: float = 0.08
    multi_moa_fraction: float = 0.0
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
        if not 0 <= self.multi_moa_fraction <= 1:
            raise InputError(f"multi_moa_fraction must be in [0, 1], got "
                             f"{self.multi_moa_fraction}")
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
        """The fields as JSON types; regimes added later are left out while off (at their
        default), so the default world's ``truth.json`` is that of earlier versions."""
        out = dataclasses.asdict(self)
        if not self.multi_moa_fraction:
            del out["multi_moa_fraction"]
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def _config(config: SimulationConfig | None, overrides: dict) -> SimulationConfig:
    config = config or SimulationConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(SimulationConfig)}
        if unknown:
            raise InputError(f"unknown simulation settings: {sorted(unknown)}")
        config = dataclasses.replace(config, **overrides)
    return config


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
