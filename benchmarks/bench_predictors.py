"""Does the compound level of the hierarchy help predict the MoA? Prediction rules compared
on the same trained models.

Issue #5 asks why moaspace is level with its own MoA-only ablation. One reason could be
that the default predictor (the nearest MoA prototype of the last hidden layer) throws
the compound level away. This script trains moaspace (dual ArcFace) and the MoA-only
ablation on the same splits (``moaspace simulate --seed 0`` + default ``prepare``; the
README's ``data.h5ad``) and scores, on the validation and the test signatures of each
model, these rules:

* ``proto_sig``: the default (what ``predict`` calls with): the model's prototype layer
  against its MoA prototypes (mean unit hidden activation of the MoA's training
  signatures, stacked with the whitened-signature discriminant in models that have it);
* ``proto_cpd``: MoA centre = sum over its training compounds of each compound's unit
  mean activation (every compound counts once, whatever its signature count);
* ``proto_cpd_len``: the same, compound means left unnormalised, so a compound whose
  signatures disagree (an inactive one) counts less;
* ``cpd_lse_hidden`` / ``cpd_lse_emb``: hierarchical call; cosine to every training
  compound's centre (hidden layer / normalised embedding), MoA score = log-sum-exp over
  the MoA's compounds at temperature 0.05 (the nearest known compounds decide);
* ``cpd_head``: the same with the compound ArcFace head's weights as compound centres
  (dual-loss model only);
* ``proto_emb``: MoA centres in the normalised embedding.

It also scores the hierarchy among the test signatures (share of each one's 10 nearest
test neighbours from the same compound / MoA, and the mAP of retrieving the same
compound's other signatures), and how well each model recognises a *known* compound in an unseen cell
line (cell split: every test compound is a training compound): the rank of the
compound's own training centre among all training-compound centres (top-1, top-10,
mean reciprocal rank), in the embedding and in the hidden layer.

Writes ``benchmarks/results/bench_predictors.json`` (``--out``) and prints the paired differences to
``proto_sig`` (same model, same split): mean ± sd over seeds.

    python benchmarks/bench_predictors.py [--data data.h5ad] [--seeds 0,1,2] [--schemes compound,cell]
        [--models moaspace,arcface_moa_only] [--compound-weight W] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _simdata import add_data_argument, add_run_arguments, default_data
from scipy.special import logsumexp

from moaspace._core.neighbors import l2_normalize, prototypes
from moaspace._utils import provenance
from moaspace.model import MoaModel, ModelConfig
from moaspace.pp._split import split
from moaspace.tl._metrics import classification_metrics, neighbour_label_shares, retrieval_map

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"moaspace": {}, "arcface_moa_only": {"loss": "arcface_moa"}}
TEMPERATURE = 0.05


def group_means(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean row of ``x`` per group; returns (sorted group names, means)."""
    names, inv = np.unique(groups, return_inverse=True)
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, inv, x)
    return names, sums / np.bincount(inv)[:, None]


def hierarchical_scores(x: np.ndarray, centres: np.ndarray, centre_moa: np.ndarray,
                        n_moas: int) -> np.ndarray:
    """MoA score = log-sum-exp of the cosines to that MoA's compound centres."""
    sims = l2_normalize(x) @ l2_normalize(centres).T / TEMPERATURE
    out = np.full((len(x), n_moas), -np.inf)
    for k in np.unique(centre_moa):
        out[:, k] = logsumexp(sims[:, centre_moa == k], axis=1)
    return out


def length_weighted_centres(means: np.ndarray, moa_codes: np.ndarray, n_moas: int) -> np.ndarray:
    """MoA centres from compound means left unnormalised: a compound whose signatures
    disagree (short mean) counts less. (Normalised means: ``moaspace._core.neighbors.prototypes``.)"""
    sums = np.zeros((n_moas, means.shape[1]))
    np.add.at(sums, moa_codes, means)
    return l2_normalize(sums)


