"""Our model and every baseline on the same splits and seeds, side by side.

For each seed the data are split once (``moaspace.pp._split.split``) and every
method sees exactly that split: classical baselines are fitted on train + val
(they need no early stopping, so this only helps them), neural models train on
train and early-stop on val; all are scored on test with the same metrics.

Methods:

* ``moaspace``: dual ArcFace (MoA + compound), our defaults (calls by the
  nearest MoA prototype of the last hidden layer, ``predictor="hidden_prototype"``,
  early-stops on it and keeps the mean weights of its 5 best validation epochs,
  ``average_best=5``);
* ``raw_knn``, ``pca_knn``, ``pca_lda``, ``logreg``, ``lda``, ``linear_svm``: see
  :mod:`moaspace.benchmark._baselines`;
* ``logreg_ovr``: the multi-label baseline, one-vs-rest logistic regression fitted on
  the MoA sets (``obs["moa_set"]``) of single- and multi-MoA training compounds;
* ``mlp_softmax``: the same encoder trained as a softmax classifier;
* ``arcface_moa_only``: our model without the compound loss (both ablations
  call MoAs and early-stop as ``moaspace`` does, with the same input candidates and
  prototype layer, so they differ from it in the loss alone);
* ``moaspace_unwhitened``: our model as it was before input whitening and the linear
  view (raw input, hidden-layer prototypes over the training rows);
* ``reference``: the published configuration (Adam-like lr 1e-5, no dropout or
  batch-norm, MoA margin 0.25 rad, compound margin 0.1 *degree* as the
  reference's pytorch-metric-learning call actually applied it, compound loss
  weighted 0.1 as its training loop does, 1-NN), given
  the same epoch budget as ours and our validation early stopping (scored by
  the embedding's kNN vote, ``predictor="knn"``; the single best epoch is kept,
  ``average_best=1``).

Neural models are scored through :func:`moaspace.tl.predict`, the code
``moaspace predict`` runs, with each model's own predictor.

Besides the MoA call, each record of a method with a space of its own (the
neural models' embedding ``X_moa``; ``raw_knn``'s z-scores) scores the compound
level of the hierarchy among the test signatures: ``compound_map``, the mean
average precision of retrieving a signature's same-compound signatures (other
doses, times, cell lines) by cosine, and ``same_compound_share``, the share of
its 10 nearest test neighbours from the same compound. That is what the
compound loss is for, and where ``moaspace`` and ``arcface_moa_only`` differ.

Compounds with several MoAs (``obs["moa"]`` NaN, ``obs["moa_set"]`` ``"a|b"``) and
unlabelled rows take no part in the single-label fits and metrics: the single-label
methods fit, and every method is scored on, the rows with one ``moa`` (so their numbers
are those of the data without the other rows). The neural models get every training row:
``ModelConfig.use_multi_moa`` (off by default) / ``use_unlabelled`` (on; both off for
``reference``, as published) decide whether those rows train the MoA and compound losses
(``moaspace_multi_moa_classes``: also ``multi_moa_classes``, the MoAs only multi-MoA
compounds list become classes). Multi-MoA test signatures are scored
apart (``multi_*`` keys, :mod:`moaspace._core.sets`): the top-1 call (argmax of the
scores) in the true set, recall@3 of the ranking by the scores (for ``moaspace`` the
same order as ``moa_proba``, whose isotonic steps would tie MoAs) and set F1 of the predicted set (``logreg_ovr``'s own;
``moaspace``'s ``moa_pred_set`` when written; else {top-1}).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from moaspace._core.neighbors import aggregate_scores
from moaspace._utils import atomic_write_text, save_figure
from moaspace.benchmark._baselines import CLASSICAL, MULTILABEL, make_baseline
from moaspace.benchmark._multi import MULTI_METRICS, multi_markdown, multi_score, truth_of
from moaspace.errors import InputError
from moaspace.model._predict import predict
from moaspace.tl._metrics import classification_metrics, neighbour_label_shares, retrieval_map

logger = logging.getLogger(__name__)

#: the model before input whitening and the linear view: raw input, hidden-layer prototypes
#: over the training rows (the ablation that shows what those two add)
UNWHITENED = {"input_whitening": "off", "linear_view_weight": 0.0, "refit_prototypes": False}
NEURAL = {
    "moaspace": {},
    "moaspace_unwhitened": UNWHITENED,
    # moaspace without the multi-MoA and unlabelled compounds (#28): what they bring
    "moaspace_single_moa": {"use_multi_moa": False, "use_unlabelled": False},
    "moaspace_multi_moa": {"use_multi_moa": True},
    "moaspace_multi_moa_classes": {"use_multi_moa": True, "multi_moa_classes": True},
    "mlp_softmax": {"loss": "softmax"},
    "arcface_moa_only": {"loss": "arcface_moa"},
    "reference": {**UNWHITENED,
        "loss": "dual_arcface", "lr": 1e-5, "moa_margin": 0.25,
        "compound_margin": 0.1 * math.pi / 180, "compound_weight": 0.1,  # lambda_cmap
        "dropout": 0.0, "batch_norm": False,
        "input_dropout": 0.0, "weight_decay": 0.0, "warmup_epochs": 0.0, "predictor": "knn",
        "average_best": 1, "knn_k": 1,  # 1-NN, as published: early stopping scores it too
        "use_multi_moa": False, "use_unlabelled": False,  # single-MoA compounds, as published
    },
}
NEURAL_K = {"reference": 1}
NEURAL_BATCH = {"reference": 512}
METHODS = ("moaspace", "raw_knn", "pca_knn", "pca_lda", "logreg", "lda", "linear_svm",
           "logreg_ovr",
           "mlp_softmax", "arcface_moa_only", "moaspace_unwhitened", "reference")
#: run only when named (``--methods``): ablations of one change
OPTIONAL_METHODS = ("moaspace_single_moa", "moaspace_multi_moa", "moaspace_multi_moa_classes")


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def _hierarchy(space: np.ndarray, compounds: np.ndarray, seed: int) -> dict:
    """The compound level among the test signatures of one method's space."""
    if len(compounds) < 3:
        return {}
    k = min(10, len(compounds) - 1)
    share = neighbour_label_shares(space, {"compound": compounds}, k=k)["compound"]
    return {"compound_map": retrieval_map(space, compounds, seed=seed),
            "same_compound_share": share}


