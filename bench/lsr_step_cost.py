"""Cost of one REPLUG LSR training step, split into its parts, with and without the LM-score cache, in one
run: SmolLM2-135M-Instruct scores, all-MiniLM-L6-v2 retrieves and is updated (shared encoder, the paper's
variant), on questions of the NQ pool's training split.

Parts of a step (lightning_modules.replug_lsr.ReplugLSR.training_step):
  retrieval       encode the B queries, search the current index for the top k (the search layer)
  LM scoring      log P_LM(y | d, x) for the B x k (x, d, y) triples (the frozen LM), through the cache
  encoder update  re-encode queries and documents with gradient, lsr_loss, backward, Adam step
and, once per T steps, the index refresh (re-encoding the corpus), measured here on ``--corpus`` passages.

Three passes over the same ``--steps`` batches: without a cache (every triple scored), with an empty cache
(scored and stored), and with that cache warm (a re-run, or a later epoch whose candidates did not change);
``--before`` adds, first, a pass without a cache that also runs every prompt whole (``scoring.shared_prefix`` False:
the cold-cache step before it).

    OMP_NUM_THREADS=1 python bench/lsr_step_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)
os.chdir(ROOT)

import torch  # noqa: E402

from datamodules.lsr import LSRQADataModule  # noqa: E402
from training.schedule import decay_groups  # noqa: E402
from lightning_modules.replug_lsr import ReplugLSR  # noqa: E402
from retrieval.lsr import LMScoreCache, LSRLoss, lsr_loss  # noqa: E402
from retrieval.lsr_lm import LMScoring  # noqa: E402
from retrieval.settings import EncoderSettings  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="batches per pass")
    ap.add_argument("--corpus", type=int, default=512, help="pool passages in the index (the first N, plus the "
                                                             "batches' gold passages)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--before", action="store_true", help="also a pass without the shared-prefix cache (whole "
                                                          "prompts, the scoring before it), first")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dm = LSRQADataModule(train_limit=args.batch_size * args.steps, test_file=None)
    dm.setup()
    batches = [dm.splits["train"][i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.steps)]
    keep = set(dm.doc_ids[:args.corpus]) | {r["gold_id"] for b in batches for r in b}
    passages = {d: dm.passages[d] for d in dm.doc_ids if d in keep}

    model = ReplugLSR(EncoderSettings(passage_max_length=192), loss=LSRLoss(top_k=args.top_k),
                      scoring=LMScoring(batch_size=8))
    model.configure_model()
    model.train()
    model.attach_corpus(passages)
    index, refresh_s = timed(lambda: model.build_index(passages))
    optimizer = torch.optim.Adam(decay_groups(model), lr=2e-5)

    def step(batch) -> dict[str, float]:
        inputs, targets = [r["input"] for r in batch], [r["target"] for r in batch]
        hits, t_retrieve = timed(lambda: model.retrieve(inputs, args.top_k))
        docs = [[model.searcher.text(d) for d, _ in row] for row in hits]
        logliks, t_lm = timed(lambda: model.lm_scores(inputs, docs, targets))

        def update():
            loss = lsr_loss(model.retriever_scores(inputs, docs), logliks, model.loss.gamma, model.loss.beta)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss

        _, t_update = timed(update)
        return {"retrieval": t_retrieve, "lm_scoring": t_lm, "encoder_update": t_update}

    # the same weights and batches in every pass: the candidates are the same, so a warm cache holds them all
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    initial_opt = optimizer.state_dict()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        passes = (("no cache", None), ("empty cache", "new"), ("warm cache", "same"))
        if args.before:  # the scoring before the shared-prefix cache: every prompt run whole
            passes = (("no cache, whole prompts", "whole"),) + passes
        for name, cache in passes:
            model.scoring.shared_prefix = cache != "whole"
            model.load_state_dict(initial)
            optimizer.load_state_dict(initial_opt)
            model.retrieval_index = index       # built from the initial weights, which every pass starts from
            if cache == "new":
                model.score_cache = LMScoreCache(Path(tmp) / "scores.sqlite", model.frozen.fingerprint, "bench")
            elif cache in (None, "whole"):
                model.score_cache = None
            else:
                model.score_cache.hits = model.score_cache.misses = 0
            parts = [step(b) for b in batches]
            rows[name] = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
            rows[name]["scored"] = model.score_cache.misses if model.score_cache is not None else None
    print(f"\nREPLUG LSR step cost: batch {args.batch_size} questions x top-{args.top_k} = "
          f"{args.batch_size * args.top_k} (x, d, y) per step, mean of {args.steps} steps; torch threads "
          f"{torch.get_num_threads()}; SmolLM2-135M-Instruct scorer (few-shot prompt), all-MiniLM-L6-v2 retriever")
    print(f"{'':24}{'retrieval':>11}{'LM scoring':>12}{'enc. update':>13}{'step':>9}{'LM calls':>10}")
    for name, r in rows.items():
        total = r["retrieval"] + r["lm_scoring"] + r["encoder_update"]
        scored = "-" if r["scored"] is None else str(r["scored"])
        if r["scored"] is None:
            scored = str(args.steps * args.batch_size * args.top_k) + "*"
        print(f"{name:24}{r['retrieval']:10.2f}s{r['lm_scoring']:11.2f}s{r['encoder_update']:12.2f}s{total:8.2f}s{scored:>10}")
    print("(* every triple of the step, repeated triples in a batch once)")
    print(f"index refresh: {len(passages)} passages encoded and indexed in {refresh_s:.1f} s "
          f"({len(passages) / refresh_s:.1f} passages/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "refresh_s": refresh_s, "passages": len(passages),
                                               **vars(args)}, indent=2))


if __name__ == "__main__":
    main()
