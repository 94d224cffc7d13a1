"""Score a trained model on the held-out rows of a split: signature and compound level,
retrieval and the shape of the hierarchy. Writes JSON and a Markdown table."""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path

import numpy as np

from moaspace._core.labels import UNKNOWN
from moaspace._core.neighbors import aggregate_scores
from moaspace._core.sets import (
    has_label,
    multi_moa_mask,
    parse_moa_sets,
    set_metrics,
    sets_by_group,
)
from moaspace._utils import atomic_write_text
from moaspace.errors import InputError
from moaspace.model._predict import predict, prediction_table
from moaspace.tl._metrics import (
    classification_metrics,
    neighbour_label_shares,
    retrieval_map,
    silhouette,
)

logger = logging.getLogger(__name__)


def evaluate(
    model, adata, *, split: str = "test", split_key: str | None = None, k: int | None = None,
    moa_key: str | None = None, compound_key: str | None = None, seed: int = 0,
    predictor: str | None = None, method: str | None = None, moa_set_key: str | None = None,
) -> dict:
    """Metrics of ``model`` on the held-out rows with ``obs[split_key] == split``.

    The obs columns default to those the model was trained with (its key registry,
    ``model.keys``). The rows are called by :func:`moaspace.tl.predict` with
    ``predictor`` (None: the
    model's predictor; recorded as ``predictor``) and ``k``, then scored at signature
    level, at compound level (mean scores per compound), for the hierarchy of the
    embedding among the held-out signatures, and for retrieval.

    Those single-label metrics read the rows with one MoA in ``obs[moa_key]`` alone
    (NaN there: a compound with several MoAs, or none): with extra multi-MoA or unlabelled
    rows they equal those of the single-MoA rows evaluated by themselves. Rows whose
    ``obs[moa_set_key]`` holds two MoAs or more (``"a|b"``) are scored in ``multi_moa``
    instead (:mod:`moaspace._core.sets`).

    Parameters
    ----------
    model : moaspace.model.MoaModel
        A trained model.
    adata : anndata.AnnData
        Signatures with the split in ``obs[split_key]`` (see :func:`moaspace.pp.split`)
        and the true MoA in ``obs[moa_key]``.
    split : str, default "test"
        Value of ``obs[split_key]`` selecting the rows scored.
    split_key : str, optional
        ``obs`` column of the split (default: the model's).
    k : int, optional
        Neighbours of the kNN vote, passed to ``predict``; default None: the k that
        ``predict`` resolves (the calibrated one). The hierarchy uses ``min(k, n - 1)``.
    moa_key : str, optional
        ``obs`` column of the true MoA (default: the model's).
    compound_key : str, optional
        ``obs`` column of the compound (default: the model's); without it the
        compound-level metrics,
        ``silhouette_compound`` and ``compound_map`` are left out.
    seed : int, default 0
        Seed of the subsamples of the silhouette and retrieval metrics.
    predictor : str, optional
        Predictor for ``predict`` (``"knn"``, ``"prototype"`` or ``"hidden_prototype"``);
        default None: the model's.
    method : str, optional
        Deprecated name of ``predictor``.
    moa_set_key : str, optional
        ``obs`` column of every MoA of a compound, sorted and ``|``-joined (default: the
        model's, ``"moa_set"`` for a model without one); without it
        (or without a row of two MoAs or more) ``multi_moa`` is left out.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``macro_f1``, ``weighted_f1``, ``top3_accuracy``,
        ``top5_accuracy``, ``per_moa`` (signature level, see
        :func:`classification_metrics`), ``split``, ``predictor``;
        ``moas_not_in_training`` (only when some held-out MoAs were not trained on);
        ``open_set`` (calibrated models: ``score``, ``threshold``, ``calibration`` and
        the open-set metrics: the rates of ``predict``'s ``unknown`` calls, a weak
        signature's ``no call`` not counted as one, and the AUROC of
        ``obs["moa_unknown_score"]`` as ``predict`` writes it: with compounds, the score of
        the per-compound calls; NaN as None);
        ``compound_level`` (the same metrics on
        per-compound calls); ``hierarchy`` (``k``, ``knn_share``: share of each
        signature's k nearest held-out neighbours with the same ``moa``/``compound``,
        ``silhouette_moa``, ``silhouette_compound``); ``retrieval``
        (``moa_map_vs_atlas``: mAP of same-MoA atlas signatures; ``compound_map``: mAP
        of same-compound held-out signatures); ``multi_moa`` (only with multi-MoA rows):
        ``n_signatures``, ``top1_in_set`` (share of top-1 calls in the true set),
        ``recall_at_3`` (mean share of the true MoAs among the 3 best-ranked),
        ``set_f1`` (mean per-row F1 of the predicted set), ``ranking``, ``top1`` and
        ``pred_set`` (the outputs of ``predict`` they read: ``moa_proba`` when present,
        else ``moa_scores``; ``moa_pred_known`` when present, else ``moa_pred``;
        ``moa_pred_set`` when present, else ``"top1"``, the set {top-1}) and, with
        compounds, ``n_compounds`` and ``compound_level`` (the same three metrics of
        compounds ranked by their mean scores, and its ``pred_set``: the compound table's
        ``moa_pred_set`` when present, else ``"top1"``).

    Raises
    ------
    InputError
        If ``obs`` lacks ``split_key`` or ``moa_key``, no row has
        ``obs[split_key] == split`` (or none of them a single MoA), or ``predict`` rejects the input (unknown
        ``method``, ``k < 1``, genes that cannot be aligned).
    MoaspaceError
        If the model is not trained.
    """
    keys = model.keys
    split_key = split_key or keys.get("split", "split")
    moa_key = moa_key or keys.get("moa", "moa")
    compound_key = compound_key or keys.get("compound", "pert_id")
    moa_set_key = moa_set_key or keys.get("moa_set") or "moa_set"
    predictor = predictor or method
    for key in (split_key, moa_key):
        if key not in adata.obs.columns:
            raise InputError(f"obs has no column {key!r}; run `moaspace split` first"
                             if key == split_key else f"obs has no column {key!r}")
    rows = (adata.obs[split_key].astype(str) == split).to_numpy()
    if not rows.any():
        raise InputError(f"no rows with {split_key} == {split!r}")
    with_compounds = compound_key in adata.obs.columns
    # min_score=0: the prediction sets scored below are those of every call, not emptied
    # where predict would withhold an unsure one (the metrics read scores and sets)
    held = predict(model, adata[rows], k=k, predictor=predictor,
                   compound_key=compound_key if with_compounds else None, min_score=0)
    single = has_label(held.obs[moa_key])
    if not single.any():
        raise InputError(f"no rows with {split_key} == {split!r} have a single MoA in "
                         f"obs[{moa_key!r}] (multi-MoA and unlabelled compounds are NaN there)")
    true_sets = (parse_moa_sets(held.obs[moa_set_key]) if moa_set_key in held.obs.columns
                 else [frozenset()] * held.n_obs)
    multi = multi_moa_mask(true_sets)
    if not single.all():
        logger.info("evaluate: %d of %d rows have a single MoA (single-label metrics), %d "
                    "several (obs[%r]: multi-MoA metrics)", int(single.sum()), held.n_obs,
                    int(multi.sum()), moa_set_key)
    # the single-label metrics read the single-MoA rows alone: with extra multi-MoA or
    # unlabelled rows they are those of the single-MoA rows evaluated by themselves
    out = _single_label_metrics(model, held if single.all() else held[single], split=split,
                                moa_key=moa_key, compound_key=compound_key, seed=seed)
    if multi.any():
        out["multi_moa"] = _multi_moa_metrics(
            held[multi], [s for s, m in zip(true_sets, multi, strict=True) if m],
            compound_key=compound_key if with_compounds else None)
    return out


