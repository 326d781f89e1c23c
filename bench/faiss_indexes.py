"""faiss IVF/HNSW (and PQ) vs exact Flat on SciFact: recall@100 against Flat's top 100, and queries/s,
measured in the same run on the same embeddings. Corpus embeddings are written once to a sharded
memory-mapped store (retrieval.embeddings_store) and reused by later runs and by bench/hybrid_scifact.py.

    python bench/faiss_indexes.py --model all-MiniLM-L6-v2 --max-length 128 --store runs/cache/scifact_minilm_128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

from retrieval.beir import BeirDataset, passage_text  # noqa: E402
from retrieval.embeddings_store import EmbeddingsStore, write_embeddings  # noqa: E402
from retrieval.encoders import Encoder  # noqa: E402
from retrieval.index import DenseIndex  # noqa: E402


def encode_scifact(model: str, max_length: int, store_dir: str, data_dir: str = "data/scifact", batch_size: int = 32):
    """(store, test query ids, (Q, H) query embeddings, dataset); the corpus is encoded once (resumable)."""
    data = BeirDataset.load(data_dir, splits=("test",))
    encoder = Encoder(model, "mean", normalize=True, max_length=max_length)
    ids = list(data.corpus)
    texts = [passage_text(data.corpus[d]) for d in ids]
    start = time.perf_counter()
    store = write_embeddings(store_dir, ids, texts, lambda b: encoder.encode(b, batch_size, show_progress=False),
                             dim=encoder.dim, shard_size=1024, batch_size=256,
                             progress=lambda n, total: print(f"  encoded {n}/{total}", flush=True))
    print(f"corpus store ready in {time.perf_counter() - start:.0f} s: {store_dir}")
    qids = sorted(data.qrels["test"])
    queries = encoder.encode([data.queries[q] for q in qids], 64, max_length=64, show_progress=False)
    return store, qids, queries.numpy(), data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--store", default="runs/cache/scifact_minilm_128")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1: stable on a shared machine)")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    store, qids, queries, _ = encode_scifact(args.model, args.max_length, args.store)
    store = EmbeddingsStore.open(args.store)
    configs = [("Flat", None), ("IVF64,Flat", "nprobe=8"), ("IVF64,Flat", "nprobe=16"), ("HNSW32", "efSearch=128"),
               ("HNSW32", "efSearch=256"), ("IVF64,PQ32", "nprobe=16"), ("OPQ32,IVF64,PQ32", "nprobe=16")]
    exact = None
    print(f"{len(store)} passages, {len(queries)} queries, k={args.k}, faiss threads={args.threads}; "
          f"recall@100 = overlap with Flat's top 100")
    print(f"{'index':<20} {'params':<14} {'recall@100':>10} {'queries/s':>10} {'vs Flat':>8} {'build s':>8}")
    flat_qps = None
    for factory, params in configs:
        t0 = time.perf_counter()
        index = DenseIndex.from_store(store, factory, parameters=params, train_size=len(store))
        build = time.perf_counter() - t0
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            hits = index.search(queries, args.k)
            best = min(best, time.perf_counter() - t0)
        qps = len(queries) / best
        if exact is None:
            exact, flat_qps = [{d for d, _ in h} for h in hits], qps
        recall = np.mean([len({d for d, _ in h} & e) / len(e) for h, e in zip(hits, exact)])
        print(f"{factory:<20} {params or '-':<14} {recall:>10.4f} {qps:>10.0f} {qps / flat_qps:>7.2f}x {build:>8.2f}",
              flush=True)


if __name__ == "__main__":
    main()
