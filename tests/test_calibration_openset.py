"""Open-set scores (moaspace.model.calibration._openset): unknown MoAs score higher on
raw arrays, and the hidden-layer score with its leave-own-MoA-out version."""

from __future__ import annotations

import numpy as np
import pytest

from _synthetic import make_synthetic
from moaspace.errors import InputError
from moaspace.model.calibration import fit_calibration, open_set_metrics
from moaspace.pp._split import split

# ------------------------------------------------------------------------ end to end on raw arrays


def test_open_set_machinery_flags_a_distinct_unknown_moa():
    """Same code path as the model, on raw z-scores where the held-out MoAs are distinct."""
    adata = make_synthetic(n_moas=8, compounds_per_moa=8, n_genes=48, seed=4)
    split(adata, "moa", moa_fraction=0.25, seed=0)
    s = adata.obs["split"].astype(str).to_numpy()
    x, y = np.asarray(adata.X), adata.obs["moa"].astype(str).to_numpy()
    cal = fit_calibration(x[s == "val"], y[s == "val"], x[s == "train"], y[s == "train"],
                          tas=adata.obs["tas"].to_numpy()[s == "val"])
    assert cal.validation["false_unknown_rate"][cal.score] <= 0.05
    # the calibration map with the lowest out-of-fold Brier score on validation is used
    brier = cal.validation["brier_out_of_fold"]
    assert cal.method == min(brier, key=brier.get)
    from moaspace._core.neighbors import knn_predict, prototypes
    from moaspace.model.calibration import openset_scores

    test = s == "test"
    votes, classes = knn_predict(x[test], x[s == "train"], y[s == "train"], k=cal.k)
    centres, _ = prototypes(x[s == "train"], y[s == "train"], classes)
    scores = openset_scores(x[test], centres=centres, reference=x[s == "train"], k=cal.k,
                            class_scores=votes)
    pred = np.asarray(classes)[votes.argmax(1)]
    m = open_set_metrics(y[test], pred, scores[cal.score], classes, cal.threshold)
    assert m["auroc"] > 0.9 and m["unknown_detected"] > 0.5
    assert m["false_unknown_rate"] < 0.15
    assert m["macro_f1_known_open"] > m["macro_f1_known_closed"]


# --------------------------------------------------------------------- hidden-layer open-set score


def test_encoder_hidden_layer_feeds_the_embedding():
    import torch

    from moaspace.model.encoder import Encoder

    torch.manual_seed(0)
    enc = Encoder(20, hidden_dims=(16, 8), embedding_dim=4, dropout=0.5, input_dropout=0.3).eval()
    x = torch.randn(5, 20) * 20  # beyond the clip: hidden() clips like forward()
    h = enc.hidden(x)
    assert h.shape == (5, enc.hidden_dim) == (5, 8) and (h >= 0).all()  # after the ReLU
    torch.testing.assert_close(h, enc.body(x.clamp(-enc.clip, enc.clip)))  # eval: no dropout
    torch.testing.assert_close(enc(x), torch.nn.functional.normalize(enc.head(h), dim=1))
    enc.train()  # input dropout is part of the hidden layer's input in training
    assert not torch.equal(enc.hidden(x), enc.hidden(x))


def test_hidden_prototype_scores_by_hand():
    from moaspace.model.calibration import leave_moa_out_scores, openset_scores

    centres_z = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    z = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    hidden_centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    hidden = np.array([[1.0, 0.0, 1.0], [0.0, 5.0, 0.0]])  # not unit: normalised
    s = openset_scores(z, centres=centres_z, reference=centres_z, k=1, hidden=hidden,
                       hidden_centres=hidden_centres)
    np.testing.assert_allclose(s["hidden_prototype"], [1 - 1 / np.sqrt(2), 0.0], atol=1e-6)
    # prototypes are used as given: those of a prototype layer with a linear view carry
    # their discriminant's bias and are not unit vectors (moaspace.model.prototypes)
    scaled = openset_scores(z, centres=centres_z, reference=centres_z, k=1, hidden=hidden,
                            hidden_centres=2 * hidden_centres)
    np.testing.assert_allclose(scaled["hidden_prototype"], [1 - 2 / np.sqrt(2), -1.0],
                               atol=1e-6)
    assert "hidden_prototype" not in openset_scores(z, centres=centres_z, reference=centres_z,
                                                    k=1)
    # leave-own-MoA-out: row 0 (MoA 0) only has MoA 1's hidden prototype left (cosine 0)
    p = leave_moa_out_scores(z, np.array([0, 1]), centres_z, np.array([0, 1]), centres_z, k=1,
                             hidden=hidden, hidden_centres=hidden_centres)
    np.testing.assert_allclose(p["hidden_prototype"], [1.0, 1.0], atol=1e-6)
    with pytest.raises(InputError, match="hidden_centres"):
        openset_scores(z, centres=centres_z, reference=centres_z, k=1, hidden=hidden)
    with pytest.raises(InputError, match="do not match"):
        openset_scores(z, centres=centres_z, reference=centres_z, k=1, hidden=hidden[:, :2],
                       hidden_centres=hidden_centres)


def test_auto_uses_the_hidden_score_where_there_is_one_and_pseudo_unknown_chooses():
    """``score="auto"``: ``hidden_prototype`` whenever the rows have prototype-layer cosines
    (even where another score wins against pseudo-unknowns); ``pseudo_unknown``, and
    ``auto`` without them, take the best pseudo-unknown AUROC."""
    from moaspace._core.neighbors import l2_normalize

    adata = make_synthetic(n_moas=6, compounds_per_moa=6, n_genes=40, seed=2)
    split(adata, "moa", moa_fraction=0.2, seed=0)
    s = adata.obs["split"].astype(str).to_numpy()
    x, y = np.asarray(adata.X), adata.obs["moa"].astype(str).to_numpy()
    args = (x[s == "val"], y[s == "val"], x[s == "train"], y[s == "train"])
    classes = sorted(set(y[s == "train"]))
    # a hidden layer that knows nothing: random cosines, a poor open-set score
    rng = np.random.default_rng(0)
    hidden_cos = l2_normalize(rng.normal(size=((s == "val").sum(), len(classes))))
    chosen = fit_calibration(*args, classes=classes, hidden_cos=hidden_cos,
                             score="pseudo_unknown")
    aurocs = chosen.validation["auroc_pseudo_unknown"]
    best = max(aurocs, key=aurocs.get)
    assert chosen.score == best != "hidden_prototype"
    auto = fit_calibration(*args, classes=classes, hidden_cos=hidden_cos)
    assert auto.score == "hidden_prototype"
    assert auto.validation["auroc_pseudo_unknown"] == pytest.approx(aurocs)
    assert fit_calibration(*args, classes=classes).score == best  # no hidden layer
    with pytest.raises(InputError, match="pseudo_unknown"):
        fit_calibration(*args, classes=classes, score="best")