def compound_identification(x: np.ndarray, own: np.ndarray, names: np.ndarray,
                            centres: np.ndarray) -> dict:
    """Rank of each row's own compound among the centres (rows whose compound has one)."""
    pos = pd.Index(names).get_indexer(own)
    ok = pos >= 0
    if not ok.any():
        return {}
    sims = l2_normalize(x[ok]) @ l2_normalize(centres).T
    rank = (sims > sims[np.arange(ok.sum()), pos[ok]][:, None]).sum(1)
    return {"top1": float((rank == 0).mean()), "top10": float((rank < 10).mean()),
            "mrr": float((1.0 / (rank + 1)).mean()), "n": int(ok.sum())}


def run_one(adata: ad.AnnData, scheme: str, seed: int, model_name: str,
            max_epochs: int, compound_weight: float | None = None) -> dict:
    data = split(adata, scheme, seed=seed, copy=True)
    part = data.obs["split"].astype(str).to_numpy()
    kwargs = dict(MODELS[model_name])
    if compound_weight is not None and model_name == "moaspace":
        kwargs["compound_weight"] = compound_weight
    model = MoaModel(data, **kwargs)
    model.train(max_epochs=max_epochs, seed=seed, progress_bar=False)
    classes = list(model.moas)
    moa = data.obs["moa"].astype(str).to_numpy()
    cpd = data.obs["pert_id"].astype(str).to_numpy()
    # the prototype layer is what predict() scores against model.hidden_prototypes (the
    # last hidden layer, stacked with the whitened signature when the model has one)
    z, h, proto = model.embed_layers(data, ("embedding", "hidden", "prototype"))
    hn, zn = l2_normalize(h), l2_normalize(z)
    train = part == "train"
    code = {m: i for i, m in enumerate(classes)}
    names, h_means = group_means(hn[train], cpd[train])
    _, z_means = group_means(zn[train], cpd[train])
    cpd_moa = pd.Series(moa[train], index=cpd[train]).groupby(level=0).first()
    names_moa = np.array([code[m] for m in cpd_moa.loc[names]])
    n = len(classes)
    centres = {
        "proto_sig": model.hidden_prototypes,  # what `predict` calls with
        "proto_cpd": prototypes(h_means, cpd_moa.loc[names].to_numpy(), classes)[0],
        "proto_cpd_len": length_weighted_centres(h_means, names_moa, n),
        "proto_emb": prototypes(z[train], moa[train], classes)[0],
    }
    rules = {name: (lambda x, c=c: l2_normalize(x) @ c.T) for name, c in centres.items()}
    layer = {"proto_sig": proto, "proto_cpd": hn, "proto_cpd_len": hn, "proto_emb": zn,
             "cpd_lse_hidden": hn, "cpd_lse_emb": zn}
    rules["cpd_lse_hidden"] = lambda x: hierarchical_scores(x, h_means, names_moa, n)
    rules["cpd_lse_emb"] = lambda x: hierarchical_scores(x, z_means, names_moa, n)
    head = model.net.compound_head
    if head is not None and head.sub_centers == 1:
        head_moa = np.array([code[m] for m in cpd_moa.loc[list(model.compounds)]])
        weights = head.weight.detach().cpu().numpy()
        rules["cpd_head"] = lambda x: hierarchical_scores(x, weights, head_moa, n)
        layer["cpd_head"] = zn
    out = {"scheme": scheme, "seed": seed, "model": model_name, "macro_f1": {}}
    for name, rule in rules.items():
        for p in ("val", "test"):
            rows = part == p
            out["macro_f1"][f"{name}/{p}"] = classification_metrics(
                moa[rows], rule(layer[name][rows]), classes)["macro_f1"]
    test = part == "test"
    # the hierarchy among the test signatures themselves: are one compound's signatures
    # (other doses, cells) each other's neighbours? what the compound loss is for
    out["hierarchy"] = {
        space: {**{f"same_{k}_share": v for k, v in neighbour_label_shares(
            x[test], {"compound": cpd[test], "moa": moa[test]}, k=10).items()},
            "compound_map": retrieval_map(x[test], cpd[test], seed=seed)}
        for space, x in (("embedding", zn), ("hidden", hn))}
    out["compound_identification"] = {
        "embedding": compound_identification(zn[test], cpd[test], names, z_means),
        "hidden": compound_identification(hn[test], cpd[test], names, h_means),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_argument(parser)
    add_run_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_predictors.json")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--compound-weight", type=float, default=None,
                        help="moaspace's compound-loss weight (default: the model's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = default_data(args.data)
    t0 = time.perf_counter()
    runs = [run_one(adata, scheme, int(s), model, args.max_epochs, args.compound_weight)
            for scheme in args.schemes.split(",") for s in args.seeds.split(",")
            for model in args.models.split(",")]
    rows = [{"scheme": r["scheme"], "seed": r["seed"], "model": r["model"], "rule": k.split("/")[0],
             "part": k.split("/")[1], "macro_f1": v} for r in runs for k, v in r["macro_f1"].items()]
    frame = pd.DataFrame(rows)
    base = frame[frame["rule"] == "proto_sig"].set_index(["scheme", "seed", "model", "part"])
    frame["minus_default"] = frame["macro_f1"].to_numpy() - base.loc[
        pd.MultiIndex.from_frame(frame[["scheme", "seed", "model", "part"]]), "macro_f1"].to_numpy()
    summary = (frame.groupby(["scheme", "model", "rule", "part"])["minus_default"]
               .agg(["mean", "std"]).unstack("part"))
    summary.columns = [f"{p}_minus_default_{s}" for s, p in summary.columns]
    summary = summary[[f"{p}_minus_default_{s}" for p in ("test", "val") for s in ("mean", "std")]]
    summary = summary.drop(index="proto_sig", level="rule")
    ident = pd.DataFrame([{"scheme": r["scheme"], "seed": r["seed"], "model": r["model"],
                           "space": space, **vals}
                          for r in runs for space, vals in r["compound_identification"].items()
                          if vals])
    # only the cell split has test compounds with a training centre
    ident_summary = (ident.groupby(["scheme", "model", "space"])[["top1", "top10", "mrr"]].mean()
                     if len(ident) else pd.DataFrame())
    hier = pd.DataFrame([{"scheme": r["scheme"], "seed": r["seed"], "model": r["model"],
                          "space": space, **vals}
                         for r in runs for space, vals in r["hierarchy"].items()])
    hier_summary = hier.groupby(["scheme", "model", "space"])[
        ["same_compound_share", "same_moa_share", "compound_map"]].mean()
    out = {"signatures": adata.n_obs, "seeds": args.seeds, "max_epochs": args.max_epochs,
           # the weight moaspace trained with, the model's default when not given
           "compound_weight": (ModelConfig.compound_weight if args.compound_weight is None
                               else args.compound_weight),
           "temperature": TEMPERATURE, "seconds": time.perf_counter() - t0, "runs": runs,
           "summary": summary.reset_index().to_dict("records"),
           "compound_identification": ident_summary.reset_index().to_dict("records"),
           "hierarchy": hier_summary.reset_index().to_dict("records")}
    out["data"] = str(args.data) if args.data else "moaspace simulate --seed 0 + prepare"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), **out}, indent=2))
    pd.set_option("display.width", 160)
    print("test / val macro-F1 minus the default rule (proto_sig), same model and split, "
          f"mean ± sd over seeds {args.seeds}")
    print(summary.round(4).to_string())
    print("\ntest signatures among themselves (10 neighbours; compound retrieval mAP), mean over "
          "seeds")
    print(hier_summary.round(3).to_string())
    if len(ident_summary):
        print("\nknown compound in an unseen cell line (cell split): its own training centre's "
              "rank among all training compounds' (mean over seeds)")
        print(ident_summary.round(3).to_string())


if __name__ == "__main__":
    main()
