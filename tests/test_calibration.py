"""The calibration maps, fit_calibration and the Calibration object with its JSON file
(moaspace.model.calibration._maps, _fit, _calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _synthetic import make_synthetic
from moaspace.errors import InputError, MoaspaceError
from moaspace.model.calibration import (
    Calibration,
    _out_of_fold_confidence,
    apply_logistic,
    brier_score,
    confidence_features,
    expected_calibration_error,
    fit_calibration,
    fit_isotonic,
    fit_logistic,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from moaspace.pp._split import split

# -------------------------------------------------------------------------------- calibration maps


def test_temperature_scaling_lowers_nll_and_ece_on_an_overconfident_toy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 6)) * 1.5
    p = softmax(logits)
    y = np.array([rng.choice(6, p=row) for row in p])  # labels drawn from the true model
    over = logits * 4.0  # an over-confident model: same ranking, too sharp
    t = fit_temperature(over, y)
    assert 3.0 < t < 5.5
    before, after = softmax(over), softmax(over, t)
    correct = before.argmax(1) == y
    assert negative_log_likelihood(after, y) < negative_log_likelihood(before, y) - 0.2
    ece_before = expected_calibration_error(before.max(1), correct)
    ece_after = expected_calibration_error(after.max(1), correct)
    assert ece_after < 0.03 < ece_before
    iso = fit_isotonic(before.max(1), correct)
    assert np.all(np.diff(iso["y"]) >= 0)
    calibrated = np.interp(before.max(1), iso["x"], iso["y"])
    assert expected_calibration_error(calibrated, correct) < ece_before


def test_isotonic_blocks_use_the_rule_of_succession():
    """A small validation set whose lowest scores hold no right call: the plain isotonic
    map sends them to 1/(n+2), far below their true rate; per block the estimate is
    (k+1)/(n_b+2), and over many draws the per-block map is closer to the truth there."""
    conf = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    right = np.array([0, 0, 0, 0, 1, 0, 1, 1], dtype=float)
    plain = fit_isotonic(conf, right, per_block=False)
    block = fit_isotonic(conf, right)
    # blocks: {0.1..0.4}: 0 of 4; {0.6, 0.7}: 1 of 2; {0.8, 0.9}: 2 of 2
    assert np.interp(0.1, block["x"], block["y"]) == pytest.approx(1 / 6)
    assert np.interp(0.65, block["x"], block["y"]) == pytest.approx(2 / 4)
    assert np.interp(0.85, block["x"], block["y"]) == pytest.approx(3 / 4)
    assert np.interp(0.1, plain["x"], plain["y"]) == pytest.approx(1 / 10)
    assert np.all(np.diff(block["y"]) >= 0) and np.all(np.diff(block["x"]) > 0)
    # 200 validation sets of 60 rows with a true rate of 0.1 below 0.5 and 0.6 above:
    # the per-block map's mean error at the low end is smaller
    rng = np.random.default_rng(0)
    err = {True: [], False: []}
    for _ in range(200):
        c = rng.random(60)
        y = (rng.random(60) < np.where(c < 0.5, 0.1, 0.6)).astype(float)
        for per_block in (True, False):
            m = fit_isotonic(c, y, per_block=per_block)
            err[per_block].append(np.interp(0.05, m["x"], m["y"]) - 0.1)
    assert abs(np.mean(err[True])) < abs(np.mean(err[False]))
    # with many rows the two agree
    c = rng.random(20000)
    y = (rng.random(20000) < c).astype(float)
    grid = np.linspace(0.02, 0.98, 49)
    a, b = fit_isotonic(c, y), fit_isotonic(c, y, per_block=False)
    assert np.abs(np.interp(grid, a["x"], a["y"]) - np.interp(grid, b["x"], b["y"])).max() < 0.01


def test_confidence_features_by_hand():
    centres = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # prototypes of A, B
    ref_codes = np.array([0, 0, 1, 1])
    z = np.array([[2.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    scores = np.array([[1.0, 0.0], [0.25, 0.75]])  # top: A (share 1), B (share 0.75)
    idx = np.array([[0, 1, 2, 3], [2, 0, 1, 3]])
    sims = np.zeros((2, 4))
    f = confidence_features(scores, z, centres, sims, idx, ref_codes, wide_k=4)
    lg = np.log(0.999 / 0.001)  # logit of a clipped 1.0
    assert f.shape == (2, 3)
    assert f[0, 0] == pytest.approx(lg) and f[1, 0] == pytest.approx(np.log(3.0))
    assert f[:, 1] == pytest.approx([0.0, 0.0])  # 2 of 4 wide neighbours share the top MoA
    assert f[:, 2] == pytest.approx([1.0, 0.0], abs=1e-6)  # cos 1 vs 0; equidistant
    f2 = confidence_features(scores, z, centres, sims, idx, ref_codes, wide_k=2)
    assert f2[:, 1] == pytest.approx([lg, 0.0])  # A, A; B, A
    # wide_k larger than the neighbours searched: all of them are used
    f9 = confidence_features(scores, z, centres, sims, idx, ref_codes, wide_k=9)
    assert f9 == pytest.approx(f)


def test_logistic_calibration_recovers_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    y = rng.random(20000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0)))  # x[:, 1] is noise
    fit = fit_logistic(x, y)
    p = apply_logistic(fit, np.array([[0.5, 3.0], [0.0, 0.0], [2.0, -1.0]]))
    assert p == pytest.approx(1 / (1 + np.exp(-np.array([0.0, -1.0, 3.0]))), abs=0.02)
    coef = np.asarray(fit["coef"]) / np.asarray(fit["scale"])
    assert coef[0] == pytest.approx(2.0, abs=0.1) and abs(coef[1]) < 0.1
    # one outcome only: a constant, the rule-of-succession estimate
    const = fit_logistic(x[:8], np.ones(8))
    assert apply_logistic(const, x[:3]) == pytest.approx([0.9] * 3)
    with pytest.raises(MoaspaceError, match="features"):
        apply_logistic(fit, np.zeros((2, 3)))


def test_logistic_beats_isotonic_when_the_top_score_is_saturated():
    """All vote shares 1.0: isotonic can only give the mean accuracy; a second input
    that tells right from wrong calls lets the logistic map do better, out of fold."""
    rng = np.random.default_rng(1)
    n = 600
    correct = rng.random(n) < 0.6
    top = np.ones(n)
    wide = np.where(correct, 0.8, 0.4) + rng.normal(0, 0.1, n)
    feats = np.column_stack([np.full(n, 6.9), wide, rng.normal(size=n)])
    groups = np.repeat(np.arange(30), n // 30)
    codes = np.zeros(n, dtype=int)
    logits = np.zeros((n, 2))
    oof = {m: _out_of_fold_confidence(m, top, logits, codes, correct, groups, feats)
           for m in ("isotonic", "logistic", "none")}
    briers = {m: brier_score(o, correct) for m, o in oof.items()}
    assert briers["isotonic"] == pytest.approx(0.24, abs=0.02)  # ~ p (1 - p) at p = 0.6
    assert briers["logistic"] < 0.1 < briers["isotonic"] < briers["none"]
    assert expected_calibration_error(oof["logistic"], correct) < 0.06


# --------------------------------------------------------------------------------- fit_calibration


def test_calibration_without_validation_rows_is_an_input_error():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 8))
    ref_labels = np.repeat(["A", "B"], 20)
    with pytest.raises(InputError, match="validation"):
        fit_calibration(rng.normal(size=(5, 8)), ["C"] * 5, ref, ref_labels)
    with pytest.raises(InputError, match="validation"):
        fit_calibration(np.zeros((0, 8)), [], ref, ref_labels)


def test_auto_picks_the_prototype_map_on_prototype_scores():
    """'auto' validates the prototype map on the prototype scores themselves (out of fold),
    not by the kNN vote's choice."""
    from moaspace._core.neighbors import encode_labels, prototype_scores, prototypes
    from moaspace.model.calibration import PROTOTYPE_TEMPERATURE, auto_candidates

    # data on which the two choices differ, so a prototype map copied from the kNN's
    # choice fails here
    adata = make_synthetic(n_moas=4, compounds_per_moa=8, n_genes=48, seed=18)
    split(adata, "compound", seed=0)
    s = adata.obs["split"].astype(str).to_numpy()
    x, y = np.asarray(adata.X), adata.obs["moa"].astype(str).to_numpy()
    cal = fit_calibration(x[s == "val"], y[s == "val"], x[s == "train"], y[s == "train"],
                          groups=adata.obs["pert_id"].astype(str).to_numpy()[s == "val"])
    knn_brier = cal.validation["brier_out_of_fold"]
    proto = cal.validation["prototype"]
    assert cal.method == min(knn_brier, key=knn_brier.get)
    assert cal.method in auto_candidates("knn") and "none" in auto_candidates("knn")
    # a prototype softmax kept raw is no probability: 'auto' picks among the fitted maps, even
    # where the raw scores have the lowest Brier score (as here)
    briers = proto["brier_out_of_fold"]
    assert min(briers, key=briers.get) == "none"
    fitted = {m: b for m, b in briers.items() if m in auto_candidates("prototype")}
    assert set(fitted) == {"isotonic", "temperature", "logistic"}
    assert cal.methods == {"prototype": min(fitted, key=fitted.get)}
    assert proto["method"] == cal.methods["prototype"] != cal.method
    # the 'none' entry is the Brier score of the raw prototype scores of the val rows
    centres, classes = prototypes(x[s == "train"], y[s == "train"])
    sc = prototype_scores(x[s == "val"], centres, PROTOTYPE_TEMPERATURE)
    right = sc.argmax(1) == encode_labels(y[s == "val"], classes)[0]
    assert proto["brier_out_of_fold"]["none"] == pytest.approx(brier_score(sc.max(1), right))
    assert proto["accuracy"] == pytest.approx(right.mean())
    forced = fit_calibration(x[s == "val"], y[s == "val"], x[s == "train"], y[s == "train"],
                             method="temperature")
    assert forced.method == "temperature" and forced.methods == {"prototype": "temperature"}


