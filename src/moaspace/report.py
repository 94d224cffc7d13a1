"""One self-contained HTML page (images embedded, no network) from a run directory.

Reads what a run wrote (``moaspace demo`` or the stage commands into one
folder): ``summary.json``, ``data.h5ad``, ``predictions.h5ad``,
``metrics.json``, ``benchmark/results.json``, ``explain/``, ``crispr/``,
``model/config.json``, ``model/calibration.json``. Sections whose inputs are
absent are skipped.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
from pathlib import Path

import pandas as pd

from moaspace._utils import atomic_write_text
from moaspace._version import __version__
from moaspace.errors import InputError, MoaspaceError

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
.world{font-size:.62em;font-weight:normal;padding:.1em .55em;border-radius:.7em;margin-left:.5em;
vertical-align:middle}
.real{background:#d8eedb;color:#1d5b27}.simulated{background:#f8e3c4;color:#7a4a05}
"""

#: what the badge of each world says
WORLDS = {"real": "real data", "simulated": "simulated data"}


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
    if not path.exists():
        return None
    with _reading(path):
        data = json.loads(path.read_text())
        if not isinstance(data, dict | list):
            raise ValueError(f"expected a JSON object or list, found {type(data).__name__}")
        return data


@contextlib.contextmanager
def _reading(path: Path):
    """Turn a failure to read or render ``path`` into one error that names it."""
    try:
        yield
    except MoaspaceError:
        raise
    except Exception as exc:  # h5py/anndata/json/pandas raise many types on bad files
        raise InputError(f"{path}: cannot be read for the report ({type(exc).__name__}: "
                         f"{exc}); is it complete? Rerun the stage that writes it") from exc


def build_report(run_dir: str | os.PathLike) -> str:
    """Return the HTML text of the report for ``run_dir``.

    Every section is labelled with the data it shows (``summary.json``'s ``world``: real or
    simulated). A ``simulated/`` run inside ``run_dir`` (``moaspace demo``) adds its
    simulated-only sections: data, CRISPR knockdowns and the planted-truth check.
    """
    import matplotlib

    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"run directory not found: {run}")
    summary = _read_json(run / "summary.json") or {}
    world = summary.get("world")
    parts = [f"<h1>moaspace report</h1><p class='note'>{html.escape(str(run.resolve()))} · "
             f"moaspace {__version__}</p>"]
    sub = run / "simulated"
    if world == "real" and (sub / "summary.json").exists():
        parts.append(_worlds_note(summary))
    # MoA names are data, not markup: "$...$" must not be read as mathtext
    with matplotlib.rc_context({"text.parse_math": False}):
        body, found_any = _run_sections(run, world, SECTIONS)
        parts.extend(body)
        if world == "real" and (sub / "summary.json").exists():
            sim_summary = _read_json(sub / "summary.json") or {}
            parts.append(_label([_simulated_intro(sim_summary)], "simulated")[0])
            parts.extend(_run_sections(sub, "simulated", SIMULATED_SECTIONS)[0])
        with _reading(run / "model" / "config.json"):
            how, has_config = _provenance_section(run)
    found_any = found_any or has_config or bool(summary)
    parts.extend(how)
    if not found_any:
        raise InputError(f"{run}: nothing to report (no summary.json, data.h5ad, metrics.json "
                         "...); run `moaspace demo --out DIR` or the stage commands into it")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>moaspace report</title><style>{CSS}</style></head><body>{body}"
            "</body></html>")


def _run_sections(run: Path, world: str | None, sections) -> tuple[list[str], bool]:
    """The sections of one run directory whose input files exist, labelled with ``world``."""
    parts, found_any = [], False
    for name, section in sections:
        path = run / name
        if not path.exists():
            continue
        found_any = True
        with _reading(path):
            parts.extend(_label(section(run, path), world))
    return parts, found_any


def _label(parts: list[str], world: str | None) -> list[str]:
    """Add the world's badge to each section heading of ``parts``."""
    if world not in WORLDS:
        return parts
    badge = f" <span class='world {world}'>{WORLDS[world]}</span></h2>"
    return [p.replace("</h2>", badge, 1) if "<h2>" in p else p for p in parts]


