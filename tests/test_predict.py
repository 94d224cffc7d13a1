"""kNN exactness, voting, prototypes, aggregation and metrics vs scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, top_k_accuracy_score
from sklearn.neighbors import NearestNeighbors

from moaspace._core.neighbors import (
    aggregate_scores,
    knn_predict,
    knn_scores,
    knn_search,
    prototype_scores,
    prototypes,
    top_k_table,
)
from moaspace.errors import InputError
from moaspace.tl._metrics import (
    classification_metrics,
    neighbour_label_shares,
    retrieval_map,
    silhouette,
)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_knn_matches_sklearn_brute_force(chunk):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 16)).astype(np.float32)
    query = rng.standard_normal((57, 16)).astype(np.float32)
    sims, idx = knn_search(query, ref, 8, chunk_size=chunk)
    nn = NearestNeighbors(n_neighbors=8, metric="cosine", algorithm="brute").fit(ref)
    dist, sk_idx = nn.kneighbors(query)
    np.testing.assert_array_equal(idx, sk_idx)
    np.testing.assert_allclose(sims, 1 - dist, atol=1e-5)


def test_exclude_self():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    _, idx = knn_search(x, x, 3, exclude_self=True)
    assert not (idx == np.arange(40)[:, None]).any()
    _, idx_all = knn_search(x, x, 4)
    np.testing.assert_array_equal(idx, idx_all[:, 1:])


def test_votes_by_hand():
    sims = np.array([[0.9, 0.5, 0.4], [0.2, 0.2, 0.2]], np.float32)
    idx = np.array([[0, 1, 2], [0, 1, 2]])
    codes = np.array([1, 0, 0])
    uni = knn_scores(sims, idx, codes, 2, weighting="uniform")
    np.testing.assert_allclose(uni, [[2 / 3, 1 / 3], [2 / 3, 1 / 3]], rtol=1e-6)
    dist = knn_scores(sims, idx, codes, 2, weighting="distance")
    w = 1 / (1 - np.array([0.9, 0.5, 0.4]) + 1e-3)
    np.testing.assert_allclose(dist[0], [(w[1] + w[2]) / w.sum(), w[0] / w.sum()], rtol=1e-5)
    assert dist[0].argmax() == 1 and uni[0].argmax() == 0  # near neighbour wins when weighted
    with pytest.raises(InputError):
        knn_scores(sims, idx, codes, 2, weighting="bogus")


def test_knn_predict_and_prototypes_recover_clusters():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((3, 10)) * 3
    labels = np.repeat(["a", "b", "c"], 30)
    ref = centres[np.repeat(np.arange(3), 30)] + rng.standard_normal((90, 10))
    query = centres[[0, 1, 2, 2]] + rng.standard_normal((4, 10)) * 0.5
    scores, classes = knn_predict(query, ref, labels, k=5)
    assert classes == ["a", "b", "c"]
    assert list(np.asarray(classes)[scores.argmax(1)]) == ["a", "b", "c", "c"]
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-6)
    cen, classes = prototypes(ref, labels)
    p = prototype_scores(query, cen)
    assert list(np.asarray(classes)[p.argmax(1)]) == ["a", "b", "c", "c"]


def test_top_k_table_and_aggregation():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]], np.float32)
    table = top_k_table(scores, ["x", "y", "z"], k=2, index=["s1", "s2", "s3"])
    assert table[table["query"] == "s1"]["moa"].tolist() == ["y", "z"]
    agg = aggregate_scores(scores, ["c1", "c1", "c2"])
    np.testing.assert_allclose(agg.loc["c1"].to_numpy(), [0.3, 0.5, 0.2], rtol=1e-6)
    vote = aggregate_scores(scores, ["c1", "c1", "c2"], how="vote")
    np.testing.assert_allclose(vote.loc["c1"].to_numpy(), [0.5, 0.5, 0.0])


def test_classification_metrics_against_sklearn():
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c", "d", "e", "f"]
    y = rng.choice(classes, 200)
    scores = rng.random((200, 6)).astype(np.float32)
    scores[np.arange(200), [classes.index(v) for v in y]] += rng.random(200) * 0.8
    m = classification_metrics(y, scores, classes)
    pred = np.asarray(classes)[scores.argmax(1)]
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    codes = np.array([classes.index(v) for v in y])
    assert m["top5_accuracy"] == pytest.approx(
        top_k_accuracy_score(codes, scores, k=5, labels=range(6)))
    assert m["top3_accuracy"] == pytest.approx(
        top_k_accuracy_score(codes, scores, k=3, labels=range(6)))
    assert set(m["per_moa"]) == set(classes)


def test_unseen_label_counts_as_error():
    scores = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    m = classification_metrics(["a", "zzz"], scores, ["a", "b"])
    assert m["accuracy"] == 0.5 and m["per_moa"]["zzz"]["recall"] == 0.0


def test_hierarchy_metrics_on_planted_structure():
    rng = np.random.default_rng(4)
    moa_c = rng.standard_normal((4, 20)) * 2
    comp_c = np.repeat(moa_c, 5, axis=0) + rng.standard_normal((20, 20))
    x = np.repeat(comp_c, 6, axis=0) + rng.standard_normal((120, 20)) * 0.3
    compound = np.repeat(np.arange(20), 6)
    moa = compound // 5
    shares = neighbour_label_shares(x, {"compound": compound, "moa": moa}, k=5)
    assert shares["moa"] >= shares["compound"] > 0.5
    assert silhouette(x, moa) > silhouette(rng.standard_normal((120, 20)), moa) + 0.1
    assert retrieval_map(x, compound) > 0.8
    assert retrieval_map(rng.standard_normal((120, 20)), compound) < 0.3
