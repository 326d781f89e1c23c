"""Fusion of rankings: weighted sums of normalised scores, reciprocal rank fusion, and a query-independent
prior (e.g. PageRank) mixed into any ranking.

A run is ``{query_id: {doc_id: score}}`` (the format of :func:`retrieval.metrics.evaluate`).

- min-max:   s' = (s - min_q) / (max_q - min_q)        (per query, over the run's candidates)
- z-score:   s' = (s - mean_q) / std_q
- weighted:  S(d) = sum_r w_r * s'_r(d)                  a document missing from run r gets that run's
             lowest normalised score for the query (0 under min-max): it ranked below everything run r kept
- RRF:       S(d) = sum_r w_r / (k + rank_r(d))          rank 1-based; missing from run r contributes 0
             (Cormack, Clarke & Buettcher 2009, k = 60)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Run = dict[str, dict[str, float]]


def normalize_scores(scores: dict[str, float], method: str = "minmax") -> dict[str, float]:
    """Normalise one query's scores; ``none`` returns them unchanged. Constant scores map to 0 (min-max,
    z-score): they carry no preference between the documents."""
    if method == "none" or not scores:
        return dict(scores)
    values = list(scores.values())
    if method == "minmax":
        lo, hi = min(values), max(values)
        span = hi - lo
        return {d: (s - lo) / span if span > 0 else 0.0 for d, s in scores.items()}
    if method == "zscore":
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return {d: (s - mean) / std if std > 0 else 0.0 for d, s in scores.items()}
    raise ValueError(f"unknown normalisation {method!r}; expected 'minmax', 'zscore' or 'none'")


def _check(runs: Sequence[Run], weights: Sequence[float] | None) -> list[float]:
    if not runs:
        raise ValueError("fusion: no runs to fuse")
    weights = [1.0] * len(runs) if weights is None else list(weights)
    if len(weights) != len(runs):
        raise ValueError(f"fusion: {len(runs)} runs but {len(weights)} weights")
    return weights


def _top(scores: dict[str, float], k: int | None) -> dict[str, float]:
    ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
    return dict(ranked if k is None else ranked[:k])


def weighted_fusion(runs: Sequence[Run], weights: Sequence[float] | None = None, normalization: str = "minmax",
                    k: int | None = None) -> Run:
    """S(d) = sum_r w_r * norm(s_r)(d) over the union of the runs' candidates, top ``k`` kept."""
    weights = _check(runs, weights)
    fused: Run = {}
    for qid in dict.fromkeys(q for run in runs for q in run):
        normed = [normalize_scores(run.get(qid, {}), normalization) for run in runs]
        floors = [min(n.values()) if n else 0.0 for n in normed]
        docs = dict.fromkeys(d for n in normed for d in n)
        fused[qid] = _top({d: sum(w * n.get(d, f) for w, n, f in zip(weights, normed, floors)) for d in docs}, k)
    return fused


def reciprocal_rank_fusion(runs: Sequence[Run], k_rrf: float = 60.0, weights: Sequence[float] | None = None,
                           k: int | None = None) -> Run:
    """S(d) = sum_r w_r / (k_rrf + rank_r(d)); ranks are 1-based, ties broken by doc id."""
    weights = _check(runs, weights)
    fused: Run = {}
    for qid in dict.fromkeys(q for run in runs for q in run):
        scores: dict[str, float] = {}
        for w, run in zip(weights, runs):
            for rank, (d, _) in enumerate(sorted(run.get(qid, {}).items(), key=lambda x: (-x[1], x[0])), start=1):
                scores[d] = scores.get(d, 0.0) + w / (k_rrf + rank)
        fused[qid] = _top(scores, k)
    return fused


def mix_prior(run: Run, prior: dict[str, float], weight: float, normalization: str = "minmax",
              log_prior: bool = False) -> Run:
    """Mix a query-independent prior (e.g. PageRank) into a ranking:
    S(d) = (1 - weight) * norm(s)(d) + weight * norm(prior restricted to the query's candidates)(d).
    ``log_prior`` uses log(prior) (PageRank is heavy-tailed). Every candidate must have a prior."""
    if not 0 <= weight <= 1:
        raise ValueError(f"mix_prior: weight must be in [0, 1], got {weight}")
    out: Run = {}
    for qid, scores in run.items():
        missing = [d for d in scores if d not in prior]
        if missing:
            raise KeyError(f"mix_prior: query {qid!r}: no prior for {len(missing)} documents, e.g. {missing[:3]}")
        p = {d: math.log(prior[d]) if log_prior else prior[d] for d in scores}
        out[qid] = weighted_fusion([{qid: scores}, {qid: p}], [1 - weight, weight], normalization)[qid]
    return out