def test_fit_calibration_hidden_score_needs_hidden_activations():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 8))
    ref_labels = np.repeat(["A", "B"], 20)
    with pytest.raises(InputError, match="hidden"):
        fit_calibration(rng.normal(size=(10, 8)), ["A"] * 10, ref, ref_labels,
                        score="hidden_prototype")
    cal = fit_calibration(rng.normal(size=(10, 8)), ["A", "B"] * 5, ref, ref_labels)
    assert "hidden_prototype" not in cal.thresholds  # raw z-scores: no hidden layer
    with pytest.raises(InputError, match="one row per class"):
        fit_calibration(rng.normal(size=(10, 8)), ["A", "B"] * 5, ref, ref_labels,
                        hidden=rng.random((10, 4)), hidden_centres=rng.random((3, 4)))


def test_a_calibration_without_the_hidden_predictor_map_says_to_refit():
    """A calibration fitted without hidden activations (raw arrays, or before the predictor
    existed) has no hidden_prototype map: using one is an error that says what to do."""
    adata = make_synthetic(n_moas=4, compounds_per_moa=8, n_genes=48, seed=18)
    split(adata, "compound", seed=0)
    s = adata.obs["split"].astype(str).to_numpy()
    x, y = np.asarray(adata.X), adata.obs["moa"].astype(str).to_numpy()
    scores = np.full((3, 4), 0.25, np.float32)
    for method in ("isotonic", "temperature", "logistic"):
        cal = fit_calibration(x[s == "val"], y[s == "val"], x[s == "train"], y[s == "train"],
                              method=method)
        assert "hidden_prototype" not in cal.methods
        with pytest.raises(MoaspaceError, match="hidden_prototype.*refit it"):
            cal.calibrate_scores(scores, "hidden_prototype", np.zeros((3, 3)))


