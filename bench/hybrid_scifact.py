"""Hybrid ranking on SciFact test: BM25 (bm25s), a dense retriever, and their fusion (RRF, min-max and
z-score weighted sums), nDCG@10 / Recall@100 in one table. Dense corpus embeddings come from the
sharded store (written once, shared with bench/faiss_indexes.py for the zero-shot model).

    python bench/hybrid_scifact.py --model all-MiniLM-L6-v2 --store runs/cache/scifact_minilm_128
    python bench/hybrid_scifact.py --model runs/dpr_scifact/version_0/export --store runs/cache/scifact_dpr_128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

from faiss_indexes import encode_scifact  # noqa: E402
from retrieval.beir import passage_text  # noqa: E402
from retrieval.bm25 import BM25  # noqa: E402
from retrieval.fusion import reciprocal_rank_fusion, weighted_fusion  # noqa: E402
from retrieval.index import DenseIndex  # noqa: E402
from retrieval.metrics import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--store", default="runs/cache/scifact_minilm_128")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--depth", type=int, default=100)
    args = ap.parse_args()
    store, qids, queries, data = encode_scifact(args.model, args.max_length, args.store)
    qrels = data.qrels["test"]
    ids = list(data.corpus)
    bm25 = BM25(ids, [passage_text(data.corpus[d]) for d in ids], k1=0.9, b=0.4)
    sparse = {q: dict(h) for q, h in zip(qids, bm25.search([data.queries[q] for q in qids], args.depth))}
    dense = {q: dict(h) for q, h in zip(qids, DenseIndex.from_store(store).search(queries, args.depth))}
    rows = [("BM25", sparse), (f"dense ({Path(args.model).name})", dense),
            ("RRF k=60", reciprocal_rank_fusion([sparse, dense], 60))]
    for w in (0.2, 0.3, 0.5):
        rows.append((f"min-max sum, w_bm25={w}", weighted_fusion([sparse, dense], [w, 1 - w], "minmax")))
    rows.append(("z-score sum, w_bm25=0.3", weighted_fusion([sparse, dense], [0.3, 0.7], "zscore")))
    print(f"\nSciFact test (300 claims), dense corpus truncated to {args.max_length} tokens, depth {args.depth}")
    print(f"{'ranking':<34} {'nDCG@10':>8} {'R@100':>8}")
    for name, run in rows:
        m = evaluate({q: dict(list(d.items())[:100]) for q, d in run.items()}, qrels)
        print(f"{name:<34} {m['ndcg@10']:>8.4f} {m['recall@100']:>8.4f}", flush=True)


if __name__ == "__main__":
    main()
