"""The multi-MoA part of the benchmark: which rows are single- and multi-MoA, the
``multi_*`` metrics of a method's test predictions and their Markdown table.

A compound with several MoAs has ``obs["moa"]`` NaN and ``obs["moa_set"]`` ``"a|b"``
(:mod:`moaspace._core.sets`); its signatures are scored by the top-1 call in the true set,
recall@3 of the ranking and the F1 of the predicted set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moaspace._core.sets import has_label, multi_moa_mask, parse_moa_sets, set_metrics

#: record keys of the multi-MoA test signatures (:func:`multi_score`)
MULTI_METRICS = ("n_multi_test", "multi_top1_in_set", "multi_recall_at_3", "multi_set_f1")


def truth_of(obs) -> dict:
    """Per row: ``y`` (``moa`` as str), ``single`` (one MoA in ``moa``), ``sets`` (MoA set:
    ``moa_set``, else {moa}) and ``multi`` (two MoAs or more)."""
    moa = obs["moa"]
    single = has_label(moa)
    y = moa.astype(str).to_numpy()
    sets = parse_moa_sets(obs["moa_set"]) if "moa_set" in obs else [frozenset()] * len(y)
    sets = [s or (frozenset([m]) if one else s) for s, m, one in zip(sets, y, single, strict=True)]
    return {"y": y, "single": single, "sets": sets, "multi": multi_moa_mask(sets)}


def multi_score(sets, multi, scores, classes, pred_sets=None) -> dict:
    """``multi_*`` metrics of the rows of ``multi``: top-1 = argmax of ``scores``, ranked by
    ``scores``, set ``pred_sets`` (default {top-1})."""
    if not multi.any():
        return {}
    pick = np.flatnonzero(multi)
    m = set_metrics([sets[i] for i in pick], scores[pick], classes,
                    pred=np.asarray(classes, dtype=object)[scores[pick].argmax(axis=1)],
                    pred_sets=None if pred_sets is None else [pred_sets[i] for i in pick])
    return {"n_multi_test": m["n"], "multi_top1_in_set": m["top1_in_set"],
            "multi_recall_at_3": m["recall_at_3"], "multi_set_f1": m["set_f1"]}


def multi_markdown(block: pd.DataFrame, top1: pd.DataFrame, recall: pd.DataFrame) -> list[str]:
    """The multi-MoA table of one scheme (``block``: its rows of :func:`moaspace.benchmark.summarize`) and the
    paired differences of ``moaspace`` in top-1 in set and recall@3; none without them."""
    if "multi_top1_in_set_mean" not in block or block["multi_top1_in_set_mean"].isna().all():
        return []
    fmt = lambda m, sd: "–" if pd.isna(m) else f"{m:.3f} ± {0 if pd.isna(sd) else sd:.3f}"  # noqa: E731
    lines = [f"Multi-MoA test compounds ({block['n_multi_test_mean'].max():.0f} signatures per "
             "seed; top-1 call in the true set, share of the true MoAs in the top 3, set F1):",
             "", "| method | top-1 in set | recall@3 | set F1 |", "|---|---|---|---|"]
    for _, row in block.sort_values("multi_top1_in_set_mean", ascending=False).iterrows():
        lines.append(f"| {row['method']} | " + " | ".join(
            fmt(row[f"{m}_mean"], row[f"{m}_std"])
            for m in ("multi_top1_in_set", "multi_recall_at_3", "multi_set_f1")) + " |")
    lines.append("")
    scheme = block["scheme"].iloc[0]
    top1, recall = (p[p["scheme"] == scheme] if len(p) else p for p in (top1, recall))
    if len(top1) and len(recall) and int(top1["n_seeds"].max()) > 1:
        both = top1.merge(recall, on=["scheme", "method"], suffixes=("", "_r"))
        lines += ["Multi-MoA, paired per seed, `moaspace` minus each method:", "",
                  "| method | top-1 in set | seeds higher | recall@3 | seeds higher |",
                  "|---|---|---|---|---|"]
        for _, row in both.sort_values("mean").iterrows():
            lines.append(f"| {row['method']} | {row['mean']:+.3f} ± {row['sd']:.3f} | "
                         f"{row['higher']}/{row['n_seeds']} | {row['mean_r']:+.3f} ± "
                         f"{row['sd_r']:.3f} | {row['higher_r']}/{row['n_seeds_r']} |")
        lines.append("")
    return lines