# ------------------------------------------------------------- the Calibration object and its file


def test_calibration_json_round_trip(tmp_path):
    cal = Calibration(classes=["A", "B"], method="temperature",
                      temperature={"knn": 2.0, "prototype": 0.5},
                      isotonic={"knn": {"x": [0.0, 1.0], "y": [0.2, 0.9]}},
                      score="energy", thresholds={"energy": -0.3, "knn": 0.4},
                      min_tas=0.2, min_score=0.15,
                      validation={"ece_before": np.float64(0.1), "x": float("nan")})
    path = cal.save(tmp_path / "calibration.json")
    back = Calibration.load(path)
    assert back.thresholds == cal.thresholds and back.min_tas == 0.2
    assert back.min_score == 0.15
    # a calibration written before the confidence cut-off: none (off)
    older = {k: v for k, v in cal.to_dict().items() if k != "min_score"}
    assert Calibration.from_dict(older).min_score is None
    assert back.validation == {"ece_before": 0.1, "x": None}  # strict JSON: NaN -> null
    json.loads(path.read_text())
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    proba, conf = back.calibrate_scores(scores, "knn")
    assert (proba.argmax(1) == scores.argmax(1)).all() and (conf < scores.max(1)).all()
    back.method = "isotonic"
    proba, conf = back.calibrate_scores(scores, "knn")
    assert proba is None and conf == pytest.approx([0.2 + 0.7 * 0.9, 0.2 + 0.7 * 0.8])
    fit = {"mean": [0.0, 0.0], "scale": [1.0, 2.0], "coef": [1.0, 2.0], "intercept": -1.0,
           "lo": 0.01, "hi": 0.99}
    back.logistic = {"knn": fit}
    back.method = "logistic"
    again = Calibration.load(back.save(tmp_path / "calibration.json"))
    assert again.logistic == {"knn": fit} and again.wide_k == back.wide_k
    feats = np.array([[1.0, 0.0], [0.0, 10.0]])  # eta = 1 - 1 = 0; 10 - 1 = 9 -> clipped
    proba, conf = again.calibrate_scores(scores, "knn", feats)
    assert proba is None and conf == pytest.approx([0.5, 0.99])
    with pytest.raises(MoaspaceError, match="confidence_features"):
        again.calibrate_scores(scores, "knn")
    with pytest.raises(MoaspaceError, match="no logistic"):
        again.calibrate_scores(scores, "prototype", feats)
    with pytest.raises(MoaspaceError, match="format"):
        Calibration.from_dict({**cal.to_dict(), "format_version": 99})


