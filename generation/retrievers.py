"""The passage retrievers a RAG pipeline reads from, behind one interface
``search(queries, k) -> [[(passage_id, score), ...], ...]`` (best first):

- ``bm25``: :class:`retrieval.bm25.BM25`;
- ``dense``: a :class:`retrieval.encoders.Encoder` over the pool in a faiss :class:`retrieval.index.DenseIndex`
  (``encode`` and ``search_vectors`` are exposed for HyDE);
- ``random``: k passages drawn uniformly without replacement, score 0 (RetRobust's irrelevant-context
  baseline); the draw is seeded by (seed, query text), so it does not depend on batch order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

RETRIEVERS = ("bm25", "dense", "random")


class PassageRetriever:
    def __init__(self, kind: str, ids: Sequence[str], texts: Sequence[str], *, encoder=None, k1: float = 0.9,
                 b: float = 0.4, seed: int = 0, batch_size: int = 64, show_progress: bool = False):
        if kind not in RETRIEVERS:
            raise ValueError(f"unknown retriever {kind!r}; expected one of {RETRIEVERS}")
        if len(ids) != len(texts) or not ids:
            raise ValueError(f"PassageRetriever: {len(ids)} ids and {len(texts)} texts (need as many, at least one)")
        self.kind, self.ids, self.seed, self.batch_size = kind, list(ids), seed, batch_size
        self.encoder = encoder
        if kind == "bm25":
            from retrieval.bm25 import BM25

            self.bm25 = BM25(self.ids, list(texts), k1=k1, b=b)
        elif kind == "dense":
            from retrieval.index import DenseIndex

            if encoder is None:
                raise ValueError("PassageRetriever('dense') needs an encoder (retrieval.encoders.Encoder)")
            emb = encoder.encode(list(texts), batch_size=batch_size, show_progress=show_progress, desc="encode pool")
            self.index = DenseIndex(emb.shape[1]).add(self.ids, emb)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError(f"PassageRetriever({self.kind!r}) has no encoder")
        return self.encoder.encode(list(texts), batch_size=self.batch_size, show_progress=False)

    def search_vectors(self, vectors: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        if self.kind != "dense":
            raise ValueError(f"search_vectors needs the dense retriever, not {self.kind!r}")
        return self.index.search(vectors, k)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        if self.kind == "bm25":
            return self.bm25.search(list(queries), k)
        if self.kind == "dense":
            return self.search_vectors(self.encode(queries), k)
        return [[(d, 0.0) for d in random.Random(f"{self.seed}-{q}").sample(self.ids, min(k, len(self.ids)))]
                for q in queries]

    __call__ = search
