"""A real Search-R1 learning run on CPU: SmolLM2-135M-Instruct (LoRA) trained with GRPO on the NQ
passage pool with BM25 search, then EM and searches per question on held-out questions (the pool's test
split) before and after training, with the same greedy evaluation.

    python bench/search_r1_learning.py --steps 20 --eval-questions 48 --threads 1   # about an hour on 1 core
    python bench/search_r1_learning.py --steps 2 --eval-questions 8                 # a smoke run

With the config's supervised warm start (``warm_start_questions``) the policy is also evaluated after
the warm start alone, so the table separates what the demonstrations and what RL contributed.

Any other ``train.py`` override can follow ``--`` (e.g. ``-- --model.init_args.sampling.group_size 8``).
The paper's claim to look for: EM after training above the untrained policy's.
"""

from __future__ import annotations

import argparse
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


def evaluate(trainer, model, datamodule) -> dict[str, float]:
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    return {k.split("/")[-1]: float(v) for k, v in metrics.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/search_r1_grpo_nq.yaml")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps (one per batch of questions with updates.epochs 1)")
    ap.add_argument("--eval-questions", type=int, default=64, help="held-out questions (first N of the test split)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is faster on a busy machine)")
    ap.add_argument("overrides", nargs="*", help="train.py overrides after --")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cli = cli_main(["--config", args.config, "--trainer.max_steps", str(args.steps),
                    "--trainer.val_check_interval", str(10 ** 9), "--trainer.limit_val_batches", "0",
                    "--data.init_args.limit_test", str(args.eval_questions), *args.overrides], run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    t0 = time.time()
    rows = [("before", evaluate(trainer, model, data))]
    t1 = time.time()
    if model.warm_start_settings.questions:  # 0. the supervised warm start alone (fit with no RL step), evaluated
        trainer.fit_loop.epoch_loop.max_steps = 0
        trainer.fit(model, datamodule=data)
        rows.append(("warm start", evaluate(trainer, model, data)))
        trainer.fit_loop.epoch_loop.max_steps = args.steps
    t2 = time.time()
    trainer.fit(model, datamodule=data)
    t3 = time.time()
    rows.append(("after RL" if len(rows) > 1 else "after", evaluate(trainer, model, data)))
    t4 = time.time()
    print(f"\nSearch-R1 learning run: {args.config}, {args.steps} optimizer steps, "
          f"{args.eval_questions} held-out questions (data/nq_pool/test.jsonl), torch threads {torch.get_num_threads()}")
    print(f"{'':12}{'EM':>8}{'F1':>8}{'searches/q':>12}{'failed':>8}{'resp. tokens':>14}")
    for name, m in rows:
        print(f"{name:12}{m['em']:8.3f}{m['f1']:8.3f}{m['searches']:12.2f}{m.get('search_errors', 0):8.0f}{m['response_length']:14.1f}")
    print(f"time: eval before {t1 - t0:.0f} s, warm start + its eval {t2 - t1:.0f} s, RL training {t3 - t2:.0f} s, "
          f"eval after {t4 - t3:.0f} s")
    print(f"TensorBoard logs: {trainer.log_dir}")


if __name__ == "__main__":
    main()
