"""The steps of ``MoaModel.train`` (scvi-tools' *TrainRunner*): prepare the data, train
the candidate networks, keep the best, and record the kept run on the model.

``input_whitening="auto"`` trains one network on the raw and one on the whitened input
(:data:`INPUT_CANDIDATES`), each from the same seed and each a Lightning run of
:func:`~moaspace.model.train._runner.fit_candidate`, and keeps the one whose prototype
predictor scores the best validation macro-F1. The functions take the model (a
:class:`~moaspace.model.MoaModel`) and set its ``net``, ``config``, ``history`` and
``train_info``, as scvi-tools' runner sets its model's training history.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from moaspace.model.train._data import TrainData, training_data
from moaspace.model.train._plan import MoaModule
from moaspace.model.train._runner import RunOptions, fit_candidate, single_signature_compounds
from moaspace.model.whitening import MAX_WHITENING_GENES, fit_whitening

logger = logging.getLogger(__name__)

#: networks ``input_whitening="auto"`` trains and chooses between: raw, then whitened input
INPUT_CANDIDATES = ("off", "on")


def prepare_training(model, seed: int) -> tuple[TrainData, dict | None]:
    """Training data of ``model``; the compound loss off for one signature per compound;
    the input whitening map (None when not used)."""
    data = training_data(model.adata, model._split, model.keys, model.moas, model.compounds,
                         model.config, seed)
    c = model.config
    model._notes = {}
    if c.loss == "dual_arcface" and single_signature_compounds(
            data.compound[data.train_idx].numpy()):
        # the compound loss would only tell each training signature from all others
        logger.info("every training compound has one signature: the compound loss has "
                    "nothing to learn and is switched off (loss 'arcface_moa')")
        c.loss = "arcface_moa"
        model._notes["compound_loss"] = "off: one signature per training compound"
    whitening = None
    wanted = c.input_whitening != "off" or c.linear_view_weight > 0
    if wanted and len(model.genes) > MAX_WHITENING_GENES:
        logger.info("%d genes: no input whitening (a %d x %d matrix); the model uses the "
                    "raw input and the hidden-layer prototypes", len(model.genes),
                    len(model.genes), len(model.genes))
        c.input_whitening, c.linear_view_weight = "off", 0.0
        model._notes["input_whitening"] = f"off: more than {MAX_WHITENING_GENES} genes"
    elif wanted:
        moa = data.moa[data.train_idx].numpy()
        whitening = fit_whitening(data.x, data.train_idx, moa,
                                  shrinkage=c.whitening_shrinkage, seed=seed)
    return data, whitening


def train_candidates(model, data: TrainData, whitening,
                     opts: RunOptions) -> list[tuple[float, str, MoaModule, int]]:
    """Train one network per input candidate; ``(score, name, module, world_size)`` each,
    the score the validation macro-F1 of its prototype predictor."""
    c = model.config
    names = list(INPUT_CANDIDATES) if c.input_whitening == "auto" else [c.input_whitening]
    moa_counts = np.bincount(data.moa[data.train_idx].numpy(), minlength=len(model.moas))
    runs = []
    import lightning as L

    for name in names:
        # every candidate starts from the same seed: the raw-input network is the one a
        # single-candidate run trains, initial weights and batches alike
        L.seed_everything(opts.seed, workers=True, verbose=False)
        net = model._build_net(moa_counts, input_whitening=name)
        if whitening is not None:
            net.encoder.whiten.set(whitening)
        module, world_size = fit_candidate(net, data, opts, config=c, candidate=name,
                                           n_candidates=len(names))
        module.net.cpu().eval()
        model.net = module.net
        model._fit_prototypes(data, rows=data.train_idx)
        score = model._prototype_val_f1(data)
        logger.info("candidate input %r: validation macro-F1 of the prototype predictor "
                    "%.4f", name, score)
        runs.append((score, name, module, world_size))
    return runs


def keep_best(model, runs: list[tuple[float, str, MoaModule, int]]) -> tuple[MoaModule, int]:
    """The run with the best score (the first on a tie); records the choice."""
    best = None
    for run in runs:
        if best is None or run[0] > best[0] + 1e-12:
            best = run
    _, chosen, module, world_size = best
    scores = {name: score for score, name, _, _ in runs}
    model._notes["input_candidates"] = scores
    if len(runs) > 1:
        logger.info("kept the network with %s input (validation macro-F1 %s)",
                    "whitened" if chosen == "on" else "raw",
                    ", ".join(f"{n}: {v:.4f}" for n, v in scores.items()))
    model._notes["input_whitening"] = chosen
    model.config.input_whitening = chosen
    return module, world_size


def record_run(model, module: MoaModule, data: TrainData, world_size: int,
               opts: RunOptions) -> float:
    """Take the kept run's network, history and training record; return the validation
    macro-F1 of the weights kept (NaN without validation data)."""
    # validation macro-F1 of the weights kept: an average of epochs is new and scored once
    # more; the best epoch's own weights were scored during training
    if module.averaged_epochs:
        final_val_f1 = module.validation_f1()
    else:
        final_val_f1 = module.best_f1 if module.best_f1 >= 0 else float("nan")
    model.net = module.net.cpu().eval()
    module.data = None
    model.history = list(module.history)
    model.best_epoch = int(module.best_epoch)
    model.best_val_f1 = float(module.best_f1) if module.best_f1 >= 0 else None
    model.train_info = {
        "max_epochs": int(opts.max_epochs), "batch_size": int(opts.batch_size),
        "seed": int(opts.seed), "patience": int(opts.patience),
        "precision": opts.precision, "epochs_run": len(model.history),
        "stopped_early": bool(module.stopped_early),
        "n_train": len(data.train_idx), "n_val": len(data.val_idx),
        "world_size": int(world_size),
        "averaged_epochs": list(module.averaged_epochs),
        "final_val_f1": None if math.isnan(final_val_f1) else float(final_val_f1),
        "loss": model.config.loss, **model._notes,
    }
    return final_val_f1


def log_training(model, final_val_f1: float) -> None:
    """One log line: epochs run, the best epoch and, when averaged, the epochs kept."""
    averaged = model.train_info["averaged_epochs"]
    logger.info(
        "trained %d epochs; best val macro-F1 %s at epoch %d%s",
        len(model.history),
        "n/a" if model.best_val_f1 is None else f"{model.best_val_f1:.4f}", model.best_epoch,
        f"; kept the mean of epochs {averaged} (val macro-F1 "
        f"{final_val_f1:.4f})" if averaged else "",
    )

