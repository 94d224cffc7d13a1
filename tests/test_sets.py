"""MoA sets (moaspace._core.sets): parsing and the multi-MoA metrics on hand-checked rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from moaspace._core.sets import (
    join_moa_set,
    multi_moa_mask,
    parse_moa_sets,
    recall_at_k,
    set_f1,
    set_metrics,
    sets_by_group,
    top1_in_set,
    top_k_sets,
)
from moaspace.errors import InputError

CLASSES = ["a", "b", "c", "d"]


def test_parse_and_join_round_trip():
    values = pd.Series(["a|b", "c", np.nan, "", " b | a ", None, "a||b"], dtype=object)
    sets = parse_moa_sets(values)
    assert sets == [frozenset("ab"), frozenset("c"), frozenset(), frozenset(),
                    frozenset("ab"), frozenset(), frozenset("ab")]
    assert parse_moa_sets(pd.Categorical(["a|b", None])) == [frozenset("ab"), frozenset()]
    assert parse_moa_sets([{"x", "y"}, ("z",)]) == [frozenset("xy"), frozenset("z")]
    assert join_moa_set(["b", "a", "b"]) == "a|b" and join_moa_set([]) == ""
    assert parse_moa_sets([join_moa_set(s) for s in sets]) == sets
    with pytest.raises(InputError, match=r"a\|b"):
        join_moa_set(["a|b", "c"])
    assert multi_moa_mask(["a|b", "a", np.nan]).tolist() == [True, False, False]


def test_second_ranked_true_moa_counts_at_k_above_one_only():
    """True set {a, b}; scores rank a first, b second: recall@1 = 0.5, recall@3 = 1."""
    scores = np.array([[0.5, 0.3, 0.1, 0.1]])
    assert recall_at_k(scores, CLASSES, [frozenset("ab")], k=1) == pytest.approx(0.5)
    assert recall_at_k(scores, CLASSES, [frozenset("ab")], k=2) == pytest.approx(1.0)
    assert recall_at_k(scores, CLASSES, [frozenset("ab")], k=3) == pytest.approx(1.0)
    # b third behind c: recall@2 = 0.5
    scores = np.array([[0.5, 0.2, 0.3, 0.0]])
    assert recall_at_k(scores, CLASSES, ["a|b"], k=2) == pytest.approx(0.5)


def test_recall_counts_untrained_moas_as_misses_and_averages_rows():
    scores = np.array([[0.9, 0.05, 0.03, 0.02],   # {a, z}: z never trained -> 1/2
                       [0.1, 0.2, 0.3, 0.4],      # {a, b, c}, top-3 d,c,b -> 2/3
                       [0.4, 0.3, 0.2, 0.1],      # no truth: left out
                       [0.25, 0.25, 0.25, 0.25]])  # {d}: ties by column order, d 4th -> 0
    true = ["a|z", "a|b|c", np.nan, "d"]
    assert recall_at_k(scores, CLASSES, true, k=3) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert recall_at_k(scores, CLASSES, true, k=10) == pytest.approx((0.5 + 1 + 1) / 3)
    assert math.isnan(recall_at_k(scores[:1], CLASSES, [""], k=3))
    assert top_k_sets(scores[3:], CLASSES, 2) == [frozenset("ab")]


def test_top1_and_set_f1_by_hand():
    true = [frozenset("ab"), frozenset("cd"), frozenset("a"), frozenset()]
    assert top1_in_set(["b", "a", "unknown", "a"], true) == pytest.approx(1 / 3)
    # F1: {a} vs {a,b} = 2/3; {c,d,a} vs {c,d} = 4/5; "" vs {a} = 0; last row left out
    assert set_f1(["a", "a|c|d", "", "b"], true) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    assert math.isnan(set_f1(["a"], [frozenset()]))
    with pytest.raises(InputError, match="pred has 1 rows"):
        top1_in_set(["a"], true)


def test_set_metrics_defaults_to_the_argmax_and_its_singleton():
    scores = np.array([[0.1, 0.6, 0.3, 0.0],   # {a, b}: top-1 b hit; top-3 b,c,a -> 1
                       [0.7, 0.0, 0.2, 0.1]])  # {c, d}: top-1 a miss; top-3 a,c,d -> 1
    true = ["a|b", "c|d"]
    m = set_metrics(true, scores, CLASSES)
    assert m == {"n": 2, "top1_in_set": 0.5, "recall_at_3": 1.0,
                 "set_f1": pytest.approx((2 / 3 + 0) / 2)}
    m = set_metrics(true, scores, CLASSES, pred=["a", "c"], pred_sets=["a|b", "c"], k=1)
    assert m["top1_in_set"] == 1.0 and m["recall_at_1"] == pytest.approx(0.25)
    assert m["set_f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_sets_by_group_is_the_union_in_sorted_order():
    got = sets_by_group(["a|b", "b", np.nan, "c"], ["y", "y", "x", "x"])
    assert list(got.index) == ["x", "y"]
    assert got["y"] == frozenset("ab") and got["x"] == frozenset("c")


def test_bad_shapes_are_input_errors():
    with pytest.raises(InputError, match="4 classes"):
        recall_at_k(np.zeros((1, 3)), CLASSES, ["a"])
    with pytest.raises(InputError, match="k must be"):
        recall_at_k(np.zeros((1, 4)), CLASSES, ["a"], k=0)
