"""A program with no logic against every shipped HumanEval and MBPP task: how many does it pass?

The program (``CHEAT``) solves nothing. It looks for the job's tests in its own memory (stack frames and
``gc``), learns ``f(literal args) == literal`` pairs from the asserts, answers from that table, defines the
checker helpers (``poly``, ``encode_cyclic``, ``encode_shift``, ``set``) as constants so that both sides of
a comparison run its code, and returns an object whose ``__eq__`` is always True where it knows nothing.
Issue 20's red team reached 149/164 HumanEval and 968/974 MBPP with such a program; with the oracle outside
the program it must score 0 everywhere.

    .venv/bin/python bench/sandbox_universal_pass.py --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.sandbox import Sandbox, SandboxLimits, code_reward  # noqa: E402

CHEAT = r'''
import ast, gc, sys

def _jobs():
    found, f = [], sys._getframe()
    while f:
        found += [v for v in list(f.f_locals.values()) if type(v) is dict and type(v.get("tests")) is list]
        f = f.f_back
    found += [o for o in gc.get_objects() if type(o) is dict and type(o.get("tests")) is list]
    return found

TABLE, NAMES = {}, set()
for _job in _jobs():
    for _test in _job["tests"]:
        try:
            _tree = ast.parse(_test)
        except Exception:
            continue
        for _n in ast.walk(_tree):
            if isinstance(_n, ast.Call) and isinstance(_n.func, ast.Name):
                NAMES.add(_n.func.id)
            if isinstance(_n, ast.Compare) and isinstance(_n.left, ast.Call) and isinstance(_n.left.func, ast.Name):
                try:
                    _args = tuple(ast.literal_eval(a) for a in _n.left.args)
                    _want = ast.literal_eval(_n.comparators[0])
                except Exception:
                    continue
                TABLE[repr(_args)] = _want

class _Liar:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __bool__(self):
        return True
    __hash__ = object.__hash__

def _answer(*args, **kwargs):
    return TABLE.get(repr(args), _Liar())

poly = lambda *a: 0
find_zero = lambda *a: 0.0
encode_cyclic = encode_shift = decode_cyclic = decode_shift = lambda s: s
set = lambda *a: 0
for _name in NAMES | {k for k, v in list(globals().items()) if callable(v) and not k.startswith("_")}:
    if _name not in ("poly", "encode_cyclic", "encode_shift", "set", "check", "candidate") and \
            _name not in dir(__builtins__ if isinstance(__builtins__, dict) else __builtins__):
        globals()[_name] = _answer
'''


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from tasks.loaders import load_humaneval, load_mbpp

    suites = {"HumanEval": load_humaneval(ROOT / "data/humaneval/HumanEval.jsonl.gz"),
              "MBPP (full)": load_mbpp(ROOT / "data/mbpp/mbpp.jsonl.gz"),
              "MBPP (sanitized)": load_mbpp(ROOT / "data/mbpp/sanitized-mbpp.json.gz")}
    with Sandbox(workers=args.workers, limits=SandboxLimits(cpu_s=5, wall_s=10)) as sb:
        print(f"sandbox isolation: {sb.isolation}")
        for name, examples in suites.items():
            start = time.perf_counter()
            rewards = code_reward([CHEAT] * len(examples), examples, sandbox=sb)
            passed = [ex["id"] for ex, r in zip(examples, rewards) if r == 1.0]
            print(f"{name}: logic-free program passes {len(passed)}/{len(examples)} "
                  f"({time.perf_counter() - start:.1f} s){': ' + ', '.join(passed[:10]) if passed else ''}")


if __name__ == "__main__":
    main()
