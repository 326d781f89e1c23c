"""BM25 through bm25s: a baseline, a hard-negative miner, and a search engine for RAG and RL.

score(D, Q) = sum_q IDF(q) * f(q,D)(k1+1) / (f(q,D) + k1(1 - b + b|D|/avgdl)),  IDF(q) = ln(1 + (N - n_q + 0.5)/(n_q + 0.5))

bm25s's "lucene" method, like Lucene >= 8, leaves out the constant factor (k1+1); it changes no ranking,
but :meth:`BM25.search` puts it back so scores are exactly the formula above (and comparable to Pyserini's).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer


class BM25:
    """A bm25s index over ``doc_ids``/``texts`` with Snowball stemming and English stopwords.

    ``search`` returns, per query, a list of ``(doc_id, score)`` sorted by score; documents with a zero
    score (no shared term) are not returned, so a result can be shorter than ``k``.
    """

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], k1: float = 0.9, b: float = 0.4,
                 method: str = "lucene", stemmer: str | None = "english", stopwords: str | None = "en"):
        if len(doc_ids) != len(texts):
            raise ValueError(f"BM25: {len(doc_ids)} ids but {len(texts)} texts")
        if not doc_ids:
            raise ValueError("BM25: empty corpus")
        self.doc_ids = list(doc_ids)
        self.stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        self.stopwords = stopwords
        self.model = bm25s.BM25(k1=k1, b=b, method=method)
        self.scale = k1 + 1 if method == "lucene" else 1.0
        self.model.index(self._tokenize(texts), show_progress=False)

    def _tokenize(self, texts: Sequence[str]):
        return bm25s.tokenize(list(texts), stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False)

    def search(self, queries: Sequence[str], k: int = 100) -> list[list[tuple[str, float]]]:
        if not queries:
            return []
        k = min(k, len(self.doc_ids))
        # bm25s wants a vocabulary-aligned tokenization of the queries: tokenize as strings, not ids.
        tokens = bm25s.tokenize(list(queries), stopwords=self.stopwords, stemmer=self.stemmer,
                                return_ids=False, show_progress=False)
        indices, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return [[(self.doc_ids[i], float(s) * self.scale) for i, s in zip(row_i, row_s) if s > 0]
                for row_i, row_s in zip(np.asarray(indices), np.asarray(scores))]


def mine_hard_negatives(ranking: list[list[tuple[str, float]]], positives: Sequence[set[str]],
                        num_negatives: int, depth: int = 30, skip_top: int = 0,
                        rng: random.Random | None = None) -> list[list[str]]:
    """DPR hard negatives: per query, ``num_negatives`` documents from the top ``depth`` of its ranking
    that are not judged relevant, skipping the first ``skip_top`` ranks (which hold most unjudged
    positives on sparse-label data such as SciFact). With ``rng`` they are sampled from that window,
    else taken in rank order. A query with too few candidates gets what exists (may be empty); the
    caller fills the rest with in-batch negatives, so nothing is invented."""
    out = []
    for ranked, pos in zip(ranking, positives, strict=True):
        pool = [doc for doc, _ in ranked[skip_top:depth] if doc not in pos]
        if rng is not None and len(pool) > num_negatives:
            pool = rng.sample(pool, num_negatives)
        out.append(pool[:num_negatives])
    return out
