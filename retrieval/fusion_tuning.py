"""Choosing a hybrid ranking's fusion weight on a dev split, and paired per-query comparisons.

The weight w is BM25's share, the dense ranking gets 1 - w (retrieval.fusion):

- weighted:  S(d) = w * norm(s_bm25)(d) + (1 - w) * norm(s_dense)(d)
- rrf:       S(d) = w / (k_rrf + rank_bm25(d)) + (1 - w) / (k_rrf + rank_dense(d))

The weight is the argmax of the dev metric over a grid; the rankings handed to the sweep are cut to the dev
queries first, so no test judgement can reach the choice. Test is scored once, at the chosen weight.
Paired comparisons use the per-query difference d_q = m_a(q) - m_b(q): mean and standard error
std(d) / sqrt(n) (sample std), the usual paired test over queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytrec_eval

from retrieval.fusion import reciprocal_rank_fusion, weighted_fusion
from retrieval.metrics import Qrels, Run, evaluate, top_k


def fuse(sparse: Run, dense: Run, w_bm25: float, method: str = "weighted", normalization: str = "minmax",
         k_rrf: float = 60.0) -> Run:
    """BM25 and dense rankings fused with weights [w_bm25, 1 - w_bm25] (formulas in the module docstring)."""
    if not 0.0 <= w_bm25 <= 1.0:
        raise ValueError(f"fuse: w_bm25 must be in [0, 1], got {w_bm25}")
    weights = [w_bm25, 1.0 - w_bm25]
    if method == "rrf":
        return reciprocal_rank_fusion([sparse, dense], k_rrf, weights)
    if method == "weighted":
        return weighted_fusion([sparse, dense], weights, normalization)
    raise ValueError(f"fuse: unknown method {method!r}; expected 'weighted' or 'rrf'")


@dataclass
class Selection:
    """The dev-chosen weight, the dev metric at every weight of the grid, and test scored at the chosen one."""
    weight: float
    dev: dict[float, float]
    test: dict[str, float]


def sweep(sparse: Run, dense: Run, qrels: Qrels, weights: Sequence[float], depth: int = 100,
          metric: str = "ndcg@10", **fusion) -> dict[float, float]:
    """``metric`` of the fused ranking (top ``depth``) on the queries of ``qrels`` only, for every weight."""
    only = lambda run: {q: run[q] for q in qrels if q in run}  # noqa: E731
    sparse, dense = only(sparse), only(dense)
    return {w: evaluate(top_k(fuse(sparse, dense, w, **fusion), depth), qrels)[metric] for w in weights}


def best_weight(scores: dict[float, float]) -> float:
    """argmax_w scores[w]; ties go to the weight listed first (the grid's order), so the choice is deterministic."""
    if not scores:
        raise ValueError("best_weight: no weights were scored")
    return max(scores, key=lambda w: (scores[w], -list(scores).index(w)))


def select_on_dev(sparse: Run, dense: Run, dev_qrels: Qrels, test_qrels: Qrels, weights: Sequence[float],
                  depth: int = 100, metric: str = "ndcg@10", **fusion) -> Selection:
    """Choose w on ``dev_qrels``' queries (which must not be test queries), then score test at that w."""
    shared = sorted(set(dev_qrels) & set(test_qrels))
    if shared:
        raise ValueError(f"select_on_dev: {len(shared)} queries are both dev and test (e.g. {shared[:3]}); "
                         "the dev split must be disjoint from test")
    dev = sweep(sparse, dense, dev_qrels, weights, depth, metric, **fusion)
    w = best_weight(dev)
    only = lambda run: {q: run[q] for q in test_qrels if q in run}  # noqa: E731
    return Selection(w, dev, evaluate(top_k(fuse(only(sparse), only(dense), w, **fusion), depth), test_qrels))


def per_query_ndcg(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    """nDCG@k of every judged query (0 for a query the run does not answer), as retrieval.metrics.evaluate
    averages it."""
    full = {q: (run.get(q) or {"__no_result__": 0.0}) for q in qrels}
    per = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"}).evaluate(full)
    return {q: per[q][f"ndcg_cut_{k}"] for q in qrels}


def paired_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """(mean of a_q - b_q, its standard error std / sqrt(n)) over the queries both score."""
    queries = sorted(set(a) & set(b))
    if len(queries) < 2:
        raise ValueError(f"paired_difference: need at least 2 shared queries, got {len(queries)}")
    diffs = [a[q] - b[q] for q in queries]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))