def _score(method, scheme, seed, y, scores, classes, compounds, seconds, extra=None) -> dict:
    m = classification_metrics(y, scores, classes)
    record = {"method": method, "scheme": scheme, "seed": seed,
              "macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
              "weighted_f1": m["weighted_f1"], "top3_accuracy": m["top3_accuracy"],
              "top5_accuracy": m["top5_accuracy"], "n_test": m["n"], "seconds": seconds}
    if compounds is not None:
        agg = aggregate_scores(scores, compounds)
        truth = pd.Series(y, index=compounds).groupby(level=0).first()
        cm = classification_metrics(truth.loc[agg.index].to_numpy(), agg.to_numpy(np.float32),
                                    classes)
        record["compound_macro_f1"] = cm["macro_f1"]
        record["compound_accuracy"] = cm["accuracy"]
    record.update(extra or {})
    return record


def _fit_predict(method: str, data, seed: int, *, max_epochs: int, k: int,
                 n_components: int, model_kwargs: dict | None) -> dict:
    """Fit one method on the train (+ val) rows of ``data`` and score its test rows."""
    from moaspace.model import MoaModel

    part = data.obs["split"].astype(str).to_numpy()
    fit_rows, test_rows = np.isin(part, ["train", "val"]), part == "test"
    truth = truth_of(data.obs)
    # single-label methods fit the rows with one MoA; multi-label ones every labelled row
    fit_rows_one = fit_rows & truth["single"]
    t0 = time.perf_counter()
    pred_sets = None
    if method in CLASSICAL:
        X_test = _dense(data.X[test_rows])
        model = make_baseline(method, seed=seed, k=k, n_components=n_components)
        if method in MULTILABEL:
            rows = fit_rows & np.array([bool(s) for s in truth["sets"]])
            model.fit(_dense(data.X[rows]), [truth["sets"][i] for i in np.flatnonzero(rows)])
        else:
            model.fit(_dense(data.X[fit_rows_one]), truth["y"][fit_rows_one])
        scores, classes = model.predict_scores(X_test)
        if method in MULTILABEL:
            pred_sets = model.predict_sets(X_test, scores)
        # raw_knn's space is the z-scores themselves: the CMap-style reference
        # for how much compound structure the signatures carry on their own
        space = X_test if method == "raw_knn" else None
        extra: dict = {}
    else:
        own = (model_kwargs or {}) if method == "moaspace" else {}
        # no fold models: the benchmark reads raw scores and sets, not the confidence map
        # they refine (calibration_folds)
        kwargs = {"calibration_folds": 0, **NEURAL[method], **own}
        # multi-MoA and unlabelled training rows go in: the model's use_multi_moa and
        # use_unlabelled decide what they train (a single-MoA batch computes as before)
        model = MoaModel(data, **kwargs)
        model.train(max_epochs=max_epochs, batch_size=NEURAL_BATCH.get(method, 256),
                    seed=seed, progress_bar=False)
        # the raw per-class scores of `moaspace predict` (no open-set calls: every
        # test MoA is known), with the model's own predictor; an unsure or weak call keeps
        # its set (min_score=0, min_strength=0), as every baseline's does: an abstention
        # would score an empty set, which no baseline ever answers
        pred = predict(model, data[test_rows], k=NEURAL_K.get(method, k),
                       compound_key=None, open_set=False, min_score=0, min_strength=0)
        scores, classes = pred.obsm["moa_scores"], list(pred.uns["moa"]["classes"])
        if "moa_pred_set" in pred.obs:
            pred_sets = pred.obs["moa_pred_set"].tolist()
        extra = {"best_epoch": model.best_epoch, "best_val_f1": model.best_val_f1,
                 "averaged_epochs": model.train_info["averaged_epochs"],
                 "final_val_f1": model.train_info["final_val_f1"],
                 "epochs_run": len(model.history), "max_epochs": max_epochs,
                 "predictor": model.config.predictor}
        extra.update({key: model.train_info[key] for key in ("input_whitening", "loss")
                      if key in model.train_info})
        space = np.asarray(pred.obsm["X_moa"])
    return {"scores": np.asarray(scores, np.float32), "classes": [str(c) for c in classes],
            "space": space, "extra": extra, "seconds": time.perf_counter() - t0,
            "pred_sets": pred_sets}


