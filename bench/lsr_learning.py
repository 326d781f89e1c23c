"""A REPLUG LSR learning run on CPU: all-MiniLM-L6-v2 trained with the preferences of the frozen
SmolLM2-135M-Instruct, in both set-ups, each evaluated with the initial and the trained retriever:

  QA (configs/replug_lsr_nq.yaml): answer-recall@1/@5, nDCG@10 against the gold passage and EM of the
      REPLUG ensemble on the first ``--qa-test`` questions of the NQ pool's test split (retrieval metrics
      also on the whole split, 300 questions);
  LM (configs/replug_lsr_lm.yaml): perplexity / bits per byte of y (second half of held-out passages)
      without retrieval, with REPLUG over the initial retriever, with REPLUG over the LSR retriever.

Both train Atlas's query-side variant (passage encoder frozen): the pool is encoded once, on disk, and
shared by every phase (the shared-encoder variant with IndexRefresh is in the configs and the tests).
Resumable: each phase writes ``<out>/<phase>.json`` and is skipped when it exists; fits checkpoint every
``--ckpt-every`` steps and resume from ``last.ckpt``; LM scores are cached in ``<out>/lm_scores.sqlite``.

    OMP_NUM_THREADS=1 python bench/lsr_learning.py --threads 1            # about an hour on one core
    python bench/lsr_learning.py --out runs/lsr_smoke --qa-train 8 --qa-test 4 --lm-train 4 --lm-test 4 \\
        --epochs 1 --retrieval-only-all false                             # a smoke run

The paper's effect to look for: REPLUG with the LSR retriever beats REPLUG with the initial one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import torch  # noqa: E402

from train import cli_main  # noqa: E402


def run_phase(out: Path, name: str, fn) -> dict:
    path = out / f"{name}.json"
    if path.exists():
        print(f"[{name}] done before: {path}", flush=True)
        return json.loads(path.read_text())
    print(f"[{name}] running", flush=True)
    start = time.time()
    result = fn()
    result["seconds"] = round(time.time() - start, 1)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


def metrics_of(cli) -> dict:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/lsr_learning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--qa-train", type=int, default=96, help="training questions (first N of the pool's train split)")
    ap.add_argument("--qa-test", type=int, default=100, help="test questions for REPLUG EM (first N of the test split)")
    ap.add_argument("--lm-train", type=int, default=64, help="training passages of the LM set-up")
    ap.add_argument("--lm-test", type=int, default=50, help="held-out passages of the LM set-up")
    ap.add_argument("--top-k", type=int, default=5, help="retrieved documents per input in training (D')")
    ap.add_argument("--replug-k", type=int, default=3, help="documents in the REPLUG ensemble at evaluation")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (later ones mostly hit the LM-score cache)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--ckpt-every", type=int, default=4)
    ap.add_argument("--retrieval-only-all", type=lambda s: s.lower() == "true", default=True,
                    help="also the retrieval metrics on the whole test split (no generation)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model.init_args.train_passage_encoder", "false",
              "--model.init_args.scoring.cache", str(out / "lm_scores.sqlite"),
              "--model.init_args.embeddings_dir", str(out / "embeddings"),
              "--model.init_args.loss.top_k", str(args.top_k), "--model.init_args.replug.k", str(args.replug_k),
              "--model.init_args.optimizer.init_args.lr", str(args.lr),
              "--data.init_args.batch_size", str(args.batch_size), "--trainer.max_epochs", str(args.epochs),
              "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out / "tb")]
    setups = {
        "qa": ["--config", "configs/replug_lsr_nq.yaml", *common, "--data.init_args.train_limit", str(args.qa_train),
               "--data.init_args.test_limit", str(args.qa_test)],
        "lm": ["--config", "configs/replug_lsr_lm.yaml", *common, "--data.init_args.num_train", str(args.lm_train),
               "--data.init_args.num_test", str(args.lm_test)],
    }
    results = {}
    # cheap, informative phases first (retrieval metrics, the fits, perplexities); REPLUG generation last
    for setup, base in setups.items():
        ckpt_dir = out / setup / "checkpoints"
        # the query-side variant needs no refresh; checkpoints every few steps so the fit can resume
        callbacks = out / f"{setup}_callbacks.yaml"
        callbacks.write_text(json.dumps({"trainer": {"callbacks": [{
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(ckpt_dir), "every_n_train_steps": args.ckpt_every, "save_last": True,
                          "save_top_k": 1}}]}}))
        setups[setup] = base = [*base, "--config", str(callbacks)]
        trained = ["--ckpt_path", str(ckpt_dir / "last.ckpt")]
        if setup == "qa":
            full = [*base, "--data.init_args.test_limit", "null", "--model.init_args.replug.k", "0"]
            if args.retrieval_only_all:
                results["qa_initial_all"] = run_phase(out, "qa_initial_all", lambda: metrics_of(cli_main(["test", *full])))
        else:
            results["lm_initial"] = run_phase(out, "lm_initial", lambda: metrics_of(cli_main(["test", *base])))

        def fit():
            last = ckpt_dir / "last.ckpt"
            cli = cli_main(["fit", *base, *(["--ckpt_path", str(last)] if last.exists() else [])])
            cache = cli.model.score_cache
            return {**metrics_of(cli), "global_step": cli.trainer.global_step, "lm_cache_hits_this_run": cache.hits,
                    "lm_scored_this_run": cache.misses, "lm_cache_entries": len(cache)}

        results[f"{setup}_fit"] = run_phase(out, f"{setup}_fit", fit)
        if setup == "qa" and args.retrieval_only_all:
            results["qa_trained_all"] = run_phase(out, "qa_trained_all",
                                                  lambda: metrics_of(cli_main(["test", *full, *trained])))
        if setup == "lm":
            results["lm_trained"] = run_phase(out, "lm_trained", lambda: metrics_of(cli_main(["test", *base, *trained])))
    qa_trained = ["--ckpt_path", str(out / "qa" / "checkpoints" / "last.ckpt")]
    results["qa_initial"] = run_phase(out, "qa_initial", lambda: metrics_of(cli_main(["test", *setups["qa"]])))
    results["qa_trained"] = run_phase(out, "qa_trained", lambda: metrics_of(cli_main(["test", *setups["qa"], *qa_trained])))

    print(f"\nREPLUG LSR learning run (out: {out}; torch threads {torch.get_num_threads()}; top-{args.top_k} in "
          f"training, REPLUG over the top {args.replug_k}; {args.epochs} epochs, lr {args.lr}, batch {args.batch_size})")
    print(f"QA, first {args.qa_test} test questions, {args.qa_train} training questions:")
    print(f"{'retriever':12}{'ans-R@1':>9}{'ans-R@5':>9}{'nDCG@10':>9}{'REPLUG EM':>11}{'REPLUG F1':>11}")
    for name in ("initial", "trained"):
        m = results[f"qa_{name}"]
        print(f"{name:12}{m['test/answer_recall@1']:9.3f}{m['test/answer_recall@5']:9.3f}{m['test/ndcg@10']:9.3f}"
              f"{m['test/replug_em']:11.3f}{m['test/replug_f1']:11.3f}")
    if args.retrieval_only_all:
        print("QA, all test questions, retrieval only:")
        for name in ("initial", "trained"):
            m = results[f"qa_{name}_all"]
            print(f"{name:12}{m['test/answer_recall@1']:9.3f}{m['test/answer_recall@5']:9.3f}{m['test/ndcg@10']:9.3f}")
    print(f"LM set-up, {args.lm_test} held-out passages (y = second half), {args.lm_train} training passages:")
    print(f"{'':28}{'perplexity':>11}{'bits/byte':>11}")
    rows = [("no retrieval", results["lm_initial"], "no_retrieval"), ("REPLUG, initial retriever", results["lm_initial"], "replug"),
            ("REPLUG LSR", results["lm_trained"], "replug")]
    for name, m, key in rows:
        print(f"{name:28}{m[f'test/ppl_{key}']:11.3f}{m[f'test/bpb_{key}']:11.4f}")
    print("seconds per phase: " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in results.items()))
    for setup in ("qa", "lm"):
        f = results[f"{setup}_fit"]
        print(f"{setup} fit: {f['global_step']} steps, LM scored {f['lm_scored_this_run']} triples this run, "
              f"{f['lm_cache_hits_this_run']} from the cache; final train/loss {f.get('train/loss', float('nan')):.4f}, "
              f"top1_agreement {f.get('train/top1_agreement', float('nan')):.3f}")


if __name__ == "__main__":
    main()
