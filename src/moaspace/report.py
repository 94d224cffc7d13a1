"""One self-contained HTML page (images embedded, no network) from a run directory.

Reads what a run wrote (``moaspace demo`` or the stage commands into one
folder): ``summary.json``, ``data.h5ad``, ``predictions.h5ad``,
``metrics.json``, ``benchmark/results.json``, ``explain/``, ``crispr/``,
``model/config.json``, ``model/calibration.json``. Sections whose inputs are
absent are skipped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from pathlib import Path

import pandas as pd

from . import __version__
from ._utils import atomic_write_text
from .errors import InputError

logger = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
.note{color:#555;font-size:.9em}
"""


def _img(fig_or_path) -> str:
    """An <img> with the PNG embedded as a data URI (Figure or existing PNG path)."""
    if isinstance(fig_or_path, (str, os.PathLike)):
        data = Path(fig_or_path).read_bytes()
    else:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig_or_path.savefig(buf, format="png", dpi=100)
        plt.close(fig_or_path)
        data = buf.getvalue()
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(frame: pd.DataFrame, floatfmt: str = "{:.3f}", max_rows: int = 60) -> str:
    frame = frame.head(max_rows)
    return frame.to_html(index=False, border=0, escape=True,
                         float_format=lambda v: floatfmt.format(v))


