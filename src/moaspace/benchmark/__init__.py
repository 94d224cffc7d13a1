"""Side-by-side benchmarks: moaspace against baselines on the same splits and seeds.

A new baseline is a ``make_baseline`` entry (``_baselines.py``) and a name in
``CLASSICAL``; ``run_benchmark`` then scores it with the same metrics as the model.
"""

from moaspace.benchmark._baselines import CLASSICAL, make_baseline
from moaspace.benchmark._run import (
    METHODS,
    NEURAL,
    paired_differences,
    results_markdown,
    run_benchmark,
    summarize,
    write_benchmark,
)

__all__ = [
    "CLASSICAL",
    "METHODS",
    "NEURAL",
    "make_baseline",
    "paired_differences",
    "results_markdown",
    "run_benchmark",
    "summarize",
    "write_benchmark",
]
