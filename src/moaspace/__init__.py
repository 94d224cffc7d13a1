"""moaspace: a hierarchical latent space of L1000 signatures for MoA prediction.

The public surface follows scanpy: ``moaspace.io`` (LINCS files), ``moaspace.pp``
(prepare, z-score, split), ``moaspace.datasets`` (simulator, demo release),
``moaspace.model`` (``MoaModel``), ``moaspace.tl`` (predict, evaluate, explain,
knockdowns), ``moaspace.pl`` (plots) and ``moaspace.benchmark``. Subpackages load on
first use, so ``import moaspace`` (and the CLI's start-up) stays light::

    import moaspace as ms
    adata = ms.pp.prepare(...)
    model = ms.model.MoaModel(ms.pp.split(adata, "compound"))
"""

from __future__ import annotations

import importlib
import logging

from moaspace._version import __version__
from moaspace.errors import InputError, MoaspaceError

logging.getLogger(__name__).addHandler(logging.NullHandler())

_SUBPACKAGES = ("benchmark", "datasets", "io", "model", "pl", "pp", "tl")
_FROM_MODEL = ("MoaModel", "ModelConfig")

__all__ = ["InputError", "MoaModel", "MoaspaceError", "ModelConfig", "__version__",
           *_SUBPACKAGES]


def __getattr__(name: str):
    # PEP 562: torch and lightning are imported when the model is first used, not on
    # `import moaspace`
    if name in _SUBPACKAGES:
        return importlib.import_module(f"moaspace.{name}")
    if name in _FROM_MODEL:
        return getattr(importlib.import_module("moaspace.model"), name)
    raise AttributeError(f"module 'moaspace' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