def _kv(rows) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def build_report(run_dir: str | os.PathLike) -> str:
    """Return the HTML text of the report for ``run_dir``."""
    import anndata as ad

    from . import pl

    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"run directory not found: {run}")
    parts = [f"<h1>moaspace report</h1><p class='note'>{html.escape(str(run.resolve()))} · "
             f"moaspace {__version__}</p>"]
    summary = _read_json(run / "summary.json")
    found_any = summary is not None

    data_path = run / "data.h5ad"
    if data_path.exists():
        found_any = True
        data = ad.read_h5ad(data_path, backed="r")
        obs = data.obs
        parts.append("<h2>Data</h2>")
        parts.append(_kv([("signatures", data.n_obs), ("genes", data.n_vars),
                          ("compounds", obs["pert_id"].nunique()),
                          ("MoAs", obs["moa"].nunique() if "moa" in obs else "–"),
                          ("cell lines", obs["cell_iname"].nunique())]))
        prep = data.uns.get("moaspace", {}).get("prepare", {})
        filters = prep.get("filters")
        if filters is not None:
            parts.append("<p>Filters applied by <code>prepare</code>, in order:</p>")
            parts.append(_table(pd.DataFrame(filters), "{:.0f}"))
        data.file.close()

    pred_path = run / "predictions.h5ad"
    if pred_path.exists():
        found_any = True
        pred = ad.read_h5ad(pred_path)
        parts.append("<h2>Latent space</h2><p class='note'>Held-out (test) signatures of unseen "
                     f"compounds, PCA of the {pred.obsm['X_moa'].shape[1]}-d embedding; circles "
                     "mark compound centres (sub-clusters inside each MoA).</p>")
        parts.append(_img(pl.latent_map(pred.obsm["X_moa"], pred.obs["moa"],
                                         pred.obs.get("pert_id"))))
        parts.append("<h2>Confusion matrix</h2>")
        parts.append(_img(pl.confusion(pred.obs["moa"], pred.obs["moa_pred"])))
        calls = run / "compound_calls.csv"
        if calls.exists():
            frame = pd.read_csv(calls)
            truth = pred.obs.groupby("pert_id", observed=True)["moa"].first().astype(str)
            frame.insert(2, "true_moa", frame["compound"].astype(str).map(truth))
            acc = float((frame["true_moa"] == frame["moa_pred"]).mean())
            parts.append(f"<h2>Compound-level calls</h2><p>{len(frame)} held-out compounds, "
                         f"accuracy {acc:.3f} (mean of each compound's signature scores).</p>")
            parts.append(_table(frame.drop(columns=["top3"], errors="ignore")))

    metrics = _read_json(run / "metrics.json")
    if metrics:
        found_any = True
        parts.append("<h2>Evaluation (held-out compounds)</h2>")
        md_rows = [("accuracy", f"{metrics['accuracy']:.3f}"),
                   ("macro-F1", f"{metrics['macro_f1']:.3f}"),
                   ("weighted-F1", f"{metrics['weighted_f1']:.3f}"),
                   ("top-5 accuracy", f"{metrics['top5_accuracy']:.3f}")]
        if metrics.get("compound_level"):
            md_rows.append(("compound-level macro-F1",
                            f"{metrics['compound_level']['macro_f1']:.3f}"))
        hierarchy = metrics.get("hierarchy", {})
        for key, value in hierarchy.get("knn_share", {}).items():
            md_rows.append((f"share of {hierarchy.get('k', 10)} nearest neighbours with the "
                            f"same {key}",
                            f"{value:.3f}"))
        parts.append(_kv(md_rows))
        parts.append(_img(pl.per_moa_f1(metrics)))

    bench = _read_json(run / "benchmark" / "results.json")
    if bench:
        found_any = True
        from .tl.benchmark import plot_results, summarize

        parts.append("<h2>Baselines, same splits and seeds</h2>")
        s = summarize(bench)
        cols = [c for c in ("scheme", "method", "macro_f1_mean", "macro_f1_std", "accuracy_mean",
                            "compound_macro_f1_mean", "n_seeds") if c in s.columns]
        parts.append(_table(s[cols]))
        parts.append(_img(plot_results(bench)))

    explain_dir = run / "explain"
    if (explain_dir / "enrichment.csv").exists():
        found_any = True
        parts.append("<h2>Pathways per MoA (integrated gradients → GSEA prerank)</h2>")
        if (explain_dir / "pathway_heatmap.png").exists():
            parts.append(_img(explain_dir / "pathway_heatmap.png"))
        enr = pd.read_csv(explain_dir / "enrichment.csv")
        top = enr[enr["fdr"] < 0.05].sort_values("nes", ascending=False).groupby("moa").head(3)
        parts.append(_table(top[["moa", "pathway", "nes", "pval", "fdr"]].sort_values("moa")))

    calibration = _read_json(run / "model" / "calibration.json")
    if calibration:
        found_any = True
        parts.extend(_confidence_section(calibration, run / "predictions.h5ad"))

    crispr_dir = run / "crispr"
    crispr_summary = _read_json(crispr_dir / "summary.json")
    if crispr_summary:
        found_any = True
        parts.append("<h2>CRISPR knockdowns in the drug space</h2>")
        keys = ("n_genes", "n_genes_scored", "hit_at_1", "hit_at_5", "hit_at_5_raw",
                "hit_at_5_null", "mean_auroc")
        parts.append(_kv([(k, f"{crispr_summary[k]:.3f}" if isinstance(crispr_summary[k], float)
                           else crispr_summary[k]) for k in keys if k in crispr_summary]))
        if (crispr_dir / "crispr_map.png").exists():
            parts.append(_img(crispr_dir / "crispr_map.png"))
        if (crispr_dir / "crispr_scores.csv").exists():
            parts.append(_table(pd.read_csv(crispr_dir / "crispr_scores.csv")))

    config = _read_json(run / "model" / "config.json")
    parts.append("<h2>How this was made</h2>")
    if summary:
        parts.append("<pre>" + html.escape(json.dumps(
            {k: v for k, v in summary.items() if k != "outputs"}, indent=2, default=str))
            + "</pre>")
    if config:
        found_any = True
        parts.append("<p>Model hyper-parameters (<code>model/config.json</code>):</p><pre>"
                     + html.escape(json.dumps(config.get("model", {}), indent=2)) + "</pre>")
        parts.append(_kv([("best epoch", config.get("best_epoch")),
                          ("best validation macro-F1", config.get("best_val_f1")),
                          ("epochs averaged", config.get("train", {}).get("averaged_epochs")),
                          ("validation macro-F1 of the weights kept",
                           config.get("train", {}).get("final_val_f1")),
                          ("data fingerprint", config.get("data_fingerprint"))]))
    if not found_any:
        raise InputError(f"{run}: nothing to report (no summary.json, data.h5ad, metrics.json "
                         "...); run `moaspace demo --out DIR` or the stage commands into it")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>moaspace report</title><style>{CSS}</style></head><body>{body}"
            "</body></html>")


