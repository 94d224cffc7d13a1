"""Side-by-side benchmarks: moaspace against baselines on the same splits and seeds.

A new baseline is a ``make_baseline`` entry (``_baselines.py``) and a name in
``CLASSICAL`` (and in ``MULTILABEL`` when it is fitted on MoA sets, ``obs["moa_set"]``);
``run_benchmark`` then scores it with the same metrics as the model, and every method on
the multi-MoA test compounds too (``MULTI_METRICS``, ``_multi.py``).
"""

from moaspace.benchmark._baselines import CLASSICAL, MULTILABEL, make_baseline
from moaspace.benchmark._multi import MULTI_METRICS
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
    "MULTILABEL",
    "MULTI_METRICS",
    "NEURAL",
    "make_baseline",
    "paired_differences",
    "results_markdown",
    "run_benchmark",
    "summarize",
    "write_benchmark",
]
