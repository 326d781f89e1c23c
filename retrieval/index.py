"""Dense search with faiss: inner-product indexes over passage embeddings with a doc-id map."""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch


class DenseIndex:
    """A faiss index built with ``index_factory`` (``"Flat"`` is exact inner product).

    Indexes that need training (IVF, PQ) are trained on the vectors they are built from.
    ``search`` returns, per query, ``(doc_id, score)`` pairs, best first."""

    def __init__(self, dim: int, factory: str = "Flat"):
        self.dim, self.factory = dim, factory
        self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.doc_ids: list[str] = []

    @staticmethod
    def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        return np.ascontiguousarray(x, dtype=np.float32)

    def add(self, doc_ids: Sequence[str], embeddings: torch.Tensor | np.ndarray) -> "DenseIndex":
        vectors = self._as_numpy(embeddings)
        if vectors.shape != (len(doc_ids), self.dim):
            raise ValueError(f"DenseIndex.add: {len(doc_ids)} ids but embeddings of shape {vectors.shape}, dim {self.dim}")
        if not self.index.is_trained:
            self.index.train(vectors)
        self.index.add(vectors)
        self.doc_ids.extend(doc_ids)
        return self

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 100) -> list[list[tuple[str, float]]]:
        k = min(k, len(self.doc_ids))
        scores, indices = self.index.search(self._as_numpy(queries), k)
        return [[(self.doc_ids[i], float(s)) for i, s in zip(row_i, row_s) if i >= 0]
                for row_i, row_s in zip(indices, scores)]
