"""Data to try moaspace on: the simulator (a LINCS-format world with planted MoAs,
compound sub-clusters, pathway programs and knockdown targets) and the embedded demo
release (pertpy's and decoupler's small toy datasets play the same role)."""

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
    "load_demo_paths",
    "raw_knn_difficulty",
    "simulate",
    "simulate_adata",
    "simulate_world",
]
