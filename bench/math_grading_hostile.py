"""1,000 adversarial answers through ``math_reward`` exactly as the trainer calls it: how long the batch takes,
the slowest sample, what the worker pool did, and how many got reward 1 (must be 0).

    .venv/bin/python bench/math_grading_hostile.py [--n 1000] [--slow 10] [--workers 2] [--timeout 5]

Answers (boxed in a response, against MATH-500 golds drawn with a fixed seed):
  payload  Python that would run code if evaluated (imports, lambdas, dunder access, lying objects);
  size     towers (9^{9^9}), numbers of 5,000 digits, long repeating decimals for the last-number fallback,
           deep nesting, 4,000 unclosed \\boxed{, huge factorials and roots;
  near     decimals of irrational golds to 10 and 20 digits, off-by-one integers, 2^{100}+1 style misses;
  junk     random strings over the grammar's alphabet (operators, commands, digits, letters, braces);
  slow     true identities whose proof runs past the timeout ((x+k)^{300}(x-k)^{300} = (x^2-k^2)^{300}): each
           costs one full timeout on one worker plus that worker's restart, so the batch is bounded by
           (slow / workers) x (timeout + restart) plus the rest.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.math_grading import GRADING_ERRORS, extract_answer_math, last_boxed, math_reward  # noqa: E402
from tasks.math_pool import MathPool  # noqa: E402

PAYLOADS = ["__import__('os').system('id')", "__import__('builtins').open('/tmp/x','w').write('1')",
            "(lambda: 0)()", "().__class__.__base__.__subclasses__()", "exec('import os')",
            "type('Z',(),{'__sub__':lambda s,o:0})()", "eval('1')", "globals()", "[x for x in ()]",
            "getattr(__builtins__,'open')", "Symbol('x').__class__.__mro__", "\\text{__import__('os')}"]
SIZES = ["9^{9^9}", "9" * 5000, "2^{2^{2^{2^{2^{2}}}}}", "(x+1)^{10^{6}}", "(" * 300 + "1" + ")" * 300,
         "10^{10^{10}}", "(1000!)^{2}", "1e99999", "\\sqrt[10^{9}]{2}", "-" * 6000 + "1", "\\frac\\1",
         "2^{12000}\\cdot2^{12000}\\cdot2^{12000}\\cdot x", "\\sin(10^{900})", "x^{x^{x^{x^{x^{x}}}}}"]
ALPHABET = list("0123456789+-*/^_(){}[]|!.,=xyzabe ") + ["\\frac", "\\sqrt", "\\pi", "\\infty", "\\cdot",
                                                       "\\sin", "\\log", "\\{", "\\}", "\\pm", "\\cup"]


def hostile(n: int, slow: int, golds: list[str], rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, response, gold) triples."""
    out = []
    for k in range(slow):
        out.append(("slow", f"\\boxed{{(x+{k + 1})^{{300}}(x-{k + 1})^{{300}}}}", f"(x^2-{(k + 1) ** 2})^{{300}}"))
    while len(out) < n:
        gold = rng.choice(golds)
        kind = rng.choice(["payload", "size", "near", "junk"])
        if kind == "payload":
            ans = rng.choice(PAYLOADS)
        elif kind == "size":
            ans = rng.choice(SIZES + ["UNCLOSED", "DECIMAL"])
            if ans == "UNCLOSED":
                out.append((kind, "\\boxed{" * 4000 + "7", gold))
                continue
            if ans == "DECIMAL":
                out.append((kind, "so it is 0." + "3" * rng.randint(100, 20000), gold))
                continue
        elif kind == "near":
            ans = rng.choice(["1.4142135623", "1.41421356237309504880", "3.1415926535", "0.3333333333",
                              "2^{100}+1", "1000000000001", f"{gold}+1", f"2({gold})", f"-({gold})"])
        else:
            ans = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(8, 60)))
        out.append((kind, f"The answer is $\\boxed{{{ans}}}$.", gold))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    golds = [json.loads(line)["answer"] for line in open(ROOT / "data/math500/test.jsonl")]
    # near misses of a gold are wrong by construction only when the gold is not 0 (2*0 = -0 = 0)
    golds = [g for g in golds if g.strip() not in ("0", "-0")]
    items = hostile(args.n, args.slow, golds, random.Random(0))
    pool = MathPool(size=args.workers)
    start = time.monotonic()
    pool.equal(["sym", "x"], ["sym", "x"], ["exact"], timeout=120.0)
    started = time.monotonic() - start
    start = time.monotonic()
    rewards = math_reward([r for _, r, _ in items], [{"answer": g} for _, _, g in items], timeout=args.timeout,
                          pool=pool)
    wall = time.monotonic() - start
    per_kind: dict[str, list[float]] = {}
    for (kind, _, _), r in zip(items, rewards):
        per_kind.setdefault(kind, []).append(r)
    print(f"{len(items)} adversarial answers, {args.workers} workers, timeout {args.timeout} s per sample")
    print(f"first worker start {started:.1f} s (not counted); batch wall time {wall:.1f} s; "
          f"slow items alone: (slow / workers) x (timeout + a restart) = {args.slow / args.workers:.0f} x "
          f"({args.timeout:.0f} s + ~2 s)")
    for kind, rs in sorted(per_kind.items()):
        print(f"  {kind:<8} {len(rs):>4} answers, reward 1 on {int(sum(rs))}")
    unexplained = 0
    for (kind, response, gold), r in zip(items, rewards):
        if r:  # only a junk string whose last number happens to be the gold may pass (the last-number fallback)
            pred = extract_answer_math(response)
            fallback = kind == "junk" and last_boxed(response) is None and pred.strip() == gold.strip()
            unexplained += not fallback
            print(f"  reward 1 ({'last-number fallback' if fallback else 'UNEXPLAINED'}): {kind} "
                  f"{response[:100]!r} -> {pred!r} for gold {gold!r}")
    print(f"pool: {pool.stats}; grading errors (reward 0): {dict(GRADING_ERRORS)}")
    pool.close()
    return 0 if unexplained == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
