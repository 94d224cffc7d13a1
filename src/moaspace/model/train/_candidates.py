"""The training runner (scvi-tools' *TrainRunner*): typed inputs in, a :class:`TrainResult`
out.

:func:`run_training` prepares the data, trains the *input candidates* and keeps the best:
``input_whitening="auto"`` trains one network on the raw and one on the whitened input
(:data:`INPUT_CANDIDATES`), each from the same seed and each a Lightning run of
:func:`~moaspace.model.train._runner.fit_candidate`, and keeps the one whose predictor
(:mod:`moaspace.model.predictor`, the one ``predict`` calls with) scores the best
validation macro-F1. Nothing here reads or writes the user's ``MoaModel``: the model
hands over :class:`TrainInputs` and installs the :class:`TrainResult`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import anndata as ad
import numpy as np

from moaspace.model._config import ModelConfig
from moaspace.model.module import MoaNet
from moaspace.model.predictor import MoaPredictor
from moaspace.model.train._data import TrainData, training_data
from moaspace.model.train._plan import MoaTrainingPlan
from moaspace.model.train._runner import (
    RunOptions,
    config_meta,
    fit_candidate,
    single_signature_compounds,
)
from moaspace.model.whitening import MAX_WHITENING_GENES, fit_whitening

logger = logging.getLogger(__name__)

#: networks ``input_whitening="auto"`` trains and chooses between: raw, then whitened input
INPUT_CANDIDATES = ("off", "on")


@dataclass(frozen=True)
class TrainInputs:
    """What a training run reads: the data, its split, the obs keys, the class lists and
    the hyper-parameters as the user gave them."""

    adata: ad.AnnData
    split: np.ndarray
    keys: dict
    genes: list
    moas: list
    compounds: list
    config: ModelConfig
    fingerprint: str


@dataclass(frozen=True)
class CandidateRun:
    """One trained input candidate: ``name`` (``off`` raw input, ``on`` whitened), the
    validation macro-F1 of its predictor, its training plan and the trainer's world size."""

    name: str
    val_f1: float
    plan: MoaTrainingPlan
    world_size: int


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_training` returns.

    ``config`` is the configuration as trained (the compound loss or the whitening
    switched off where the data call for it, the input candidate kept), frozen;
    ``predictor`` the kept network's predictor fitted on the training rows, whose
    validation macro-F1 is ``final_val_f1``; ``info`` the training record written to
    ``config.json``.
    """

    net: MoaNet
    config: ModelConfig
    data: TrainData
    predictor: MoaPredictor
    history: list
    best_epoch: int
    best_val_f1: float | None
    final_val_f1: float | None
    info: dict = field(default_factory=dict)


def run_training(inputs: TrainInputs, opts: RunOptions) -> TrainResult:
    """Prepare the data, train every input candidate, keep the best (see the module)."""
    data, config, whitening, notes = prepare_training(inputs, opts.seed)
    # a checkpoint must match the data and the config as prepared for training
    opts.meta = config_meta(inputs.fingerprint, config.to_dict())
    runs = train_candidates(inputs, config, data, whitening, opts)
    best = keep_best(runs, notes)
    config = replace(config, input_whitening=best.name)
    return record_run(best, config, data, opts, notes)


def prepare_training(inputs: TrainInputs, seed: int
                     ) -> tuple[TrainData, ModelConfig, dict | None, dict]:
    """Training data; the config with the compound loss off for one signature per
    compound and the whitening off for too many genes; the input whitening map (None
    when not used); notes for the training record."""
    c = inputs.config
    data = training_data(inputs.adata, inputs.split, inputs.keys, inputs.moas,
                         inputs.compounds, c, seed)
    notes: dict = {}
    if c.loss == "dual_arcface" and single_signature_compounds(
            data.compound[data.train_idx].numpy()):
        # the compound loss would only tell each training signature from all others
        logger.info("every training compound has one signature: the compound loss has "
                    "nothing to learn and is switched off (loss 'arcface_moa')")
        c = replace(c, loss="arcface_moa")
        notes["compound_loss"] = "off: one signature per training compound"
    whitening = None
    wanted = c.input_whitening != "off" or c.linear_view_weight > 0
    n_genes = len(inputs.genes)
    if wanted and n_genes > MAX_WHITENING_GENES:
        logger.info("%d genes: no input whitening (a %d x %d matrix); the model uses the "
                    "raw input and the hidden-layer prototypes", n_genes, n_genes, n_genes)
        c = replace(c, input_whitening="off", linear_view_weight=0.0)
        notes["input_whitening"] = f"off: more than {MAX_WHITENING_GENES} genes"
    elif wanted:
        moa = data.moa[data.train_idx].numpy()
        whitening = fit_whitening(data.x, data.train_idx, moa,
                                  shrinkage=c.whitening_shrinkage, seed=seed, clip=c.clip)
    return data, c, whitening, notes


def build_net(n_genes: int, n_moas: int, n_compounds: int, config: ModelConfig,
              moa_counts=None) -> MoaNet:
    """The network of ``config`` for these widths."""
    return MoaNet(n_genes, n_moas, n_compounds, config.to_dict(), moa_counts=moa_counts)


def train_candidates(inputs: TrainInputs, config: ModelConfig, data: TrainData, whitening,
                     opts: RunOptions) -> list[CandidateRun]:
    """Train one network per input candidate, each scored by its predictor's validation
    macro-F1."""
    names = list(INPUT_CANDIDATES) if config.input_whitening == "auto" else [
        config.input_whitening]
    moa_counts = np.bincount(data.moa[data.train_idx].numpy(), minlength=len(inputs.moas))
    runs = []
    import lightning as L

    for name in names:
        # every candidate starts from the same seed: the raw-input network is the one a
        # single-candidate run trains, initial weights and batches alike
        L.seed_everything(opts.seed, workers=True, verbose=False)
        candidate_config = replace(config, input_whitening=name)
        net = build_net(len(inputs.genes), len(inputs.moas), len(inputs.compounds),
                        candidate_config, moa_counts)
        if whitening is not None and net.encoder.whiten is not None:
            # a raw-input candidate without the linear view (linear_view_weight 0) holds no
            # whitening map
            net.encoder.whiten.set(whitening)
        plan, world_size = fit_candidate(net, data, opts, config=config, candidate=name,
                                         n_candidates=len(names))
        plan.net.cpu().eval()
        plan.data = data
        score = plan.validation_f1(plan.fit_predictor(data.train_idx))
        logger.info("candidate input %r: validation macro-F1 of the %s predictor %.4f", name,
                    config.predictor, score)
        runs.append(CandidateRun(name=name, val_f1=score, plan=plan, world_size=world_size))
    return runs


def keep_best(runs: list[CandidateRun], notes: dict) -> CandidateRun:
    """The run with the best validation macro-F1 (the first on a tie); records the choice
    in ``notes``."""
    best = None
    for run in runs:
        if best is None or run.val_f1 > best.val_f1 + 1e-12:
            best = run
    scores = {run.name: run.val_f1 for run in runs}
    notes["input_candidates"] = scores
    if len(runs) > 1:
        logger.info("kept the network with %s input (validation macro-F1 %s)",
                    "whitened" if best.name == "on" else "raw",
                    ", ".join(f"{n}: {v:.4f}" for n, v in scores.items()))
    notes["input_whitening"] = best.name
    return best


def record_run(best: CandidateRun, config: ModelConfig, data: TrainData, opts: RunOptions,
               notes: dict) -> TrainResult:
    """The kept run's network, predictor, history and training record."""
    plan = best.plan
    plan.data = data
    predictor = plan.fit_predictor(data.train_idx)
    # the weights kept (an average of epochs, or the best one) scored by the predictor
    # fitted on every training row: the number predict reproduces on these rows
    final = plan.validation_f1(predictor)
    net = plan.net.cpu().eval()
    history = list(plan.history)
    plan.data = None
    best_val_f1 = float(plan.best_f1) if plan.best_f1 >= 0 else None
    final_val_f1 = None if math.isnan(final) else float(final)
    info = {
        "max_epochs": int(opts.max_epochs), "batch_size": int(opts.batch_size),
        "seed": int(opts.seed), "patience": int(opts.patience),
        "precision": opts.precision, "epochs_run": len(history),
        "stopped_early": bool(plan.stopped_early),
        "n_train": len(data.train_idx), "n_val": len(data.val_idx),
        "world_size": int(best.world_size),
        "averaged_epochs": list(plan.averaged_epochs),
        "final_val_f1": final_val_f1, "predictor": config.predictor,
        "loss": config.loss, **notes,
    }
    return TrainResult(net=net, config=config, data=data, predictor=predictor,
                       history=history, best_epoch=int(plan.best_epoch),
                       best_val_f1=best_val_f1, final_val_f1=final_val_f1, info=info)


def log_training(result: TrainResult) -> None:
    """One log line: epochs run, the best epoch and, when averaged, the epochs kept."""
    averaged = result.info["averaged_epochs"]
    logger.info(
        "trained %d epochs; best val macro-F1 %s at epoch %d%s",
        len(result.history),
        "n/a" if result.best_val_f1 is None else f"{result.best_val_f1:.4f}",
        result.best_epoch,
        f"; kept the mean of epochs {averaged} (val macro-F1 "
        f"{result.final_val_f1:.4f})" if averaged and result.final_val_f1 is not None else "",
    )
