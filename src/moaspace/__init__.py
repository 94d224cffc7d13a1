"""moaspace: a hierarchical latent space of L1000 signatures for MoA prediction."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from .errors import InputError, MoaspaceError

try:
    __version__ = version("moaspace")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["InputError", "MoaspaceError", "__version__"]
