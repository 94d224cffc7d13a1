"""One training run of a network (a *candidate*), with checkpoints that survive kills.

``MoaModel.train`` may train more than one candidate network (raw and whitened
input, ``ModelConfig.input_whitening="auto"``) and keep the one that validates
best. Each candidate is a Lightning run of :class:`~moaspace.model.train.MoaTrainingPlan`.

Checkpoints: the candidate in progress writes ``checkpoints/last.ckpt`` every epoch
(the file ``--resume`` continues from). When there are several candidates, a
finished one's checkpoint is renamed to ``checkpoints/<candidate>.ckpt``, so a
resumed run reloads it instead of training it again; each checkpoint records
which candidate it belongs to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moaspace.errors import MoaspaceError
from moaspace.model.module import MoaNet
from moaspace.model.train._callbacks import AtomicCheckpointIO, LastCheckpoint
from moaspace.model.train._data import TrainData
from moaspace.model.train._plan import MoaTrainingPlan

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = Path("checkpoints")
LAST = "last.ckpt"


@dataclass
class RunOptions:
    """Trainer settings shared by every candidate of one ``MoaModel.train`` call."""

    max_epochs: int
    batch_size: int
    accelerator: str
    devices: int | str
    strategy: str
    seed: int
    patience: int
    progress_bar: bool
    callbacks: list
    precision: str
    deterministic: bool
    model_dir: Path | None
    resume: bool
    meta: dict


def run_options(*, max_epochs: int, batch_size: int, accelerator: str, devices: int | str,
                strategy: str, seed: int, patience: int, progress_bar: bool,
                callbacks: list | None, precision: str | None,
                model_dir: str | os.PathLike | None, resume: bool) -> RunOptions:
    """Check ``MoaModel.train``'s arguments; the trainer settings of every candidate (its
    ``meta`` is set once the data are prepared: :func:`config_meta`). Mixed precision
    (``16-mixed``) by default on CUDA only; deterministic algorithms on CPU."""
    if max_epochs < 1 or batch_size < 2:
        raise MoaspaceError("max_epochs must be >= 1 and batch_size >= 2")
    if resume and model_dir is None:
        raise MoaspaceError("resume=True needs model_dir (where the checkpoints are)")
    use_cuda = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if precision is None:
        precision = "16-mixed" if use_cuda else "32-true"
    return RunOptions(
        max_epochs=max_epochs, batch_size=batch_size, accelerator=accelerator,
        devices=devices, strategy=strategy, seed=seed, patience=patience,
        progress_bar=progress_bar, callbacks=list(callbacks or []),
        precision=precision, deterministic=not use_cuda,
        model_dir=Path(model_dir) if model_dir is not None else None,
        resume=resume, meta={})


def _checkpoint_state(path: Path, meta: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MoaspaceError(f"cannot read checkpoint {path}: {exc}") from exc
    saved = state.get("moaspace", {})
    if saved.get("fingerprint") != meta.get("fingerprint"):
        raise MoaspaceError(f"{path} was written for different data or a different split; "
                            "train without --resume (or use another model dir)")
    if saved.get("config") != meta.get("config"):
        raise MoaspaceError(f"{path} was written with different hyper-parameters")
    return state


def _finished_path(opts: RunOptions, candidate: str, n_candidates: int) -> Path | None:
    if opts.model_dir is None or n_candidates < 2:
        return None
    return opts.model_dir / CHECKPOINT_DIR / f"{candidate}.ckpt"


def fit_candidate(net: MoaNet, data: TrainData, opts: RunOptions, *, config,
                  candidate: str, n_candidates: int) -> tuple[MoaTrainingPlan, int]:
    """Train ``net`` on ``data`` (or reload a finished or interrupted run); return the
    module with its final weights in place, and the trainer's world size. The caller
    seeds (before building ``net``, whose initial weights draw from the seed too)."""
    meta = {**opts.meta, "candidate": candidate}
    module = MoaTrainingPlan(
        net, data, lr=config.lr, weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs, batch_size=opts.batch_size, seed=opts.seed,
        sampling=config.sampling, knn_k=config.knn_k, patience=opts.patience,
        predictor=config.predictor, average_best=config.average_best, meta=meta,
        n_classes=net.n_moas, linear_view_weight=config.linear_view_weight,
    )
    finished = _finished_path(opts, candidate, n_candidates)
    if opts.resume and finished is not None and finished.exists():
        _reload(module, _checkpoint_state(finished, meta), candidate)
        return module, 1
    last = opts.model_dir / CHECKPOINT_DIR / LAST if opts.model_dir is not None else None
    resume_from = None
    if opts.resume and last is not None and last.exists():
        state = _checkpoint_state(last, opts.meta)
        if state["moaspace"].get("candidate", candidate) == candidate:
            extra = state["state_dict"].get("_extra_state", {})
            if extra.get("stopped_early", False):
                logger.info("resume: the checkpointed run had already stopped early")
                _reload(module, state, candidate)
                return _finish(module, last, finished), 1
            _check_epochs_left(last, state, opts.max_epochs)
            resume_from = last
    elif opts.resume and n_candidates < 2:
        logger.warning("resume: no checkpoint at %s; training from scratch", last)
    trainer = _trainer(opts, last)
    try:
        trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None,
                    weights_only=True)
    except SystemExit:
        if trainer.interrupted:
            # Lightning turns Ctrl-C into sys.exit(1) after its shutdown: give the caller
            # the KeyboardInterrupt back (the CLI exits 130, "Interrupted.")
            raise KeyboardInterrupt from None
        raise
    module.restore_best()
    return _finish(module, last, finished), int(trainer.world_size)


def _check_epochs_left(path: Path, state: dict, max_epochs: int) -> None:
    """A run in progress that already trained more epochs than ``max_epochs`` cannot be
    continued (Lightning would stop with a MisconfigurationException traceback): say what
    to do instead. A run that stopped early is finished and reloaded whatever max_epochs."""
    done = int(state.get("epoch", -1)) + 1  # LastCheckpoint saves at the end of an epoch
    if done > max_epochs:
        raise MoaspaceError(
            f"{path} has already trained {done} epochs, more than max_epochs={max_epochs}: "
            f"resume with --max-epochs {done} or more to continue that run, or train without "
            "--resume to start over")


def _reload(module: MoaTrainingPlan, state: dict, candidate: str) -> None:
    logger.info("resume: candidate %r reloaded from its checkpoint", candidate)
    module.load_state_dict(state["state_dict"])
    module.on_load_checkpoint(state)
    module.restore_best()


def _finish(module: MoaTrainingPlan, last: Path | None, finished: Path | None) -> MoaTrainingPlan:
    if finished is not None and last is not None and last.exists():
        os.replace(last, finished)
    return module


def _trainer(opts: RunOptions, last: Path | None):
    import lightning as L

    callbacks = list(opts.callbacks)
    if last is not None:
        callbacks.append(LastCheckpoint(last))
    return L.Trainer(
        max_epochs=opts.max_epochs, accelerator=opts.accelerator, devices=opts.devices,
        strategy=opts.strategy, precision=opts.precision, deterministic=opts.deterministic,
        logger=False, enable_checkpointing=last is not None, callbacks=callbacks,
        enable_model_summary=False, enable_progress_bar=opts.progress_bar,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
        default_root_dir=str(opts.model_dir) if opts.model_dir is not None else None,
        plugins=[AtomicCheckpointIO()], log_every_n_steps=1,
    )


@contextlib.contextmanager
def quiet_lightning():
    """Silence Lightning's banner lines and the 'few workers' hint for in-memory data."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
             "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.distributed")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
        try:
            yield
        finally:
            for n, level in saved.items():
                logging.getLogger(n).setLevel(level)


def config_meta(fingerprint: str, config_dict: dict) -> dict:
    """What a checkpoint must match to be resumed: the data and the hyper-parameters."""
    return {"fingerprint": fingerprint, "config": json.dumps(config_dict, sort_keys=True)}


def single_signature_compounds(compound_codes: np.ndarray) -> bool:
    """True when no training compound has more than one signature (e.g. consensus data)."""
    codes = np.asarray(compound_codes)
    codes = codes[codes >= 0]
    return len(codes) > 0 and int(np.bincount(codes).max()) <= 1
