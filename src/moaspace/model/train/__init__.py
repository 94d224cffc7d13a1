"""Training (scvi-tools' *train* package): the Lightning training plan, its data, callbacks
and the candidate runner.

* :mod:`._plan`: :class:`MoaTrainingPlan`, the LightningModule that optimises a
  :class:`~moaspace.model.module.MoaNet` and scores validation macro-F1 every epoch.
* :mod:`._data`: :class:`TrainData` (the rows a run reads), :class:`IndexBatchSampler` and
  :func:`training_data` (built from a model's AnnData).
* :mod:`._callbacks`: checkpoint IO (atomic writes, ``last.ckpt`` every epoch), early
  stopping and best-epoch averaging (:class:`BestEpochs`).
* :mod:`._runner`: :func:`fit_candidate`, one Lightning run of a candidate network
  (raw or whitened input) with checkpoints that survive kills and resume.
* :mod:`._candidates`: :func:`run_training`, typed :class:`TrainInputs` in, a
  :class:`TrainResult` out: prepare the data, train the input candidates, keep the best.
"""

from moaspace.model.train._callbacks import AtomicCheckpointIO, BestEpochs, LastCheckpoint
from moaspace.model.train._candidates import (
    INPUT_CANDIDATES,
    CandidateRun,
    TrainInputs,
    TrainResult,
    build_net,
    keep_best,
    log_training,
    prepare_training,
    record_run,
    run_training,
    train_candidates,
)
from moaspace.model.train._data import (
    SAMPLING,
    IndexBatchSampler,
    TrainData,
    data_fingerprint,
    dense_rows,
    loss_compounds,
    loss_rows,
    multi_moa_classes,
    single_moa_rows,
    training_data,
    warn_if_not_zscores,
)
from moaspace.model.train._plan import MoaModule, MoaTrainingPlan
from moaspace.model.train._runner import (
    RunOptions,
    config_meta,
    fit_candidate,
    quiet_lightning,
    run_options,
    single_signature_compounds,
)

__all__ = [
    "INPUT_CANDIDATES",
    "SAMPLING",
    "AtomicCheckpointIO",
    "BestEpochs",
    "CandidateRun",
    "IndexBatchSampler",
    "LastCheckpoint",
    "MoaModule",
    "MoaTrainingPlan",
    "RunOptions",
    "TrainData",
    "TrainInputs",
    "TrainResult",
    "build_net",
    "config_meta",
    "data_fingerprint",
    "dense_rows",
    "fit_candidate",
    "keep_best",
    "log_training",
    "loss_compounds",
    "loss_rows",
    "multi_moa_classes",
    "prepare_training",
    "quiet_lightning",
    "record_run",
    "run_options",
    "run_training",
    "single_moa_rows",
    "single_signature_compounds",
    "train_candidates",
    "training_data",
    "warn_if_not_zscores",
]
