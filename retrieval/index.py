"""Dense search with faiss: inner-product indexes over passage embeddings with a doc-id map.

Any ``faiss.index_factory`` string works ("Flat", "IVF1024,Flat", "HNSW32", "IVF256,PQ16",
"OPQ16,IVF256,PQ16", ...). Indexes that need training (IVF, PQ, OPQ) are trained before the first
``add`` (on up to ``train_size`` vectors, or explicitly with :meth:`DenseIndex.train`). With CUDA and a
faiss build with GPU support, the index lives on the GPU (HNSW has no GPU version and stays on CPU).
``save``/``load`` write the index and its doc-id map to a directory, so a large index is built once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "doc_ids.json", "meta.json"


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()


class DenseIndex:
    """A faiss index built with ``index_factory`` (``"Flat"`` is exact inner product).

    Args:
        dim: embedding size.
        factory: a faiss ``index_factory`` string.
        parameters: search-time parameters in faiss ``ParameterSpace`` syntax, e.g. ``"nprobe=32"`` (IVF)
            or ``"efSearch=128"`` (HNSW); may be changed later with :meth:`set_parameters`.
        use_gpu: ``"auto"`` (GPU when CUDA and faiss GPU support are present), True or False.
        train_size: at most this many vectors (the first ones given) train an untrained index on ``add``.

    ``search`` returns, per query, ``(doc_id, score)`` pairs, best first."""

    def __init__(self, dim: int, factory: str = "Flat", parameters: str | None = None,
                 use_gpu: bool | str = "auto", train_size: int | None = None):
        self.dim, self.factory, self.train_size = dim, factory, train_size
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"DenseIndex: faiss cannot build index_factory({dim}, {factory!r}): {err}") from None
        self.on_gpu = faiss_gpu_available() if use_gpu == "auto" else bool(use_gpu)
        if self.on_gpu and not faiss_gpu_available():
            raise RuntimeError("DenseIndex(use_gpu=True): needs CUDA and a faiss build with GPU support (faiss-gpu)")
        self.index = self._to_gpu(index) if self.on_gpu else index
        self.doc_ids: list[str] = []
        self.parameters = None
        if parameters:
            self.set_parameters(parameters)

    def _to_gpu(self, index):
        if "HNSW" in self.factory:       # no GPU implementation
            self.on_gpu = False
            return index
        self._gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, torch.cuda.current_device(), index)

    @staticmethod
    def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        return np.ascontiguousarray(x, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def is_trained(self) -> bool:
        return self.index.is_trained

    def set_parameters(self, parameters: str) -> "DenseIndex":
        """Search parameters, e.g. ``"nprobe=16"`` or ``"efSearch=64"`` (faiss ParameterSpace syntax)."""
        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        try:
            space.set_index_parameters(self.index, parameters)
        except RuntimeError as err:
            raise ValueError(f"DenseIndex: cannot set {parameters!r} on a {self.factory!r} index: {err}") from None
        self.parameters = parameters
        return self

    def train(self, embeddings: torch.Tensor | np.ndarray) -> "DenseIndex":
        """Train an index that needs it (IVF centroids, PQ codebooks, OPQ rotation)."""
        vectors = self._as_numpy(embeddings)
        if self.train_size is not None:
            vectors = vectors[:self.train_size]
        try:
            self.index.train(vectors)
        except RuntimeError as err:
            raise ValueError(f"DenseIndex: training {self.factory!r} on {len(vectors)} vectors failed "
                             f"(IVF needs at least as many vectors as lists, PQ at least 2^nbits): {err}") from None
        return self

    def add(self, doc_ids: Sequence[str], embeddings: torch.Tensor | np.ndarray) -> "DenseIndex":
        vectors = self._as_numpy(embeddings)
        if vectors.shape != (len(doc_ids), self.dim):
            raise ValueError(f"DenseIndex.add: {len(doc_ids)} ids but embeddings of shape {vectors.shape}, dim {self.dim}")
        if not self.index.is_trained:
            self.train(vectors)
        self.index.add(vectors)
        self.doc_ids.extend(doc_ids)
        return self

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 100) -> list[list[tuple[str, float]]]:
        k = min(k, len(self.doc_ids))
        if k == 0:
            raise ValueError("DenseIndex.search: the index is empty")
        scores, indices = self.index.search(self._as_numpy(queries), k)
        return [[(self.doc_ids[i], float(s)) for i, s in zip(row_i, row_s) if i >= 0]
                for row_i, row_s in zip(indices, scores)]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``index.faiss``, ``doc_ids.json`` and ``meta.json`` to the directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        faiss.write_index(index, str(path / INDEX_FILE))
        (path / IDS_FILE).write_text(json.dumps(self.doc_ids))
        (path / META_FILE).write_text(json.dumps({"dim": self.dim, "factory": self.factory,
                                                  "parameters": self.parameters, "size": len(self.doc_ids)}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool | str = "auto", parameters: str | None = None) -> "DenseIndex":
        """Read an index written by :meth:`save`; ``parameters`` overrides the saved search parameters."""
        path = Path(path)
        for name in (INDEX_FILE, IDS_FILE, META_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: missing; DenseIndex.save writes {INDEX_FILE}, {IDS_FILE}, {META_FILE}")
        meta = json.loads((path / META_FILE).read_text())
        self = cls.__new__(cls)
        self.dim, self.factory, self.train_size = meta["dim"], meta["factory"], None
        self.doc_ids = json.loads((path / IDS_FILE).read_text())
        index = faiss.read_index(str(path / INDEX_FILE))
        if index.ntotal != len(self.doc_ids) or index.d != self.dim:
            raise ValueError(f"{path}: index holds {index.ntotal} vectors of dim {index.d} but {IDS_FILE} has "
                             f"{len(self.doc_ids)} ids and {META_FILE} dim {self.dim}")
        self.on_gpu = faiss_gpu_available() if use_gpu == "auto" else bool(use_gpu)
        self.index = self._to_gpu(index) if self.on_gpu else index
        self.parameters = None
        if parameters or meta.get("parameters"):
            self.set_parameters(parameters or meta["parameters"])
        return self

    @classmethod
    def from_store(cls, store, factory: str = "Flat", **kwargs) -> "DenseIndex":
        """Build from an :class:`retrieval.embeddings_store.EmbeddingsStore`, one shard in memory at a time.
        An index that needs training is trained first on a random sample of ``train_size`` stored vectors
        (default: min(100,000, all of them))."""
        index = cls(store.dim, factory, **kwargs)
        if not index.is_trained:
            index.train(store.sample(index.train_size or min(100_000, len(store))))
        for ids, vectors in store.shards():
            index.add(ids, np.asarray(vectors, dtype=np.float32))
        return index
