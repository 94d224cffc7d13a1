"""predict / evaluate / benchmark with a small trained model, API and CLI."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from _synthetic import make_synthetic
from moaspace.benchmark._run import results_markdown, run_benchmark, write_benchmark
from moaspace.cli import app
from moaspace.model._predict import predict, prediction_table
from moaspace.pp._split import split
from moaspace.tl._evaluate import evaluate, write_metrics

TINY = {"hidden_dims": (64, 32), "embedding_dim": 16, "input_whitening": "on"}


@pytest.fixture(scope="module")
def trained(saved_model):
    """*A* small trained model and its data (the session's shared model, conftest.py)."""
    return saved_model["model"], saved_model["adata"]


def test_predict_writes_conventional_fields(trained):
    model, adata = trained
    test = adata[adata.obs["split"] == "test"].copy()
    out = predict(model, test, k=5, compound_key="pert_id")
    assert out.obsm["X_moa"].shape == (test.n_obs, 16)
    np.testing.assert_allclose(np.linalg.norm(out.obsm["X_moa"], axis=1), 1, atol=1e-5)
    # a calibrated model abstains ('unknown') far from every known MoA (issue #10)
    assert set(out.obs["moa_pred"].astype(str)) <= set(model.moas) | {"unknown"}
    assert set(out.obs["moa_pred_known"].astype(str)) <= set(model.moas)
    assert ((out.obs["moa_pred_score"] > 0) & (out.obs["moa_pred_score"] <= 1)).all()
    calls = prediction_table(out, "compound_calls")
    assert set(calls.index) == set(test.obs["pert_id"])
    assert (calls["n_signatures"].sum()) == test.n_obs
    # compound-level call is the argmax of the mean of its signatures' scores
    first = calls.index[0]
    rows = (test.obs["pert_id"] == first).to_numpy()
    mean = out.obsm["moa_scores"][rows].mean(axis=0)
    assert calls.loc[first, "moa_pred"] == out.uns["moa"]["classes"][int(mean.argmax())]
    proto = predict(model, test, predictor="prototype")
    assert proto.obs["moa_pred"].notna().all()
    top = prediction_table(out, "top_k")
    assert len(top) == test.n_obs * min(5, len(model.moas))


def test_evaluate_keys_and_sanity(trained, tmp_path):
    model, adata = trained
    m = evaluate(model, adata)
    for key in ("accuracy", "macro_f1", "weighted_f1", "top5_accuracy", "per_moa",
                "compound_level", "hierarchy", "retrieval"):
        assert key in m
    assert m["macro_f1"] > 1 / len(model.moas) + 0.1  # well above chance on unseen compounds
    assert m["top5_accuracy"] >= m["top3_accuracy"] >= m["accuracy"]
    path = write_metrics(m, tmp_path / "metrics.json")
    assert json.loads(path.read_text())["macro_f1"] == m["macro_f1"]
    assert "| MoA |" in path.with_suffix(".md").read_text()


def test_benchmark_records_and_outputs(tmp_path):
    adata = make_synthetic(n_moas=4, compounds_per_moa=6, n_genes=48, seed=4)
    records = run_benchmark(adata, scheme="compound", seeds=(0, 1),
                            methods=("moaspace", "raw_knn", "pca_lda"), max_epochs=3,
                            n_components=10, model_kwargs=TINY)
    assert len(records) == 6
    assert {r["method"] for r in records} == {"moaspace", "raw_knn", "pca_lda"}
    for r in records:
        assert 0 <= r["macro_f1"] <= 1 and r["scheme"] == "compound"
    # same split per seed: every method scored the same test rows
    for seed in (0, 1):
        assert len({r["n_test"] for r in records if r["seed"] == seed}) == 1
    # the compound level of the hierarchy, in the spaces that exist: moaspace's embedding and
    # raw_knn's z-scores; raw_knn's is the retrieval among the same split's test rows
    from moaspace.tl._metrics import retrieval_map

    for r in records:
        has_space = r["method"] in ("moaspace", "raw_knn")
        assert ("compound_map" in r) == has_space and ("same_compound_share" in r) == has_space
        if has_space:
            assert 0 < r["compound_map"] <= 1 and 0 <= r["same_compound_share"] <= 1
    data = split(adata, "compound", seed=1, copy=True)
    test = data[data.obs["split"] == "test"]
    raw = next(r for r in records if r["method"] == "raw_knn" and r["seed"] == 1)
    assert raw["compound_map"] == pytest.approx(retrieval_map(
        np.asarray(test.X, dtype=np.float32), test.obs["pert_id"].astype(str), seed=1))
    write_benchmark(records, tmp_path / "bench")
    assert json.loads((tmp_path / "bench" / "results.json").read_text()) == records
    assert "± " in results_markdown(records)
    assert "Paired per seed, `moaspace` minus each method" in results_markdown(records)
    md = results_markdown(records)
    assert "same-compound mAP |" in md and "Same-compound mAP, paired per seed" in md
    pca_row = next(line for line in md.splitlines() if line.startswith("| pca_lda | 0"))
    assert pca_row.count("–") == 1  # no space of its own: no mAP
    assert (tmp_path / "bench" / "results.png").stat().st_size > 1000


def test_cli_benchmark_contract(tmp_path):
    """`moaspace benchmark DATA --out DIR --scheme --seeds` writes the records and the table."""
    runner = CliRunner()
    make_synthetic(n_moas=3, compounds_per_moa=5, n_genes=40, seed=6).write_h5ad(
        tmp_path / "data.h5ad")
    out = tmp_path / "bench"
    r = runner.invoke(app, ["--quiet", "benchmark", str(tmp_path / "data.h5ad"), "--out", str(out),
                            "--scheme", "compound", "--seeds", "0,1",
                            "--methods", "moaspace,raw_knn", "--max-epochs", "2",
                            "--compound-weight", "0.5"])
    assert r.exit_code == 0, r.output
    records = json.loads((out / "results.json").read_text())
    assert {(rec["method"], rec["seed"]) for rec in records} == {
        (m, s) for m in ("moaspace", "raw_knn") for s in (0, 1)}
    for rec in records:
        assert {"method", "scheme", "seed", "macro_f1", "accuracy"} <= set(rec)
        assert rec["scheme"] == "compound" and 0 <= rec["macro_f1"] <= 1
        # each record says which code and command made it (the file stays a list)
        assert rec["moaspace_version"] and "git_commit" in rec and isinstance(rec["argv"], list)
    md = (out / "results.md").read_text()
    assert "| moaspace |" in md and "| raw_knn |" in md
    assert '"compound_weight": 0.5' in md  # the option is recorded with the command
    r = runner.invoke(app, ["benchmark", str(tmp_path / "data.h5ad"), "--out",
                            str(tmp_path / "bad"), "--methods", "moaspace,svm"])
    assert r.exit_code != 0 and "svm" in r.output
    assert not (tmp_path / "bad" / "results.json").exists()


def test_paired_differences_by_hand():
    """moaspace minus each method seed by seed, within its scheme; mean > sd is the bar."""
    from moaspace.benchmark._run import paired_differences

    f1 = {("compound", "moaspace"): [0.60, 0.50, 0.70], ("compound", "logreg"): [0.58, 0.49, 0.67],
          ("compound", "raw_knn"): [0.62, 0.40, 0.71], ("cell", "moaspace"): [0.5, 0.6, 0.7],
          ("cell", "logreg"): [0.5, 0.6, 0.7]}
    records = [{"scheme": sch, "method": m, "seed": seed, "macro_f1": v[seed]}
               for (sch, m), v in f1.items() for seed in range(3)]
    paired = paired_differences(records).set_index(["scheme", "method"])
    d = np.array([0.02, 0.01, 0.03])
    row = paired.loc[("compound", "logreg")]
    assert row["mean"] == pytest.approx(d.mean()) and row["sd"] == pytest.approx(d.std(ddof=1))
    assert row["higher"] == 3 and row["beyond_spread"]
    row = paired.loc[("compound", "raw_knn")]  # ahead on average, not beyond its spread
    assert row["mean"] == pytest.approx(np.mean([-0.02, 0.10, -0.01]))
    assert row["higher"] == 1 and not row["beyond_spread"]
    row = paired.loc[("cell", "logreg")]  # the cell scheme's own records only
    assert row["mean"] == pytest.approx(0.0) and row["higher"] == 0 and not row["beyond_spread"]
    assert ("cell", "raw_knn") not in paired.index
    assert paired_differences([r for r in records if r["method"] != "moaspace"]).empty


def test_cli_split_train_predict_evaluate(tmp_path):
    runner = CliRunner()
    adata = make_synthetic(n_moas=3, compounds_per_moa=5, n_genes=40, seed=5)
    adata.write_h5ad(tmp_path / "data.h5ad")
    r = runner.invoke(app, ["split", str(tmp_path / "data.h5ad"), "--scheme", "compound",
                            "--seed", "1", "--out", str(tmp_path / "s.h5ad")])
    assert r.exit_code == 0, r.output
    assert set(ad.read_h5ad(tmp_path / "s.h5ad").obs["split"]) == {"train", "val", "test"}
    r = runner.invoke(app, ["train", str(tmp_path / "s.h5ad"), "--out", str(tmp_path / "m"),
                            "--max-epochs", "2", "--seed", "0", "--compound-weight", "0.3"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"model.pt", "config.json"}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["compound_weight"] == 0.3
    r = runner.invoke(app, ["predict", str(tmp_path / "m"), str(tmp_path / "s.h5ad"),
                            "--out", str(tmp_path / "p.h5ad"), "--compound-level"])
    assert r.exit_code == 0, r.output
    pred = ad.read_h5ad(tmp_path / "p.h5ad")
    assert {"moa_pred", "moa_pred_score"} <= set(pred.obs.columns) and "X_moa" in pred.obsm
    assert (tmp_path / "p.compounds.csv").exists()
    assert pred.uns["moa"]["params"]["predictor"] == "hidden_prototype"  # the model's predictor
    r = runner.invoke(app, ["predict", str(tmp_path / "m"), str(tmp_path / "s.h5ad"),
                            "--out", str(tmp_path / "p_knn.h5ad"), "--method", "knn"])
    assert r.exit_code == 0, r.output
    assert ad.read_h5ad(tmp_path / "p_knn.h5ad").uns["moa"]["params"]["predictor"] == "knn"
    r = runner.invoke(app, ["predict", str(tmp_path / "m"), str(tmp_path / "s.h5ad"),
                            "--out", str(tmp_path / "p_bad.h5ad"), "--method", "svm"])
    assert r.exit_code == 1 and "svm" in r.output and not (tmp_path / "p_bad.h5ad").exists()
    r = runner.invoke(app, ["train", str(tmp_path / "s.h5ad"), "--out", str(tmp_path / "m_knn"),
                            "--max-epochs", "2", "--seed", "0", "--predictor", "knn",
                            "--average-best", "2"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "m_knn" / "config.json").read_text())
    assert config["model"]["predictor"] == "knn" and config["model"]["average_best"] == 2
    assert config["train"]["averaged_epochs"] == [0, 1]  # 2 epochs run, both averaged
    assert "epochs averaged" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "s.h5ad"),
                            "--out", str(tmp_path / "metrics.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "weighted_f1", "top5_accuracy", "per_moa",
            "compound_level"} <= set(metrics)
    assert metrics["predictor"] == "hidden_prototype"
    r = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "s.h5ad"),
                            "--out", str(tmp_path / "metrics_knn.json"), "--method", "knn"])
    assert r.exit_code == 0, r.output
    by_knn = json.loads((tmp_path / "metrics_knn.json").read_text())
    assert by_knn["predictor"] == "knn"
    # the kNN metrics are those of predict's kNN calls on the same rows
    test_rows = ad.read_h5ad(tmp_path / "p_knn.h5ad")
    test_rows = test_rows[test_rows.obs["split"] == "test"]
    assert by_knn["accuracy"] == pytest.approx(float(
        (test_rows.obs["moa_pred_known"].astype(str) == test_rows.obs["moa"].astype(str)).mean()))
    r = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "data.h5ad"),
                            "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "split" in r.output
    assert not (tmp_path / "x.json").exists()


