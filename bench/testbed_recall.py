"""The initial dense retriever's recall of each test question's gold passage on a QA testbed (QA JSONL splits
with ``gold_id`` + a BEIR corpus): exact inner-product search over the whole corpus. The diagnostic behind
REPLUG LSR's testbed choice (docs/evidence/effects_preregistration.md): a retriever with headroom.

    OMP_NUM_THREADS=1 python bench/testbed_recall.py --data data/arith_facts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datamodules.qa import read_qa_jsonl  # noqa: E402
from retrieval.beir import load_corpus, passage_text  # noqa: E402
from retrieval.encoders import DEFAULT_ENCODER, Encoder  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with corpus.jsonl and <split>.jsonl")
    ap.add_argument("--split", default="test")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 10])
    args = ap.parse_args(argv)
    corpus = load_corpus(Path(args.data) / "corpus.jsonl")
    ids = list(corpus)
    questions = read_qa_jsonl(Path(args.data) / f"{args.split}.jsonl")
    encoder = Encoder(args.encoder, pooling=args.pooling, normalize=True, max_length=128).eval()
    with torch.no_grad():
        passages = encoder.encode([passage_text(corpus[i]) for i in ids], batch_size=256)
        queries = encoder.encode([q["question"] for q in questions], batch_size=256)
    top = (queries @ passages.T).topk(max(args.k), dim=1).indices.tolist()
    n = len(questions)
    cells = []
    for k in args.k:
        hits = sum(q["gold_id"] in {ids[j] for j in row[:k]} for q, row in zip(questions, top))
        p = hits / n
        cells.append(f"recall@{k} {p:.3f} (se {(p * (1 - p) / n) ** 0.5:.3f})")
    print(f"{args.data} {args.split}: {n} questions, {len(ids)} passages, {args.encoder} ({args.pooling}): " + ", ".join(cells))


if __name__ == "__main__":
    main()
