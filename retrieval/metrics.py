"""Ranking metrics (nDCG@k, Recall@k, MRR@k) through pytrec_eval, and TREC run files.

A *run* is ``{query_id: {doc_id: score}}``; *qrels* are ``{query_id: {doc_id: relevance}}``.
Metrics are averaged over the queries that have judgements, as BEIR does; a judged query that the
run does not answer scores 0 rather than being left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytrec_eval

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def trec_order(docs: dict[str, float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` best first, in trec_eval's order: score descending, then doc id descending
    (trec_eval sorts equal scores by ``strcmp`` of the docnos, reversed; checked with pytrec_eval)."""
    return sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)


def top_k(run: Run, k: int) -> Run:
    """Keep each query's ``k`` best documents in trec_eval's order, so a tie straddling rank ``k`` keeps the
    documents trec_eval would rank first."""
    return {q: dict(trec_order(docs)[:k]) for q, docs in run.items()}


def evaluate(run: Run, qrels: Qrels, ndcg_at: tuple[int, ...] = (10,), recall_at: tuple[int, ...] = (100,),
             mrr_at: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Mean metrics over judged queries, keyed ``ndcg@10``, ``recall@100``, ``mrr@10``.

    nDCG uses trec_eval's gain (the relevance grade) and log2 discount; MRR@k is the reciprocal rank
    of the first relevant document within the top ``k`` (0 if none)."""
    missing = set(qrels) - set(run)
    full = {**{q: {} for q in missing}, **{q: run[q] for q in qrels if q in run}}
    # pytrec_eval drops queries with an empty ranking; give them a sentinel that is never relevant.
    full = {q: (docs if docs else {"__no_result__": 0.0}) for q, docs in full.items()}
    measures = {f"ndcg_cut.{','.join(map(str, ndcg_at))}", f"recall.{','.join(map(str, recall_at))}"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(full)
    n = len(qrels)
    out = {}
    for k in ndcg_at:
        out[f"ndcg@{k}"] = sum(v[f"ndcg_cut_{k}"] for v in per_query.values()) / n
    for k in recall_at:
        out[f"recall@{k}"] = sum(v[f"recall_{k}"] for v in per_query.values()) / n
    for k in mrr_at:
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k(full, k))
        out[f"mrr@{k}"] = sum(v["recip_rank"] for v in rr.values()) / n
    return out


def write_trec_run(run: Run, path: str | Path, tag: str = "ragkit") -> None:
    """Write ``qid Q0 docid rank score tag`` lines, best first, so trec_eval and ranx can re-score."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for q in sorted(run):
            for rank, (doc, score) in enumerate(trec_order(run[q]), start=1):
                f.write(f"{q} Q0 {doc} {rank} {score:.6f} {tag}\n")


def read_trec_run(path: str | Path) -> Run:
    run: Run = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if len(parts) != 6:
                raise ValueError(f"{path}, line {number}: expected 6 fields 'qid Q0 docid rank score tag'")
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return run


def write_metrics(metrics: dict[str, float], path: str | Path, **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**metrics, **extra}, indent=2, sort_keys=True) + "\n")
