"""Model commands: ``train``, ``predict``, ``calibrate`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moaspace._utils import check_output
from moaspace.cli._common import (
    handle_errors,
    load_h5ad,
    print_summary,
    side_file,
    state,
)
from moaspace.errors import MoaspaceError

#: ``train --multi-moa``: the ModelConfig fields of each choice
MULTI_MOA = {"off": {}, "loss": {"use_multi_moa": True},
             "classes": {"use_multi_moa": True, "multi_moa_classes": True}}


def _hyperparams(compound_weight: float | None, input_whitening: str, multi_moa: str) -> dict:
    """The ``ModelConfig`` fields of ``train``'s options that need a check or a mapping."""
    if input_whitening not in ("auto", "on", "off"):
        raise typer.BadParameter("--input-whitening must be auto, on or off")
    if multi_moa not in MULTI_MOA:
        raise typer.BadParameter(f"--multi-moa must be one of {', '.join(MULTI_MOA)}")
    extra = {} if compound_weight is None else {"compound_weight": compound_weight}
    return {**extra, **MULTI_MOA[multi_moa]}


@handle_errors
def train(
    data: Annotated[Path, typer.Argument(help=".h5ad with obs['split'] (moaspace split).")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_epochs: Annotated[int, typer.Option(help="Upper bound on epochs.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Batch size per device.")] = 256,
    patience: Annotated[int, typer.Option(help="Epochs without val-F1 gain before stop.")] = 10,
    genes: Annotated[
        str | None, typer.Option(help="Restrict to 'landmark' genes (var feature_space).")
    ] = None,
    loss: Annotated[
        str, typer.Option(help="dual_arcface | arcface_moa | softmax | supcon.")
    ] = "dual_arcface",
    predictor: Annotated[
        str, typer.Option(help="How predict calls a MoA by default, and what early stopping "
                               "scores: hidden_prototype | knn | prototype.")
    ] = "hidden_prototype",
    average_best: Annotated[
        int, typer.Option(help="Keep the mean weights of this many best validation epochs "
                               "(1: the single best epoch).", min=1)
    ] = 5,
    compound_weight: Annotated[
        float | None, typer.Option(help="Weight of the compound ArcFace loss next to the MoA "
                                        "loss (default: the model's, 1.0).", min=0.0)
    ] = None,
    input_whitening: Annotated[
        str, typer.Option(help="auto: train on the raw and on the within-class whitened "
                               "signatures and keep the network that validates best; on | off.")
    ] = "auto",
    linear_view_weight: Annotated[
        float, typer.Option(help="Weight of the whitened-signature centroid score next to the "
                                 "hidden layer's in the MoA prototypes (0: hidden layer only).",
                            min=0.0, max=1.0)
    ] = 0.5,
    calibration_folds: Annotated[
        str, typer.Option(help="auto: 5 where the validation split is small (under 200 "
                               "signatures, 200+ training compounds), else 0. 0: fit the "
                               "confidence map on the validation compounds alone. K >= 2: "
                               "also train K fold models without a fold of the training "
                               "compounds and fit it on the compounds they never saw too "
                               "(about K + 1 times the training time; docs/confidence.md).")
    ] = "auto",
    multi_moa: Annotated[
        str, typer.Option(help="Compounds with several MoAs (obs['moa_set']): off (default: "
                               "left out of the MoA loss); loss (every listed MoA that is a "
                               "class is a positive); classes (also make the MoAs only they "
                               "list into classes; docs/confidence.md).")
    ] = "off",
    accelerator: Annotated[str, typer.Option(help="auto | cpu | gpu.")] = "auto",
    devices: Annotated[str, typer.Option(help="Devices per node (e.g. 2), or auto.")] = "auto",
    strategy: Annotated[str, typer.Option(help="auto | ddp | ddp_spawn ...")] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from MODEL_DIR/checkpoints/last.ckpt.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in --out.")] = False,
    backed: Annotated[
        bool, typer.Option("--backed", help="Out of core: leave X on disk (h5ad opened with "
                           "backed='r') and read each batch from the file, for data larger "
                           "than memory. Same results as in memory, slower per epoch.")
    ] = False,
) -> None:
    """Train the dual-ArcFace encoder; early-stops on validation macro-F1 of --predictor
    and keeps the mean weights of the --average-best best epochs.

    Example:

        moaspace train data_split.h5ad --out model --seed 0 --max-epochs 60

    With --backed the matrix is never loaded whole: batches, validation and the
    atlas read rows from DATA as needed (docs/reliability.md, out-of-core training).
    """
    from moaspace.model import MoaModel

    _check_train_target(out, data, overwrite=overwrite, resume=resume)
    _check_devices(devices, accelerator)
    adata = _training_data(data, genes, backed)
    extra = _hyperparams(compound_weight, input_whitening, multi_moa)
    model = MoaModel(adata, loss=loss, predictor=predictor, average_best=average_best,
                     input_whitening=input_whitening, linear_view_weight=linear_view_weight,
                     calibration_folds=(calibration_folds if calibration_folds == "auto"
                                        else _folds_number(calibration_folds)), **extra)
    model.train(max_epochs=max_epochs, batch_size=batch_size, seed=seed, resume=resume,
                model_dir=out, patience=patience, accelerator=accelerator,
                devices=int(devices) if devices.isdigit() else devices, strategy=strategy,
                progress_bar=not state["quiet"])
    model.save(out, overwrite=overwrite or resume)  # raw_atlas.h5ad too, for `crispr`
    print_summary("train", _train_rows(model, out, adata))


def _check_train_target(out: Path, data: Path, *, overwrite: bool, resume: bool) -> None:
    """``--out`` can be written, and holds no model unless --overwrite or --resume."""
    from moaspace.model.model import CONFIG_FILE

    check_output(out, [data], directory=True)
    if (out / CONFIG_FILE).exists() and not (overwrite or resume):
        # checked before any work: training first would overwrite the checkpoints of the
        # run that saved the model here
        raise MoaspaceError(f"{out} already holds a model; pass --overwrite to replace it "
                            "(or --resume to continue its training)")


def _check_devices(devices: str, accelerator: str) -> None:
    """``--devices`` is a number or 'auto'; a GPU ``--accelerator`` finds a CUDA GPU."""
    if devices != "auto" and not devices.isdigit():
        raise typer.BadParameter(f"--devices must be a number or 'auto', got {devices!r}")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MoaspaceError(f"--accelerator {accelerator}: no CUDA GPU is available here "
                                "(use --accelerator cpu or auto)")


def _training_data(data: Path, genes: str | None, backed: bool):
    """DATA read (or opened backed), restricted to the landmark genes by --genes landmark."""
    adata = load_h5ad(data, backed=backed)
    if genes == "landmark":
        if "feature_space" not in adata.var.columns:
            raise MoaspaceError(f"{data}: var has no 'feature_space' column to pick landmarks")
        landmark = adata.var["feature_space"].astype(str) == "landmark"
        # a backed view stays on disk (its rows are read through the view's gene positions)
        adata = adata[:, landmark] if backed else adata[:, landmark].copy()
    elif genes not in (None, "all"):
        raise typer.BadParameter("--genes must be 'landmark' or 'all'")
    return adata


def _train_rows(model, out: Path, adata) -> list[tuple[str, object]]:
    """The summary table of a trained model."""
    return [("model directory", out), ("signatures x genes", adata.shape),
            ("MoAs", len(model.moas)), ("compounds", len(model.compounds)),
            ("best epoch", model.best_epoch),
            ("best val macro-F1", f"{model.best_val_f1 or float('nan'):.3f}"),
            ("epochs averaged", ", ".join(map(str, model.train_info["averaged_epochs"]))
             or "none (best epoch kept)"),
            ("val macro-F1 kept", f"{model.train_info['final_val_f1'] or float('nan'):.3f}")]


@handle_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    query: Annotated[Path, typer.Argument(
        help="Query signatures: .h5ad, .gctx, .gct, .tsv or .csv (text also .gz); GCT/GCTX "
             "column metadata go to obs, rows by Entrez id (pr_gene_id) or landmark probe id.")],
    out: Annotated[Path, typer.Option(help="Output .h5ad with predictions.")],
    k: Annotated[
        int | None,
        typer.Option(help="Neighbours in the kNN vote (default: the k the model was "
                          "calibrated for, its knn_k, 10)."),
    ] = None,
    predictor: Annotated[
        str | None,
        typer.Option("--predictor", "--method",
                     help="knn | prototype | hidden_prototype (default: the model's predictor, "
                          "the one it was trained and calibrated for; --method is its old "
                          "name)."),
    ] = None,
    top_k: Annotated[int, typer.Option(help="MoAs kept per signature in the table.")] = 5,
    compound_level: Annotated[
        bool, typer.Option("--compound-level", help="Also call one MoA per compound.")
    ] = False,
    compound_key: Annotated[str, typer.Option(help="obs column naming compounds.")] = "pert_id",
    backend: Annotated[str, typer.Option(help="torch (exact, chunked) | faiss.")] = "torch",
    open_set: Annotated[
        bool | None,
        typer.Option("--open-set/--no-open-set",
                     help="Call 'unknown' above the calibrated unknown-score threshold "
                          "(default: on when the model is calibrated)."),
    ] = None,
    min_tas: Annotated[
        float | None,
        typer.Option(help="'no call' for signatures with obs['tas'] below this "
                          "(default: the model's calibration, usually off)."),
    ] = None,
    min_strength: Annotated[
        float | None,
        typer.Option(help="'no call' for signatures whose z-score strength "
                          "(obs['moa_strength']) is below this (default: the calibration's "
                          "cut-off; 0: off)."),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(help="'no call' where the calibrated probability that the top MoA is "
                          "right (obs['moa_pred_score']) is below this (default: the "
                          "calibration's cut-off; 0: off)."),
    ] = None,
    unknown_by: Annotated[
        str,
        typer.Option(help="compound: the signatures of one compound (--compound-key) are "
                          "called 'unknown' together from their mean unknown score "
                          "(obs['moa_unknown_score_compound']); signature: each on its own."),
    ] = "compound",
) -> None:
    """Embed signatures and call their MoA by nearest neighbours in the atlas.

    Writes obsm['X_moa'], obs['moa_pred'], obs['moa_pred_score'], the top-k table
    next to OUT as OUT.top_k.csv (with --compound-level also the per-compound table
    OUT.compounds.csv; a stale one from an earlier run is removed). OUT.h5ad gives
    OUT.top_k.csv; any other name keeps its whole name (run.2024 -> run.2024.top_k.csv).
    With a calibrated model (calibration.json) moa_pred_score is a calibrated
    probability, obs['moa_unknown_score'] the distance to every known MoA (of the call:
    where the compound decides, its mean on the same scale; the signature's own in
    obs['moa_unknown_score_signature']), and
    moa_pred is 'unknown' where the query is far from all of them (--open-set; by
    default decided per compound, from the mean over its signatures: --unknown-by)
    or 'no call' for weak signatures (--min-strength, --min-tas) and for calls whose
    calibrated probability is too low (--min-score); obs['moa_pred_known']
    keeps the top known MoA, obs['moa_pred_set'] the prediction set (the top call and
    every MoA whose calibrated probability, obsm['moa_proba'], reaches the set threshold).

    Example:

        moaspace predict model query.h5ad --out pred.h5ad --compound-level --min-tas 0.2
    """
    from moaspace.model import MoaModel
    from moaspace.model._predict import predict as run_predict
    from moaspace.model._predict import prediction_table, write_predictions

    top_path, calls_path = _predict_outputs(out, model_dir, query, top_k=top_k, k=k,
                                            unknown_by=unknown_by)
    model = MoaModel.load(model_dir)
    if open_set and model.calibration is None:
        raise MoaspaceError(f"{model_dir} has no calibration.json (saved by an older moaspace?): "
                            "--open-set needs one; retrain, or use --no-open-set")
    _check_unit_interval(min_tas=min_tas, min_score=min_score)
    from moaspace.io.query import read_query

    adata = read_query(query, gene_ids=model.genes)
    if compound_level and compound_key not in adata.obs.columns:
        raise MoaspaceError(f"{query}: obs has no column {compound_key!r} for --compound-level")
    if min_tas and "tas" not in adata.obs.columns:
        raise MoaspaceError(f"{query}: obs has no 'tas' column for --min-tas")
    pool = unknown_by == "compound" and compound_key in adata.obs.columns
    result = run_predict(model, adata, k=k, predictor=predictor, top_k=top_k, backend=backend,
                         compound_key=compound_key if compound_level or pool else None,
                         open_set=open_set, min_tas=min_tas, min_strength=min_strength,
                         min_score=min_score, unknown_by=unknown_by)
    if not compound_level:  # compounds were read for the pooled unknown calls only
        result.uns["moa"].pop("compound_calls", None)
    write_predictions(result, out, top_k_csv=top_path, compounds_csv=calls_path)
    calls = prediction_table(result, "compound_calls")
    print_summary("predict", _predict_rows(result, out, calls, calls_path))


