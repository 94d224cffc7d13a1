"""Cross-fitted calibration rows (``ModelConfig.calibration_folds``).

A trained model's calibration (the map of its prototype-layer confidence to P(right),
the per-compound 'unknown' thresholds) is fitted on the validation compounds: about 48
drugs on the real consensus set, 30 compounds on the default simulator. With
``calibration_folds = K``, ``train()`` also trains K fold models, each with one fold of
the training compounds left out (stratified by MoA; MoAs with one training compound stay
whole), with the final model's settings (same seed and epochs, early stopping on the same
validation compounds, the input candidate the final model kept). Each fold model scores
the compounds it never saw, and these rows join the validation rows of the
prototype-layer predictor's confidence map (``fit_calibration(crossfit=...)``); the
'unknown' thresholds stay on the validation rows (with these rows they gained nothing at a
matched false-unknown rate and drifted from their target; ``docs/confidence.md``).

A fold model is another training run, and the scale of its scores differs from the final
model's. Every model scores the validation compounds, so they put each fold model's rows
on the final model's scale: the confidence (the top softmax) is mapped by quantiles from
the fold model's validation confidences to the final model's (the open-set score's shift
between the two, the validation rows' mean difference, is recorded: -0.03 to +0.09 on
the real set). Under one model the left-out compounds score like its test compounds
(mean open-set score difference -0.001 +/- 0.010 over 30 fold models on the real set;
``benchmarks/results/bench_crossfit_calibration_real.md``).

``calibration_folds="auto"`` (the default) trains ``AUTO_FOLDS`` fold models where the
validation split is small, fewer than ``AUTO_MAX_VAL_SIGNATURES`` signatures, and training
has at least ``AUTO_MIN_TRAIN_COMPOUNDS`` labelled compounds: the regime where the rows were
measured to help (the real consensus set, 48-62 validation drugs and 277-353 training
drugs: ECE of the known calls 0.096 -> 0.076 per seed on held-out MoAs). With more
validation rows the map is already near its sampling floor (the default simulator's ~790:
0.035 -> 0.033, not worth five more trainings); with fewer training compounds it was not
measured (each fold model would lose a fifth of an already small set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from moaspace._core.neighbors import cosine_softmax
from moaspace.model.calibration._maps import PROTOTYPE_TEMPERATURE
from moaspace.model.predictor import fit_predictor
from moaspace.model.train import (
    TrainInputs,
    TrainResult,
    loss_compounds,
    quiet_lightning,
    run_training,
)

logger = logging.getLogger("moaspace.model.model")


@dataclass(frozen=True)
class CrossfitRows:
    """Calibration rows scored by fold models, on the final model's scale.

    ``cos``: prototype-layer cosines ``(n, n_moas)``, shifted so that one minus the top
    cosine is on the final model's open-set scale; ``top``: the top softmax confidence
    mapped to the final model's; ``codes``: the true MoA; ``record``: what
    ``validation["crossfit"]`` stores."""

    cos: np.ndarray
    top: np.ndarray
    codes: np.ndarray
    record: dict

    @property
    def right(self) -> np.ndarray:
        """Whether the top call of each row is its MoA."""
        return self.cos.argmax(axis=1) == self.codes


def fold_of_compounds(moa_of: pd.Series, k: int, seed: int) -> dict[str, int]:
    """Compound -> fold (0 to ``k - 1``), stratified: each MoA's compounds are dealt in a
    random order from a random fold; MoAs with one compound are in no fold (their class
    would be missing from a fold model)."""
    rng = np.random.default_rng(seed)
    fold: dict[str, int] = {}
    for _, members in sorted(moa_of.groupby(moa_of).groups.items()):
        if len(members) < 2:
            continue
        start = int(rng.integers(k))
        for i, compound in enumerate(rng.permutation(sorted(map(str, members)))):
            fold[compound] = (start + i) % k
    return fold


def _top(cos: np.ndarray) -> np.ndarray:
    return cosine_softmax(cos, PROTOTYPE_TEMPERATURE).max(axis=1)


def on_final_scale(cos: np.ndarray, fold_val_cos: np.ndarray,
                   val_cos: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A fold model's cosines ``cos`` on the final model's scale, through the validation
    rows both scored (``fold_val_cos`` by the fold model, ``val_cos`` by the final one):
    the cosines moved by a constant so that the mean open-set score (one minus the top
    cosine) of the validation rows is the final model's; the top softmax mapped by
    quantiles from the fold model's validation confidences to the final model's.
    Returns the moved cosines, the mapped confidences and the shift of the score."""
    shift = float((1.0 - val_cos.max(axis=1)).mean() - (1.0 - fold_val_cos.max(axis=1)).mean())
    fold_val_top = np.sort(_top(fold_val_cos))
    rank = np.searchsorted(fold_val_top, _top(cos), side="right") / len(fold_val_top)
    return cos - shift, np.quantile(_top(val_cos), np.clip(rank, 0.0, 1.0)), shift