def _worlds_note(summary: dict) -> str:
    data = summary.get("call", {}).get("data", "")
    return ("<p>Sections marked <span class='world real'>real data</span> show real LINCS "
            "L1000 drugs: the consensus signatures shipped with moaspace "
            f"(<code>{html.escape(str(data))}</code>; sources and licences in "
            "<code>moaspace/resources/lincs_consensus/PROVENANCE.md</code>). Sections marked "
            "<span class='world simulated'>simulated data</span> use the embedded simulated "
            "release, only where no real data ships: CRISPR knockdowns and the check "
            "against planted truth.</p>")


def _simulated_intro(summary: dict) -> str:
    return ("<h2>The simulated world</h2><p class='note'>A model trained on the embedded "
            f"simulated release ({summary.get('compounds', '?')} compounds, "
            f"{summary.get('moas', '?')} MoAs, {summary.get('cell_lines', '?')} cell lines; "
            f"held-out compounds: macro-F1 {summary.get('test_macro_f1', float('nan')):.3f}). "
            "Its knockdowns and its planted pathways have no real counterpart shipped here. "
            "Files: <code>simulated/</code>.</p>")


def _data_section(run: Path, path: Path) -> list[str]:
    import anndata as ad

    data = ad.read_h5ad(path, backed="r")
    obs = data.obs
    parts = ["<h2>Data</h2>",
             _kv([("signatures", data.n_obs), ("genes", data.n_vars),
                  ("compounds", obs["pert_id"].nunique()),
                  ("MoAs", obs["moa"].nunique() if "moa" in obs else "–"),
                  ("cell lines", obs["cell_iname"].nunique())])]
    meta = data.uns.get("moaspace", {})
    prep, dataset = meta.get("prepare", {}), meta.get("dataset", {})
    filters = prep.get("filters")
    if filters is not None:
        parts.append("<p>Filters applied by <code>prepare</code>, in order:</p>")
        parts.append(_table(pd.DataFrame(filters), "{:.0f}"))
    elif dataset.get("filters") is not None:
        parts.append(f"<p>Data set <code>{html.escape(str(dataset.get('name')))}</code> "
                     "shipped with moaspace (one consensus signature per drug); drugs and "
                     "MoAs left after each selection step:</p>")
        parts.append(_table(pd.DataFrame(dataset["filters"]), "{:.0f}"))
    data.file.close()
    return parts


def _prediction_section(run: Path, path: Path) -> list[str]:
    import anndata as ad

    from moaspace import pl

    pred = ad.read_h5ad(path)
    obs = pred.obs
    one_each = "pert_id" in obs and not obs["pert_id"].duplicated().any()
    names = obs["cmap_name"] if "cmap_name" in obs else obs.get("pert_id")
    what = ("held-out drugs (one consensus signature each; labels: drug names)" if one_each
            else "held-out (test) signatures of unseen compounds; circles mark compound "
                 "centres (sub-clusters inside each MoA)")
    atlas_path = run / "model" / "atlas.h5ad"
    atlas = None
    if atlas_path.exists():
        with _reading(atlas_path):
            atlas = ad.read_h5ad(atlas_path)
    behind = ("; small faint dots: the training (reference) "
              + ("drugs" if one_each else "signatures")) if atlas is not None else ""
    parts = ["<h2>Latent space</h2><p class='note'>The "
             f"{pred.obsm['X_moa'].shape[1]}-d embedding of the {what}{behind}, by PCA "
             "(global directions) and UMAP (local neighbourhoods, cosine).</p>",
             _img(pl.latent_maps(pred.obsm["X_moa"], obs["moa"], names,
                                 reference=None if atlas is None else atlas.X,
                                 reference_moa=None if atlas is None else atlas.obs["moa"],
                                 title="Latent space, held-out " +
                                       ("drugs" if one_each else "signatures"))),
             "<h2>Confusion matrix</h2>",
             _img(pl.confusion(obs["moa"], obs["moa_pred"]))]
    calls = run / "compound_calls.csv"
    if calls.exists():
        with _reading(calls):
            frame = _compound_table(pd.read_csv(calls), obs, run / "nearest_drugs.csv")
            acc = float((frame["true_moa"] == frame["moa_pred"]).mean())
        parts.append(f"<h2>Compound-level calls</h2><p>{len(frame)} held-out compounds, "
                     f"accuracy {acc:.3f} (mean of each compound's signature scores). "
                     "Nearest reference drugs: the training drugs closest in the latent "
                     "space (cosine of mean embeddings), with their MoA.</p>")
        parts.append(_table(frame.drop(columns=["top3"], errors="ignore"), max_rows=150))
    return parts


