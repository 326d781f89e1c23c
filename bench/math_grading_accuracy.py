"""Accuracy of the math grader on the shipped data: every gold answer must grade as equal to itself, and to
rewritings of it that mean the same value. Run against the current grader, or against another grader file
(e.g. the previous one, ``git show <rev>:tasks/math_grading.py > /tmp/old.py``) to compare:

    .venv/bin/python bench/math_grading_accuracy.py [--grader /tmp/old.py] [--show 20]

Rewritings (string transforms of the gold, independent of either grader):
  typeset  \\frac -> \\dfrac, a space after each comma, \\left( \\right) around an outer parenthesis;
  form     a whole number as 1\\u2009234 (>= 1000) or with U+2212 (negative) or as n.0; \\frac{a}{b} -> a/b;
           a list of solutions reversed; a \\pm b -> a+b, a-b; a scalar expression wrapped as 1\\cdot(...);
  boxed    the gold inside a sentence, "so the answer is $\\boxed{...}$." (extraction from a response).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_grader(path: str | None):
    if path is None:
        import tasks.math_grading as g
        return g
    sys.path.insert(0, str(Path(path).resolve().parent))  # importable by name: its worker may be spawned
    return importlib.import_module(Path(path).stem)


def typeset(g: str) -> str:
    s = g.replace("\\frac", "\\dfrac").replace(",", ", ")
    if s.startswith("(") and s.endswith(")"):
        s = "\\left(" + s[1:-1] + "\\right)"
    return s


def form(g: str) -> str:
    s = g.strip()
    if any(t in s for t in ("begin", "text", "mbox", "\\in", "\\!")) or re.fullmatch(r"\d{1,3}(,\d{3})+", s):
        return s  # matrices, units, words, thousands: no rewrite of this kind
    if re.fullmatch(r"-?\d+", s):
        n = int(s)
        if abs(n) >= 1000:
            return f"{n:,}".replace(",", "\u2009")
        return f"\u2212{-n}" if n < 0 else f"{n}.0"
    if re.fullmatch(r"-?\\frac\{\d+\}\{\d+\}", s):
        return re.sub(r"\\frac\{(\d+)\}\{(\d+)\}", r"\1/\2", s)
    if s.count("\\pm") == 1 and "," not in s:
        a, b = s.split("\\pm")
        return f"{a}+{b}, {a}-{b}" if a.strip() else f"{b}, -{b}"
    if "," in s and not re.match(r"^[\(\[\\]", s):
        return ", ".join(reversed([p.strip() for p in s.split(",")]))
    if re.fullmatch(r"[0-9a-z\\{}^+\-*/ ]+", s) and "text" not in s and "=" not in s:
        return f"1\\cdot({s})"
    return s


def boxed(g: str) -> str:
    return f"Putting it together, so the answer is $\\boxed{{{g}}}$."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grader", help="a grader file to load instead of tasks/math_grading.py")
    ap.add_argument("--show", type=int, default=10, help="print up to this many failures per check")
    args = ap.parse_args(argv)
    g = load_grader(args.grader)
    gsm = [json.loads(line) for line in open(ROOT / "data/gsm8k/test.jsonl")]
    math500 = [json.loads(line) for line in open(ROOT / "data/math500/test.jsonl")]
    gsm_gold = [r["answer"].split("####")[-1].strip().replace(",", "") for r in gsm]
    checks = {
        "gsm8k gold = itself": [(a, a) for a in gsm_gold],
        "gsm8k solution's #### = gold": [(g.extract_answer_math(r["answer"]), a) for r, a in zip(gsm, gsm_gold)],
        "gsm8k form rewrite = gold": [(form(a), a) for a in gsm_gold],
        "math500 gold = itself": [(r["answer"], r["answer"]) for r in math500],
        "math500 solution's box = gold": [(g.extract_answer_math(r["solution"], fallback_last_number=False),
                                           r["answer"]) for r in math500],
        "math500 typeset rewrite = gold": [(typeset(r["answer"]), r["answer"]) for r in math500],
        "math500 form rewrite = gold": [(form(r["answer"]), r["answer"]) for r in math500],
        "math500 boxed in a response = gold": [(g.extract_answer_math(boxed(r["answer"])), r["answer"])
                                               for r in math500],
    }
    start = time.time()
    for name, pairs in checks.items():
        t = time.time()
        bad = [(p, a) for p, a in pairs if not g.is_equiv(p, a)]
        print(f"{name:<40} {len(pairs) - len(bad):>5} / {len(pairs)}   ({time.time() - t:.1f} s)")
        for p, a in bad[:args.show]:
            print(f"    not equal: {p!r}  vs gold {a!r}")
    print(f"total {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
