"""Rollout throughput (generated tokens/s): our rollout (rl.rollout) vs TRL's GRPOTrainer generation, on
the same model, prompts, group size and lengths, alternating in one run; plus our multi-turn rollout
with BM25 search over the NQ pool (generated tokens only; inserted information is not counted).

    python bench/rollout_throughput.py --questions 8 --group-size 4 --max-new-tokens 64 --repeats 2
    python bench/rollout_throughput.py --two-attempts --questions 8 --group-size 4 --max-new-tokens 48 --repeats 2

``--precision`` (default ``auto fp32``): each precision in turn, the same model and prompts, both sides
computing in it (ours through training.precision.set_precision, TRL's call under the same lm_autocast); ``auto``
is the machine's precision (bf16 on CPUs with native bf16, else fp32, then measured once). The CPU flags and
the load average are printed with the results: compare only ratios from one run.

``--two-attempts`` (SCoRe): ours is one rollout with rl.self_correction's TwoAttemptEnv (attempt 1, the
paper's instruction as a chat turn, attempt 2, the KV cache kept between them); TRL generates attempt 1,
then attempt 2 from prompt + attempt 1 + the same instruction text (two ``_generate`` calls), on generated
two-digit additions (the half-solved task) rendered by tasks.problem_format.render_problem.

Both sample with the same seed per repeat, hence the same tokens (ours also stops a sequence at
``</answer>``, TRL only at EOS); each side's tokens/s is its own generated-token count over its own wall
time, and the ratio is ours / TRL.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

import torch  # noqa: E402

from datamodules.qa import read_qa_jsonl  # noqa: E402
from bench.machine import describe  # noqa: E402
from training.models import load_causal_lm  # noqa: E402
from training.precision import lm_autocast, lm_precision, set_precision  # noqa: E402
from rl.prompts import render_prompt  # noqa: E402
from rl.envs import SearchEnv  # noqa: E402
from rl.rollout import rollout  # noqa: E402
from rl.search import BM25Search, SafeSearch  # noqa: E402
from rl.self_correction import two_attempt_env  # noqa: E402
from tasks.arithmetic import arithmetic_problems  # noqa: E402
from tasks.problem_format import render_problem  # noqa: E402


def trl_trainer(model, tokenizer, group_size: int, max_new_tokens: int, batch: int, out_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=batch, num_generations=group_size,
                        max_completion_length=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                        use_cpu=True, bf16=False, report_to="none", logging_strategy="no", save_strategy="no")
    dummy = Dataset.from_dict({"prompt": ["x"] * batch})
    return GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=config,
                       train_dataset=dummy, processing_class=tokenizer)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--two-attempts", action="store_true", help="SCoRe's two-attempt rollout vs TRL twice")
    ap.add_argument("--precision", nargs="+", default=["auto", "fp32"], help="auto, fp32, bf16: each in turn")
    ap.add_argument("--no-multiturn", action="store_true", help="skip the multi-turn rollout with search")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(args.model, device="cpu")
    model.eval()
    if args.two_attempts:
        problems = arithmetic_problems(args.questions, seed=0)
        prompts = [render_problem(tokenizer, p, "arithmetic") for p in problems for _ in range(args.group_size)]
    else:
        questions = [r["question"] for r in read_qa_jsonl("data/nq_pool/test.jsonl", args.questions)]
        prompts = [render_prompt(tokenizer, q) for q in questions for _ in range(args.group_size)]
    n = len(prompts)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        trainer = trl_trainer(model, tokenizer, args.group_size, args.max_new_tokens, n, tmp)
        print(f"TRL trainer built in {time.perf_counter() - t:.1f} s", flush=True)
        trainer.model.eval()
        search = SafeSearch(BM25Search("data/nq_pool/corpus.jsonl"), k=2, max_passage_chars=400)
        t = time.perf_counter()
        rollout(model, tokenizer, prompts[:2], None, max_turn_tokens=4, max_response_tokens=4, compute_logprobs=False)
        trainer.args.max_completion_length = 4
        trainer._generate(prompts[:args.group_size])  # warm-up both paths once
        trainer.args.max_completion_length = args.max_new_tokens
        print(f"warm-up {time.perf_counter() - t:.1f} s", flush=True)
        print(describe(), flush=True)
        done = set()
        for precision in args.precision:
            set_precision(model, precision)
            if lm_precision(model) in done:
                print(f"precision {precision}: computes in {lm_precision(model)} here, measured above")
                continue
            done.add(lm_precision(model))
            print(f"\n== precision {precision} -> {lm_precision(model)} ==", flush=True)
            with lm_autocast(model):  # both sides compute in it (nested in ours: the same context)
                (two_attempts if args.two_attempts else single_turn)(model, tokenizer, trainer, prompts, search, args)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def single_turn(model, tokenizer, trainer, prompts: list[str], search, args) -> None:
    n = len(prompts)
    totals = {"ours": [0, 0.0], "trl": [0, 0.0], "ours_multiturn": [0, 0.0]}
    for rep in range(args.repeats):
        torch.manual_seed(1000 + rep)  # same seed for both: the same sampled tokens, up to our stop strings
        t = time.perf_counter()
        r = rollout(model, tokenizer, prompts, None, max_turn_tokens=args.max_new_tokens,
                    max_response_tokens=args.max_new_tokens, temperature=1.0, compute_logprobs=False)
        dt = time.perf_counter() - t
        totals["ours"][0] += int(r.response_lengths.sum())
        totals["ours"][1] += dt
        print(f"[{rep}] ours : {int(r.response_lengths.sum())} tokens in {dt:.1f} s", flush=True)
        torch.manual_seed(1000 + rep)
        t = time.perf_counter()
        out = trainer._generate(prompts)
        dt = time.perf_counter() - t
        completion_ids = out[1]
        tokens = sum(len(c) for c in completion_ids)
        totals["trl"][0] += tokens
        totals["trl"][1] += dt
        print(f"[{rep}] TRL  : {tokens} tokens in {dt:.1f} s", flush=True)
        if args.no_multiturn:
            continue
        t = time.perf_counter()
        r = rollout(model, tokenizer, prompts, SearchEnv(search, max_searches=2), max_turn_tokens=args.max_new_tokens,
                    max_response_tokens=3 * args.max_new_tokens + 600, temperature=1.0, compute_logprobs=False)
        dt = time.perf_counter() - t
        totals["ours_multiturn"][0] += int(r.response_lengths.sum())
        totals["ours_multiturn"][1] += dt
        if rep == 0:
            print("sample multi-turn response:", repr(r.responses[0][:600]), flush=True)
        print(f"[{rep}] ours multi-turn+search: {int(r.response_lengths.sum())} generated tokens, "
              f"{r.num_searches.float().mean():.2f} searches/rollout, {dt:.1f} s", flush=True)
    rate = {k: v[0] / max(v[1], 1e-9) for k, v in totals.items()}
    print(f"\nmodel {args.model}, {args.questions} questions x G={args.group_size} = {n} sequences, "
          f"max {args.max_new_tokens} new tokens, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"ours (single turn, rl.rollout) : {rate['ours']:.1f} generated tokens/s")
    print(f"TRL GRPOTrainer._generate      : {rate['trl']:.1f} generated tokens/s")
    print(f"ratio ours / TRL               : {rate['ours'] / rate['trl']:.2f}x")
    if not args.no_multiturn:
        print(f"ours multi-turn with BM25 search (B=2): {rate['ours_multiturn']:.1f} generated tokens/s")


def two_attempts(model, tokenizer, trainer, prompts: list[str], search, args) -> None:
    """Generated tokens/s of both attempts: rl.rollout with the TwoAttemptEnv vs TRL's generation called per
    attempt (the instruction text is the environment's own, so both sides see the same second prompt)."""
    env = two_attempt_env(tokenizer, "arithmetic")
    totals = {"ours": [0, 0.0], "trl": [0, 0.0]}
    for rep in range(args.repeats):
        torch.manual_seed(1000 + rep)
        t = time.perf_counter()
        r = rollout(model, tokenizer, prompts, env, max_turn_tokens=args.max_new_tokens,
                    max_response_tokens=2 * args.max_new_tokens + 200, temperature=1.0, compute_logprobs=False)
        dt = time.perf_counter() - t
        totals["ours"][0] += int(r.response_lengths.sum())
        totals["ours"][1] += dt
        print(f"[{rep}] ours two attempts: {int(r.response_lengths.sum())} tokens in {dt:.1f} s", flush=True)
        torch.manual_seed(1000 + rep)
        t = time.perf_counter()
        first = trainer._generate(prompts)[1]
        second_prompts = [p + tokenizer.decode(ids, skip_special_tokens=True) + env.text for p, ids in zip(prompts, first)]
        second = trainer._generate(second_prompts)[1]
        dt = time.perf_counter() - t
        tokens = sum(len(c) for c in first) + sum(len(c) for c in second)
        totals["trl"][0] += tokens
        totals["trl"][1] += dt
        print(f"[{rep}] TRL  two attempts: {tokens} tokens in {dt:.1f} s", flush=True)
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    print(f"\nmodel {args.model}, {args.questions} problems x G={args.group_size} = {len(prompts)} sequences, "
          f"max {args.max_new_tokens} new tokens per attempt, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"ours (two attempts, rl.rollout + TwoAttemptEnv): {rate['ours']:.1f} generated tokens/s")
    print(f"TRL GRPOTrainer._generate, once per attempt     : {rate['trl']:.1f} generated tokens/s")
    print(f"ratio ours / TRL                                : {rate['ours'] / rate['trl']:.2f}x")


if __name__ == "__main__":
    main()
