"""A ``moaspace.tl.predict`` result as the service answers it: JSON rows, a CSV table or an
``.h5ad`` file. Where predict keeps its tables is known to one function only
(:func:`prediction_entry`)."""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Mapping

import numpy as np
import pandas as pd

#: MoAs listed per answer, and nearest reference compounds
TOP_MOAS = 3


def prediction_entry(result) -> dict:
    """Settings (``params``), ``classes`` and tables (``top_k``, ``compound_calls``) of a
    ``tl.predict`` result (``uns["moa"]``, see :func:`moaspace.tl.prediction_table`)."""
    entry = result.uns.get("moa")
    if not (isinstance(entry, Mapping) and "params" in entry):
        raise ValueError("not a moaspace prediction: uns['moa'] holds no params")
    return entry


def prediction_tables(result) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The top-k table and the per-compound calls of a ``tl.predict`` result (None where
    absent)."""
    entry = prediction_entry(result)
    return tuple(None if entry.get(k) is None else pd.DataFrame(entry[k])
                 for k in ("top_k", "compound_calls"))


def _num(value) -> float | None:
    """A JSON-safe float (NaN and inf -> None), at full precision."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _neighbors(text: str, compound_moa: dict) -> list[dict]:
    """``obs["nearest_compounds"]`` ('id:sim;id:sim') with each compound's MoA."""
    out = []
    for item in str(text).split(";"):
        if ":" not in item:
            continue
        compound, sim = item.rsplit(":", 1)
        out.append({"compound": compound, "moa": compound_moa.get(compound, ""),
                    "similarity": _num(sim)})
    return out


def signature_rows(result, state) -> list[dict]:
    """One answer per signature: call, score, unknown flag, top MoAs, neighbours, map."""
    obs = result.obs
    classes = np.asarray(prediction_entry(result)["classes"], dtype=object)
    scores = np.asarray(result.obsm["moa_scores"])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_MOAS]
    xy = state.project(result.obsm["X_moa"])
    unknown = obs["moa_unknown_score"] if "moa_unknown_score" in obs.columns else None
    # with per-compound unknown calls, the call reads the compound's mean score
    pooled = (obs["moa_unknown_score_compound"] if "moa_unknown_score_compound" in obs.columns
              else None)
    known = obs["moa_pred_known"] if "moa_pred_known" in obs.columns else obs["moa_pred"]
    near = obs["nearest_compounds"] if "nearest_compounds" in obs.columns else None
    rows = []
    for i, name in enumerate(obs.index):
        call = str(obs["moa_pred"].iloc[i])
        rows.append({
            "id": str(name), "moa_pred": call, "score": _num(obs["moa_pred_score"].iloc[i]),
            "unknown": call == "unknown", "moa_pred_known": str(known.iloc[i]),
            "unknown_score": None if unknown is None else _num(unknown.iloc[i]),
            "unknown_score_compound": None if pooled is None else _num(pooled.iloc[i]),
            "top": [{"moa": str(classes[j]), "score": _num(scores[i, j])} for j in order[i]],
            "neighbors": [] if near is None else _neighbors(near.iloc[i], state.compound_moa),
            "map": [_num(xy[i, 0]), _num(xy[i, 1])]})
    return rows


def compound_rows(result, state, compound_key: str) -> list[dict]:
    """One answer per group of ``compound_key`` (predict's compound table), with its map
    position (mean of its signatures') and the nearest reference compounds of its centre."""
    _, calls = prediction_tables(result)
    if calls is None:
        return []
    groups = result.obs[compound_key].astype(str).to_numpy()
    z = np.asarray(result.obsm["X_moa"], np.float64)
    rows = []
    for _, call in calls.iterrows():
        members = groups == str(call["compound"])
        centre = z[members].mean(axis=0)
        centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
        sims = state.compound_centres @ centre.astype(np.float32)
        best = np.argsort(-sims, kind="stable")[:TOP_MOAS]
        xy = state.project(z[members]).mean(axis=0)
        top = [m for m in str(call.get("top3", "")).split(";") if m]
        rows.append({
            "id": str(call["compound"]), "moa_pred": str(call["moa_pred"]),
            "score": _num(call["moa_pred_score"]), "unknown": str(call["moa_pred"]) == "unknown",
            "moa_pred_known": str(call.get("moa_pred_known", call["moa_pred"])),
            "unknown_score": _num(call["unknown_score"]) if "unknown_score" in call else None,
            "signatures": int(call["n_signatures"]),
            "top": [{"moa": m, "score": None} for m in top],
            "neighbors": [{"compound": state.compounds.index[j],
                           "moa": str(state.compounds["moa"].iloc[j]),
                           "similarity": _num(sims[j])} for j in best],
            "map": [_num(xy[0]), _num(xy[1])]})
    return rows


def answer(result, state, compound_key: str | None) -> dict:
    """The JSON answer of ``POST /api/predict``."""
    info = prediction_entry(result)["params"]
    signatures = signature_rows(result, state)
    compounds = compound_rows(result, state, compound_key) if compound_key else None
    called = {r["moa_pred_known"] for r in (compounds or signatures)}
    explanations = {m: e for m in sorted(called) if (e := state.explanations.of(m))}
    return {"n_signatures": int(result.n_obs), "group_by": compound_key,
            "calibrated": bool(info.get("calibrated")), "method": info.get("predictor", info.get("method")),
            "unknown_threshold": _num(info["unknown_threshold"])
            if info.get("unknown_threshold") is not None else None,
            "unknown_by": info.get("unknown_by"),
            "signatures": signatures, "compounds": compounds, "explanations": explanations}


def answer_csv(payload: dict) -> str:
    """The answer as one CSV table (per compound when grouped, else per signature)."""
    rows = payload["compounds"] if payload["compounds"] is not None else payload["signatures"]
    table = pd.DataFrame([{
        "id": r["id"], "moa_pred": r["moa_pred"], "score": r["score"],
        "unknown": r["unknown"], "moa_pred_known": r["moa_pred_known"],
        "unknown_score": r["unknown_score"],
        "top_moas": ";".join(t["moa"] for t in r["top"]),
        "nearest_compounds": ";".join(f"{n['compound']}:{n['moa']}:{n['similarity']}"
                                      for n in r["neighbors"]),
        "map_x": r["map"][0], "map_y": r["map"][1]} for r in rows])
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return buffer.getvalue()


def answer_h5ad(result) -> bytes:
    """The predict result as ``.h5ad`` bytes (tables kept in ``uns`` as plain tables)."""
    from moaspace.pp import write_h5ad

    result = result.copy()
    entry = prediction_entry(result)
    if entry is not result.uns.get("moa"):  # older layout: the tables as plain uns tables
        for key in ("top_k", "compound_calls"):
            if entry.get(key) is not None:
                result.uns[f"moa_{key}"] = pd.DataFrame(entry[key]).reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="moaspace-serve-") as tmp:
        path = os.path.join(tmp, "prediction.h5ad")
        write_h5ad(result, path)
        with open(path, "rb") as fh:
            return fh.read()