def _compound_table(frame: pd.DataFrame, obs: pd.DataFrame, nearest_csv: Path) -> pd.DataFrame:
    """The compound calls with the true MoA, the drug's name and its nearest reference
    drugs (``nearest_drugs.csv``) where known."""
    compound = frame["compound"].astype(str)
    truth = obs.groupby("pert_id", observed=True)["moa"].first().astype(str)
    frame.insert(1, "true_moa", compound.map(truth))
    if "cmap_name" in obs:
        names = obs.groupby("pert_id", observed=True)["cmap_name"].first().astype(str)
        if (names != names.index).any():
            frame.insert(1, "drug", compound.map(names))
    if nearest_csv.exists():
        with _reading(nearest_csv):
            near = pd.read_csv(nearest_csv, dtype={"compound": str})
            text = near.assign(item=near["neighbour_drug"].astype(str) + " ("
                               + near["neighbour_moa"].astype(str) + ", "
                               + near["cosine"].map("{:.2f}".format) + ")")
            joined = text.sort_values("rank").groupby("compound")["item"].agg("; ".join)
        frame["nearest reference drugs"] = compound.map(joined)
    return frame


def _metrics_section(run: Path, path: Path) -> list[str]:
    from moaspace import pl

    metrics = _read_json(path)
    md_rows = [("accuracy", f"{metrics['accuracy']:.3f}"),
               ("macro-F1", f"{metrics['macro_f1']:.3f}"),
               ("weighted-F1", f"{metrics['weighted_f1']:.3f}"),
               ("top-5 accuracy", f"{metrics['top5_accuracy']:.3f}")]
    if metrics.get("compound_level"):
        md_rows.append(("compound-level macro-F1", f"{metrics['compound_level']['macro_f1']:.3f}"))
    hierarchy = metrics.get("hierarchy", {})
    for key, value in hierarchy.get("knn_share", {}).items():
        md_rows.append((f"share of {hierarchy.get('k', 10)} nearest neighbours with the "
                        f"same {key}", f"{value:.3f}"))
    return ["<h2>Evaluation (held-out compounds)</h2>", _kv(md_rows),
            _img(pl.per_moa_f1(metrics))]


def _benchmark_section(run: Path, path: Path) -> list[str]:
    from moaspace import pl
    from moaspace.benchmark import summarize

    bench = _read_json(path)
    s = summarize(bench)
    cols = [c for c in ("scheme", "method", "macro_f1_mean", "macro_f1_std", "accuracy_mean",
                        "compound_macro_f1_mean", "n_seeds") if c in s.columns]
    sources = {str(r["source"]) for r in bench if r.get("method") == "moaspace" and
               r.get("source")}
    note = (f"<p class='note'>moaspace row: {html.escape(sources.pop())}.</p>" if sources
            else "")
    return ["<h2>Baselines, same splits and seeds</h2>", note, _table(s[cols]),
            _img(pl.benchmark_results(s))]


def _explain_section(run: Path, path: Path) -> list[str]:
    parts = ["<h2>Pathways per MoA (integrated gradients → GSEA prerank)</h2>"]
    if (path.parent / "pathway_heatmap.png").exists():
        parts.append(_img(path.parent / "pathway_heatmap.png"))
    enr = pd.read_csv(path)
    top = enr[enr["fdr"] < 0.05].sort_values("nes", ascending=False).groupby("moa").head(3)
    parts.append(_table(top[["moa", "pathway", "nes", "pval", "fdr"]].sort_values("moa")))
    return parts


def _genes_section(run: Path, path: Path) -> list[str]:
    """Each MoA's top genes by integrated gradients, as gene symbols with their direction."""
    top = pd.read_csv(path)
    top = top[top["rank"] <= 8].sort_values(["moa", "rank"])
    up = (top["direction"].astype(str) == "up" if "direction" in top
          else top["attribution"] > 0)
    top = top.assign(gene=top["gene_symbol"].astype(str) + up.map({True: " ↑", False: " ↓"}))
    table = top.groupby("moa")["gene"].agg(", ".join).reset_index()
    table.columns = ["moa", "top 8 genes (↑ up, ↓ down)"]
    return ["<h2>Top genes per MoA</h2><p class='note'>From "
            "<code>explain/top_genes.csv</code>: the genes that move most with the model's "
            "calibrated probability of each MoA over every signature of the run (the signed "
            "pattern: ↑ up, ↓ down in the signatures the model gives the MoA; see "
            "<code>moaspace explain --help</code> for what it means).</p>",
            _table(table, max_rows=100)]


