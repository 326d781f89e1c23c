"""The fusion weight is chosen on dev, never on test: a crafted case where the two disagree, nDCG by hand."""

import math

import pytest

from retrieval.fusion_tuning import best_weight, fuse, paired_difference, per_query_ndcg, select_on_dev, sweep
from retrieval.metrics import evaluate

SECOND = 1 / math.log2(3)  # nDCG@10 with the one relevant document at rank 2

# Min-max fusion, S = w * bm25' + (1 - w) * dense'. Relevant document: a, everywhere.
SPARSE = {"d1": {"a": 3.0, "b": 1.0, "c": 0.0},   # normalised a 1, b 1/3, c 0
          "d2": {"b": 3.0, "a": 2.0, "c": 0.0},   # b 1, a 2/3, c 0
          "t1": {"b": 3.0, "a": 1.0, "c": 0.0}}   # b 1, a 1/3, c 0
DENSE = {"d1": {"b": 1.0, "a": 0.9, "c": 0.0},    # b 1, a 0.9, c 0
         "d2": {"a": 1.0, "c": 0.5, "b": 0.0},    # a 1, c 0.5, b 0
         "t1": {"a": 1.0, "b": 0.9, "c": 0.0}}    # a 1, b 0.9, c 0
DEV = {"d1": {"a": 1}, "d2": {"a": 1}}
TEST = {"t1": {"a": 1}}
GRID = (0.0, 0.5, 1.0)


def test_dev_choice_differs_from_the_test_best_weight():
    # d1: w=0 b first (a 2nd); w=.5 a .95 > b .667; w=1 a first   -> SECOND, 1, 1
    # d2: w=0 a first; w=.5 a .833 > b .5 > c .25; w=1 b first     -> 1, 1, SECOND
    # t1: w=0 a first; w=.5 b .95 > a .667; w=1 b first            -> 1, SECOND, SECOND
    assert sweep(SPARSE, DENSE, DEV, GRID) == pytest.approx({0.0: (SECOND + 1) / 2, 0.5: 1.0, 1.0: (1 + SECOND) / 2})
    assert sweep(SPARSE, DENSE, TEST, GRID) == pytest.approx({0.0: 1.0, 0.5: SECOND, 1.0: SECOND})
    chosen = select_on_dev(SPARSE, DENSE, DEV, TEST, GRID)
    assert chosen.weight == 0.5           # choosing on test would give 0.0 and report 1.0
    assert chosen.dev == pytest.approx({0.0: (SECOND + 1) / 2, 0.5: 1.0, 1.0: (1 + SECOND) / 2})
    assert chosen.test["ndcg@10"] == pytest.approx(SECOND)


def test_test_judgements_cannot_reach_the_choice():
    # The same rankings with t1's judgement moved to b: the dev choice must not move, only the test score.
    chosen = select_on_dev(SPARSE, DENSE, DEV, {"t1": {"b": 1}}, GRID)
    assert chosen.weight == 0.5
    assert chosen.test["ndcg@10"] == pytest.approx(1.0)


def test_dev_and_test_must_be_disjoint():
    with pytest.raises(ValueError, match="both dev and test"):
        select_on_dev(SPARSE, DENSE, {**DEV, "t1": {"a": 1}}, TEST, GRID)


def test_ties_go_to_the_first_weight_listed():
    assert best_weight({0.3: 0.7, 0.1: 0.9, 0.5: 0.9}) == 0.1
    assert best_weight({0.5: 0.9, 0.1: 0.9}) == 0.5


def test_rrf_weights_follow_w_bm25():
    # d1, k=1: bm25 ranks a 1, b 2, c 3; dense b 1, a 2, c 3. w = 0.25: a = .25/2 + .75/3, b = .25/3 + .75/2
    fused = fuse(SPARSE, DENSE, 0.25, method="rrf", k_rrf=1)["d1"]
    assert fused == pytest.approx({"a": 0.25 / 2 + 0.75 / 3, "b": 0.25 / 3 + 0.75 / 2, "c": 0.25 / 4 + 0.75 / 4})
    with pytest.raises(ValueError, match="w_bm25"):
        fuse(SPARSE, DENSE, 1.5)


def test_per_query_ndcg_and_paired_difference_by_hand():
    per = per_query_ndcg(SPARSE, {**DEV, **TEST, "unanswered": {"a": 1}})
    assert per == pytest.approx({"d1": 1.0, "d2": SECOND, "t1": SECOND, "unanswered": 0.0})
    assert sum(per.values()) / 4 == pytest.approx(evaluate(SPARSE, {**DEV, **TEST, "unanswered": {"a": 1}})["ndcg@10"])
    # differences 0.3, 0.1, -0.1 (q4 only in a: ignored): mean 0.1, sample std 0.2, se 0.2 / sqrt(3)
    mean, se = paired_difference({"q1": 0.8, "q2": 0.5, "q3": 0.2, "q4": 1.0}, {"q1": 0.5, "q2": 0.4, "q3": 0.3})
    assert mean == pytest.approx(0.1)
    assert se == pytest.approx(0.2 / math.sqrt(3))
