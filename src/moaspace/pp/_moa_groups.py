"""The MoA labels of compound signatures in :func:`moaspace.pp.prepare`, and the four
groups of compounds they make.

Every compound that reaches the MoA step (after the type, quality, time and TAS filters)
belongs to one group:

``single-MoA``
    one MoA, of a MoA with at least ``min_compounds_per_moa`` single-MoA compounds (the
    classes); ``obs["moa"]`` is it and ``obs["moa_set"]`` equals it;
``multi-MoA``
    several MoAs (a MoA cell ``a|b`` or several rows); ``obs["moa"]`` missing,
    ``obs["moa_set"]`` the sorted ``|``-joined set;
``rare-MoA``
    one MoA with fewer than ``min_compounds_per_moa`` single-MoA compounds (counted after
    the signatures-per-compound filter, over single-MoA compounds only);
``unlabelled``
    no MoA in the table; ``obs["moa"]`` and ``obs["moa_set"]`` missing.

The filters run in this order: a MoA (unless ``keep_unlabelled``), a single MoA (only with
``multi_moa="drop"``), signatures per compound (every group), compounds per MoA (unless
``keep_rare_moas``). :func:`group_table` says what each group contributed.

:func:`label_groups`, :func:`single_obs` and :func:`unlabelled_part` are the groups as
:func:`moaspace.pp.split` and :func:`moaspace.pp.cv_folds` see them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from moaspace._core.labels import majority_moa
from moaspace._core.sets import has_label
from moaspace._utils import preview
from moaspace.errors import InputError
from moaspace.io.labels import MOA_SEP, moa_set_string

logger = logging.getLogger(__name__)

GROUPS = ("single-MoA", "multi-MoA", "rare-MoA", "unlabelled")
MULTI_MOA = ("keep", "drop")


def compoundinfo_moa_sets(compoundinfo: pd.DataFrame) -> pd.Series:
    """pert_id -> every MoA of the compound in compoundinfo's ``moa`` column (one row per
    compound and target; ``a|b`` cells split), as :func:`moaspace.io.labels.moa_set_string`."""
    frame = compoundinfo.dropna(subset=["moa"])
    frame = frame[frame["moa"].astype(str).str.strip() != ""]
    sets = frame.groupby("pert_id")["moa"].agg(lambda s: moa_set_string(s.astype(str)))
    return sets.dropna()


def _moa_source(sig, cinfo, labels, sources: dict) -> tuple[pd.Series, str]:
    """``(pert_id -> moa_set, name of the source)`` from the MoA table, else compoundinfo."""
    if labels is not None:
        unknown_ids = labels.index.difference(sig["pert_id"].astype(str).unique())
        if len(unknown_ids) == len(labels):
            raise InputError(
                f"{sources['moa_labels']}: none of its {len(labels)} compound ids are pert_ids "
                f"of {sources['siginfo']} (e.g. {preview(labels.index, 5)})"
            )
        if len(unknown_ids):
            logger.info("%d compounds of the MoA table have no signatures", len(unknown_ids))
        return labels["moa_set"], str(sources["moa_labels"])
    if cinfo is not None:
        return compoundinfo_moa_sets(cinfo), f"{sources['compoundinfo']} (moa column)"
    raise InputError("compounds need MoA labels: pass moa_labels or compoundinfo")


def label_compounds(frame: pd.DataFrame, sig: pd.DataFrame, cinfo, labels, config, log,
                    sources: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join ``moa`` and ``moa_set`` to compound signatures and apply the MoA filters.

    ``config`` is a :class:`moaspace.pp.PrepareConfig`, ``log`` its ``FilterLog``,
    ``sources`` the names of the ``moa_labels``, ``compoundinfo`` and ``siginfo`` inputs.
    Returns the kept signatures and :func:`group_table`.
    """
    moa_sets, source = _moa_source(sig, cinfo, labels, sources)
    moa_set = frame["pert_id"].astype(str).map(moa_sets).astype(object)
    frame["moa_set"] = moa_set.where(moa_set.notna(), np.nan)
    multi = frame["moa_set"].str.contains(MOA_SEP, regex=False, na=False)
    frame["moa"] = frame["moa_set"].where(~multi, np.nan)
    entering = frame

    before = frame
    name = Path(source).name
    if config.keep_unlabelled:
        log.record(f"compound has a MoA ({name}) or keep_unlabelled", before, frame, moa=True)
    else:
        frame = frame[frame["moa_set"].notna()]
        log.record(f"compound has a MoA ({name})", before, frame, moa=True)
    if config.multi_moa == "drop":
        before = frame
        frame = frame[frame["moa"].notna() | frame["moa_set"].isna()]
        log.record("compound has one MoA (multi_moa='drop')", before, frame, moa=True)

    before = frame
    counts = frame["pert_id"].value_counts()
    keep = counts.index[counts >= config.min_sigs_per_compound]
    frame = frame[frame["pert_id"].isin(keep)]
    log.record(f">= {config.min_sigs_per_compound} signatures per compound", before, frame,
               moa=True)

    # compounds per MoA: single-MoA compounds only (moa is missing for the others)
    before = frame
    per_moa = frame.groupby("moa")["pert_id"].nunique()
    common = per_moa.index[per_moa >= config.min_compounds_per_moa]
    rare = frame["moa"].notna() & ~frame["moa"].isin(common)
    if config.keep_rare_moas:
        log.record(f"MoAs with < {config.min_compounds_per_moa} compounds kept "
                   "(keep_rare_moas)", before, frame, moa=True)
    else:
        frame = frame[~rare]
        log.record(f">= {config.min_compounds_per_moa} compounds per MoA", before, frame,
                   moa=True)
    if frame["moa"].nunique() < 2:
        left = frame["moa"].dropna().unique().tolist()
        raise InputError(
            f"{'only one MoA (' + repr(left[0]) + ')' if left else 'no single MoA'} left after "
            "filtering: a classifier needs at least two; lower --min-compounds-per-moa or "
            "check the MoA table"
        )
    return frame, group_table(entering, frame, set(common), config)


