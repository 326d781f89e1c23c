"""Self-correction evidence for SmolLM2-135M-Instruct (fp32, greedy), resumable: every finished batch of
problems is appended to a JSONL cache under runs/self_correct/, and a rerun skips what is there.

  probe   first attempts only, on candidate tasks/slices/prompts (which one does the model solve 20-60% of
          the time? SCoRe needs one):
              python bench/self_correct_table.py probe --n 32
  table   the two-attempt table (rows: base model prompted twice, Self-Refine; columns Acc@t1, Acc@t2,
          Delta, i->c, c->i) on the first N problems of each task:
              python bench/self_correct_table.py table --tasks gsm8k math500 humaneval --n 64

Problems, prompts and shots come from ``datamodules.self_correction.SelfCorrectionDataModule`` with the
candidate's options, so a winning candidate is one config away.
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
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

import torch  # noqa: E402

from datamodules.self_correction import SelfCorrectionDataModule  # noqa: E402
from training.models import load_causal_lm  # noqa: E402
from rl.envs import SingleTurn  # noqa: E402
from rl.rollout import rollout  # noqa: E402
from rl.self_correction import attempt_metrics, evaluate_two_attempts  # noqa: E402
from tasks.registry import task_reward  # noqa: E402

# name -> SelfCorrectionDataModule options (the test split, first n problems)
CANDIDATES = {
    "gsm8k_0shot": dict(task="gsm8k"),
    "gsm8k_short_0shot": dict(task="gsm8k", slice="short", max_steps=2),
    "gsm8k_short_4shot": dict(task="gsm8k", slice="short", max_steps=2, num_shots=4),
    "gsm8k_train_short_4shot": dict(task="gsm8k", slice="short", max_steps=2, num_shots=4,
                                    test_file="data/gsm8k/train.jsonl"),
    "mbpp_tests_shown_0shot": dict(task="mbpp"),
    "mbpp_tests_shown_3shot": dict(task="mbpp", num_shots=3),
    "humaneval_0shot": dict(task="humaneval"),
    "add2_0shot": dict(task="arithmetic"),
    "add2_4shot": dict(task="arithmetic", num_shots=4),
    "add3_4shot": dict(task="arithmetic", options={"digits": 3}, num_shots=4),
}
TABLE_TASKS = {"gsm8k": dict(task="gsm8k"), "math500": dict(task="math500"), "humaneval": dict(task="humaneval"),
               "gsm8k_short_4shot": CANDIDATES["gsm8k_short_4shot"], "mbpp": dict(task="mbpp"),
               "arithmetic": CANDIDATES["add2_4shot"]}
OUT = ROOT / "runs" / "self_correct"


def problems(options: dict, n: int):
    dm = SelfCorrectionDataModule(**options, limit_test=n)
    dm.setup("test")
    return dm.rows["test"], dm.problem_format


def cached(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def run_batches(path: Path, rows: list[dict], batch_size: int, fn) -> list[dict]:
    """Records of every row, computing only those not yet in ``path`` (appended batch by batch)."""
    done = cached(path)
    todo = [r for r in rows if r["id"] not in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        t0 = time.perf_counter()
        recs = fn(batch)
        with open(path, "a", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                done[r["id"]] = r
        print(f"  {path.name}: {len(done)}/{len(rows)} ({time.perf_counter() - t0:.0f} s for {len(batch)})",
              flush=True)
    return [done[r["id"]] for r in rows]


def probe(model, tok, args) -> None:
    lines = ["| candidate | problems | solved at attempt 1 | accuracy |", "|---|---|---|---|"]
    for name in args.candidates:
        options = CANDIDATES[name]
        rows, fmt = problems(options, args.n)
        reward = task_reward(options["task"])

        def first_attempts(batch, fmt=fmt, reward=reward, task=options["task"]):
            prompts = [fmt.render(tok, ex, task) for ex in batch]
            out = rollout(model, tok, prompts, SingleTurn(stops=()), max_turn_tokens=args.max_turn_tokens,
                          max_response_tokens=args.max_turn_tokens, do_sample=False, compute_logprobs=False)
            texts = [t[0] if t else "" for t in out.turn_texts]
            return [{"id": ex["id"], "attempt_1": t, "r1": float(r)} for ex, t, r in zip(batch, texts, reward(texts, batch))]

        recs = run_batches(OUT / f"probe_{name}_t{args.max_turn_tokens}.jsonl", rows, args.batch_size, first_attempts)
        solved = sum(r["r1"] for r in recs)
        lines.append(f"| {name} `{options}` | {len(recs)} | {solved:.0f} | {solved / len(recs):.1%} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


def table(model, tok, args) -> None:
    lines = ["| task (first N) | method | Acc@t1 | Acc@t2 | Delta(t1,t2) | Delta i->c | Delta c->i |",
             "|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        rows, fmt = problems(TABLE_TASKS[task], args.n)
        for method in args.methods:
            def two(batch, fmt=fmt, method=method, task=TABLE_TASKS[task]["task"]):
                return evaluate_two_attempts(model, tok, batch, task, method=method, problem_format=fmt,
                                             max_turn_tokens=args.max_turn_tokens, batch_size=len(batch),
                                             with_metrics=False)["records"]

            recs = run_batches(OUT / f"table_{task}_{method}_t{args.max_turn_tokens}.jsonl", rows, args.batch_size, two)
            m = attempt_metrics([r["r1"] for r in recs], [r["r2"] for r in recs])
            lines.append(f"| {task} ({len(recs)}) | {method} | {m['accuracy@t1']:.1%} | {m['accuracy@t2']:.1%} | "
                         f"{m['delta(t1,t2)']:+.1%} | {m['delta_i->c']:.1%} | {m['delta_c->i']:.1%} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["probe", "table"])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--tasks", nargs="+", default=["gsm8k", "math500", "humaneval"], choices=list(TABLE_TASKS))
    p.add_argument("--methods", nargs="+", default=["two_attempts", "self_refine"])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-turn-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model, dtype="float32")
    model.eval()
    print(f"{args.model} fp32, greedy, {torch.get_num_threads()} threads, max {args.max_turn_tokens} tokens/turn",
          flush=True)
    (probe if args.mode == "probe" else table)(model, tok, args)


if __name__ == "__main__":
    main()
