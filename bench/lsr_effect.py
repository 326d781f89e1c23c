"""REPLUG LSR on a testbed with headroom (issue 25; testbed and predictions in
docs/evidence/effects_preregistration.md): all-MiniLM-L6-v2 (query side; passages encoded once) trained with
the preferences of the frozen SmolLM2-135M-Instruct on ``data/arith_facts``, in both KL directions (arXiv
KL(P_R || Q_LM), NAACL KL(Q_LM || P_R)), each against the initial retriever on all 300 test questions:
gold recall@1 and @5 (qrels), nDCG@10, and EM of the REPLUG ensemble over the top 3.

Resumable: each phase writes ``<out>/<phase>.json`` and is skipped when it exists; fits checkpoint every
``--ckpt-every`` steps and resume from ``last.ckpt``; LM scores are cached per direction-independent triple in
``<out>/lm_scores.sqlite`` (the second direction reuses the first's scores where the retriever agrees).

    OMP_NUM_THREADS=1 nohup python bench/lsr_effect.py > runs/lsr_effect.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lsr_learning import metrics_of, run_phase  # noqa: E402  (sets the offline env, the path and the cwd)

import torch  # noqa: E402

from train import cli_main  # noqa: E402

ARITH_PROMPT = {"chat": False, "answer_prefix": "Answer:",
                "examples": [["What is 23 + 41?", "64"], ["What is 58 + 17?", "75"], ["What is 36 + 36?", "72"],
                             ["What is 71 + 29?", "100"]]}
DIRECTIONS = {"arxiv": "p_r||q", "naacl": "q||p_r"}


def se(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` over ``n`` questions."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def checkpoint_config(out: Path, name: str, ckpt_dir: Path, every: int) -> Path:
    """A config file adding a ModelCheckpoint every ``every`` steps (with ``last.ckpt``, so a fit resumes)."""
    path = out / f"{name}_callbacks.json"
    path.write_text(json.dumps({"trainer": {"callbacks": [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(ckpt_dir), "every_n_train_steps": every, "save_last": True,
                      "save_top_k": 1}}]}}))
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/lsr_effect")
    ap.add_argument("--data", default="data/arith_facts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", type=int, default=1000, help="training questions")
    ap.add_argument("--test", type=int, default=300, help="test questions")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--replug-k", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompt = out / "prompt.json"
    prompt.write_text(json.dumps(ARITH_PROMPT))
    data = Path(args.data)
    base = ["--config", "configs/replug_lsr_nq.yaml",
            "--data.init_args.corpus", str(data), "--data.init_args.train_file", str(data / "train.jsonl"),
            "--data.init_args.test_file", str(data / "test.jsonl"), "--data.init_args.train_limit", str(args.train),
            "--data.init_args.test_limit", str(args.test), "--data.init_args.batch_size", str(args.batch_size),
            "--model.init_args.scoring.prompt", str(prompt), "--model.init_args.train_passage_encoder", "false",
            "--model.init_args.scoring.cache", str(out / "lm_scores.sqlite"),
            "--model.init_args.embeddings_dir", str(out / "embeddings"),
            "--model.init_args.loss.top_k", str(args.top_k), "--model.init_args.replug.max_new_tokens", "6",
            "--model.init_args.optimizer.init_args.lr", str(args.lr), "--trainer.max_epochs", str(args.epochs),
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out / "tb")]

    def evaluate(name: str, ckpt: list[str]) -> dict:
        """Retrieval at depth 1 and 5 (no generation), then REPLUG EM over the top ``replug_k``."""
        result = {}
        for k in (1, 5):
            m = run_phase(out, f"{name}_retrieval@{k}", lambda k=k: metrics_of(cli_main(
                ["test", *base, "--model.init_args.eval_k", str(k), "--model.init_args.replug.k", "0", *ckpt])))
            result[f"gold_recall@{k}"] = m[f"test/gold_recall@{k}"]
            if k == 1:
                result["answer_recall@1"] = m["test/answer_recall@1"]
        m = run_phase(out, f"{name}_replug", lambda: metrics_of(cli_main(
            ["test", *base, "--model.init_args.replug.k", str(args.replug_k), *ckpt])))
        result.update({"ndcg@10": m["test/ndcg@10"], "replug_em": m["test/replug_em"]})
        return result

    rows = {"initial": evaluate("initial", [])}
    for name in args.directions:
        ckpt_dir = out / name / "checkpoints"
        callbacks = checkpoint_config(out, name, ckpt_dir, args.ckpt_every)
        fit_args = [*base, "--config", str(callbacks), "--model.init_args.loss.direction", DIRECTIONS[name]]

        def fit(fit_args=fit_args, ckpt_dir=ckpt_dir):
            last = ckpt_dir / "last.ckpt"
            cli = cli_main(["fit", *fit_args, *(["--ckpt_path", str(last)] if last.exists() else [])])
            return {**metrics_of(cli), "global_step": cli.trainer.global_step}

        run_phase(out, f"{name}_fit", fit)
        rows[name] = evaluate(name, ["--ckpt_path", str(ckpt_dir / "last.ckpt")])

    n = args.test
    print(f"\nREPLUG LSR on {data} ({n} test questions, {args.train} training questions, top-{args.top_k} in training, "
          f"REPLUG over the top {args.replug_k}, {args.epochs} epoch(s), lr {args.lr}, batch {args.batch_size}); "
          "each cell: value (standard error)")
    cols = ["gold_recall@1", "gold_recall@5", "answer_recall@1", "replug_em"]
    print("| retriever | " + " | ".join(cols) + " | nDCG@10 |")
    print("|---" * (len(cols) + 2) + "|")
    for name, r in rows.items():
        cells = [f"{r[c]:.3f} ({se(r[c], n):.3f})" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['ndcg@10']:.3f} |")


if __name__ == "__main__":
    main()