def _single_label_metrics(model, held, *, split: str, moa_key: str, compound_key: str,
                          seed: int) -> dict:
    """The signature, compound, open-set, hierarchy and retrieval metrics of the rows of
    ``held`` (a :func:`predict` result; every row with one MoA in ``obs[moa_key]``)."""
    k = int(held.uns["moa"]["params"]["k"])  # None: resolved by predict (the calibrated k)
    scores, classes = held.obsm["moa_scores"], held.uns["moa"]["classes"]
    y = held.obs[moa_key].astype(str).to_numpy()
    out = classification_metrics(y, scores, classes)
    out["split"] = split
    out["predictor"] = held.uns["moa"]["params"]["predictor"]
    unseen = sorted(set(y) - set(classes))
    if unseen:
        out["moas_not_in_training"] = unseen
    cal = getattr(model, "calibration", None)
    if cal is not None and "moa_unknown_score" in held.obs.columns:
        from moaspace.model.calibration import open_set_metrics

        best = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
        # the rates of predict's unknown calls (a weak signature is 'no call', not a
        # false unknown); the AUROC of the score as predict writes it
        called = held.obs["moa_pred"].astype(str).to_numpy() == UNKNOWN
        m = open_set_metrics(y, best, held.obs["moa_unknown_score"].to_numpy(), classes,
                             cal.threshold, flagged=called, raw_conf=scores.max(axis=1),
                             proba_conf=held.obs["moa_pred_score"].to_numpy())
        # NaN (e.g. AUROC without unknown-MoA rows) -> null: strict JSON
        out["open_set"] = {"score": cal.score, "threshold": cal.threshold,
                           "calibration": cal.method_for(out["predictor"]),
                           **{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                              for k, v in m.items()}}
    if compound_key in held.obs.columns:
        compounds = held.obs[compound_key].astype(str).to_numpy()
        agg = aggregate_scores(scores, compounds)
        truth = held.obs.groupby(compound_key, observed=True)[moa_key].first().astype(str)
        out["compound_level"] = classification_metrics(
            truth.loc[agg.index].to_numpy(), agg.to_numpy(np.float32), classes)
        if cal is not None:
            out["compound_level"]["calibration"] = _compound_calibration(
                prediction_table(held, "compound_calls"), truth, classes, cal.n_bins)
    z = held.obsm["X_moa"]
    labels = {"moa": y}
    if compound_key in held.obs.columns:
        labels["compound"] = held.obs[compound_key].astype(str).to_numpy()
    k_share = min(k, len(y) - 1)
    out["hierarchy"] = {
        "k": k_share,
        "knn_share": neighbour_label_shares(z, labels, k=k_share),
        "silhouette_moa": silhouette(z, y, seed=seed),
    }
    if "compound" in labels:
        out["hierarchy"]["silhouette_compound"] = silhouette(z, labels["compound"], seed=seed)
    ref = model.atlas
    out["retrieval"] = {
        "moa_map_vs_atlas": retrieval_map(z, y, np.asarray(ref.X), ref.obs["moa"], seed=seed),
    }
    if "compound" in labels:
        out["retrieval"]["compound_map"] = retrieval_map(z, labels["compound"], seed=seed)
    return out