def _groups_of(obs: pd.DataFrame, common: set) -> pd.Series:
    """The group (:data:`GROUPS`) of every compound of ``obs`` (first row per compound)."""
    first = obs.drop_duplicates("pert_id").set_index("pert_id")
    moa, moa_set = first["moa"], first["moa_set"]
    group = np.select(
        [moa_set.isna().to_numpy(), moa.isna().to_numpy(), moa.isin(common).to_numpy()],
        ["unlabelled", "multi-MoA", "single-MoA"], default="rare-MoA")
    return pd.Series(group, index=first.index.astype(str))


def group_table(entering: pd.DataFrame, kept: pd.DataFrame, common: set, config
                ) -> pd.DataFrame:
    """Signatures and compounds of each group that reached the MoA step, were kept and were
    dropped, and which step dropped them (``dropped_by``: ``step: compounds``, ``; ``-joined).
    Each group is logged."""
    group = _groups_of(entering, common)
    pert = entering["pert_id"].astype(str)
    n_sigs = pert.value_counts()
    kept_ids = set(kept["pert_id"].astype(str))
    flag = {"unlabelled": None if config.keep_unlabelled else "keep_unlabelled=False",
            "multi-MoA": "multi_moa='drop'" if config.multi_moa == "drop" else None,
            "rare-MoA": None if config.keep_rare_moas else "keep_rare_moas=False"}
    rows = []
    for name in GROUPS:
        ids = group.index[group.to_numpy() == name]
        dropped = [c for c in ids if c not in kept_ids]
        # the first step that removed the compound, in the order the steps run
        reasons = pd.Series([
            flag[name] if name in ("unlabelled", "multi-MoA") and flag[name]
            else "min_sigs_per_compound" if n_sigs[c] < config.min_sigs_per_compound
            else flag.get(name) or "?" for c in dropped], dtype=object)
        row = {
            "group": name,
            "signatures_in": int(n_sigs.reindex(ids).sum()),
            "compounds_in": len(ids),
            "signatures_kept": int(n_sigs.reindex([c for c in ids if c in kept_ids]).sum()),
            "compounds_kept": len(ids) - len(dropped),
            "signatures_dropped": int(n_sigs.reindex(dropped).sum()),
            "compounds_dropped": len(dropped),
            "dropped_by": "; ".join(f"{r}: {n}" for r, n in
                                    reasons.value_counts().sort_index().items()),
        }
        rows.append(row)
        logger.info("%-10s %5d compounds (%7d signatures) kept, %5d (%7d) dropped%s", name,
                    row["compounds_kept"], row["signatures_kept"], row["compounds_dropped"],
                    row["signatures_dropped"], f" ({row['dropped_by']})" if dropped else "")
    return pd.DataFrame(rows).astype({"group": str, "dropped_by": str})


# --------------------------------------------------------------------------- splits


def label_groups(obs: pd.DataFrame) -> np.ndarray:
    """Per row, the group of its compound: ``"single"`` (a row of the compound has
    ``moa``), ``"multi"`` (else a row has ``moa_set``) or ``"unlabelled"``."""
    pert = obs["pert_id"].astype(str)
    has_moa = pd.Series(has_label(obs["moa"]), index=obs.index).groupby(pert).transform("any")
    has_set = (pd.Series(has_label(obs["moa_set"]), index=obs.index).groupby(pert)
               .transform("any") if "moa_set" in obs.columns else False)
    return np.select([has_moa.to_numpy(), np.asarray(has_set & ~has_moa, dtype=bool)],
                     ["single", "multi"], default="unlabelled")


def single_obs(obs: pd.DataFrame, single: np.ndarray) -> pd.DataFrame:
    """The rows of single-MoA compounds; a row without ``moa`` takes its compound's."""
    sub = obs[single]
    missing = ~has_label(sub["moa"])
    if missing.any():
        sub = sub.copy()
        moa_of = majority_moa(sub[~missing])
        sub["moa"] = sub["moa"].astype(object)
        sub.loc[missing, "moa"] = sub.loc[missing, "pert_id"].astype(str).map(moa_of).to_numpy()
    return sub


def unlabelled_part(obs: pd.DataFrame, record: dict) -> np.ndarray:
    """Labels of the unlabelled compounds' rows: ``train``, or ``unused`` in the held-out
    (test or validation) cell lines."""
    labels = np.full(len(obs), "train", dtype=object)
    held = list(record.get("holdout_cells", [])) + list(record.get("val_cells", []))
    if held:
        labels[np.isin(obs["cell_iname"].astype(str).to_numpy(), held)] = "unused"
    logger.info("%d signatures of %d unlabelled compounds (no MoA, no moa_set): %d train, "
                "%d unused (in held-out cell lines)", len(obs), obs["pert_id"].nunique(),
                int((labels == "train").sum()), int((labels == "unused").sum()))
    return labels