#: ``calibration_folds="auto"``: this many fold models ...
AUTO_FOLDS = 5
#: ... when the validation split has fewer signatures than this ...
AUTO_MAX_VAL_SIGNATURES = 200
#: ... and training at least this many labelled compounds (see the module)
AUTO_MIN_TRAIN_COMPOUNDS = 200


def resolve_folds(setting, n_val_signatures: int, n_train_compounds: int) -> int:
    """The number of fold models of a ``calibration_folds`` setting: ``"auto"`` (see the
    module) or the number itself."""
    if setting != "auto":
        return int(setting)
    small_val = n_val_signatures < AUTO_MAX_VAL_SIGNATURES
    return AUTO_FOLDS if small_val and n_train_compounds >= AUTO_MIN_TRAIN_COMPOUNDS else 0


def labelled_train_compounds(model, result: TrainResult) -> int:
    """Training compounds with a MoA class (those the fold models are cut from)."""
    data = result.data
    compound = model.adata.obs[model.keys["compound"]].astype(str).to_numpy()[data.train_idx]
    return int(pd.unique(compound[data.moa.numpy()[data.train_idx] >= 0]).size)


def crossfit_rows(model, result: TrainResult, opts, val_cos: np.ndarray,
                  k: int) -> CrossfitRows | None:
    """Train ``k`` fold models and score their left-out compounds (see the module);
    ``val_cos``: the final model's prototype-layer cosines of ``result.data.val_idx`` (as
    the calibration scores them). None when no MoA has two training compounds."""
    data = result.data
    compound = model.adata.obs[model.keys["compound"]].astype(str).to_numpy()
    codes = data.moa.numpy()
    moa_of = pd.Series(codes[data.train_idx], index=compound[data.train_idx])
    fold = fold_of_compounds(moa_of.groupby(level=0).first(), k, opts.seed)
    if not fold:
        logger.warning("calibration_folds=%d: no MoA has two training compounds; the "
                       "calibration uses the validation rows alone", k)
        return None
    parts, shifts = [], []
    for f in range(k):
        held = np.isin(compound, [c for c, v in fold.items() if v == f])
        logger.info("calibration fold %d of %d: training without %d compounds", f + 1, k,
                    sum(v == f for v in fold.values()))
        net, prototypes = _fold_model(model, result, opts, held)
        rows = data.train_idx[held[data.train_idx]]
        cos, top, shift = on_final_scale(
            prototypes.cosines(prototypes.features(net, data.x, rows)),
            prototypes.cosines(prototypes.features(net, data.x, data.val_idx)), val_cos)
        parts.append((cos, top, rows))
        shifts.append(shift)
    rows = np.concatenate([p[2] for p in parts])
    return CrossfitRows(
        cos=np.concatenate([p[0] for p in parts]).astype(np.float32),
        top=np.concatenate([p[1] for p in parts]), codes=codes[rows],
        record={"folds": k, "n_rows": len(rows), "n_compounds": len(fold),
                "score_shifts": shifts})


def _fold_model(model, result: TrainResult, opts, held: np.ndarray):
    """A network trained as the final one without the rows ``held`` (their split set to
    ``unused``), and its prototype-layer prototypes over its training rows."""
    split = np.where(held & (model._split == "train"), "unused", model._split)
    obs = model.adata.obs
    inputs = TrainInputs(
        adata=model.adata, split=split, keys=dict(model.keys), genes=list(model.genes),
        moas=list(model.moas),
        compounds=loss_compounds(obs, split == "train", model.keys, model.moas, result.config),
        config=result.config, fingerprint=model.fingerprint)
    fold_opts = replace(opts, model_dir=None, resume=False, progress_bar=False, callbacks=[],
                        meta={})
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        with quiet_lightning():
            trained = run_training(inputs, fold_opts)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    prototypes = trained.predictor
    if prototypes.kind != "hidden_prototype":
        prototypes = fit_predictor("hidden_prototype", trained.net, trained.data.x,
                                   trained.data.moa.numpy(), trained.data.train_idx,
                                   len(model.moas), beta=result.config.linear_view_weight,
                                   multi=trained.data.prototype_multi())
    return trained.net, prototypes
