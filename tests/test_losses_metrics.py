"""The DPR loss and the ranking metrics against values computed by hand."""

import math

import pytest
import torch

from retrieval.losses import contrastive_loss, similarity
from retrieval.metrics import evaluate, read_trec_run, top_k, write_trec_run


def test_contrastive_loss_by_hand():
    # 2 queries; passages [p0+, p1+, n0, n1]; query i's target is passage i.
    scores = torch.tensor([[2.0, 0.0, 1.0, 0.0],
                           [0.5, 1.0, 0.0, 3.0]])
    tau = 0.5
    # L_i = -log(exp(s_i,t/tau) / sum_j exp(s_ij/tau))
    l0 = -(2.0 / tau) + math.log(math.exp(4.0) + math.exp(0.0) + math.exp(2.0) + math.exp(0.0))
    l1 = -(1.0 / tau) + math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.0) + math.exp(6.0))
    loss = contrastive_loss(scores, torch.tensor([0, 1]), temperature=tau)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_contrastive_loss_excludes_false_negatives():
    scores = torch.tensor([[2.0, 1.5, 1.0]])
    exclude = torch.tensor([[False, True, False]])      # passage 1 is another positive of query 0
    expected = -2.0 + math.log(math.exp(2.0) + math.exp(1.0))
    assert contrastive_loss(scores, torch.tensor([0]), 1.0, exclude).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="target is marked as excluded"):
        contrastive_loss(scores, torch.tensor([1]), 1.0, exclude)


def test_similarity_dot_and_cosine():
    q, p = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert similarity(q, p, "dot").tolist() == [[3.0, 8.0]]
    assert similarity(q, p, "cosine")[0].tolist() == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError):
        similarity(q, p, "l2")


def test_metrics_by_hand_and_against_pytrec_eval():
    qrels = {"q1": {"a": 1, "c": 2}, "q2": {"x": 1}, "q3": {"z": 1}}
    run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7}, "q2": {"y": 0.5, "w": 0.4, "x": 0.3}}  # q3 unanswered
    m = evaluate(run, qrels, ndcg_at=(10, 2), recall_at=(2, 100), mrr_at=(10, 1))
    # q1: gains 1 (rank1), 0, 2 (rank3); ideal 2, 1.  DCG = 1/log2(2) + 2/log2(4) = 2; IDCG = 2 + 1/log2(3)
    ndcg_q1 = 2 / (2 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(4)) / 1.0          # x at rank 3
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3)
    assert m["ndcg@2"] == pytest.approx((1 / (2 + 1 / math.log2(3)) + 0 + 0) / 3)
    assert m["recall@2"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["recall@100"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["mrr@1"] == pytest.approx((1 + 0 + 0) / 3)


def test_trec_run_round_trip(tmp_path):
    run = {"q1": {"a": 0.5, "b": 1.5}, "q2": {"c": 0.1}}
    write_trec_run(run, tmp_path / "r.trec", tag="t")
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 b 1 1.500000 t" and lines[1] == "q1 Q0 a 2 0.500000 t"
    assert read_trec_run(tmp_path / "r.trec") == run
    assert top_k(run, 1) == {"q1": {"b": 1.5}, "q2": {"c": 0.1}}


def test_ties_follow_trec_eval_order_across_the_cutoff(tmp_path):
    """Equal scores: trec_eval ranks the larger doc id first (d9 before d10 as strings, b before a), so
    with a tie straddling rank 1 the relevant "a" is at rank 2: MRR@1 = 0, MRR@2 = 1/2, nDCG@1 = 0."""
    import pytrec_eval

    qrels = {"q": {"a": 1}, "r": {"d10": 1}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}, "r": {"d10": 2.0, "d9": 2.0, "x": 3.0}}
    m = evaluate(run, qrels, ndcg_at=(1, 3), recall_at=(1,), mrr_at=(1, 2, 3))
    assert m["mrr@1"] == 0.0
    assert m["mrr@2"] == pytest.approx((1 / 2 + 0) / 2)            # r: x, d9, d10 -> d10 at rank 3
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["ndcg@1"] == 0.0 and m["recall@1"] == 0.0
    # MRR@k equals trec_eval's own reciprocal rank where k covers the whole ranking
    full = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    assert m["mrr@3"] == pytest.approx(sum(v["recip_rank"] for v in full.values()) / 2)
    assert list(top_k(run, 2)["q"]) == ["b", "a"] and list(top_k(run, 2)["r"]) == ["x", "d9"]
    write_trec_run(run, tmp_path / "r.trec")
    assert [line.split()[2] for line in (tmp_path / "r.trec").read_text().splitlines()] == ["b", "a", "c", "x", "d9", "d10"]
