"""faiss indexes from any index_factory string, save/load with the doc-id map, and the sharded
memory-mapped embeddings store (resumable)."""

import json

import faiss
import numpy as np
import pytest
import torch

from retrieval.embeddings_store import EmbeddingsStore, write_embeddings
from retrieval.index import DenseIndex


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # faiss' OpenMP threads spin against other processes on a shared 2-core machine (10x slower here)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _data(n=600, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return [f"d{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_is_exact_inner_product():
    ids, x = _data(50, 4)
    q = x[:3] + 0.01
    hits = DenseIndex(4).add(ids, torch.from_numpy(x)).search(q, k=5)
    expected = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert [[d for d, _ in h] for h in hits] == [[ids[j] for j in row] for row in expected]
    assert hits[0][0][1] == pytest.approx(float(q[0] @ x[expected[0, 0]]), rel=1e-5)


@pytest.mark.parametrize("factory,params", [("IVF8,Flat", "nprobe=8"), ("HNSW16", "efSearch=64"),
                                            ("PQ4x4", None), ("OPQ4,IVF4,PQ4x4", "nprobe=4")])
def test_factory_trains_searches_saves_and_loads(tmp_path, factory, params):
    ids, x = _data()
    index = DenseIndex(16, factory, parameters=params, train_size=300)
    assert index.is_trained == (factory == "HNSW16")
    index.add(ids, x)
    assert index.is_trained and len(index) == 600
    hits = index.search(x[:20], k=10)
    exact = DenseIndex(16).add(ids, x).search(x[:20], k=10)
    recall = np.mean([len({d for d, _ in h} & {d for d, _ in e}) / 10 for h, e in zip(hits, exact)])
    # nprobe = nlist makes IVF exhaustive and HNSW with efSearch 64 on 600 points is near exact;
    # 4-bit PQ codes are lossy: the query itself must still come first more often than not
    assert recall >= (0.95 if factory in ("IVF8,Flat", "HNSW16") else 0.3)
    saved = index.save(tmp_path / "idx")
    assert json.loads((saved / "meta.json").read_text())["factory"] == factory
    loaded = DenseIndex.load(saved)
    assert loaded.doc_ids == ids and loaded.parameters == params
    assert loaded.search(x[:20], k=10) == hits


def test_index_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot build index_factory"):
        DenseIndex(16, "NotAnIndex")
    ids, x = _data(20)
    with pytest.raises(ValueError, match="training 'IVF64,Flat' on 20 vectors failed"):
        DenseIndex(16, "IVF64,Flat").add(ids, x)
    with pytest.raises(ValueError, match="3 ids but embeddings of shape"):
        DenseIndex(16).add(ids[:3], x)
    with pytest.raises(ValueError, match="cannot set"):
        DenseIndex(16, "Flat", parameters="nprobe=4")
    with pytest.raises(FileNotFoundError, match="index.faiss: missing"):
        DenseIndex.load(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="faiss-gpu"):
            DenseIndex(16, use_gpu=True)


def test_store_shards_resume_and_index(tmp_path):
    ids, x = _data(23, 8)
    texts = [str(i) for i in range(23)]
    calls = []

    def encode(batch):
        calls.append(len(batch))
        return torch.from_numpy(x[[int(t) for t in batch]])

    # two "ranks" share the shards: rank 1 writes shards 1 and 3 first, so the store is incomplete
    assert write_embeddings(tmp_path, ids, texts, encode, dim=8, shard_size=6, batch_size=4, rank=1, world_size=2) is None
    assert calls == [4, 2, 4, 1]                       # shard 1 (rows 6-11) and shard 3 (rows 18-22)
    with pytest.raises(ValueError, match=r"incomplete store, shards \[0, 2\] missing"):
        EmbeddingsStore.open(tmp_path)
    calls.clear()
    store = write_embeddings(tmp_path, ids, texts, encode, dim=8, shard_size=6, batch_size=4)
    assert calls == [4, 2, 4, 2]                       # resumed: only shards 0 and 2 encoded
    assert isinstance(next(store.shards())[1], np.memmap)
    loaded_ids, loaded = store.load()
    assert loaded_ids == ids and np.array_equal(loaded, x)
    assert len({tuple(r) for r in store.sample(10)}) == 10
    index = DenseIndex.from_store(store, "IVF2,Flat", parameters="nprobe=2")
    assert index.search(x[:1], 1)[0][0][0] == "d0"
    with pytest.raises(ValueError, match="written for another corpus"):
        write_embeddings(tmp_path, ids[:-1], texts[:-1], encode, dim=8, shard_size=6)
    with pytest.raises(ValueError, match="encode returned shape"):
        write_embeddings(tmp_path / "bad", ids, texts, lambda b: np.zeros((len(b), 3)), dim=8)
