"""Keyed random streams and the small numeric helpers every part of the simulator uses.

Every component draws from its own ``numpy`` generator keyed by
``(seed, component[, index])``; the component tags below are part of the
random-stream layout (changing one changes the simulated data).
"""

from __future__ import annotations

import numpy as np

from moaspace.errors import InputError

# component tags of the random streams
_S_PATHWAY, _S_MOA, _S_CPD, _S_CELL, _S_DESIGN, _S_KD, _S_TECH, _S_INFER = range(1, 9)
_S_BLOCK_CP, _S_BLOCK_KD, _S_XI, _S_KDXI, _S_IDS, _S_CHEM, _S_SERIES = range(11, 18)
_S_MODULES, _S_MODULE_NOISE = 18, 19
_S_MULTI = 20


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
