"""Data to try moaspace on: real LINCS L1000 consensus signatures of 1,170 drugs
(:func:`lincs_consensus`, shipped with the package), the simulator (a LINCS-format world with planted MoAs,
compound sub-clusters, pathway programs and knockdown targets) and the embedded demo
release (pertpy's and decoupler's small toy datasets play the same role)."""

from moaspace.datasets._real import lincs_consensus, lincs_consensus_paths
from moaspace.datasets._simulate import (
    SimulationConfig,
    load_demo_paths,
    raw_knn_difficulty,
    simulate,
    simulate_adata,
    simulate_world,
)

__all__ = [
    "SimulationConfig",
    "lincs_consensus",
    "lincs_consensus_paths",
    "load_demo_paths",
    "raw_knn_difficulty",
    "simulate",
    "simulate_adata",
    "simulate_world",
]