def _on_classes(scores: np.ndarray, classes: list[str], every: list[str]) -> np.ndarray:
    """Scores re-indexed onto ``every`` class (a class a fold never trained on: -inf)."""
    out = np.full((len(scores), len(every)), -np.inf, dtype=np.float32)
    pos = {c: i for i, c in enumerate(every)}
    out[:, [pos[c] for c in classes]] = scores
    return out


def run_benchmark(
    adata,
    *,
    scheme: str = "compound",
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    holdout_cells: Sequence[str] | None = None,
    max_epochs: int = 40,
    k: int = 10,
    n_components: int = 100,
    model_kwargs: dict | None = None,
    cv: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Run every method on the same split per seed; return one record per (method, seed).

    Per seed the data are split once (:func:`moaspace.pp.split` with ``scheme``) and every
    method is fitted on that split and scored on its test rows (see the module docstring).

    ``cv=K``: instead of one split per seed, compound-grouped K-fold cross-validation
    stratified by MoA (:func:`moaspace.pp._split.cv_folds`): every compound is tested
    once, and each record holds the metrics of the predictions pooled over the K folds
    (scheme ``cvK``); the seed deals the folds. The hierarchy metrics are the mean
    over the folds that have them.

    Parameters
    ----------
    adata : anndata.AnnData
        Prepared signatures with ``obs["moa"]`` and ``obs["pert_id"]``; optionally
        ``obs["moa_set"]`` (every MoA, ``|``-joined; ``moa`` NaN where there are several).
    scheme : str, default "compound"
        Split scheme of :func:`moaspace.pp.split` (``moaspace.pp.SCHEMES``); not used
        with ``cv``.
    seeds : sequence of int, default (0, 1, 2)
        One split (or fold assignment) and one fit of every method per seed.
    methods : sequence of str, default ``METHODS``
        Methods to run, names from ``METHODS`` (or ``OPTIONAL_METHODS``).
    holdout_cells : sequence of str, optional
        Cell lines to hold out, passed to the split.
    max_epochs : int, default 40
        Epoch budget of every neural model.
    k : int, default 10
        Neighbours of the kNN baselines and of the neural models' calls (``reference``
        uses 1).
    n_components : int, default 100
        PCA components of the PCA baselines.
    model_kwargs : dict, optional
        Extra :class:`moaspace.model.MoaModel` options, for the ``moaspace`` method only.
    cv : int, optional
        Number of cross-validation folds (>= 2); default None: one held-out split per seed.
    progress : bool, default False
        Show a tqdm progress bar over fits.

    Returns
    -------
    list of dict
        One record per (method, seed): ``method``, ``scheme``, ``seed``, ``macro_f1``,
        ``accuracy``, ``weighted_f1``, ``top3_accuracy``, ``top5_accuracy``, ``n_test``,
        ``seconds`` (fitting and prediction), ``compound_macro_f1`` and
        ``compound_accuracy``; methods with a space of their own add ``compound_map`` and
        ``same_compound_share``. Without ``cv`` neural models add their training info
        (``best_epoch``, ``best_val_f1``, ``averaged_epochs``, ``final_val_f1``,
        ``epochs_run``, ``max_epochs``, ``predictor``, ...); with ``cv`` every record has
        ``n_folds`` and ``folds`` (that info per fold) instead.
        The single-label metrics (and ``n_test``) are those of the test rows with one
        ``obs["moa"]``; when the test part holds compounds with several MoAs
        (``obs["moa_set"]``), ``n_multi_test`` (their signatures), ``multi_top1_in_set``,
        ``multi_recall_at_3`` and ``multi_set_f1`` (:mod:`moaspace._core.sets`).

    Raises
    ------
    InputError
        If ``methods`` names an unknown method, ``cv < 2``, a split has no test
        signatures, or the split itself rejects the data.
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(methods) - set(METHODS) - set(OPTIONAL_METHODS))
    if unknown:
        raise InputError(f"unknown benchmark methods {unknown}; known: {list(METHODS)}")
    if cv is not None and cv < 2:
        raise InputError(f"cv needs at least 2 folds, got {cv}")
    options = {"max_epochs": max_epochs, "k": k, "n_components": n_components,
               "model_kwargs": model_kwargs}
    records = []
    bar = tqdm(total=len(seeds) * len(methods) * (cv or 1), desc=f"benchmark ({scheme})",
               unit="fit", disable=not progress)
    for seed in seeds:
        if cv is None:
            records += _holdout_records(adata, scheme, seed, methods, holdout_cells, options,
                                        bar)
        else:
            records += _cv_records(adata, cv, seed, methods, options, bar)
    bar.close()
    return records