def _truth_section(run: Path, path: Path) -> list[str]:
    """The planted-truth check of a simulated release."""
    table = pd.read_csv(path)
    hits = int(table["recovered"].astype(bool).sum())
    return [f"<h2>Planted truth: pathways recovered by the explanation</h2><p>{hits} of "
            f"{len(table)} MoAs have a planted pathway among their top 5 enriched pathways "
            "(FDR &lt; 0.05, by NES), as <code>benchmarks/bench_science.py</code> scores "
            "it.</p>", _table(table)]


def _calibration_section(run: Path, path: Path) -> list[str]:
    pred_path = run / "predictions.h5ad"
    with _reading(pred_path):
        return _confidence_section(_read_json(path), pred_path)


def _crispr_section(run: Path, path: Path) -> list[str]:
    crispr_summary = _read_json(path)
    crispr_dir = path.parent
    keys = ("n_genes", "n_genes_scored", "hit_at_1", "hit_at_5", "hit_at_5_raw",
            "hit_at_5_null", "mean_auroc")
    parts = ["<h2>CRISPR knockdowns in the drug space</h2>",
             _kv([(k, f"{crispr_summary[k]:.3f}" if isinstance(crispr_summary[k], float)
                   else crispr_summary[k]) for k in keys if k in crispr_summary])]
    if (crispr_dir / "crispr_map.png").exists():
        parts.append(_img(crispr_dir / "crispr_map.png"))
    if (crispr_dir / "crispr_scores.csv").exists():
        with _reading(crispr_dir / "crispr_scores.csv"):
            parts.append(_table(pd.read_csv(crispr_dir / "crispr_scores.csv")))
    return parts


def _provenance_section(run: Path) -> tuple[list[str], bool]:
    summary = _read_json(run / "summary.json")
    config = _read_json(run / "model" / "config.json")
    parts = ["<h2>How this was made</h2>"]
    if summary:
        parts.append("<pre>" + html.escape(json.dumps(
            {k: v for k, v in summary.items() if k != "outputs"}, indent=2, default=str))
            + "</pre>")
    if config:
        parts.append("<p>Model hyper-parameters (<code>model/config.json</code>):</p><pre>"
                     + html.escape(json.dumps(config.get("model", {}), indent=2)) + "</pre>")
        parts.append(_kv([("best epoch", config.get("best_epoch")),
                          ("best validation macro-F1", config.get("best_val_f1")),
                          ("epochs averaged", config.get("train", {}).get("averaged_epochs")),
                          ("validation macro-F1 of the weights kept",
                           config.get("train", {}).get("final_val_f1")),
                          ("data fingerprint", config.get("data_fingerprint"))]))
    return parts, bool(config)


def _confidence_section(cal: dict, pred_path: Path) -> list[str]:
    """Calibration and open-set curves from ``model/calibration.json`` (+ the predictions)."""
    from moaspace import pl

    pred = None
    if pred_path.exists():
        import anndata as ad

        pred = ad.read_h5ad(pred_path)
    # the calibration shown is that of the predictor the predictions were made with
    params = pred.uns.get("moa", {}).get("params", {}) if pred is not None else {}
    predictor = params.get("predictor", "knn")
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


#: (input file, section) of a run directory, in the report's order
SECTIONS = (("data.h5ad", _data_section), ("predictions.h5ad", _prediction_section),
            ("metrics.json", _metrics_section), ("benchmark/results.json", _benchmark_section),
            ("explain/enrichment.csv", _explain_section),
            ("explain/top_genes.csv", _genes_section), ("planted_truth.csv", _truth_section),
            ("model/calibration.json", _calibration_section),
            ("crispr/summary.json", _crispr_section))
#: the sections of the demo's ``simulated/`` run (what has no real counterpart here)
SIMULATED_SECTIONS = (("crispr/summary.json", _crispr_section),
                      ("planted_truth.csv", _truth_section))


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (self-contained) into ``run_dir`` or ``out``."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir))
    return out



