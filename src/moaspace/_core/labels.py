"""Labels shared by the layers: the call labels of prediction and calibration, one MoA per
compound, and the seeded stratified pick the splits and the model's fallback validation use."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: ``moa_pred`` of a signature farther from every known MoA than the calibrated threshold
UNKNOWN = "unknown"
#: ``moa_pred`` of a signature whose TAS is below the calibration's ``min_tas``, and of a
#: compound none of whose signatures may vote
NO_CALL = "no call"


def majority_moa(obs: pd.DataFrame) -> pd.Series:
    """One MoA per compound of ``obs`` (columns ``pert_id`` and ``moa``): the most frequent
    one where a compound's signatures carry several (``prepare`` gives such compounds
    ``moa`` NaN; data built elsewhere may still hold them). Rows whose ``moa`` is missing
    (multi-MoA and unlabelled compounds) are left out, so are compounds with none."""
    frame = obs.loc[obs["moa"].notna().to_numpy(), ["pert_id", "moa"]].astype(str)
    counts = frame.value_counts().reset_index(name="n")
    counts = counts.sort_values(["pert_id", "n", "moa"], ascending=[True, False, True])
    first = counts.drop_duplicates("pert_id").set_index("pert_id")["moa"]
    n_multi = int((counts.groupby("pert_id").size() > 1).sum())
    if n_multi:
        logger.warning("%d compounds carry several MoAs; stratifying by the most frequent", n_multi)
    return first.sort_index()


def stratified_pick(
    groups: pd.Series, fraction: float, rng: np.random.Generator, min_keep: int, min_pick: int
) -> set[str]:
    """Pick about ``fraction`` of the ids in each stratum.

    ``groups`` maps id -> stratum. A stratum with ``n`` ids gives
    ``round(fraction * n)`` ids, at least ``1`` when ``n >= min_pick`` and
    never so many that fewer than ``min_keep`` remain. Ids and strata are
    sorted first so the pick depends only on the seed.
    """
    picked: set[str] = set()
    if fraction <= 0:
        return picked
    for _, members in sorted(groups.groupby(groups, observed=True).groups.items()):
        ids = np.array(sorted(map(str, members)))
        n = len(ids)
        k = round(fraction * n)
        if n >= min_pick:
            k = max(k, 1)
        k = min(k, n - min_keep)
        if k <= 0:
            continue
        picked.update(rng.permutation(ids)[:k].tolist())
    return picked
