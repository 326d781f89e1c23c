"""Hybrid ranking on SciFact: BM25 (bm25s) + a dense retriever, the fusion weight chosen on a dev split of the
training claims, test scored once at the chosen weight (retrieval.fusion_tuning).

The dev split is BEIRDataModule's ``dev_fraction`` hold-out (seeded shuffle of the training claims), the same
one a DPR run with ``--data.init_args.dev_fraction F --seed_everything S`` never trains on. For a fine-tuned
model the run's config.yaml (beside its export) must show the same F and S; a DPR trained on every training
claim has seen the dev claims and is refused. Dense corpus embeddings come from the sharded store (written
once). Prints the dev sweep, the test table and the train.py command that reproduces the chosen row.

    python bench/hybrid_scifact.py --model all-MiniLM-L6-v2 --store runs/cache/scifact_minilm_256
    python train.py --config configs/dpr_scifact.yaml --data.init_args.dev_fraction 0.2 --trainer.logger.init_args.name scifact_holdout
    python bench/hybrid_scifact.py --model runs/scifact_holdout/version_0/export --store runs/cache/scifact_holdout_256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

from datamodules.beir import BEIRDataModule  # noqa: E402
from faiss_indexes import encode_scifact  # noqa: E402
from retrieval.beir import passage_text  # noqa: E402
from retrieval.bm25 import BM25  # noqa: E402
from retrieval.encoders import Encoder  # noqa: E402
from retrieval.fusion_tuning import fuse, paired_difference, per_query_ndcg, select_on_dev  # noqa: E402
from retrieval.index import DenseIndex  # noqa: E402
from retrieval.metrics import evaluate, top_k  # noqa: E402

GRID = [round(0.1 * i, 1) for i in range(11)]
METHODS = {"min-max sum": {"method": "weighted", "normalization": "minmax"},
           "z-score sum": {"method": "weighted", "normalization": "zscore"},
           "weighted RRF k=60": {"method": "rrf"}}


def check_holdout(model: str, dev_fraction: float, seed: int) -> None:
    """A fine-tuned model must not have trained on the dev claims: its run must hold out the same split."""
    config = Path(model).parent / "config.yaml"
    if not Path(model).exists():
        return  # a hub name (zero-shot): it never saw SciFact's training claims
    if not config.exists():
        raise SystemExit(f"{model}: no {config} beside the export, so the dev hold-out cannot be checked")
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    trained = (data.get("dev_fraction", 0.0), data.get("seed"))
    if trained != (dev_fraction, seed):
        raise SystemExit(f"{config}: data.dev_fraction {trained[0]} and data.seed {trained[1]}, but the dev split "
                         f"here is --dev-fraction {dev_fraction} --seed {seed}: the model trained on dev claims. "
                         f"Train with --data.init_args.dev_fraction {dev_fraction} --seed_everything {seed}.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--store", default="runs/cache/scifact_minilm_256")
    ap.add_argument("--max-length", type=int, default=256, help="corpus tokens (the hybrid config's default)")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42, help="configs/dpr_scifact.yaml's seed_everything")
    args = ap.parse_args()
    check_holdout(args.model, args.dev_fraction, args.seed)
    dm = BEIRDataModule("data/scifact", dev_fraction=args.dev_fraction, seed=args.seed)
    dm.setup("validate")
    dev_qrels = dm.qrels["val"]
    store, test_ids, test_emb, data = encode_scifact(args.model, args.max_length, args.store)
    test_qrels = data.qrels["test"]
    dev_ids = sorted(dev_qrels)
    dev_emb = Encoder(args.model, "mean", normalize=True).encode([data.queries[q] for q in dev_ids], 64, max_length=64,
                                                                  show_progress=False).numpy()
    print(f"dev: {len(dev_ids)} of {len(dev_ids) + len(dm.train_qrels)} training claims (dev_fraction "
          f"{args.dev_fraction}, seed {args.seed}); test: {len(test_ids)} claims")

    ids = list(data.corpus)
    bm25 = BM25(ids, [passage_text(data.corpus[d]) for d in ids], k1=0.9, b=0.4)
    qids = dev_ids + test_ids
    sparse = {q: dict(h) for q, h in zip(qids, bm25.search([data.queries[q] for q in qids], args.depth))}
    index = DenseIndex.from_store(store)
    dense = {q: dict(h) for q, h in zip(dev_ids, index.search(dev_emb, args.depth))}
    dense.update({q: dict(h) for q, h in zip(test_ids, index.search(test_emb, args.depth))})

    chosen = {name: select_on_dev(sparse, dense, dev_qrels, test_qrels, GRID, args.depth, **kw)
              for name, kw in METHODS.items()}
    print("\nDev nDCG@10 by w_bm25 (dense gets 1 - w); w=0 is dense only, w=1 BM25 only")
    print(f"{'method':<20} " + " ".join(f"{w:>6}" for w in GRID))
    for name, sel in chosen.items():
        print(f"{name:<20} " + " ".join(f"{sel.dev[w]:>6.4f}" for w in GRID))

    best = max(chosen, key=lambda n: chosen[n].dev[chosen[n].weight])  # method chosen on dev too
    runs = {"BM25 only": sparse, f"dense only ({Path(args.model).name})": dense,
            "RRF k=60, equal weights (untuned)": fuse(sparse, dense, 0.5, "rrf")}
    runs.update({f"{n}, w_bm25={s.weight} (dev-chosen)": fuse(sparse, dense, s.weight, **METHODS[n])
                 for n, s in chosen.items()})
    print(f"\nSciFact, dense corpus cut to {args.max_length} tokens, depth {args.depth}")
    print(f"{'ranking':<46} {'dev nDCG@10':>11} {'test nDCG@10':>12} {'test R@100':>10}")
    for name, run in runs.items():
        dev, test = (evaluate(top_k(run, args.depth), q) for q in (dev_qrels, test_qrels))
        print(f"{name:<46} {dev['ndcg@10']:>11.4f} {test['ndcg@10']:>12.4f} {test['recall@100']:>10.4f}")

    s, kw = chosen[best], METHODS[best]
    hybrid = per_query_ndcg(top_k(fuse(sparse, dense, s.weight, **kw), args.depth), test_qrels)
    for other, run in (("dense only", dense), ("BM25 only", sparse)):
        mean, se = paired_difference(hybrid, per_query_ndcg(top_k(run, args.depth), test_qrels))
        print(f"test nDCG@10, {best} w={s.weight} minus {other}: {mean:+.4f} (paired se {se:.4f}, {mean / se:.1f} se)")
    extra = f" --model.init_args.fusion.normalization {kw['normalization']}" if "normalization" in kw else ""
    method = "weighted" if kw["method"] == "weighted" else "rrf"
    print(f"\nChosen on dev: {best}, w_bm25={s.weight}. Reproduce its test row:\n"
          f"  python train.py --config configs/hybrid_scifact.yaml --model.init_args.encoder.name_or_path {args.model} "
          f"--model.init_args.encoder.passage_max_length {args.max_length} --model.init_args.fusion.method {method}"
          f"{extra} --model.init_args.fusion.weights '[{s.weight},{round(1 - s.weight, 1)}]'")


if __name__ == "__main__":
    main()