def test_each_prediction_method_has_its_own_calibration_map(tmp_path):
    curve = {"x": [0.0, 1.0], "y": [0.2, 0.9]}
    cal = Calibration(classes=["A", "B"], method="isotonic", methods={"prototype": "none"},
                      isotonic={"knn": curve, "prototype": curve},
                      score="energy", thresholds={"energy": -0.3})
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    _, knn_conf = cal.calibrate_scores(scores, "knn")
    _, proto_conf = cal.calibrate_scores(scores, "prototype")
    assert knn_conf == pytest.approx([0.2 + 0.7 * 0.9, 0.2 + 0.7 * 0.8])
    assert proto_conf == pytest.approx([0.9, 0.8])  # 'none': the raw top score
    back = Calibration.load(cal.save(tmp_path / "calibration.json"))
    assert back.methods == {"prototype": "none"} and back.method_for("knn") == "isotonic"
    # a calibration written before per-method maps: every method falls back to `method`
    old = {k: v for k, v in cal.to_dict().items() if k != "methods"}
    assert Calibration.from_dict(old).method_for("prototype") == "isotonic"
    with pytest.raises(MoaspaceError, match="calibration methods"):
        Calibration.from_dict({**cal.to_dict(), "methods": {"prototype": "platt"}})
    with pytest.raises(MoaspaceError, match="kNN calibration map"):
        Calibration.from_dict({**cal.to_dict(), "methods": {"knn": "none"}})
    back.method = "none"  # switching `method` switches the kNN map (what bench_openset does)
    assert back.calibrate_scores(scores, "knn")[1] == pytest.approx([0.9, 0.8])


def test_calibration_formats_1_and_2_still_load_and_3_is_written(tmp_path):
    cal = Calibration(classes=["A", "B"], score="energy", thresholds={"energy": -0.3})
    assert cal.to_dict()["format_version"] == 3
    two = {**cal.to_dict(), "format_version": 2}
    del two["compound"]
    assert Calibration.from_dict(two).compound == {}
    old = {**cal.to_dict(), "format_version": 1}
    del old["methods"]
    assert Calibration.from_dict(old).method_for("prototype") == cal.method


def test_calibration_load_names_the_file(tmp_path):
    cal = Calibration(classes=["A", "B"], score="knn", thresholds={"knn": 0.3})
    bad = cal.to_dict()
    bad["method"] = "magic"
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(MoaspaceError, match=f"{path}.*calibration method"):
        Calibration.load(path)
    missing = cal.to_dict()
    missing["thresholds"] = {"energy": 0.1}
    path.write_text(json.dumps(missing))
    with pytest.raises(MoaspaceError, match=f"{path}.*no threshold for the open-set score 'knn'"):
        Calibration.load(path)


def test_choose_min_score_is_the_lower_of_twice_chance_and_half_the_accuracy():
    from moaspace.model.calibration._strength import choose_min_score, choose_min_strength

    right = np.r_[np.ones(30), np.zeros(20)]  # validation accuracy 0.6
    assert choose_min_score(right, chance=0.1) == pytest.approx(0.2)  # 2 x chance
    assert choose_min_score(right, chance=0.4) == pytest.approx(0.3)  # half the accuracy
    assert choose_min_score(right[:19], chance=0.1) is None  # too few rows
    assert choose_min_score(np.zeros(40), chance=0.1) is None  # nothing right
    # the strength cut-off reads the same level on the strength axis: calls are right
    # from strength 1.0 on (accuracy 2/3, level 0.2), so that is where calls start
    strength = np.linspace(0, 3, 60)
    right = strength >= 1.0
    assert choose_min_strength(strength, right, chance=0.1) == pytest.approx(
        strength[strength >= 1.0].min())
