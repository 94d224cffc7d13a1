"""Data to try moaspace on: the simulator (a LINCS-format world with planted MoAs,
compound sub-clusters, pathway programs and knockdown targets) and the embedded demo
release (pertpy's and decoupler's small toy datasets play the same role)."""

from moaspace.datasets._simulate import (
    SimulationConfig,
    knn_calibration,
    load_demo_paths,
    simulate,
    simulate_adata,
)

__all__ = ["SimulationConfig", "knn_calibration", "load_demo_paths", "simulate", "simulate_adata"]
