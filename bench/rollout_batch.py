"""Generated tokens/s of our rollout (rl.rollout, one turn, sampling) against the batch size, the torch threads
and the LM precision, with model.generate on the same batch as the floor of what the stack gives; and, with
--profile, where a rollout's time goes (cProfile, grouped: the model's forward, sampling, stop-string checks,
cache handling, the rest of generate, ours).

    python bench/rollout_batch.py --rows 8 16 32 64 --threads 1 2 --precision fp32 --max-new-tokens 32
    python bench/rollout_batch.py --rows 16 --threads 2 --profile
    python bench/rollout_batch.py --rows 32 --threads 2 --variants dynamic static static+compile

Prompts: SCoRe's arithmetic problems (tasks.problem_format.render_problem), each repeated --group-size times;
every row generates exactly --max-new-tokens tokens (EOS and stop strings suppressed), so both sides count
the same tokens. Sampling at temperature 0.7 with a fixed seed. The CPU flags and the load average are printed:
compare numbers only within one run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.quiet import quiet_warnings  # noqa: E402

quiet_warnings()  # before the imports that print (bitsandbytes logs at import)

import torch  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

from bench.machine import describe  # noqa: E402
from training.models import load_causal_lm  # noqa: E402
from training.precision import lm_autocast, set_precision  # noqa: E402
from generation.tokens import pad  # noqa: E402
from rl.envs import SingleTurn  # noqa: E402
from rl.rollout import rollout  # noqa: E402
from tasks.arithmetic import arithmetic_problems  # noqa: E402
from tasks.problem_format import render_problem  # noqa: E402


class NoStop(LogitsProcessor):
    """EOS never sampled: every row generates the full budget (the same token count on every side)."""

    def __init__(self, eos: int):
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[:, self.eos] = float("-inf")
        return scores


def prompts_for(tokenizer, rows: int, group: int) -> list[str]:
    problems = arithmetic_problems(max(1, rows // group), seed=0)
    return [render_problem(tokenizer, p, "arithmetic") for p in problems for _ in range(group)][:rows]


def ours(model, tok, prompts, n_new, kw):
    r = rollout(model, tok, prompts, SingleTurn(), max_turn_tokens=n_new, max_response_tokens=n_new, temperature=0.7,
                compute_logprobs=False, generation_kwargs=kw)
    return int(r.response_lengths.sum())


@torch.no_grad()
def plain_generate(model, tok, prompts, n_new, kw):
    ids, am = pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id, "left")
    with lm_autocast(model):
        out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=n_new, do_sample=True, temperature=0.7,
                             top_p=None, top_k=None, pad_token_id=tok.pad_token_id, **kw)
    return (out.shape[1] - ids.shape[1]) * len(prompts)


def variant_kwargs(name: str) -> dict:
    """model.generate options of a KV-cache variant: transformers' dynamic cache (the default), its static cache
    (preallocated to the full length, no growth), and the static cache with the decode step compiled by
    torch.compile (inductor; on CPU transformers compiles only when told to, ``_compile_all_devices``)."""
    if name == "dynamic":
        return {}
    if name == "static":
        return {"cache_implementation": "static", "disable_compile": True}
    if name == "static+compile":
        from transformers import CompileConfig
        config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
        config._compile_all_devices = True
        return {"cache_implementation": "static", "compile_config": config}
    raise ValueError(f"unknown variant {name!r}; expected dynamic, static or static+compile")


def rate(fn, *args) -> float:
    torch.manual_seed(0)
    t = time.perf_counter()
    n = fn(*args)
    return n / (time.perf_counter() - t)


def profile(model, tok, prompts, n_new, kw) -> None:
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    ours(model, tok, prompts, n_new, kw)
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof)
    # self time (no nesting, so the parts add up) of the calls that matter, by where they are
    parts = {"linear layers (torch linear)": lambda f, fn: fn == "<built-in method torch._C._nn.linear>",
             "attention (sdpa)": lambda f, fn: "scaled_dot_product_attention" in fn,
             "KV cache growth (torch.cat)": lambda f, fn: fn == "<built-in method torch.cat>",
             "sampling (torch.multinomial, softmax)": lambda f, fn: fn in ("<built-in method torch.multinomial>",
                                                                           "<built-in method torch.softmax>"),
             "other torch kernels": lambda f, fn: f == "~" and fn.startswith(("<built-in method torch",
                                                                              "<method ")),
             "ours (rl/, generation/)": lambda f, fn: "/rl/" in f or "/generation/" in f,
             "transformers' Python (model, generate, cache)": lambda f, fn: "transformers" in f,
             "tokenizer": lambda f, fn: "tokenizers" in f or "tokenization" in f}
    seen, rows = set(), []
    for name, match in parts.items():
        keys = [k for k in stats.stats if k not in seen and match(k[0], k[2])]
        seen.update(keys)
        rows.append((name, sum(stats.stats[k][2] for k in keys)))
    rows.append(("everything else", sum(v[2] for k, v in stats.stats.items() if k not in seen)))
    print(f"profile: {len(prompts)} rows x {n_new} tokens, {total:.2f} s wall; self time by part:")
    for name, t in rows:
        print(f"  {name:48s} {t:7.2f} s  {100 * t / total:5.1f}%")
    stats.sort_stats("tottime").print_stats(12)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--variants", nargs="+", default=None, help="instead of the batch table: model.generate with "
                    "each KV-cache variant (dynamic, static, static+compile) at the first --rows, with ours")
    args = ap.parse_args(argv)
    model, tok = load_causal_lm(args.model, device="cpu")
    model.eval()
    kw = {"logits_processor": LogitsProcessorList([NoStop(tok.eos_token_id)])}
    print(describe(), flush=True)
    if args.profile:
        torch.set_num_threads(args.threads[0])
        set_precision(model, args.precision[0])
        ours(model, tok, prompts_for(tok, 4, 4), 4, kw)
        return profile(model, tok, prompts_for(tok, args.rows[0], args.group_size), args.max_new_tokens, kw)
    if args.variants:
        torch.set_num_threads(args.threads[0])
        set_precision(model, args.precision[0])
        prompts = prompts_for(tok, args.rows[0], args.group_size)
        print(f"{args.rows[0]} rows x {args.max_new_tokens} tokens, {args.threads[0]} threads, {args.precision[0]}; "
              f"each variant: one warm-up call (compiles), then two timed calls")
        for name in ["ours"] + args.variants:
            fn = ours if name == "ours" else plain_generate
            extra = kw if name == "ours" else {**kw, **variant_kwargs(name)}
            t = time.perf_counter()
            fn(model, tok, prompts, args.max_new_tokens, extra)
            warm = time.perf_counter() - t
            rates = [rate(fn, model, tok, prompts, args.max_new_tokens, extra) for _ in range(2)]
            print(f"  {name:16s} warm-up {warm:7.1f} s   {rates[0]:6.1f} {rates[1]:6.1f} tokens/s   load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
        return
    print(f"{'precision':9s} {'threads':>7s} {'rows':>5s} {'ours tok/s':>10s} {'generate tok/s':>14s} {'ratio':>6s}  load")
    for precision in args.precision:
        set_precision(model, precision)
        for threads in args.threads:
            torch.set_num_threads(threads)
            ours(model, tok, prompts_for(tok, 4, 4), 4, kw)  # warm-up
            for rows in args.rows:
                prompts = prompts_for(tok, rows, args.group_size)
                a = rate(ours, model, tok, prompts, args.max_new_tokens, kw)
                b = rate(plain_generate, model, tok, prompts, args.max_new_tokens, kw)
                print(f"{precision:9s} {threads:7d} {rows:5d} {a:10.1f} {b:14.1f} {a / b:6.2f}  "
                      f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