def _check_unit_interval(**options: float | None) -> None:
    """Each given --option must lie in [0, 1]."""
    for name, value in options.items():
        if value is not None and not 0 <= value <= 1:
            raise typer.BadParameter(f"--{name.replace('_', '-')} must be in [0, 1]")


def _folds_number(text: str) -> int:
    """--calibration-folds as a number (the config checks its range)."""
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"--calibration-folds must be auto or a number, got "
                                 f"{text!r}") from None


def _predict_outputs(out: Path, model_dir: Path, query: Path, *, top_k: int,
                     k: int | None, unknown_by: str) -> tuple[Path, Path]:
    """Check --top-k, --k and --unknown-by, and that OUT and its two side tables can be
    written; returns the paths of the top-k table and of the compound table."""
    from moaspace.model._predict import UNKNOWN_BY

    if unknown_by not in UNKNOWN_BY:
        raise typer.BadParameter(f"--unknown-by must be one of {list(UNKNOWN_BY)}, "
                                 f"got {unknown_by!r}")
    if top_k < 1:
        raise typer.BadParameter(f"--top-k must be >= 1, got {top_k}")
    if k is not None and k < 1:
        raise typer.BadParameter(f"--k must be >= 1, got {k}")
    top_path, calls_path = (side_file(out, ".top_k.csv"), side_file(out, ".compounds.csv"))
    for path in (out, top_path, calls_path):
        check_output(path, [model_dir, query])
    return top_path, calls_path


