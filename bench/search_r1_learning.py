"""A real Search-R1 learning run on CPU: SmolLM2-135M-Instruct (LoRA) trained with GRPO on the NQ
passage pool with BM25 search, then EM and searches per question on held-out questions (the pool's test
split) before and after training, with the same greedy evaluation.

    python bench/search_r1_learning.py --steps 40 --eval-questions 64          # about an hour alone on 2 cores
    python bench/search_r1_learning.py --steps 6 --eval-questions 16 --threads 1  # a bounded smoke run

Any other ``train.py`` override can follow ``--`` (e.g. ``-- --model.init_args.group_size 8``).
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
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps (one per batch of questions with ppo_epochs 1)")
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
    before = evaluate(trainer, model, data)
    t1 = time.time()
    trainer.fit(model, datamodule=data)
    t2 = time.time()
    after = evaluate(trainer, model, data)
    t3 = time.time()
    print(f"\nSearch-R1 learning run: {args.config}, {args.steps} optimizer steps, "
          f"{args.eval_questions} held-out questions (data/nq_pool/test.jsonl), torch threads {torch.get_num_threads()}")
    print(f"{'':8}{'EM':>8}{'F1':>8}{'searches/q':>12}{'resp. tokens':>14}")
    for name, m in (("before", before), ("after", after)):
        print(f"{name:8}{m['em']:8.3f}{m['f1']:8.3f}{m['searches']:12.2f}{m['response_length']:14.1f}")
    print(f"time: eval before {t1 - t0:.0f} s, training {t2 - t1:.0f} s, eval after {t3 - t2:.0f} s")
    print(f"TensorBoard logs: {trainer.log_dir}")


if __name__ == "__main__":
    main()