def _multi_moa_metrics(held, true_sets: list, *, compound_key: str | None,
                       key: str = "moa") -> dict:
    """Top-1 in set, recall@3 and set F1 of the multi-MoA rows of ``held`` (a
    :func:`predict` result) against ``true_sets``, per signature and per compound.

    Ranking (recall@3): ``obsm[f"{key}_scores"]`` (the order of ``_proba`` without the ties
    of its isotonic steps).
    Top-1: ``obs[f"{key}_pred_known"]`` (a calibrated model's top known MoA: an open-set
    ``"unknown"`` call is no MoA of a set) when present, else ``obs[f"{key}_pred"]``. Set:
    ``obs[f"{key}_pred_set"]`` when present, else {top-1}. A compound is ranked by the mean
    of its signatures' ranking scores, called by the argmax of the mean of their raw scores
    (as ``compound_calls``), and its set is the ``compound_calls`` table's
    ``{key}_pred_set`` when present, else {that call}.
    """
    obs, classes = held.obs, [str(c) for c in held.uns[key]["classes"]]
    # the raw scores: same order as the isotonic per-MoA probabilities, without their ties
    ranking = f"{key}_scores"
    rank = np.asarray(held.obsm[ranking], dtype=np.float64)
    top1 = f"{key}_pred_known" if f"{key}_pred_known" in obs.columns else f"{key}_pred"
    set_column = f"{key}_pred_set"
    pred_sets = obs[set_column].tolist() if set_column in obs.columns else None
    m = set_metrics(true_sets, rank, classes, pred=obs[top1].astype(str).tolist(),
                    pred_sets=pred_sets)
    out = {"n_signatures": m.pop("n"), **m, "ranking": ranking, "top1": top1,
           "pred_set": set_column if pred_sets is not None else "top1"}
    if compound_key is not None and compound_key in obs.columns:
        compounds = obs[compound_key].astype(str).to_numpy()
        raw = aggregate_scores(np.asarray(held.obsm[f"{key}_scores"]), compounds)
        calls = prediction_table(held, "compound_calls", key)
        sets = (calls[set_column].reindex(raw.index).tolist()
                if calls is not None and set_column in calls.columns else None)
        cm = set_metrics(sets_by_group(true_sets, compounds).loc[raw.index].tolist(),
                         aggregate_scores(rank, compounds).loc[raw.index].to_numpy(), classes,
                         pred=np.asarray(classes, dtype=object)[raw.to_numpy().argmax(axis=1)],
                         pred_sets=sets)
        out["n_compounds"] = cm.pop("n")
        out["compound_level"] = {**cm, "pred_set": set_column if sets is not None else "top1"}
    return out


