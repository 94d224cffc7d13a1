"""Preprocessing: LINCS files to a filtered AnnData, plate z-scores, leakage-free splits.

AnnData in, AnnData out (scanpy's ``pp``). ``split`` writes ``obs["split"]``;
``copy=True`` returns a new object and leaves the input alone, ``copy=False`` (the
default, as in scanpy) edits it in place.
"""

from moaspace.pp._plate import zscore_plate
from moaspace.pp._prepare import PrepareConfig, bundled_geneinfo, prepare, read_h5ad, write_h5ad
from moaspace.pp._split import SCHEMES, check_split, cv_folds, split

__all__ = [
    "SCHEMES",
    "PrepareConfig",
    "bundled_geneinfo",
    "check_split",
    "cv_folds",
    "prepare",
    "read_h5ad",
    "split",
    "write_h5ad",
    "zscore_plate",
]
