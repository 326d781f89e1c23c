"""Contriever adaptation on SciFact: zero-shot all-MiniLM-L6-v2 vs the same model after unsupervised
continued pre-training on the SciFact corpus (configs/contriever_scifact.yaml: random crops, InfoNCE,
MoCo queue), both scored on the 300 test claims with the same corpus truncation.

    python bench/contriever_scifact.py --max-steps 60 --max-length 128

The zero-shot corpus embeddings are shared with bench/faiss_indexes.py (same --store).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faiss_indexes import encode_scifact  # noqa: E402
from retrieval.beir import BeirDataset, passage_text  # noqa: E402
from retrieval.embeddings_store import EmbeddingsStore, write_embeddings  # noqa: E402
from retrieval.index import DenseIndex  # noqa: E402
from retrieval.metrics import evaluate  # noqa: E402


def score(store: EmbeddingsStore, qids, queries, qrels) -> dict:
    index = DenseIndex.from_store(store)
    run = {q: dict(h) for q, h in zip(qids, index.search(queries, 100))}
    return evaluate(run, qrels, ndcg_at=(10,), recall_at=(100,), mrr_at=(10,))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--max-length", type=int, default=128, help="corpus truncation at evaluation")
    ap.add_argument("--store", default="runs/cache/scifact_minilm_128")
    ap.add_argument("--adapted-store", default="runs/cache/scifact_contriever_128")
    ap.add_argument("overrides", nargs="*", help="extra CLI overrides for the Contriever fit")
    args = ap.parse_args()
    from train import cli_main

    # 1. unsupervised continued pre-training (no labels)
    start = time.perf_counter()
    cli = cli_main(["fit", "--config", "configs/contriever_scifact.yaml", "--trainer.max_steps", str(args.max_steps),
                    "--trainer.enable_progress_bar", "false", *args.overrides])
    train_s = time.perf_counter() - start
    print(f"trained {args.max_steps} steps in {train_s:.0f} s", flush=True)
    # 2. adapted model: corpus into its own store, queries in memory
    data = BeirDataset.load("data/scifact", splits=("test",))
    qids = sorted(data.qrels["test"])
    qrels = data.qrels["test"]
    model = cli.model.eval()
    encoder = model.passage_encoder
    adapted_store = write_embeddings(args.adapted_store, list(data.corpus), [passage_text(data.corpus[d]) for d in data.corpus],
                                     lambda b: encoder.encode(b, 32, args.max_length, show_progress=False),
                                     dim=encoder.dim, shard_size=1024, batch_size=256)
    adapted_q = model.q_encoder.encode([data.queries[q] for q in qids], 64, 64, show_progress=False).numpy()
    adapted = score(adapted_store, qids, adapted_q, qrels)
    print(f"adapted: {adapted}", flush=True)
    # 3. zero-shot, same truncation (store shared with bench/faiss_indexes.py)
    store, qids0, queries, _ = encode_scifact("all-MiniLM-L6-v2", args.max_length, args.store)
    assert qids0 == qids
    zero_shot = score(store, qids, queries, qrels)
    print(f"\nContriever adaptation on SciFact test (300 claims), corpus truncated to {args.max_length} tokens")
    print(f"training: {args.max_steps} steps, {train_s:.0f} s, log dir {cli.trainer.log_dir}")
    print(f"{'model':<34} {'nDCG@10':>8} {'R@100':>8} {'MRR@10':>8}")
    for name, m in (("all-MiniLM-L6-v2 zero-shot", zero_shot), ("+ Contriever on SciFact corpus", adapted)):
        print(f"{name:<34} {m['ndcg@10']:>8.4f} {m['recall@100']:>8.4f} {m['mrr@10']:>8.4f}")


if __name__ == "__main__":
    main()
