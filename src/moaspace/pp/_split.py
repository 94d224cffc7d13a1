"""Train / validation / test splits of signatures that measure what we claim.

The product's claim is "predict the MoA of a compound the model has never
seen", so the default scheme holds out whole compounds; splitting by
signature (``random``) lets the same compound sit on both sides and inflates
every metric, hence the ``leaky`` flag and warning.

Every scheme writes ``obs[key]`` with the categories

``train``
    signatures the model learns from (and the kNN reference);
``val``
    signatures carved from the training side, used only for early stopping, and
    held out the way the scheme's test part is, so the stopping criterion scores
    the same kind of generalisation: *by compound* (held-out compounds), or for
    the ``cell`` scheme *by cell line* (whole training cell lines held out);
``test``
    the held-out part defined by the scheme;
``unused``
    only for ``compound+cell``: signatures of held-out compounds in training
    cells and of training compounds in held-out cells. Using them for training
    would leak the held-out compounds (or cells); using them as test would
    mix in easier cases, so they are set aside.

The parameters and counts are recorded in ``adata.uns["moaspace"]["split"]``.
Randomness comes only from ``seed``; ids are sorted before shuffling, so the
result does not depend on the row order of ``adata``.

Compounds without a single MoA (``obs["moa"]`` missing; ``docs/data_labels.md``):

- *multi-MoA* compounds (``obs["moa_set"]`` present) are split like the others, as one
  stratum of their own (:data:`MULTI_STRATUM`), drawn from a second random stream
  (``default_rng([seed, 1])``): the single-MoA compounds get exactly the assignment they
  get without them. Scheme ``moa``: a multi-MoA compound with a held-out MoA in its set
  is test (novel for at least one of its MoAs); the others are split by compound.
- *unlabelled* compounds (neither, or no ``moa_set`` column) cannot be scored: they are
  ``train``, except in held-out cell lines (test or validation lines of the cell
  schemes), where they are ``unused`` (training on them would show the model the line).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from moaspace._core.labels import majority_moa, stratified_pick
from moaspace._utils import preview
from moaspace._version import __version__
from moaspace.errors import InputError
from moaspace.pp._moa_groups import label_groups, single_obs, unlabelled_part

logger = logging.getLogger(__name__)

SCHEMES = ("compound", "cell", "compound+cell", "moa", "random")
SPLIT_VALUES = ("train", "val", "test", "unused")
#: cell lines the reference study holds out in its cell-line split, in order of preference
REFERENCE_HOLDOUT_CELLS = ("A549", "NCIH508", "MDAMB231", "LNCAP")
#: the stratum of the multi-MoA compounds in the stratified picks
MULTI_STRATUM = "multi"
#: the key of the multi-MoA compounds' random stream after the seed
MULTI_STREAM = 1


def _require_columns(adata: ad.AnnData, columns: Sequence[str], scheme: str) -> None:
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise InputError(
            f"split scheme {scheme!r} needs obs columns {list(columns)}; missing: {missing} "
            f"(obs has {preview(adata.obs.columns)})"
        )


def _default_holdout_cells(cells: pd.Series, test_size: float, rng: np.random.Generator) -> list:
    present = set(cells.astype(str))
    for cell in REFERENCE_HOLDOUT_CELLS:
        if cell in present:
            return [cell]
    # no reference cell line: take random cell lines until test_size of the signatures
    counts = cells.astype(str).value_counts().sort_index()
    chosen, total = [], 0
    for cell in rng.permutation(counts.index.to_numpy()):
        chosen.append(str(cell))
        total += int(counts[cell])
        if total >= test_size * len(cells) or len(chosen) == len(counts) - 1:
            break
    logger.warning(
        "none of the reference hold-out cell lines %s is present; holding out %s",
        list(REFERENCE_HOLDOUT_CELLS), chosen,
    )
    return chosen


def _validation_cells(train_cells: np.ndarray, n_wanted: float,
                      rng: np.random.Generator) -> list[str] | None:
    """Random training cell lines until they hold ``n_wanted`` signatures, leaving at
    least one line for training; None when only one training line exists."""
    counts = pd.Series(train_cells).value_counts().sort_index()
    if len(counts) < 2:
        return None
    chosen, total = [], 0
    for cell in rng.permutation(counts.index.to_numpy()):
        if total >= n_wanted or len(chosen) == len(counts) - 1:
            break
        chosen.append(str(cell))
        total += int(counts[cell])
    return sorted(chosen)


def _parse_cells(holdout_cells) -> list[str] | None:
    if holdout_cells is None:
        return None
    if isinstance(holdout_cells, str):
        holdout_cells = holdout_cells.split(",")
    cells = [str(c).strip() for c in holdout_cells if str(c).strip()]
    return cells or None


@dataclass
class _Assignment:
    """What the steps of :func:`split` share: the signatures' compounds, each compound's
    MoA, the labels being written, the random generator and the record for ``uns``."""

    obs: pd.DataFrame
    pert: np.ndarray
    moa_of: pd.Series
    labels: np.ndarray
    rng: np.random.Generator
    record: dict


def split(
    adata: ad.AnnData,
    scheme: str = "compound",
    *,
    holdout_cells: Sequence[str] | str | None = None,
    test_size: float = 0.2,
    val_size: float = 0.1,
    moa_fraction: float = 0.2,
    val_by: str = "auto",
    seed: int = 0,
    key: str = "split",
    copy: bool = False,
) -> ad.AnnData:
    """Assign every signature to ``train``/``val``/``test`` (or ``unused``).

    Parameters
    ----------
    adata
        Signatures x genes with obs columns ``pert_id`` and ``moa`` (and
        ``cell_iname`` for the cell schemes; ``moa_set`` optional). Rows with ``moa``
        missing are multi-MoA (``moa_set`` present) or unlabelled; they are assigned as
        the module docstring says, without changing the single-MoA assignment.
    scheme
        ``compound``: held-out compounds, chosen within each MoA so every MoA
        with >= 2 compounds keeps compounds on both sides.
        ``cell``: all signatures of ``holdout_cells`` are test (compounds overlap).
        ``compound+cell``: test = held-out compounds x held-out cells; the
        cross terms are ``unused``.
        ``moa``: ``moa_fraction`` of the MoAs (at least one) are test only;
        the remaining MoAs are split by compound as in ``compound``, so the test
        part has both unseen-MoA and seen-MoA (unseen compound) signatures for
        open-set work. ``uns[...]["split"]["test_only_moas"]`` lists the former.
        ``random``: by signature; leaky (same compound on both sides).
    holdout_cells
        Cell lines for the ``cell`` schemes (list or comma-separated string).
        Default: the first of A549, NCIH508, MDAMB231, LNCAP present.
    test_size, val_size
        Fractions of compounds (of signatures for ``random`` test) for test and
        for validation (for validation by cell line: of the signatures).
    val_by
        How validation is carved from the training side: ``compound`` (whole
        compounds, stratified by MoA), ``cell`` (whole training cell lines,
        taken at random until they hold ``val_size`` of all signatures; at least
        one line stays in training) or ``auto`` (default): ``cell`` for the
        ``cell`` scheme, ``compound`` otherwise. Why: early stopping should
        score what the test part asks. On the default simulation's unseen cell
        line (6 seeds), stopping on held-out training cell lines instead of
        held-out compounds raised test macro-F1 from 0.636 +/- 0.021 to 0.645
        +/- 0.010 (the README benchmark): compound-level validation picks epochs
        that generalise across compounds, not across cell lines.
    moa_fraction
        Fraction of MoAs held out by the ``moa`` scheme.
    seed
        The only source of randomness.
    key
        obs column to write.
    copy
        Return a new AnnData and leave the input untouched (``True``), or edit the
        input in place (``False``). Default: ``False``.

    Returns
    -------
    The AnnData with ``obs[key]`` and ``uns["moaspace"]["split"]`` set (with
    ``n_compounds_by_group``: single, multi and unlabelled compounds): with
    ``copy=True`` a new AnnData (the input is untouched); with ``copy=False``
    ``adata`` itself, edited in place.
    """
    cells = _check_split_args(adata, scheme, holdout_cells=holdout_cells, test_size=test_size,
                              val_size=val_size, moa_fraction=moa_fraction, val_by=val_by)
    if copy:
        adata = adata.copy()
    obs = adata.obs
    group = label_groups(obs)
    single = group == "single"
    if not single.any():
        raise InputError(f"none of the {adata.n_obs} signatures has a MoA label (obs['moa']); "
                         "a split needs compounds with a single MoA")
    sub = single_obs(obs, single)
    # the draws from rng follow one fixed order: test part, then validation
    state = _Assignment(
        obs=sub,
        pert=sub["pert_id"].astype(str).to_numpy(),
        moa_of=majority_moa(sub),
        labels=np.full(len(sub), "train", dtype=object),
        rng=np.random.default_rng(seed),
        record={
            "scheme": scheme, "seed": int(seed), "test_size": float(test_size),
            "val_size": float(val_size), "key": key, "leaky": scheme == "random",
            "version": __version__,
        },
    )
    _hold_out(state, scheme, cells, test_size=test_size, moa_fraction=moa_fraction)
    _carve_validation(state, scheme, val_by=val_by, val_size=val_size, test_size=test_size)
    labels = np.full(adata.n_obs, "train", dtype=object)
    labels[single] = state.labels
    if (group == "multi").any():
        labels[group == "multi"] = _split_multi(obs[group == "multi"], state.record, scheme,
                                                test_size=test_size, val_size=val_size,
                                                seed=seed)
    if (group == "unlabelled").any():
        labels[group == "unlabelled"] = unlabelled_part(obs[group == "unlabelled"],
                                                         state.record)
    pert = obs["pert_id"].astype(str).to_numpy()
    counts, n_cpds = _record_counts(state, scheme, labels, pert)
    state.record["n_compounds_by_group"] = {
        g: int(pd.unique(pert[group == g]).size) for g in ("single", "multi", "unlabelled")}
    obs[key] = pd.Categorical(labels, categories=list(SPLIT_VALUES))
    adata.uns.setdefault("moaspace", {})
    adata.uns["moaspace"]["split"] = state.record
    logger.info(
        "split %r (seed %d): %s signatures; %s compounds",
        scheme, seed, counts, n_cpds,
    )
    return adata


def _hold_out(state: _Assignment, scheme: str, cells, *, test_size: float,
              moa_fraction: float) -> None:
    """The test part of the single-MoA compounds, by scheme."""
    if scheme == "compound":
        _hold_out_compounds(state, state.moa_of, test_size)
    elif scheme == "moa":
        _hold_out_moas(state, moa_fraction, test_size)
    elif scheme in ("cell", "compound+cell"):
        _hold_out_cells(state, scheme, cells, test_size)
    else:
        _hold_out_random_signatures(state, test_size)


def _split_multi(obs: pd.DataFrame, record: dict, scheme: str, *, test_size: float,
                 val_size: float, seed: int) -> np.ndarray:
    """Labels of the multi-MoA compounds' rows: the scheme of the single-MoA part (its
    hold-out cell lines, held-out MoAs and validation cell lines) applied to one stratum,
    :data:`MULTI_STRATUM`, with the random stream ``default_rng([seed, MULTI_STREAM])``."""
    pert = obs["pert_id"].astype(str).to_numpy()
    strata = pd.Series(MULTI_STRATUM, index=pd.Index(sorted(set(pert))))
    m = _Assignment(obs=obs, pert=pert, moa_of=strata,
                    labels=np.full(len(obs), "train", dtype=object),
                    rng=np.random.default_rng([seed, MULTI_STREAM]), record={})
    if scheme == "moa":
        held = set(record["test_only_moas"])
        sets = obs["moa_set"].astype(object).groupby(pert).first()
        novel = [c for c, v in sets.items() if held & set(str(v).split("|"))]
        m.labels[np.isin(pert, novel)] = "test"
        _hold_out_compounds(m, strata.drop(novel), test_size)
    elif scheme in ("cell", "compound+cell"):
        _apply_cells(m, scheme, record["holdout_cells"], test_size)
    elif scheme == "random":
        _hold_out_random_signatures(m, test_size, warn=False)
    else:
        _hold_out_compounds(m, strata, test_size)
    _carve_validation(m, scheme, val_by=record["val_by"], val_size=val_size,
                      test_size=test_size, fixed_cells=record.get("val_cells"))
    return m.labels


def _check_split_args(adata: ad.AnnData, scheme: str, *, holdout_cells, test_size: float,
                      val_size: float, moa_fraction: float, val_by: str) -> list[str] | None:
    """Validate :func:`split`'s arguments against each other and ``adata``; returns the
    parsed hold-out cell lines (None: not given)."""
    if scheme not in SCHEMES:
        raise InputError(f"unknown split scheme {scheme!r}; choose one of {list(SCHEMES)}")
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be in (0, 1), got {test_size}")
    if not 0 <= val_size < 1 or test_size + val_size >= 1:
        raise InputError(
            f"val_size must be in [0, 1) with test_size + val_size < 1, got {val_size}"
        )
    if val_by not in ("auto", "compound", "cell"):
        raise InputError(f"val_by must be 'auto', 'compound' or 'cell', got {val_by!r}")
    if val_by == "cell" and scheme != "cell":
        raise InputError(f"val_by='cell' is for the 'cell' scheme, not {scheme!r} (its test "
                         "part holds out compounds, which validation should too)")
    if scheme == "moa" and not 0 < moa_fraction < 1:
        raise InputError(f"moa_fraction must be in (0, 1), got {moa_fraction}")
    if adata.n_obs == 0:
        raise InputError("cannot split an AnnData with no signatures")
    cells = _parse_cells(holdout_cells)
    if cells is not None and scheme not in ("cell", "compound+cell"):
        raise InputError(f"holdout_cells is only used by the cell schemes, not {scheme!r}")
    needed = ["pert_id", "moa"] + (["cell_iname"] if scheme in ("cell", "compound+cell") else [])
    _require_columns(adata, needed, scheme)
    return cells


def _hold_out_compounds(state: _Assignment, moa_of: pd.Series, test_size: float) -> set:
    """``test_size`` of the compounds of ``moa_of``, picked within each MoA, become test;
    returns them."""
    test_cpds = stratified_pick(moa_of, test_size, state.rng, min_keep=1, min_pick=2)
    state.labels[np.isin(state.pert, list(test_cpds))] = "test"
    return test_cpds


def _hold_out_moas(state: _Assignment, moa_fraction: float, test_size: float) -> None:
    """Scheme ``moa``: whole MoAs are test only; the other MoAs are split by compound."""
    moas = np.array(sorted(state.moa_of.unique()))
    if len(moas) < 2:
        raise InputError("the 'moa' scheme needs at least two MoAs")
    k = min(max(1, round(moa_fraction * len(moas))), len(moas) - 1)
    test_moas = sorted(state.rng.permutation(moas)[:k].tolist())
    moa_arr = state.obs["moa"].astype(str).to_numpy()
    state.labels[np.isin(moa_arr, test_moas)] = "test"
    known = state.moa_of[~state.moa_of.isin(test_moas)]
    _hold_out_compounds(state, known, test_size)
    state.record["moa_fraction"] = float(moa_fraction)
    state.record["test_only_moas"] = test_moas


def _hold_out_cells(state: _Assignment, scheme: str, cells: list[str] | None,
                    test_size: float) -> None:
    """Schemes ``cell`` (the held-out cell lines are test) and ``compound+cell`` (held-out
    compounds in held-out cell lines are test; the cross terms are unused)."""
    obs = state.obs
    cell_arr = obs["cell_iname"].astype(str).to_numpy()
    present = sorted(set(cell_arr))
    if cells is None:
        cells = _default_holdout_cells(obs["cell_iname"], test_size, state.rng)
    unknown = [c for c in cells if c not in set(present)]
    if unknown:
        raise InputError(
            f"holdout cell lines not in obs['cell_iname']: {unknown}; "
            f"present: {preview(present, 20)}"
        )
    if len(set(cells)) == len(present):
        raise InputError("holding out every cell line leaves nothing to train on")
    state.record["holdout_cells"] = list(cells)
    _apply_cells(state, scheme, cells, test_size)


def _apply_cells(state: _Assignment, scheme: str, cells: list[str], test_size: float) -> None:
    """Label the rows of the hold-out ``cells`` (and, for ``compound+cell``, of compounds
    picked from ``state.moa_of``) test, and the cross terms unused."""
    labels = state.labels
    in_cells = np.isin(state.obs["cell_iname"].astype(str).to_numpy(), cells)
    if scheme == "cell":
        labels[in_cells] = "test"
    else:
        test_cpds = stratified_pick(state.moa_of, test_size, state.rng, min_keep=1, min_pick=2)
        held = np.isin(state.pert, list(test_cpds))
        labels[held & in_cells] = "test"
        labels[held ^ in_cells] = "unused"


def _hold_out_random_signatures(state: _Assignment, test_size: float, warn: bool = True
                                ) -> None:
    """Scheme ``random``: ``test_size`` of the signatures, whatever their compound (leaky)."""
    n_obs = len(state.labels)
    n_test = round(test_size * n_obs)
    state.labels[state.rng.permutation(n_obs)[:n_test]] = "test"
    if not warn:
        return
    logger.warning(
        "split scheme 'random' puts signatures of the same compound in train and test: "
        "its scores overestimate performance on new compounds (recorded as leaky)"
    )


def _carve_validation(state: _Assignment, scheme: str, *, val_by: str, val_size: float,
                      test_size: float, fixed_cells: list[str] | None = None) -> None:
    """Label part of the training side ``val``: whole training cell lines (scheme ``cell``
    with validation by cell line; ``fixed_cells``, else drawn) or compounds stratified by
    MoA."""
    labels, pert = state.labels, state.pert
    train_mask = labels == "train"
    if scheme == "cell" and val_by in ("auto", "cell") and val_size > 0:
        cell_arr = state.obs["cell_iname"].astype(str).to_numpy()
        val_cells = (list(fixed_cells) if fixed_cells is not None else
                     _validation_cells(cell_arr[train_mask], val_size * len(labels), state.rng))
        if val_cells is not None:
            # validation: whole training cell lines, as the test part holds out a cell line
            labels[train_mask & np.isin(cell_arr, val_cells)] = "val"
            state.record["val_by"], state.record["val_cells"] = "cell", val_cells
            return
        logger.warning("only one training cell line: validation holds out compounds instead")
    # validation: compounds carved from the training side, stratified by MoA
    train_cpds = state.moa_of[state.moa_of.index.isin(np.unique(pert[train_mask]))]
    # val_size is a fraction of all compounds; schemes that already removed
    # test_size of the compounds ask for a larger share of what is left
    by_compound = scheme in ("compound", "compound+cell", "moa")
    val_fraction = val_size / (1 - test_size) if by_compound else val_size
    val_cpds = stratified_pick(train_cpds, val_fraction, state.rng, min_keep=1, min_pick=3)
    labels[train_mask & np.isin(pert, list(val_cpds))] = "val"
    state.record["val_by"] = "compound"


def _record_counts(state: _Assignment, scheme: str, labels: np.ndarray, pert: np.ndarray
                   ) -> tuple[dict, dict]:
    """Check that train and test are not empty and record the signatures and compounds
    per part (all rows: ``labels`` and ``pert``); returns both counts."""
    record = state.record
    counts = {v: int((labels == v).sum()) for v in SPLIT_VALUES}
    if counts["train"] == 0 or counts["test"] == 0:
        raise InputError(
            f"split {scheme!r} left {counts['train']} training and {counts['test']} test "
            "signatures; the data have too few compounds (or cells) for this scheme"
        )
    n_cpds = {
        v: int(pd.unique(pert[labels == v]).size) for v in SPLIT_VALUES if counts[v]
    }
    record["n_signatures"] = counts
    record["n_compounds"] = n_cpds
    single = state.moa_of.groupby(state.moa_of).size()
    record["moas_train_only"] = int((single < 2).sum())
    if record["moas_train_only"]:
        logger.info(
            "%d MoAs have a single compound and stay on the training side only",
            record["moas_train_only"],
        )
    return counts, n_cpds


def cv_folds(
    adata: ad.AnnData,
    n_folds: int = 5,
    *,
    seed: int = 0,
    val_size: float = 0.1,
) -> list[np.ndarray]:
    """Compound-grouped K-fold cross-validation, stratified by MoA.

    Returns one label array (``train`` / ``val`` / ``test`` per signature) per fold:
    the compounds are dealt to ``n_folds`` folds within each MoA (so every MoA is
    spread over the folds), each fold is the test part once, and validation
    compounds (``val_size`` of all compounds, stratified by MoA, at least one per
    MoA with three or more training compounds) are carved from the other folds. Every
    compound is tested exactly once; pooled over the folds, every signature gets a
    prediction from a model that never saw its compound. Small data sets (hundreds of
    compounds) need this: one 20% test split holds a handful of compounds per MoA.
    Randomness comes only from ``seed``.

    Multi-MoA compounds (``moa`` missing, ``moa_set`` present) are dealt round-robin to
    the folds after the single-MoA ones, and join validation (``val_size`` of them, from
    the other folds), from the stream ``default_rng([seed, 1])``: the single-MoA
    compounds' folds and validation are those without them. Unlabelled compounds are
    ``train`` in every fold.

    Parameters
    ----------
    adata : anndata.AnnData
        Signatures with ``obs["moa"]`` and ``obs["pert_id"]`` (``obs["moa_set"]``
        optional).
    n_folds : int, default 5
        Number of folds (at least 2).
    seed : int, default 0
        Seeds the dealing of compounds to folds and the validation pick.
    val_size : float, default 0.1
        Share of all compounds used for validation in each fold.

    Returns
    -------
    list of numpy.ndarray
        One array of ``"train"`` / ``"val"`` / ``"test"`` per fold, aligned with
        ``adata.obs``.
    """
    if n_folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if not 0 <= val_size < 1 - 1 / n_folds:
        raise InputError(f"val_size must be in [0, {1 - 1 / n_folds:.2f}), got {val_size}")
    _require_columns(adata, ["pert_id", "moa"], f"cv{n_folds}")
    group = label_groups(adata.obs)
    single = group == "single"
    sub = single_obs(adata.obs, single) if single.any() else adata.obs[single]
    moa_of = majority_moa(sub)
    if len(moa_of) < n_folds:
        raise InputError(f"{len(moa_of)} compounds with a single MoA cannot fill {n_folds} "
                         "folds")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    # deal each MoA's shuffled compounds round-robin, continuing where the last MoA
    # stopped, so folds get near-equal numbers of compounds
    for _, members in sorted(moa_of.groupby(moa_of, observed=True).groups.items()):
        ids = rng.permutation(np.array(sorted(map(str, members))))
        for i, cpd in enumerate(ids):
            fold_of[cpd] = (offset + i) % n_folds
        offset += len(ids)
    # multi-MoA compounds: one more stratum, dealt on from there with their own stream
    multi_rng = np.random.default_rng([seed, MULTI_STREAM])
    pert = adata.obs["pert_id"].astype(str).to_numpy()
    multi_of = pd.Series(MULTI_STRATUM, index=pd.Index(sorted(set(pert[group == "multi"]))))
    for i, cpd in enumerate(multi_rng.permutation(multi_of.index.to_numpy())):
        fold_of[str(cpd)] = (offset + i) % n_folds
    fold = np.array([fold_of.get(p, -1) for p in pert])  # -1: unlabelled, always train
    val_fraction = val_size / (1 - 1 / n_folds)
    out = []
    for k in range(n_folds):
        labels = np.where(fold == k, "test", "train").astype(object)
        train_cpds = moa_of[[fold_of[c] != k for c in moa_of.index]]
        val_cpds = stratified_pick(train_cpds, val_fraction, rng, min_keep=1, min_pick=3)
        train_multi = multi_of[[fold_of[c] != k for c in multi_of.index]]
        val_cpds |= stratified_pick(train_multi, val_fraction, multi_rng, min_keep=1,
                                    min_pick=3)
        labels[(labels == "train") & np.isin(pert, list(val_cpds))] = "val"
        out.append(labels)
    return out


def check_split(adata: ad.AnnData, key: str = "split") -> dict:
    """Return leakage counts between train(+val) and test: compounds and cells shared.

    Useful as a sanity check in notebooks and tests: for the ``compound``
    scheme ``shared_compounds`` must be 0, for ``cell`` ``shared_cells`` must be 0
    (and, validation being by cell line there, ``train_val_shared_cells`` too).

    Parameters
    ----------
    adata : anndata.AnnData
        Signatures with a split column.
    key : str, default "split"
        The ``obs`` column holding ``train`` / ``val`` / ``test``.

    Returns
    -------
    dict
        ``shared_compounds`` and ``shared_cells`` (train+val vs test), and
        ``train_val_shared_compounds`` / ``train_val_shared_cells``, for the columns
        present.
    """
    if key not in adata.obs.columns:
        raise InputError(f"obs[{key!r}] is missing: run moaspace.pp._split.split first")
    s = adata.obs[key].astype(str).to_numpy()
    out = {}
    for column, name in (("pert_id", "shared_compounds"), ("cell_iname", "shared_cells")):
        if column in adata.obs.columns:
            values = adata.obs[column].astype(str).to_numpy()
            fit = set(values[np.isin(s, ["train", "val"])])
            test = set(values[s == "test"])
            out[name] = len(fit & test)
    # between train and val: 0 compounds when validation holds out compounds, 0 cell
    # lines when it holds out cell lines (``uns["moaspace"]["split"]["val_by"]``)
    for column, name in (("pert_id", "train_val_shared_compounds"),
                         ("cell_iname", "train_val_shared_cells")):
        if column in adata.obs.columns:
            values = adata.obs[column].astype(str).to_numpy()
            out[name] = len(set(values[s == "train"]) & set(values[s == "val"]))
    return out
