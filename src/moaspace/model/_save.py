"""Saving and loading a model directory (scvi-tools' save/load, on its own).

A model directory holds ``model.pt`` (the network's ``state_dict``, loadable with
``torch.load(weights_only=True)``), ``atlas.h5ad`` (embeddings of the training
signatures with their MoA / compound / cell labels, the kNN reference) and
``config.json`` (hyper-parameters, gene order, class lists, data fingerprint, training
history, checksums of the other files) and, for a model with validation data,
``calibration.json`` (calibrated scores and the 'unknown' threshold;
:mod:`moaspace.model.calibration`). ``config.json`` is written last and lists the other
files' SHA-1, so a save interrupted half-way is detected at load instead of pairing new
weights with an old atlas; its own SHA-1 (``config_sha1``) detects an edit to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import anndata as ad
import torch

from moaspace._utils import atomic_path, atomic_write_text
from moaspace._version import __version__
from moaspace.errors import MoaspaceError
from moaspace.model._config import CONFIG_DIGEST, _check_config, config_digest, saved_hyperparams
from moaspace.model.module import MoaNet

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, ATLAS_FILE = "model.pt", "config.json", "atlas.h5ad"
CALIBRATION_FILE = "calibration.json"
#: raw z-scores of (a subsample of) the training signatures; ``raw_reference.h5ad`` before
RAW_ATLAS_FILE, OLD_RAW_ATLAS_FILE = "raw_atlas.h5ad", "raw_reference.h5ad"


def save_torch(obj, target, path) -> None:
    """``torch.save`` with one clear error when the file cannot be written (a full disk
    makes torch raise a RuntimeError from its zip writer, not an OSError)."""
    try:
        torch.save(obj, target)
    except (OSError, RuntimeError) as exc:
        raise MoaspaceError(f"cannot write {path}: {exc} (is the disk full?)") from exc


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_json(model, files: dict) -> dict:
    """The content of ``config.json`` for ``model`` (a :class:`~moaspace.model.MoaModel`),
    without its own digest; ``files`` maps the other files to their SHA-1."""
    return {
        "format_version": FORMAT_VERSION,
        "moaspace_version": __version__,
        "torch_version": torch.__version__,
        "model": model.config.to_dict(),
        "keys": model.keys,
        "genes": model.genes,
        "gene_symbols": model.gene_symbols,
        "moas": model.moas,
        "compounds": model.compounds,
        "data_fingerprint": model.fingerprint,
        "train": model.train_info,
        "history": model.history,
        "best_epoch": model.best_epoch,
        "best_val_f1": model.best_val_f1,
        "moa_margins": (
            model.net.moa_head.margins.tolist()
            if model.net is not None and hasattr(model.net.moa_head, "margins") else None
        ),
        "files": files,
    }


def save_model(model, model_dir: Path, overwrite: bool = False) -> Path:
    """Write ``model``'s ``model.pt``, ``atlas.h5ad``, ``calibration.json`` and (last)
    ``config.json`` atomically to ``model_dir`` (:meth:`MoaModel.save
    <moaspace.model.MoaModel.save>`)."""
    from moaspace.pp._prepare import write_h5ad

    model._require_net()
    model_dir = Path(model_dir)
    if (model_dir / CONFIG_FILE).exists() and not overwrite:
        raise MoaspaceError(f"{model_dir} already holds a model; pass overwrite=True")
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_dir / MODEL_FILE, suffix=".pt.tmp") as tmp, open(tmp, "wb") as fh:
        # a file object: the zip records are named 'archive/...', not after the temp name
        save_torch({k: v.cpu() for k, v in model.net.state_dict().items()}, fh,
                   model_dir / MODEL_FILE)
    # pandas >= 3 stores strings as StringArray, which anndata writes only on request
    allow = (ad.settings.override(allow_write_nullable_strings=True)
             if hasattr(ad.settings, "allow_write_nullable_strings")
             else contextlib.nullcontext())
    with allow:
        write_h5ad(model.atlas, model_dir / ATLAS_FILE)
    names = [MODEL_FILE, ATLAS_FILE]
    if _write_raw_atlas(model, model_dir):
        names.append(RAW_ATLAS_FILE)
    if model.calibration is not None:
        model.calibration.save(model_dir / CALIBRATION_FILE)
        names.append(CALIBRATION_FILE)
    elif (model_dir / CALIBRATION_FILE).exists():
        (model_dir / CALIBRATION_FILE).unlink()  # stale: from a model saved here before
    files = {name: _sha1_file(model_dir / name) for name in names}
    config = config_json(model, files)
    config[CONFIG_DIGEST] = config_digest(config)
    atomic_write_text(model_dir / CONFIG_FILE, json.dumps(config, indent=1))
    logger.info("saved model to %s", model_dir)
    return model_dir


def _write_raw_atlas(model, model_dir: Path) -> bool:
    """Write ``raw_atlas.h5ad`` (the training signatures' raw z-scores) from the model's data,
    or copy the one of the directory the model was loaded from; False when neither exists."""
    import shutil

    from moaspace.model._atlas import raw_atlas
    from moaspace.pp._prepare import write_h5ad

    target = model_dir / RAW_ATLAS_FILE
    if model.adata is not None:
        rows = model.adata.obs_names.get_indexer(model.atlas.obs_names)
        write_h5ad(raw_atlas(model.adata, rows[rows >= 0], model.keys), target)
        return True
    source = getattr(model, "raw_atlas_path", None)
    if source is None or not Path(source).is_file():
        return False
    if Path(source).resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return True


def read_config(model_dir: Path) -> dict:
    """``config.json`` of a saved model directory, checked: the files are there, the format
    is this moaspace's, the entries are complete and well-typed, the checksums match."""
    if not model_dir.is_dir():
        raise MoaspaceError(f"model directory not found: {model_dir}")
    for name in (CONFIG_FILE, MODEL_FILE, ATLAS_FILE):
        if not (model_dir / name).is_file():
            raise MoaspaceError(f"{model_dir}: {name} is missing; not a saved moaspace model")
    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise MoaspaceError(f"{model_dir / CONFIG_FILE}: unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise MoaspaceError(f"{model_dir / CONFIG_FILE}: expected a JSON object, "
                            f"found {type(config).__name__}")
    fmt = config.get("format_version")
    if fmt != FORMAT_VERSION:
        raise MoaspaceError(
            f"{model_dir} has model format {fmt!r} (written by moaspace "
            f"{config.get('moaspace_version', '?')}); this moaspace {__version__} reads "
            f"format {FORMAT_VERSION}: retrain or use a matching moaspace version"
        )
    missing = [k for k in ("model", "keys", "genes", "moas", "compounds") if k not in config]
    if missing:
        raise MoaspaceError(f"{model_dir / CONFIG_FILE}: entries {missing} are missing; "
                            "not a complete moaspace model (save it again)")
    _check_config(config, model_dir / CONFIG_FILE)
    if CONFIG_DIGEST not in config:
        logger.warning("%s has no checksum of its own (saved by an older moaspace): an "
                       "edit to it cannot be detected", model_dir / CONFIG_FILE)
    for name, digest in config.get("files", {}).items():
        if not (model_dir / name).is_file():
            raise MoaspaceError(f"{model_dir}: {name} is listed in config.json but missing")
        if _sha1_file(model_dir / name) != digest:
            raise MoaspaceError(
                f"{model_dir / name} does not match config.json (an interrupted save?); "
                "save the model again"
            )
    return config


def load_model(cls, model_dir: Path, *, max_missing_fraction: float = 0.1,
               map_location: str | torch.device = "cpu"):
    """A ``cls`` (:class:`~moaspace.model.MoaModel`) from a saved model directory
    (:meth:`MoaModel.load <moaspace.model.MoaModel.load>`)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    keys = {f"{k}_key": v for k, v in config["keys"].items()}
    model = cls(None, **saved_hyperparams(config["model"]), **keys)
    model.genes = list(config["genes"])
    model.gene_symbols = list(config.get("gene_symbols", []))
    model.moas = list(config["moas"])
    model.compounds = list(config["compounds"])
    model.fingerprint = config.get("data_fingerprint")
    model.history = list(config.get("history", []))
    model.best_epoch = config.get("best_epoch")
    model.best_val_f1 = config.get("best_val_f1")
    model.train_info = dict(config.get("train", {}))
    model.max_missing_fraction = float(max_missing_fraction)
    net = MoaNet(len(model.genes), len(model.moas), len(model.compounds),
                 model.config.to_dict())
    try:
        state = torch.load(model_dir / MODEL_FILE, map_location=map_location,
                           weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise MoaspaceError(f"{model_dir / MODEL_FILE}: cannot load weights ({exc})") from exc
    model.net = net.eval()
    from moaspace.pp._prepare import read_h5ad

    model._atlas = read_h5ad(model_dir / ATLAS_FILE)
    for name in (RAW_ATLAS_FILE, OLD_RAW_ATLAS_FILE):  # read on demand: MoaModel.raw_atlas
        if (model_dir / name).is_file():
            model.raw_atlas_path = model_dir / name
            break
    if CALIBRATION_FILE in config.get("files", {}):
        from moaspace.model.calibration import Calibration

        model.calibration = Calibration.load(model_dir / CALIBRATION_FILE)
    else:
        logger.info("%s has no calibration (saved by an older moaspace?): predictions will "
                    "use uncalibrated scores and make no 'unknown' calls", model_dir)
    return model