def _holdout_records(adata, scheme, seed, methods, holdout_cells, options, bar) -> list[dict]:
    from moaspace.pp._split import split as make_split

    data = make_split(adata, scheme, holdout_cells=holdout_cells, seed=seed, copy=True)
    test_rows = data.obs["split"].astype(str).to_numpy() == "test"
    if not test_rows.any():
        raise InputError(f"split {scheme!r} (seed {seed}) has no test signatures")
    truth = truth_of(data.obs[test_rows])
    one = truth["single"]  # the test rows of the single-label metrics
    if not one.any():
        raise InputError(f"split {scheme!r} (seed {seed}) has no single-MoA test signatures")
    cpd_test = data.obs["pert_id"].astype(str).to_numpy()[test_rows][one]
    records = []
    for method in methods:
        logger.info("benchmark: %s, scheme %s, seed %d", method, scheme, seed)
        got = _fit_predict(method, data, seed, **options)
        extra = dict(got["extra"])
        if got["space"] is not None:  # the hierarchy is not timed
            extra.update(_hierarchy(got["space"][one], cpd_test, seed))
        extra.update(multi_score(truth["sets"], truth["multi"], got["scores"], got["classes"],
                                  got["pred_sets"]))
        records.append(_score(method, scheme, seed, truth["y"][one], got["scores"][one],
                              got["classes"], cpd_test, got["seconds"], extra))
        logger.info("  macro-F1 %.3f accuracy %.3f (%.0f s)", records[-1]["macro_f1"],
                    records[-1]["accuracy"], got["seconds"])
        bar.update()
    return records