def _predict_rows(result, out: Path, calls, calls_path: Path) -> list[tuple[str, object]]:
    """The summary table of a prediction run."""
    rows = [("output", out), ("signatures", result.n_obs),
            ("top MoA calls", ", ".join(
                f"{m} ({n})" for m, n in result.obs["moa_pred"].value_counts().head(3).items()))]
    if calls is not None:
        rows.append(("compounds called", len(calls)))
        rows.append(("compound table", calls_path))
    info = result.uns["moa"]["params"]
    if info.get("calibrated"):
        labels = result.obs["moa_pred"].astype(str)
        rows.append(("unknown MoA calls", f"{int((labels == 'unknown').sum())} "
                     f"({info['unknown_score']} score > {info['unknown_threshold']:.3f})"
                     if info.get("open_set") else "off (--no-open-set)"))
        if {"min_tas", "min_strength", "min_score"} & set(info):
            why = ", ".join(f"{name} < {info[key]:.2f}" for name, key in
                            (("TAS", "min_tas"), ("strength", "min_strength"),
                             ("calibrated probability", "min_score")) if key in info)
            rows.append((f"no call ({why})", int((labels == "no call").sum())))
    else:
        rows.append(("calibration", "missing: moa_pred_score is uncalibrated"))
    return rows


@handle_errors
def calibrate(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory (updated in place).")],
    data: Annotated[Path, typer.Argument(help=".h5ad with held-out compounds of known MoAs.")],
    split: Annotated[
        str, typer.Option(help="Use rows with obs['split'] == SPLIT ('all': every row).")
    ] = "val",
    target_false_unknown: Annotated[
        float, typer.Option(help="False-unknown rate the threshold allows on these rows.")
    ] = 0.05,
    calibration_map: Annotated[
        str, typer.Option("--calibration-map", "--method",
                          help="auto | isotonic | temperature | logistic | none (--method is "
                               "its old name).")
    ] = "auto",
    score: Annotated[str, typer.Option(
        help="Open-set score: auto (hidden_prototype where the model has it) | "
             "pseudo_unknown (best validation AUROC against leave-own-MoA-out) | prototype "
             "| knn | energy | msp | hidden_prototype.")
    ] = "auto",
    min_tas: Annotated[
        float | None, typer.Option(help="Store a 'no call' TAS cut-off in the calibration.")
    ] = None,
) -> None:
    """Refit the calibrated scores and the 'unknown' threshold of a trained model.

    train() already calibrates on its validation compounds; use this to
    recalibrate on a larger or newer set of held-out compounds (they must not
    be in the training atlas) or for another false-unknown rate. Rewrites
    calibration.json and config.json (checksums) in MODEL_DIR.

    Example:

        moaspace calibrate model heldout.h5ad --split all --target-false-unknown 0.1
    """
    from moaspace.model import MoaModel

    if not 0 < target_false_unknown < 1:
        raise typer.BadParameter("--target-false-unknown must be in (0, 1)")
    _check_unit_interval(min_tas=min_tas)
    model = MoaModel.load(model_dir)
    adata = load_h5ad(data)
    cal = model.calibrate(adata, split=None if split == "all" else split,
                          target_false_unknown=target_false_unknown, method=calibration_map,
                          score=score, min_tas=min_tas)
    model.save(model_dir, overwrite=True)
    maps = ", ".join(f"{m} ({p})" for p, m in cal.maps.items())
    print_summary("calibrate", [("model", model_dir), ("calibration", maps),
                           ("open-set score", cal.score),
                           ("target false-unknown rate", target_false_unknown)])


