"""The MoA embedding model, laid out like scvi-tools.

``MoaModel`` (:mod:`.model`) is the user's object; underneath, :mod:`.module` holds the
network ``MoaNet`` and its losses, :mod:`.train` the Lightning training plan
(``MoaTrainingPlan``), its data, callbacks and candidate runs, :mod:`._config` the
``ModelConfig`` and :mod:`._save` the model directory.
"""

from moaspace.model._config import ModelConfig
from moaspace.model.arcface import ArcFace, count_margins
from moaspace.model.encoder import Encoder
from moaspace.model.model import MoaModel, data_fingerprint
from moaspace.model.module import MoaNet, macro_f1, supcon_loss
from moaspace.model.predictor import MoaPredictor
from moaspace.model.train import MoaModule, MoaTrainingPlan

__all__ = [
    "ArcFace",
    "Encoder",
    "MoaModel",
    "MoaModule",
    "MoaNet",
    "MoaPredictor",
    "MoaTrainingPlan",
    "ModelConfig",
    "count_margins",
    "data_fingerprint",
    "macro_f1",
    "supcon_loss",
]
