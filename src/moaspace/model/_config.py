"""Hyper-parameters of a model (:class:`ModelConfig`) and the checks of ``config.json``.

``config.json`` holds :meth:`ModelConfig.to_dict` under ``"model"`` with the gene order,
class lists and training record, and the SHA-1 of the rest of it under ``config_sha1``
(:func:`config_digest`); :func:`_check_config` checks what a model is rebuilt from, and
:func:`saved_hyperparams` gives the fields a model saved before they existed with the
behaviour it was trained with. Written and read by :mod:`moaspace.model._save`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from moaspace._core.neighbors import PREDICTORS
from moaspace._utils import preview
from moaspace.errors import MoaspaceError
from moaspace.model.module import LOSSES

#: how training batches are drawn (``ModelConfig.sampling``; the batch sampler of
#: :mod:`moaspace.model.train`)
SAMPLING = ("none", "compound", "moa")
#: entry of config.json holding the SHA-1 of the rest of it
CONFIG_DIGEST = "config_sha1"  # optional (moaspace.model.calibration); older dirs lack it
#: fields a model saved before they existed loads with: the behaviour it was trained with
LEGACY_DEFAULTS = {
    # trained and early-stopped for the kNN vote
    "predictor": "knn",
    # the single best epoch was kept
    "average_best": 1,
    # raw input, hidden prototypes, prototypes of the training rows only
    "input_whitening": "off",
    "linear_view_weight": 0.0,
    "refit_prototypes": False,
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the network, loss and optimiser.

    Every field is saved in ``config.json``. The defaults were chosen by validation
    macro-F1 on held-out compounds of simulated data and checked on the real
    consensus signatures; differences between reasonable settings were small (about
    0.02 macro-F1). The measurements behind each default are in ``docs/model.md`` and
    ``docs/benchmarks.md``. Under the defaults the best epoch comes within 3-20
    epochs, so ``max_epochs=50`` with ``patience=10`` converges.

    Attributes
    ----------
    hidden_dims
        Widths of the encoder's hidden layers, input side first (positive integers).
        Default ``(1024, 512)``; the last one is the hidden layer whose MoA prototypes
        the default predictor uses.
    embedding_dim
        Width of the unit-norm embedding (``obsm["X_moa"]``; >= 2). Default 256: a
        smaller embedding did not score better.
    dropout
        Dropout probability after each hidden activation, in [0, 1). Default 0.5:
        with ``input_dropout=0.3`` best or tied on every split measured.
    batch_norm
        Batch normalisation before each hidden activation. Default True.
    input_dropout
        Dropout probability on the input genes (training only), in [0, 1). Default
        0.3: forces the network to use many genes at once (0.5 scored lower).
    input_noise
        Standard deviation of Gaussian noise added to the input z-scores in training
        (z-score units, >= 0). Default 0.0 (off): input dropout is the regulariser.
    clip
        Input z-scores are clipped to ``[-clip, clip]`` (z-score units; None: no
        clipping). Default 10.0: L1000 z-scores lie within a few tens, and a few
        extreme values would otherwise dominate the first layer.
    loss
        One of :data:`~moaspace.model.module.LOSSES`: ``dual_arcface`` (ArcFace heads
        over MoAs and over compounds), ``arcface_moa`` (MoA head only), ``softmax``
        or ``supcon``. Default ``dual_arcface``: the two margins build the MoA >
        compound hierarchy; ``softmax`` and ``supcon`` did not beat it. Training
        switches it to ``arcface_moa`` when every training compound has one signature.
    moa_margin
        Additive angular margin of the MoA head, radians in [0, pi/2) (with
        ``margin_mode="count"``: the largest per-MoA margin). Default 0.25 (~14 deg).
    compound_margin
        Additive angular margin of the compound head, radians in [0, pi/2). Default
        0.1: compounds are tight sub-clusters inside their MoA, so a smaller margin.
    compound_weight
        Weight of the compound loss against the MoA loss (>= 0; 0: MoA loss only).
        Default 1.0, the two alike: it is what builds the hierarchy (same-compound mAP
        0.416 against 0.359 at 0.1) at level macro-F1; 0.1 is the better choice when
        only MoA calls matter (weak CRISPR knockdowns: top-5 MoA 91% against 87%).
    scale
        ArcFace logit scale ``s``: logits lie in ``[-s, s]``. Default 30.0, the usual
        ArcFace value: a softmax sharp enough to train on unit vectors.
    sub_centers
        ArcFace centres per MoA (sub-centre ArcFace; >= 1), the logit uses the
        closest. Default 1: more centres did not score better.
    easy_margin
        Apply the margin only where ``cos(theta) > 0``. Default False (standard
        ArcFace, with the monotonic fix beyond ``pi - m``).
    margin_mode
        ``fixed`` (every MoA gets ``moa_margin``) or ``count`` (LDAM: margins
        proportional to ``n ** -0.25``, rare MoAs the full margin). Default ``fixed``:
        per-class margins did not beat it.
    supcon_temperature
        Temperature of the supervised contrastive loss (> 0; ``loss="supcon"`` only).
        Default 0.1, as in Khosla et al. (2020).
    lr
        Peak AdamW learning rate, reached after the warm-up and then decayed by a
        cosine to 1% of it. Default 1e-3: 3e-4 scored about the same, but slower.
    weight_decay
        AdamW weight decay of the weight matrices (biases and batch-norm scales get
        none). Default 1e-4: 0.01 did not score better.
    warmup_epochs
        Epochs (fractions allowed; at least one step) of linear learning-rate warm-up.
        Default 1.0: one epoch, then the cosine decay.
    sampling
        How training batches are drawn, one of :data:`SAMPLING`: ``none`` (a
        permutation of the training rows each epoch), ``compound`` or ``moa`` (each
        compound, or MoA, equally likely; with replacement). Default ``none``:
        compound-balanced sampling did not score better.
    knn_k
        Neighbours of the kNN vote (``predictor="knn"``; also the calibration's and
        ``predict``'s default k). Default 10.
    predictor
        How ``predict`` calls a MoA by default and what early stopping scores on
        validation: ``knn``, ``prototype`` or ``hidden_prototype``
        (:data:`moaspace._core.neighbors.PREDICTORS`). Default ``hidden_prototype``,
        the nearest MoA prototype of the last hidden layer: it beat the kNN vote on
        test macro-F1 in all 6 split x seed cases of the benchmark (+0.004 to +0.040).
        Models saved before this field existed load with ``knn``.
    average_best
        The final weights are the mean of the weights of this many epochs with the
        best validation macro-F1 (>= 1; 1: the single best epoch). Default 5: +0.005
        test macro-F1 on average over the best epoch (6 seeds); costs as many CPU
        copies of the weights during training. Older models load with 1.
    input_whitening
        ``off`` (raw input), ``on`` (within-MoA whitened input) or ``auto`` (train a
        network for each from the same seed and keep the one whose prototype
        predictor scores the best validation macro-F1; twice the training time).
        Default ``auto``: whitening helps the real data a lot and costs the simulator
        a little. After training it holds the input kept; off above 4,000 genes.
        Older models load with ``off``.
    whitening_shrinkage
        Shrinkage of the within-MoA covariance towards a scaled identity before it
        is inverted, in [0, 1]. Default 0.5: the middle of a plateau (0.3 to 0.8
        gave the same nearest-centroid macro-F1 on real and simulated data).
    linear_view_weight
        Weight ``beta`` of the whitened linear view in the prototype layer, in [0, 1]
        (0: the hidden layer alone; needs whitening). Default 0.5, both views alike:
        their sum beat either alone on real and simulated data. Older models load
        with 0.
    refit_prototypes
        After calibrating on the validation compounds, recompute the MoA prototypes
        over train + val signatures (the network is not retrained), as the classical
        baselines are fitted on both. Default True; older models load with False.
    use_multi_moa
        Train the MoA loss on compounds with several MoAs (``obs["moa"]`` missing,
        ``obs["moa_set"]`` listing them): every listed MoA that is a class is a positive
        (:meth:`moaspace.model.arcface.ArcFace.multi_positive_loss`); their signatures
        feed the compound loss too (MoA prototypes and the atlas stay single-MoA). Default
        False: on the real consensus set (5-fold CV, 3 seeds; 122 multi-MoA drugs beside the
        519) it raised multi-MoA top-1-in-set by +0.022 (3 of 3 seeds) but moved
        single-label macro-F1 by -0.005 +/- 0.010 (0.277 against 0.282), and the default
        follows the single-label calls (``benchmarks/results/real_multi_moa``).
    multi_moa_classes
        With ``use_multi_moa``: the MoAs that only multi-MoA training compounds list become
        classes too, and every class's prototype-layer prototype is the mean of the
        training rows whose MoA set lists it (a multi-MoA compound counts in each of its
        classes; ``train --multi-moa classes``). Default False: on the real consensus set
        (5-fold CV, 3 seeds) it put multi-MoA top-1 in set and recall@3 above the multi-label
        baseline's (0.175 / 0.164 against 0.153 / 0.151, 3 of 3 seeds) but cost single-label
        macro-F1 (0.272 against 0.282; ``benchmarks/results/real_multi_moa``).
    use_unlabelled
        Train the compound loss on compounds without a MoA (and on multi-MoA compounds
        none of whose MoAs is a class) that have at least two training signatures: the
        same compound in another cell line or at another dose should land nearby.
        Default True.
    calibration_folds
        ``"auto"`` (default): 5 where the validation split has fewer than 200 signatures
        and training at least 200 labelled compounds (the real consensus set), else 0
        (:mod:`moaspace.model._crossfit`). 0: the calibration (confidence map of the
        prototype-layer predictor, 'unknown' thresholds) is fitted on the validation
        compounds alone. ``K >= 2``:
        ``train()`` also trains K fold models, each without one fold of the training
        compounds, and adds the compounds they never saw to the rows of the
        prototype-layer predictor's confidence map (:mod:`moaspace.model._crossfit`;
        the ``unknown`` thresholds stay on validation): about K + 1 times the training
        time. On held-out MoAs of the real consensus set (6 seeds, K = 5) the ECE of the
        known calls fell from 0.096 to 0.076 per seed, 0.085 to 0.049 pooled
        (``docs/confidence.md``).
    val_max_reference
        At most this many training rows (a seeded sample) are the reference of the
        per-epoch validation score. Default 30,000: keeps each epoch's scoring cheap.
    val_max_queries
        At most this many validation rows (a seeded sample) are scored each epoch.
        Default 20,000, for the same reason.
    extra
        Free-form notes (a JSON-able dict) saved with the config; the model does not
        read them. Default empty.
    """

    hidden_dims: tuple[int, ...] = (1024, 512)
    embedding_dim: int = 256
    dropout: float = 0.5
    batch_norm: bool = True
    input_dropout: float = 0.3
    input_noise: float = 0.0
    clip: float | None = 10.0
    loss: str = "dual_arcface"
    moa_margin: float = 0.25
    compound_margin: float = 0.1
    compound_weight: float = 1.0
    scale: float = 30.0
    sub_centers: int = 1
    easy_margin: bool = False
    margin_mode: str = "fixed"
    supcon_temperature: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    sampling: str = "none"
    knn_k: int = 10
    predictor: str = "hidden_prototype"
    average_best: int = 5
    input_whitening: str = "auto"
    whitening_shrinkage: float = 0.5
    linear_view_weight: float = 0.5
    refit_prototypes: bool = True
    use_multi_moa: bool = False
    multi_moa_classes: bool = False
    use_unlabelled: bool = True
    calibration_folds: int | str = "auto"
    val_max_reference: int = 30_000
    val_max_queries: int = 20_000
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        # frozen: a config is validated once and then only replaced
        # (dataclasses.replace validates the new one), never edited in place
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.loss not in LOSSES:
            raise MoaspaceError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.sampling not in SAMPLING:
            raise MoaspaceError(f"sampling must be one of {list(SAMPLING)}, got {self.sampling!r}")
        if self.predictor not in PREDICTORS:
            raise MoaspaceError(f"predictor must be one of {list(PREDICTORS)}, "
                                f"got {self.predictor!r}")
        if int(self.average_best) < 1:
            raise MoaspaceError(f"average_best must be >= 1, got {self.average_best}")
        object.__setattr__(self, "average_best", int(self.average_best))
        if self.input_whitening not in ("auto", "on", "off"):
            raise MoaspaceError(f"input_whitening must be 'auto', 'on' or 'off', "
                                f"got {self.input_whitening!r}")
        for name in ("whitening_shrinkage", "linear_view_weight"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise MoaspaceError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.margin_mode not in ("fixed", "count"):
            raise MoaspaceError(f"margin_mode must be 'fixed' or 'count', got {self.margin_mode!r}")
        for name in ("moa_margin", "compound_margin"):
            value = getattr(self, name)
            if not 0 <= value < math.pi / 2:
                raise MoaspaceError(f"{name} is in radians and must be in [0, pi/2), got {value}")
        self._check_calibration_folds()
        if self.multi_moa_classes and not self.use_multi_moa:
            raise MoaspaceError("multi_moa_classes needs use_multi_moa=True (the classes are "
                                "learnt from the multi-MoA compounds)")
        if self.embedding_dim < 2 or any(h < 1 for h in self.hidden_dims):
            raise MoaspaceError("embedding_dim must be >= 2 and hidden_dims positive")

    def _check_calibration_folds(self) -> None:
        folds = self.calibration_folds
        if folds == "auto":
            return
        try:
            folds = int(folds)
        except (TypeError, ValueError):
            folds = -1
        if folds < 0 or folds == 1 or isinstance(self.calibration_folds, bool):
            raise MoaspaceError(f"calibration_folds must be 'auto', 0 (off) or >= 2, "
                                f"got {self.calibration_folds!r}")
        object.__setattr__(self, "calibration_folds", folds)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise MoaspaceError(
                f"unknown model hyper-parameters {unknown}; known: {sorted(names - {'extra'})}"
            )
        return cls(**kwargs)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hidden_dims"] = list(self.hidden_dims)
        return out


def config_digest(config: dict) -> str:
    """SHA-1 of ``config.json``'s content without its own digest (canonical JSON): a
    reordered gene list or an edited class list no longer matches the weights."""
    body = {k: v for k, v in config.items() if k != CONFIG_DIGEST}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_config(config: dict, path: Path) -> None:
    """Types and uniqueness of the entries a model is rebuilt from; a clear error per entry."""
    def fail(what: str):
        raise MoaspaceError(f"{path}: {what}; the file was edited or damaged (save the model "
                            "again)")

    for name in ("model", "keys", "files"):
        if name in config and not isinstance(config[name], dict):
            fail(f"'{name}' must be an object, found {type(config[name]).__name__}")
    for name in ("genes", "moas", "compounds", "gene_symbols"):
        value = config.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"'{name}' must be a list of strings")
    for name in ("genes", "moas", "compounds"):
        values = pd.Index(config[name])
        if values.has_duplicates:
            fail(f"'{name}' lists {preview(values[values.duplicated()].unique())} more than once")
    for name in ("keys", "files"):
        bad = [k for k, v in config.get(name, {}).items() if not isinstance(v, str)]
        if bad:
            fail(f"'{name}' entries {preview(bad)} are not strings")
    digest = config.get(CONFIG_DIGEST)
    if digest is not None and digest != config_digest(config):
        fail("its content does not match its checksum (config_sha1)")


def saved_hyperparams(model_entry: dict) -> dict:
    """The ``ModelConfig`` keyword arguments of ``config.json``'s ``"model"`` entry, with
    :data:`LEGACY_DEFAULTS` for fields the model was saved without."""
    hyperparams = dict(model_entry)
    for name, value in LEGACY_DEFAULTS.items():
        hyperparams.setdefault(name, value)
    return hyperparams
