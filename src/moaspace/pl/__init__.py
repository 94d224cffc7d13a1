"""Plots: every function returns a matplotlib Figure and neither writes files nor calls
``plt.show()`` (callers decide). The backend is left alone: notebooks render inline, and
the CLI, which runs headless, picks ``Agg`` itself.

``moaspace.pl`` imports nothing else from moaspace, so any layer's file writers may draw
with it without an import cycle.
"""

from moaspace.pl._plots import (
    benchmark_results,
    confusion,
    crispr_map,
    embedding_2d,
    knockdown_map,
    latent_map,
    latent_maps,
    nes_heatmap,
    openset_curve,
    per_moa_f1,
    reliability_diagram,
    tas_coverage,
)

__all__ = [
    "benchmark_results",
    "confusion",
    "crispr_map",
    "embedding_2d",
    "knockdown_map",
    "latent_map",
    "latent_maps",
    "nes_heatmap",
    "openset_curve",
    "per_moa_f1",
    "reliability_diagram",
    "tas_coverage",
]