def _cv_records(adata, n_folds, seed, methods, options, bar) -> list[dict]:
    from moaspace.pp._split import cv_folds

    folds = cv_folds(adata, n_folds, seed=seed)
    truth = truth_of(adata.obs)
    y, one = truth["y"], truth["single"]
    cpd = adata.obs["pert_id"].astype(str).to_numpy()
    every = sorted(set(y[one]).union(*truth["sets"]))  # MoAs of multi-MoA compounds too
    scheme = f"cv{n_folds}"
    records = []
    for method in methods:
        logger.info("benchmark: %s, %d-fold cross-validation, seed %d", method, n_folds, seed)
        scores = np.full((adata.n_obs, len(every)), -np.inf, dtype=np.float32)
        pred_sets = None
        seconds, hierarchy, extras = 0.0, [], []
        for labels in folds:
            data = adata.copy()
            data.obs["split"] = pd.Categorical(labels, categories=["train", "val", "test"])
            test_rows = labels == "test"
            got = _fit_predict(method, data, seed, **options)
            scores[test_rows] = _on_classes(got["scores"], got["classes"], every)
            if got["pred_sets"] is not None:
                pred_sets = np.full(adata.n_obs, "", dtype=object) if pred_sets is None \
                    else pred_sets
                pred_sets[test_rows] = got["pred_sets"]
            seconds += got["seconds"]
            extras.append(got["extra"])
            if got["space"] is not None:
                hierarchy.append(_hierarchy(got["space"][one[test_rows]],
                                            cpd[test_rows & one], seed))
            bar.update()
        extra = {"n_folds": n_folds, "folds": extras}
        for key in ("compound_map", "same_compound_share"):
            values = [h[key] for h in hierarchy if key in h and np.isfinite(h[key])]
            if values:
                extra[key] = float(np.mean(values))
        scores[~np.isfinite(scores)] = np.float32(-1e30)  # ranks last, keeps metrics finite
        extra.update(multi_score(truth["sets"], truth["multi"], scores, every, pred_sets))
        records.append(_score(method, scheme, seed, y[one], scores[one], every, cpd[one],
                              seconds, extra))
        logger.info("  pooled macro-F1 %.3f accuracy %.3f (%.0f s)", records[-1]["macro_f1"],
                    records[-1]["accuracy"], seconds)
    return records


def summarize(records: list[dict]) -> pd.DataFrame:
    """Mean and sd over seeds per (scheme, method), sorted by mean macro-F1.

    Parameters
    ----------
    records : list of dict
        Records of :func:`run_benchmark`.

    Returns
    -------
    pandas.DataFrame
        One row per (scheme, method): ``scheme``, ``method``, ``<metric>_mean`` and
        ``<metric>_std`` (sample sd, NaN for one seed) for each of ``macro_f1``,
        ``accuracy``, ``top5_accuracy``, ``compound_macro_f1``, ``compound_map``,
        ``seconds`` and the multi-MoA ``n_multi_test``, ``multi_top1_in_set``,
        ``multi_recall_at_3`` and ``multi_set_f1`` present in the records, and ``n_seeds``;
        sorted by scheme, then by ``macro_f1_mean`` (largest first).
    """
    frame = pd.DataFrame(records)
    metrics = [c for c in ("macro_f1", "accuracy", "top5_accuracy", "compound_macro_f1",
                           "compound_map", "seconds", *MULTI_METRICS) if c in frame]
    agg = frame.groupby(["scheme", "method"])[metrics].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["n_seeds"] = frame.groupby(["scheme", "method"]).size()
    return agg.reset_index().sort_values(["scheme", "macro_f1_mean"], ascending=[True, False])