def _confidence_section(cal: dict, pred_path: Path) -> list[str]:
    """Calibration and open-set curves from ``model/calibration.json`` (+ the predictions)."""
    from . import pl

    pred = None
    if pred_path.exists():
        import anndata as ad

        pred = ad.read_h5ad(pred_path)
    # the calibration shown is that of the predictor the predictions were made with
    predictor = (pred.uns.get("moa_predict", {}).get("method", "knn") if pred is not None
                 else "knn")
    val = cal.get("validation", {})
    own = val if predictor == "knn" else val.get(predictor, {})
    # as Calibration.maps / method_for, on the JSON as written
    maps = {"knn": cal.get("method"), **cal.get("methods", {})}
    chosen_map = maps.get(predictor, cal.get("method"))
    raw_name = "kNN vote share" if predictor == "knn" else f"{predictor} softmax"
    score = cal.get("score")
    threshold = cal.get("thresholds", {}).get(score)
    how = (f"is the raw score ({raw_name}): no calibration map beat it out of fold"
           if chosen_map == "none" else
           f"is a calibrated probability that the call is right ({chosen_map} map of the "
           f"{raw_name})")
    out = ["<h2>Confidence and unknown MoAs</h2>",
           "<p class='note'>Fitted on the validation compounds (never trained on): "
           f"<code>moa_pred_score</code> {html.escape(how)}; a signature whose "
           f"<code>{html.escape(str(score))}</code> unknown score exceeds the threshold (set for "
           f"{100 * cal.get('target_false_unknown', 0):.0f}% false unknowns on validation) is "
           "called <code>unknown</code>. Pseudo-unknowns: validation signatures scored with "
           "their own MoA removed from the atlas (see docs/confidence.md).</p>"]
    rows = [("validation signatures", val.get("n")),
            ("calibration map per predictor",
             ", ".join(f"{name}: {m}" for name, m in maps.items())),
            ("predictor of these predictions", predictor),
            ("ECE before → after (out-of-fold)", f"{own.get('ece_before', float('nan')):.3f} → "
                                                 f"{own.get('ece_after', float('nan')):.3f}"),
            ("open-set score", score),
            ("threshold", f"{threshold:.4f}" if threshold is not None else "–"),
            ("false-unknown rate on validation",
             f"{val.get('false_unknown_rate', {}).get(score, float('nan')):.3f}"),
            ("minimum TAS for a call", cal.get("min_tas") if cal.get("min_tas") else "off")]
    for name, auc in val.get("auroc_pseudo_unknown", {}).items():
        rows.append((f"AUROC vs pseudo-unknowns: {name}", f"{auc:.3f}" if auc is not None
                     else "–"))
    out.append(_kv(rows))
    if own.get("reliability_before") and own.get("reliability_after"):
        before = f"before ({raw_name})"
        out.append(_img(pl.reliability_diagram(
            {before: own["reliability_before"], "after": own["reliability_after"]},
            ece={before: own.get("ece_before"), "after": own.get("ece_after")})))
    known = unknown = None
    if pred is not None:
        if "moa_unknown_score" in pred.obs and "moa" in pred.obs:
            is_known = pred.obs["moa"].astype(str).isin(cal.get("classes", [])).to_numpy()
            scores = pred.obs["moa_unknown_score"].to_numpy()
            known = scores[is_known]
            unknown = scores[~is_known] if (~is_known).any() else None
            labels = pred.obs["moa_pred"].astype(str).to_numpy()
            frame = pd.DataFrame([
                {"predicted signatures": name, "n": int(mask.sum()),
                 "called unknown": float((labels[mask] == "unknown").mean())}
                for name, mask in (("of a known MoA", is_known),
                                   ("of an MoA absent from training", ~is_known)) if mask.any()])
            out.append(_table(frame))
    if val.get("roc_pseudo_unknown"):
        out.append(_img(pl.openset_curve(
            val["roc_pseudo_unknown"], known_scores=known, unknown_scores=unknown,
            threshold=threshold, chosen=score, title="Validation: known vs pseudo-unknown",
            hist_title="Predicted signatures")))
    if val.get("tas_coverage"):
        out.append(_img(pl.tas_coverage({"validation": val["tas_coverage"]})))
    return out


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (self-contained) into ``run_dir`` or ``out``."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir))
    return out



