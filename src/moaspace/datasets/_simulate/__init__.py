"""Simulate LINCS 2020 (beta) level-5 releases with planted mechanism-of-action structure.

The files written by :func:`simulate` have the names, columns and layout of the
real release (``level5_beta_trt_cp.gctx``, ``level5_beta_trt_xpr.gctx``,
``siginfo_beta.txt``, ``geneinfo_beta.txt``, ``compoundinfo_beta.txt``) plus a
compound -> MoA table (``moa_labels.csv``, columns of the Huang et al. table),
``truth.json`` with the planted ground truth and ``moa_truth.csv`` with every
compound's true MoAs and whether the MoA table lists them (``docs/data_labels.md``).

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

The package's modules, in the order the data flow through them:

- ``config``: :class:`SimulationConfig`, the release's constants, :data:`DEMO_CONFIG`;
- ``catalogue``: :class:`MoaSpec` and :data:`MOA_CATALOGUE` (read from
  ``moaspace/resources/moa_catalogue.json``);
- ``streams``: the keyed random streams;
- ``world`` (with ``perturbagens``: compounds, knockdowns): the planted structure,
  :func:`simulate_world`;
- ``signatures``: drawing the level-5 signatures block by block;
- ``writers``: the LINCS-format files, :func:`simulate`, :func:`simulate_adata`,
  :func:`load_demo_paths`;
- ``difficulty``: :func:`raw_knn_difficulty`, a model-free difficulty check.
"""

from moaspace.datasets._simulate.catalogue import MOA_CATALOGUE, MoaSpec
from moaspace.datasets._simulate.config import (
    CELL_LINES,
    DEMO_CONFIG,
    FILE_NAMES,
    LOG10_EC50,
    P_INACTIVE,
    STANDARD_DOSES,
    STRENGTH,
    SYNTHETIC_GENE_ID_START,
    TIGHTNESS,
    SimulationConfig,
)
from moaspace.datasets._simulate.difficulty import raw_knn_difficulty
from moaspace.datasets._simulate.world import SimulatedWorld, simulate_world
from moaspace.datasets._simulate.writers import (
    MOA_TRUTH_FILE,
    load_demo_paths,
    simulate,
    simulate_adata,
)

__all__ = [
    "CELL_LINES",
    "DEMO_CONFIG",
    "FILE_NAMES",
    "LOG10_EC50",
    "MOA_CATALOGUE",
    "MOA_TRUTH_FILE",
    "P_INACTIVE",
    "STANDARD_DOSES",
    "STRENGTH",
    "SYNTHETIC_GENE_ID_START",
    "TIGHTNESS",
    "MoaSpec",
    "SimulatedWorld",
    "SimulationConfig",
    "load_demo_paths",
    "raw_knn_difficulty",
    "simulate",
    "simulate_adata",
    "simulate_world",
]