def paired_differences(records: list[dict], metric: str = "macro_f1",
                       ours: str = "moaspace") -> pd.DataFrame:
    """Per-seed differences of ``ours`` minus every other method, per scheme.

    Seed by seed on the same split: mean, sd (ddof 1) and the number of seeds where
    ``ours`` is higher.

    Splits differ much more between seeds than methods differ within one (the seed
    sets which compounds are unseen), so the per-seed difference, not the spread of
    each method's mean, says whether ``ours`` is ahead; ``beyond_spread`` is
    ``mean > sd``, the acceptance bar of the benchmark issue.

    Parameters
    ----------
    records : list of dict
        Records of :func:`run_benchmark`.
    metric : str, default "macro_f1"
        Record key compared (e.g. ``multi_top1_in_set``, ``multi_recall_at_3``).
    ours : str, default "moaspace"
        Method subtracted from.

    Returns
    -------
    pandas.DataFrame
        One row per (scheme, other method) with ``scheme``, ``method``, ``n_seeds``
        (seeds where both have ``metric``), ``mean``, ``sd`` (NaN for one seed),
        ``higher`` and ``beyond_spread`` (False for one seed); empty when ``ours`` has
        no record or no record has ``metric``.
    """
    frame = pd.DataFrame(records)
    rows = []
    if frame.empty or metric not in frame or ours not in set(frame["method"]):
        return pd.DataFrame(rows)
    for scheme, block in frame.groupby("scheme", sort=False):
        wide = block.pivot_table(index="seed", columns="method", values=metric)
        if ours not in wide:
            continue
        for method in wide.columns:
            if method == ours:
                continue
            d = (wide[ours] - wide[method]).dropna().to_numpy()
            if len(d) == 0:
                continue
            sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
            rows.append({"scheme": scheme, "method": method, "n_seeds": len(d),
                         "mean": float(d.mean()), "sd": sd, "higher": int((d > 0).sum()),
                         "beyond_spread": bool(len(d) > 1 and d.mean() > sd)})
    return pd.DataFrame(rows)