def test_cli_explain_and_crispr_contract(tmp_path):
    """`moaspace explain` and `moaspace crispr` write the files their contract names."""
    import pandas as pd

    from moaspace.datasets._simulate import SimulationConfig, simulate

    paths = simulate(tmp_path / "sim", SimulationConfig(seed=2, n_compounds=120, n_moas=5,
                                                        n_cells=5, sigs_per_compound=(12, 24)))
    runner = CliRunner()
    args = ["prepare", "--gctx", str(paths["gctx"]), "--siginfo", str(paths["siginfo"]),
            "--geneinfo", str(paths["geneinfo"]), "--compoundinfo", str(paths["compoundinfo"]),
            "--moa-labels", str(paths["moa_labels"]), "--min-compounds-per-moa", "5",
            "--out", str(tmp_path / "d.h5ad")]
    assert runner.invoke(app, args).exit_code == 0
    kd_args = ["prepare", "--gctx", str(paths["gctx_xpr"]), "--siginfo", str(paths["siginfo"]),
               "--geneinfo", str(paths["geneinfo"]), "--pert-type", "trt_xpr", "--times", "all",
               "--out", str(tmp_path / "kd.h5ad")]
    assert runner.invoke(app, kd_args).exit_code == 0
    assert runner.invoke(app, ["split", str(tmp_path / "d.h5ad"), "--out",
                               str(tmp_path / "s.h5ad")]).exit_code == 0
    r = runner.invoke(app, ["train", str(tmp_path / "s.h5ad"), "--out", str(tmp_path / "m"),
                            "--max-epochs", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["explain", str(tmp_path / "m"), str(tmp_path / "s.h5ad"),
                            "--out", str(tmp_path / "ex"), "--permutations", "50",
                            "--max-per-moa", "20"])
    assert r.exit_code == 0, r.output
    importance = pd.read_csv(tmp_path / "ex" / "gene_importance.csv", index_col=0)
    assert importance.shape[0] == 978 and importance.shape[1] >= 2
    enrichment = pd.read_csv(tmp_path / "ex" / "enrichment.csv")
    assert {"moa", "pathway", "nes", "pval", "fdr"} <= set(enrichment.columns)
    assert (tmp_path / "ex" / "pathway_heatmap.png").stat().st_size > 1000
    r = runner.invoke(app, ["crispr", str(tmp_path / "m"), str(tmp_path / "kd.h5ad"),
                            "--compoundinfo", str(paths["compoundinfo"]),
                            "--out", str(tmp_path / "cr")])
    assert r.exit_code == 0, r.output
    scores = pd.read_csv(tmp_path / "cr" / "crispr_scores.csv")
    assert {"gene", "expected_moas", "predicted_moas", "rank"} <= set(scores.columns)
    assert (tmp_path / "cr" / "crispr_map.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "cr" / "summary.json").read_text())
    for key in ("hit_at_1", "hit_at_5", "hit_at_5_raw", "hit_at_5_null", "n_genes_scored"):
        assert key in summary
    assert summary["n_genes_scored"] >= 1 and summary["hit_at_5_raw"] == summary["hit_at_5_raw"]


def test_silhouette_of_one_point_per_label_is_nan_not_an_error():
    """Consensus data have one signature per compound: the compound silhouette is
    undefined (sklearn raises), so evaluate reports NaN instead of failing."""
    from moaspace.tl._metrics import silhouette

    z = np.random.default_rng(0).normal(size=(12, 4))
    assert np.isnan(silhouette(z, [f"c{i}" for i in range(12)]))
    assert np.isfinite(silhouette(z, list("aabbccddeeff")))


def _with_multi_moa(adata, n_multi: int = 3, n_unlabelled: int = 1):
    """``adata`` with ``moa_set``; ``n_multi`` test compounds get a second MoA (``moa`` NaN,
    the first of them an untrained one) and ``n_unlabelled`` lose their MoA."""
    from moaspace._core.sets import join_moa_set

    data = adata.copy()
    obs = data.obs
    cpd = obs["pert_id"].astype(str)
    test_cpds = sorted(set(cpd[obs["split"].astype(str) == "test"]))
    multi, unlabelled = test_cpds[:n_multi], test_cpds[n_multi:n_multi + n_unlabelled]
    moas = sorted(set(obs["moa"].astype(str)))
    moa = obs["moa"].astype(str).astype(object)
    moa_set = moa.copy()
    for i, c in enumerate(multi):
        rows = (cpd == c).to_numpy()
        first = moa[rows].iloc[0]
        second = "never_trained" if i == 0 else next(m for m in moas if m != first)
        moa_set[rows] = join_moa_set({first, second})
        moa[rows] = np.nan
    rows = cpd.isin(unlabelled).to_numpy()
    moa[rows], moa_set[rows] = np.nan, np.nan
    obs["moa"], obs["moa_set"] = moa, moa_set
    return data, cpd.isin(multi).to_numpy(), rows


def test_evaluate_with_multi_moa_rows(trained):
    """Multi-MoA and unlabelled rows leave the single-label metrics as they are on the
    single-MoA rows alone, and get a multi_moa section of their own."""
    from moaspace._core.sets import parse_moa_sets
    from moaspace.tl._evaluate import _jsonable, metrics_markdown

    model, adata = trained
    data, multi, unlabelled = _with_multi_moa(adata)
    m = evaluate(model, data)
    alone = evaluate(model, adata[~multi & ~unlabelled].copy())
    section = m.pop("multi_moa")
    assert json.dumps(m, sort_keys=True, default=_jsonable) == json.dumps(
        alone, sort_keys=True, default=_jsonable)
    assert "multi_moa" not in alone and m["n"] == int((~multi & ~unlabelled
                                                     & (data.obs["split"] == "test")).sum())
    # by hand: the argmax of predict's raw scores (a calibrated model's moa_pred_known)
    held = predict(model, data[multi], compound_key=None)
    classes = np.asarray(held.uns["moa"]["classes"])
    true = parse_moa_sets(data.obs["moa_set"][multi])
    top1 = classes[held.obsm["moa_scores"].argmax(axis=1)]
    hit = np.array([c in t for c, t in zip(top1, true, strict=True)])
    ranking = "moa_scores"  # moa_proba's order without its isotonic ties
    order = np.argsort(-held.obsm[ranking], axis=1, kind="stable")
    recall = np.mean([len(set(classes[o[:3]]) & t) / 2 for o, t in zip(order, true, strict=True)])
    assert section["n_signatures"] == int(multi.sum()) and section["n_compounds"] == 3
    assert section["ranking"] == ranking
    assert 0 < hit.mean() < 1 and section["top1_in_set"] == pytest.approx(hit.mean())
    assert section["recall_at_3"] == pytest.approx(recall)
    if "moa_pred_set" not in held.obs:  # {top-1} against two true MoAs: F1 2/3 or 0
        assert section["set_f1"] == pytest.approx(2 / 3 * hit.mean())
    assert set(section["compound_level"]) == {"top1_in_set", "recall_at_3", "set_f1", "pred_set"}
    assert "| multi-MoA compounds | n |" in metrics_markdown({**m, "multi_moa": section})


def _extra_multi_moa_compounds(base, n: int = 4, seed: int = 0):
    """``base`` (with ``moa_set``) and ``n`` new compounds after it, each a mix of two MoAs'
    signatures (``moa`` NaN, ``moa_set`` ``"a|b"``; the last adds a MoA no single-MoA
    compound has)."""
    import pandas as pd

    from moaspace._core.sets import join_moa_set

    rng = np.random.default_rng(seed)
    base = base.copy()
    base.obs["moa"] = base.obs["moa"].astype(str).astype(object)
    base.obs["moa_set"] = base.obs["moa"]
    moas = sorted(set(base.obs["moa"]))
    parts = []
    for i in range(n):
        a, b = moas[i % len(moas)], moas[(i + 1) % len(moas)]
        rows_a = np.flatnonzero((base.obs["moa"] == a).to_numpy())[:8]
        rows_b = np.flatnonzero((base.obs["moa"] == b).to_numpy())[:8]
        x = 0.5 * (np.asarray(base.X[rows_a]) + np.asarray(base.X[rows_b]))
        x = x + 0.3 * rng.normal(size=x.shape)
        names = [f"multi{i}_{j}" for j in range(len(x))]
        moa_set = join_moa_set({a, b} | ({"only_in_sets"} if i == n - 1 else set()))
        obs = pd.DataFrame({c: base.obs[c].to_numpy()[rows_a] for c in base.obs.columns},
                           index=names)
        obs["pert_id"], obs["moa"], obs["moa_set"] = f"multi{i}", np.nan, moa_set
        parts.append(ad.AnnData(x.astype(np.float32), obs=obs, var=base.var.copy()))
    return base, ad.concat([base, *parts], merge="same")


def test_benchmark_multi_moa_metrics_leave_single_label_numbers_alone(monkeypatch):
    """With multi-MoA compounds in the data, the single-label records are those of the data
    without them (same folds for the single-MoA compounds); the multi-MoA test rows get
    multi_* metrics, logreg_ovr fits on the MoA sets and moaspace gets every row."""
    from moaspace.benchmark._run import paired_differences, summarize
    from moaspace.pp import _split

    base, full = _extra_multi_moa_compounds(
        make_synthetic(n_moas=4, compounds_per_moa=6, n_genes=48, seed=4))
    real = _split.cv_folds

    def folds(adata, n_folds, *, seed=0, **kwargs):  # the extra compounds: one fold each
        extra = (adata.obs["pert_id"].astype(str).str.extract(r"^multi(\d+)$")[0]
                 .dropna().astype(int).to_numpy())
        return [np.concatenate([labels, np.where(extra % n_folds == k, "test", "train")])
                for k, labels in enumerate(real(base, n_folds, seed=seed, **kwargs))]

    monkeypatch.setattr(_split, "cv_folds", folds)
    options = {"cv": 3, "seeds": (0, 1), "n_components": 10}
    alone = run_benchmark(base, methods=("raw_knn", "pca_lda"), **options)
    mixed = run_benchmark(full, methods=("raw_knn", "pca_lda", "logreg_ovr", "moaspace"),
                          max_epochs=1, model_kwargs=TINY, **options)
    single_keys = ("macro_f1", "accuracy", "weighted_f1", "top3_accuracy", "top5_accuracy",
                   "n_test", "compound_macro_f1", "compound_accuracy", "compound_map",
                   "same_compound_share")
    for a in alone:
        m = next(r for r in mixed if (r["method"], r["seed"]) == (a["method"], a["seed"]))
        assert {k: a.get(k) for k in single_keys} == {k: m.get(k) for k in single_keys}
        assert "multi_top1_in_set" not in a
    n_multi = int(full.obs["moa"].isna().sum())
    for r in mixed:
        assert r["n_multi_test"] == n_multi and r["n_test"] == base.n_obs
        for key in ("multi_top1_in_set", "multi_recall_at_3", "multi_set_f1"):
            assert 0 <= r[key] <= 1, (r["method"], key)
        assert r["multi_recall_at_3"] > 0  # 4 classes + 1: the top 3 holds a true MoA
    ovr = [r for r in mixed if r["method"] == "logreg_ovr"]
    assert all(0 <= r["macro_f1"] <= 1 for r in ovr)
    assert "multi_top1_in_set_mean" in summarize(mixed)
    assert len(paired_differences(mixed, "multi_recall_at_3")) == 3
    md = results_markdown(mixed)
    assert "| method | top-1 in set | recall@3 | set F1 |" in md
    assert "Multi-MoA, paired per seed" in md and "| logreg_ovr | " in md
    assert "top-1 in set" not in results_markdown(alone)


def test_benchmark_sets_of_weak_signatures_are_not_emptied(monkeypatch):
    """A signature `predict` withholds as weak (`no call`, an empty set) keeps its set in
    the benchmark, as every baseline's row does: its multi-MoA set F1 scores the answer, not
    an abstention the baselines cannot make."""
    from moaspace._core.labels import NO_CALL
    from moaspace.benchmark import _run

    data = split(make_synthetic(n_moas=4, compounds_per_moa=6, n_genes=48, seed=5),
                 "compound", seed=0, copy=True)
    test = (data.obs["split"] == "test").to_numpy()
    weak = np.flatnonzero(test)[::2]
    data.X[weak] = 0.02 * np.asarray(data.X[weak])  # far below any validation signature
    seen = {}

    def recording_predict(model, adata, **kwargs):
        # a strength cut-off above the weakened rows (this tiny model's validation may
        # fit none): the default predict withholds them
        strength = predict(model, adata, compound_key=None, open_set=False).obs["moa_strength"]
        model.calibration.min_strength = float(np.quantile(strength, 0.5))
        seen["model"], seen["rows"] = model, adata
        return predict(model, adata, **kwargs)

    monkeypatch.setattr(_run, "predict", recording_predict)
    got = _run._fit_predict("moaspace", data, 0, max_epochs=2, k=5, n_components=10,
                            model_kwargs=TINY)
    by_default = predict(seen["model"], seen["rows"], compound_key=None, open_set=False)
    withheld = (by_default.obs["moa_pred"].astype(str) == NO_CALL).to_numpy()
    assert withheld.sum() >= len(weak) // 2  # the default would empty these sets
    assert (by_default.obs["moa_pred_set"].astype(str).to_numpy()[withheld] == "").all()
    classes = np.asarray(got["classes"])
    top = classes[got["scores"].argmax(axis=1)]
    for s, t in zip(got["pred_sets"], top, strict=True):
        assert t in str(s).split("|")