def _compound_calibration(calls, truth, classes, n_bins: int) -> dict:
    """ECE of the compound calls of known MoAs: the raw mean score (before) and the
    calibrated ``moa_pred_score`` (after) against whether the top known MoA is right."""
    from moaspace.model.calibration import expected_calibration_error

    truth = truth.reindex(calls.index).astype(str)
    known = truth.isin([str(c) for c in classes]).to_numpy() & calls["moa_pred_score"].notna()
    known = np.asarray(known, dtype=bool)
    right = (calls["moa_pred_known"].astype(str) == truth).to_numpy()[known]
    after = calls["moa_pred_score"].to_numpy(np.float64)[known]
    before = calls["mean_score"].to_numpy(np.float64)[known]
    return {"n_compounds": int(known.sum()), "accuracy": float(right.mean()) if known.any()
            else None,
            "ece_before": expected_calibration_error(before, right, n_bins),
            "ece_after": expected_calibration_error(after, right, n_bins)}


def metrics_markdown(metrics: dict) -> str:
    """A short Markdown report of :func:`evaluate`'s output.

    Parameters
    ----------
    metrics : dict
        Output of :func:`evaluate`: ``n``, ``per_moa`` and the signature-level metrics
        are needed; ``split``, ``compound_level``, ``open_set`` and ``hierarchy`` are
        used when present.

    Returns
    -------
    str
        Markdown ending in a newline: a title with the split and n; accuracy, macro- and
        weighted-F1 and top-3/5 accuracy per level (signature, compound); top-1 in set,
        recall@3 and set F1 of multi-MoA compounds (with ``multi_moa``); calibration and
        unknown calls (with ``open_set``); the hierarchy; and per-MoA precision, recall,
        F1 and support (MoA names HTML- and pipe-escaped).
    """
    lines = [f"## Evaluation on split `{metrics.get('split', 'test')}` (n = {metrics['n']})", "",
             "| level | accuracy | macro-F1 | weighted-F1 | top-3 | top-5 |",
             "|---|---|---|---|---|---|"]
    for name, m in (("signature", metrics), ("compound", metrics.get("compound_level"))):
        if m:
            lines.append(f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
                         f"{m['weighted_f1']:.3f} | {m['top3_accuracy']:.3f} | "
                         f"{m['top5_accuracy']:.3f} |")
    lines += _multi_moa_markdown(metrics.get("multi_moa"))
    o = metrics.get("open_set")
    if o:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines += ["", f"| calibration and unknown calls ({o['score']} score > "
                  f"{o['threshold']:.3f}) | value |", "|---|---|",
                  f"| ECE before → after ({o['calibration']}) | {fmt(o.get('ece_before'))} → "
                  f"{fmt(o.get('ece_after'))} |",
                  f"| known-MoA signatures called unknown | {fmt(o['false_unknown_rate'])} |"]
        if o["n_unknown"]:
            lines += [f"| AUROC known vs unknown MoA ({o['n_unknown']} unknown-MoA signatures) | "
                      f"{fmt(o['auroc'])} |",
                      f"| unknown-MoA signatures called unknown | {fmt(o['unknown_detected'])} |",
                      f"| macro-F1 over known MoAs, with / without unknown calls | "
                      f"{fmt(o['macro_f1_known_open'])} / {fmt(o['macro_f1_known_closed'])} |"]
    h = metrics.get("hierarchy", {})
    if h:
        lines += ["", "| hierarchy | value |", "|---|---|"]
        for key, value in h.get("knn_share", {}).items():
            lines.append(f"| share of {h.get('k', 10)}-NN with same {key} | {value:.3f} |")
        for key in ("silhouette_moa", "silhouette_compound"):
            if key in h:
                lines.append(f"| {key.replace('_', ' by ')} | {h[key]:.3f} |")
    lines += ["", "| MoA | precision | recall | F1 | n |", "|---|---|---|---|---|"]
    for moa, m in sorted(metrics["per_moa"].items()):
        lines.append(f"| {_md_cell(moa)} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
                     f"{m['support']} |")
    return "\n".join(lines) + "\n"