def results_markdown(records: list[dict]) -> str:
    """Markdown report of benchmark records.

    Parameters
    ----------
    records : list of dict
        Records of :func:`run_benchmark`.

    Returns
    -------
    str
        Per scheme: mean ± sd of macro-F1, accuracy, top-5 accuracy, compound macro-F1,
        same-compound mAP (when a record has it) and seconds per method; with more than
        one seed, the paired per-seed differences of ``moaspace`` minus each method
        (:func:`paired_differences`, macro-F1 and same-compound mAP); with multi-MoA
        test signatures, their top-1 in set, recall@3 and set F1 per method and the paired
        differences of the first two. Then notes on how the methods were fitted and scored.
    """
    from moaspace.model.model import ModelConfig

    summary = summarize(records)
    paired = paired_differences(records)
    hierarchy = "compound_map_mean" in summary
    paired_map = paired_differences(records, "compound_map") if hierarchy else pd.DataFrame()
    lines = []
    for scheme, block in summary.groupby("scheme", sort=False):
        lines += [f"### Held-out split: `{scheme}` ({int(block['n_seeds'].max())} seeds, "
                  "mean ± sd)", "",
                  "| method | macro-F1 | accuracy | top-5 | compound macro-F1 | "
                  + ("same-compound mAP | " if hierarchy else "") + "seconds |",
                  "|---|---|---|---|---|" + ("---|" if hierarchy else "") + "---|"]
        for _, row in block.iterrows():
            def cell(name, digits=3, row=row):
                mean, sd = row.get(f"{name}_mean"), row.get(f"{name}_std")
                if mean is None or pd.isna(mean):
                    return "–"
                sd = 0.0 if pd.isna(sd) else sd
                return f"{mean:.{digits}f} ± {sd:.{digits}f}"
            lines.append(f"| {row['method']} | {cell('macro_f1')} | {cell('accuracy')} | "
                         f"{cell('top5_accuracy')} | {cell('compound_macro_f1')} | "
                         + (f"{cell('compound_map')} | " if hierarchy else "")
                         + f"{cell('seconds', 0)} |")
        lines.append("")
        mine = paired[paired["scheme"] == scheme] if len(paired) else paired
        if len(mine) and int(mine["n_seeds"].max()) > 1:
            lines += ["Paired per seed, `moaspace` minus each method (macro-F1; mean ± sd, ddof 1):",
                      "", "| method | difference | seeds higher | mean > sd |", "|---|---|---|---|"]
            for _, row in mine.sort_values("mean").iterrows():
                lines.append(f"| {row['method']} | {row['mean']:+.3f} ± {row['sd']:.3f} | "
                             f"{row['higher']}/{row['n_seeds']} | "
                             f"{'yes' if row['beyond_spread'] else 'no'} |")
            lines.append("")
        mine = paired_map[paired_map["scheme"] == scheme] if len(paired_map) else paired_map
        if len(mine) and int(mine["n_seeds"].max()) > 1:
            lines += ["Same-compound mAP, paired per seed, `moaspace` minus each method with a "
                      "space:", "", "| method | difference | seeds higher |", "|---|---|---|"]
            for _, row in mine.sort_values("mean").iterrows():
                lines.append(f"| {row['method']} | {row['mean']:+.3f} ± {row['sd']:.3f} | "
                             f"{row['higher']}/{row['n_seeds']} |")
            lines.append("")
        lines += multi_markdown(block, *(paired_differences(records, m) for m in
                                         ("multi_top1_in_set", "multi_recall_at_3")))
    lines.append("Classical baselines are fitted on train + val; neural models train on train and "
                 "early-stop on validation macro-F1 (held-out compounds; held-out training cell "
                 "lines for the `cell` scheme), with the same epoch budget for all (`reference` "
                 "included). `moaspace`, `mlp_softmax` and `arcface_moa_only` call the nearest "
                 "MoA prototype of the prototype layer (the last hidden layer stacked with the "
                 "within-class whitened signature; `predict`'s default), keep the better of a "
                 "raw-input and a whitened-input network on validation, and the mean weights of "
                 f"its {ModelConfig.average_best} best validation epochs; their prototypes are "
                 "computed over train + val. `moaspace_unwhitened` is `moaspace` without input "
                 "whitening and the linear view (raw input, hidden-layer prototypes over the "
                 "training rows: the model before them). `reference` predicts with 1-NN in the "
                 "embedding as published (best epoch kept); the classical kNN baselines with "
                 "distance-weighted cosine 10-NN. `cvK`: K-fold cross-validation over "
                 "compounds, predictions pooled over the folds.")
    if hierarchy:
        lines.append("")
        lines.append("Same-compound mAP: mean average precision of retrieving each test "
                     "signature's same-compound signatures among the test signatures by cosine, "
                     "in the method's own space (neural models: the embedding; `raw_knn`: the "
                     "z-scores; – where a method has none): the compound level of the hierarchy.")
    return "\n".join(lines) + "\n"


def write_benchmark(records: list[dict], out_dir: str | os.PathLike, meta: dict | None = None):
    """Write ``results.json`` (list of records), ``results.md`` and ``results.png``.

    Parameters
    ----------
    records : list of dict
        Records of :func:`run_benchmark`.
    out_dir : str or os.PathLike
        Output directory, created if needed.
    meta : dict, optional
        Appended to ``results.md`` as a JSON code block (e.g. the settings of the run).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    InputError
        If an output path exists and is not a regular file.
    MoaspaceError
        If the output directory is not writable.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(records, indent=2))
    md = results_markdown(records)
    if meta:
        md += "\n```\n" + json.dumps(meta, indent=2) + "\n```\n"
    atomic_write_text(out_dir / "results.md", md)
    from moaspace.pl import benchmark_results  # pl imports nothing from moaspace: no cycle

    save_figure(benchmark_results(summarize(records)), out_dir / "results.png", dpi=120)
    return out_dir
