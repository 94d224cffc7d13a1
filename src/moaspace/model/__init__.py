"""The MoA embedding model: encoder, margin heads, Lightning module and ``MoaModel``."""

from moaspace.model.arcface import ArcFace, count_margins
from moaspace.model.encoder import Encoder
from moaspace.model.model import MoaModel, ModelConfig, data_fingerprint
from moaspace.model.module import MoaModule, MoaNet, macro_f1, supcon_loss

__all__ = [
    "ArcFace",
    "Encoder",
    "MoaModel",
    "MoaModule",
    "MoaNet",
    "ModelConfig",
    "count_margins",
    "data_fingerprint",
    "macro_f1",
    "supcon_loss",
]
