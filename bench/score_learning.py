"""SCoRe learning run on this CPU: the base model, Stage I only, Stage I + II and single-turn RL, each evaluated
with the greedy two-attempt protocol on held-out problems: by default the half-solved task (generated two-digit
additions, 4-shot; the base model solves 39% of 64 at attempt 1, 31% at attempt 2), test problems drawn with
another seed than training. --ablations adds Stage II without Stage I and Stage II with alpha 0.

    .venv/bin/python bench/score_learning.py --threads 1                      # ~1 h on an idle 2-core machine
    nohup .venv/bin/python bench/score_learning.py --threads 1 > runs/score_learning/log.txt 2>&1 &

Resumable: each phase writes <out>/<phase>.json when done and is skipped afterwards; a training phase that
was stopped resumes from its last.ckpt. The table (<out>/table.md) is rewritten after every phase. Training
runs the shipped configs (configs/score_stage1_arithmetic.yaml, score_stage2_arithmetic.yaml,
score_single_turn_arithmetic.yaml) through train.py's CLI, sized down by command-line overrides; each trained
policy is evaluated at its checkpoint chosen by training reward (the paper's selection), Stage II starts
from Stage I's. Single-turn RL gets the steps of Stage I + II (about the same number of sampled attempts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEYS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "edit_distance")
ROWS = [("base", "base model (no training)"), ("stage1", "Stage I only"), ("stage1_2", "Stage I + II"),
        ("single_turn", "single-turn RL (attempt 1 only)"), ("stage1_2_long", "Stage I + II, longer Stage II, last checkpoint"),
        ("stage2_no_stage1", "ablation: Stage II without Stage I"), ("stage1_2_alpha0", "ablation: Stage I + II, alpha 0")]
ABLATIONS = ("stage2_no_stage1", "stage1_2_alpha0")  # run only when named in --only or with --ablations


def write_sums(out: Path, n_test: int) -> tuple[str, str]:
    """MATH-format files of "What is a + b?" with one-digit a, b: the 81 pairs shuffled, the first ``n_test`` held
    out for the test file, the rest for training (no test pair is a training pair)."""
    import random

    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(0).shuffle(pairs)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("test", pairs[:n_test]), ("train", pairs[n_test:])):
        rows = [{"problem": f"What is {a} + {b}?", "solution": f"${a} + {b} = \\boxed{{{a + b}}}$", "answer": str(a + b)}
                for a, b in part]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(out / f"{name}.jsonl"))
    return paths[1], paths[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/score_learning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage1-steps", type=int, default=10)
    ap.add_argument("--stage2-steps", type=int, default=10)
    ap.add_argument("--problems-per-step", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-turn-tokens", type=int, default=48)
    ap.add_argument("--n-eval", type=int, default=64, help="held-out test problems")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--long-stage2-steps", type=int, default=0,
                    help="also a longer Stage II from Stage I's checkpoint, evaluated at its LAST checkpoint (when the "
                         "training reward is flat, selection by it keeps the first checkpoint)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these rows (e.g. stage1_2_long)")
    ap.add_argument("--ablations", action="store_true",
                    help="also Stage II from the base model (no Stage I) and Stage II with alpha 0, each for the Stage II "
                         "steps (configs/score_stage2_no_stage1_arithmetic.yaml, score_stage2_alpha0_arithmetic.yaml)")
    ap.add_argument("--task", choices=("arithmetic", "gsm8k_short", "add1"), default="arithmetic",
                    help="arithmetic: the configs' task (two-digit additions, 4-shot); gsm8k_short: GSM8K's short slice (the base model solved 0 of 8 at attempt 1, 4-shot, "
                         "runs/self_correct); add1: 'What is a + b?' with one-digit a, b, as a MATH-format file (the "
                         "DataModule's user-file path); the base model solved 2 of 16 at attempt 1; held-out pairs)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from train import cli_main

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    task = []
    if args.task == "gsm8k_short":
        task = ["--model.init_args.task", "gsm8k", "--data.init_args.task", "gsm8k", "--data.init_args.slice", "short",
                "--data.init_args.num_shots", "0"]
    if args.task == "add1":
        train_file, test_file = write_sums(out / "data", args.n_eval)
        task = ["--model.init_args.task", "math", "--data.init_args.task", "math", "--data.init_args.num_shots", "0",
                "--data.init_args.train_file", train_file, "--data.init_args.test_file", test_file]
    common = [*task, "--trainer.logger.init_args.save_dir", str(out), "--trainer.limit_val_batches", "0",
              "--trainer.enable_progress_bar", "false",
              "--model.init_args.sampling.group_size", str(args.group_size),
              "--model.init_args.sampling.max_turn_tokens", str(args.max_turn_tokens),
              "--model.init_args.sampling.max_response_tokens", str(2 * args.max_turn_tokens + 256),
              "--model.init_args.sampling.temperature", str(args.temperature),
              "--model.init_args.optimizer.init_args.lr", str(args.lr),
              "--data.init_args.batch_size", str(args.problems_per_step),
              "--data.init_args.limit_test", str(args.n_eval), "--data.init_args.eval_batch_size", "8"]

    def ckpt_dir(phase: str) -> Path:
        return out / phase / "checkpoints"

    def fit(phase: str, config: str, steps: int, extra: list[str]) -> str:
        last = ckpt_dir(phase) / "last.ckpt"
        if (out / f"{phase}.fit.json").exists():
            return json.loads((out / f"{phase}.fit.json").read_text())["best"]
        argv = ["fit", "--config", config, *common, "--trainer.logger.init_args.name", phase,
                "--trainer.max_steps", str(steps), *extra] + (["--ckpt_path", str(last)] if last.exists() else [])
        print("$ train.py " + " ".join(argv), flush=True)
        start = time.time()
        cli = cli_main(argv)
        best = cli.trainer.checkpoint_callback.best_model_path or str(last)
        (out / f"{phase}.fit.json").write_text(json.dumps({"best": best, "seconds": time.time() - start,
                                                           "best_selection_reward": float(
                                                               cli.trainer.checkpoint_callback.best_model_score or 0)}))
        return best

    def evaluate(row: str, config: str, ckpt: str | None) -> None:
        if (out / f"{row}.json").exists():
            return
        # no logger: the trainer's log dir is default_root_dir, where the CLI saves config.yaml (not the cwd)
        argv = ["test", "--config", config, *common, "--trainer.logger", "false",
                "--trainer.default_root_dir", str(out / f"eval_{row}"),
                "--model.init_args.sampling.eval_max_turn_tokens", str(args.max_turn_tokens)]
        if ckpt:
            argv += ["--ckpt_path", ckpt]
        print("$ train.py " + " ".join(argv), flush=True)
        start = time.time()
        cli = cli_main(argv)
        m = {k: float(cli.trainer.callback_metrics[f"test/{k}"]) for k in KEYS}
        m.update(seconds=time.time() - start, checkpoint=ckpt, n=args.n_eval)
        (out / f"{row}.json").write_text(json.dumps(m, indent=1))
        write_table()

    def write_table() -> None:
        lines = [f"SCoRe learning run, SmolLM2-135M-Instruct + LoRA, task {args.task}; greedy two-attempt evaluation "
                 f"on {args.n_eval} held-out test problems.",
                 f"Stage I {args.stage1_steps} steps, Stage II {args.stage2_steps} steps, single-turn "
                 f"{args.stage1_steps + args.stage2_steps} steps; {args.problems_per_step} problems x "
                 f"{args.group_size} samples a step, lr {args.lr}, temperature {args.temperature}, "
                 f"{args.max_turn_tokens} tokens an attempt; checkpoints chosen by training reward.",
                 f"Command: .venv/bin/python {' '.join(sys.argv)}", "",
                 "| policy | Acc@t1 | Acc@t2 | Delta(t1,t2) | Delta_i->c | Delta_c->i | edit distance |",
                 "|---|---|---|---|---|---|---|"]
        for key, name in ROWS:
            f = out / f"{key}.json"
            if f.exists():
                m = json.loads(f.read_text())
                lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
            else:
                lines.append(f"| {name} | " + " | ".join("(pending)" for _ in KEYS) + " |")
        (out / "table.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    s1, s2, st = ("configs/score_stage1_arithmetic.yaml", "configs/score_stage2_arithmetic.yaml",
                  "configs/score_single_turn_arithmetic.yaml")
    def run(row: str) -> bool:
        if args.only is not None:
            return row in args.only
        return row not in ABLATIONS or args.ablations

    if args.only is not None and set(args.only) - {key for key, _ in ROWS}:
        ap.error(f"--only: unknown rows {sorted(set(args.only) - {key for key, _ in ROWS})}; rows: {[k for k, _ in ROWS]}")
    if run("base"):
        evaluate("base", s1, None)
    if run("stage1") or run("stage1_2") or run("stage1_2_long") or run("stage1_2_alpha0"):
        best1 = fit("stage1", s1, args.stage1_steps, [])
        evaluate("stage1", s1, best1)
    if run("stage1_2"):
        best12 = fit("stage1_2", s2, args.stage2_steps, ["--model.init_args.init_from", best1])
        evaluate("stage1_2", s2, best12)
    if run("single_turn"):
        best_st = fit("single_turn", st, args.stage1_steps + args.stage2_steps, [])
        evaluate("single_turn", st, best_st)
    if args.long_stage2_steps and run("stage1_2_long"):
        fit("stage1_2_long", s2, args.long_stage2_steps, ["--model.init_args.init_from", best1])
        evaluate("stage1_2_long", s2, str(ckpt_dir("stage1_2_long") / "last.ckpt"))
    if run("stage2_no_stage1"):
        best = fit("stage2_no_stage1", "configs/score_stage2_no_stage1_arithmetic.yaml", args.stage2_steps, [])
        evaluate("stage2_no_stage1", "configs/score_stage2_no_stage1_arithmetic.yaml", best)
    if run("stage1_2_alpha0"):
        best = fit("stage1_2_alpha0", "configs/score_stage2_alpha0_arithmetic.yaml", args.stage2_steps,
                   ["--model.init_args.init_from", best1])
        evaluate("stage1_2_alpha0", "configs/score_stage2_alpha0_arithmetic.yaml", best)
    write_table()


if __name__ == "__main__":
    main()