def _multi_moa_markdown(multi: dict | None) -> list[str]:
    """Lines of the multi-MoA table (none without ``multi``)."""
    if not multi:
        return []
    fmt = lambda v: "–" if v is None or not np.isfinite(v) else f"{v:.3f}"  # noqa: E731
    lines = ["", "| multi-MoA compounds | n | top-1 in set | recall@3 | set F1 |",
             "|---|---|---|---|---|"]
    for name, n, m in (("signature", multi["n_signatures"], multi),
                       ("compound", multi.get("n_compounds"), multi.get("compound_level"))):
        if m:
            lines.append(f"| {name} | {n} | {fmt(m['top1_in_set'])} | "
                         f"{fmt(m['recall_at_3'])} | {fmt(m['set_f1'])} |")
    named = lambda source: "{top-1}" if source == "top1" else f"`{source}`"  # noqa: E731
    lines.append(f"\nRanked by `{multi['ranking']}`; top-1 `{multi['top1']}`; set "
                 f"{named(multi['pred_set'])}" + (
                     f" (compounds: mean scores, set "
                     f"{named(multi['compound_level'].get('pred_set', 'top1'))})"
                     if multi.get("compound_level") else "") + ".")
    return lines


def _md_cell(text) -> str:
    """A name as literal text in a Markdown table cell: HTML escaped (a MoA called
    ``<script>`` stays text in a rendered page), pipes escaped (no extra columns)."""
    return html.escape(str(text)).replace("|", "\\|")


def write_metrics(metrics: dict, path: str | os.PathLike) -> Path:
    """Write metrics JSON (and a Markdown twin with suffix .md) atomically.

    Parameters
    ----------
    metrics : dict
        Output of :func:`evaluate`; numpy scalars and arrays are converted.
    path : str or os.PathLike
        The JSON file; :func:`metrics_markdown` goes to ``path`` with suffix ``.md``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If an output path exists and is not a regular file.
    MoaspaceError
        If the output directory cannot be created or is not writable.
    """
    path = Path(path)
    atomic_write_text(path, json.dumps(metrics, indent=2, default=_jsonable))
    atomic_write_text(path.with_suffix(".md"), metrics_markdown(metrics))
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