@handle_errors
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    data: Annotated[Path, typer.Argument(help=".h5ad with obs['split'] and obs['moa'].")],
    out: Annotated[Path, typer.Option(help="Metrics JSON (a .md twin is written too).")],
    split_name: Annotated[str, typer.Option("--split", help="Which split to score.")] = "test",
    k: Annotated[
        int | None,
        typer.Option(help="Neighbours in the kNN vote (default: as calibrated, the model's "
                          "knn_k)."),
    ] = None,
    predictor: Annotated[
        str | None,
        typer.Option("--predictor", "--method",
                     help="knn | prototype | hidden_prototype (default: the model's predictor; "
                          "--method is its old name)."),
    ] = None,
) -> None:
    """Score a model on held-out signatures: signature and compound level, hierarchy.

    Example:

        moaspace evaluate model data_split.h5ad --out metrics.json
    """
    from moaspace.model import MoaModel
    from moaspace.tl._evaluate import evaluate as run_evaluate
    from moaspace.tl._evaluate import write_metrics

    for path in (out, out.with_suffix(".md")):
        check_output(path, [model_dir, data])
    model = MoaModel.load(model_dir)
    adata = load_h5ad(data)
    if "split" not in adata.obs.columns:
        raise MoaspaceError(f"{data}: obs has no 'split' column (run `moaspace split` first)")
    if not (adata.obs["split"].astype(str) == split_name).any():
        counts = adata.obs["split"].astype(str).value_counts().to_dict()
        raise MoaspaceError(f"{data}: no signatures with obs['split'] == {split_name!r} to "
                            f"evaluate (the split column holds {counts}); use --split")
    metrics = run_evaluate(model, adata, split=split_name, k=k, predictor=predictor)
    write_metrics(metrics, out)
    print_summary("evaluate", [("output", out), ("signatures", metrics["n"]),
                          ("accuracy", f"{metrics['accuracy']:.3f}"),
                          ("macro-F1", f"{metrics['macro_f1']:.3f}"),
                          ("top-5 accuracy", f"{metrics['top5_accuracy']:.3f}"),
                          ("compound macro-F1",
                           f"{metrics.get('compound_level', {}).get('macro_f1', float('nan')):.3f}")])
