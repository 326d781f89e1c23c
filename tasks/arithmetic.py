"""A generated math task: "What is a <op> b?" with operands of ``min_digits`` to ``digits`` digits, easy enough for a
135M model to solve part of the time (runs/half_solved.md), so SCoRe has something to learn from. Graded by
``math_reward``."""

from __future__ import annotations

import random
from dataclasses import dataclass

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# seeds of the generated splits (disjoint draws only with ``disjoint``; else a repeated question is possible)
SEEDS = {"test": 0, "train": 1, "shots": 2}


def operand_range(digits: int, min_digits: int | None = None) -> tuple[int, int]:
    """[10^(min_digits - 1), 10^digits - 1]: e.g. 10-99 for two digits, 1-99 for one- and two-digit operands."""
    min_digits = digits if min_digits is None else min_digits
    if not 1 <= min_digits <= digits:
        raise ValueError(f"arithmetic: need 1 <= min_digits <= digits, got min_digits={min_digits}, digits={digits}")
    return 10 ** (min_digits - 1), 10 ** digits - 1


def arithmetic_problems(n: int, seed: int = 0, digits: int = 2, op: str = "+", min_digits: int | None = None,
                        exclude: frozenset = frozenset()) -> list[dict]:
    """``n`` synthetic problems "What is a <op> b?" with operands of ``min_digits`` (default: ``digits``) to
    ``digits`` digits drawn with ``seed``; a draw whose pair {a, b} is in ``exclude`` (either order) is skipped."""
    if op not in OPERATIONS:
        raise ValueError(f"arithmetic_problems: op {op!r} not in {sorted(OPERATIONS)}")
    if digits < 1:
        raise ValueError(f"arithmetic_problems: digits must be >= 1, got {digits}")
    lo, hi = operand_range(digits, min_digits)
    if exclude and all(frozenset((a, b)) in exclude for a in range(lo, hi + 1) for b in range(a, hi + 1)):
        raise ValueError(f"arithmetic_problems: every operand pair in [{lo}, {hi}] is excluded")
    name = f"arithmetic{digits}{op}" if min_digits in (None, digits) else f"arithmetic{min_digits}-{digits}{op}"
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if frozenset((a, b)) in exclude:
            continue
        c = OPERATIONS[op](a, b)
        out.append({"id": f"{name}/{seed}/{len(out)}", "task": "arithmetic", "problem": f"What is {a} {op} {b}?",
                    "answer": str(c), "solution": f"{a} {op} {b} = {c}."})
    return out


@dataclass(frozen=True)
class ArithmeticOptions:
    """``num_problems`` per generated split (train, test and shots, each drawn with its own seed),
    ``digits``-digit operands (from ``min_digits`` digits when set: 1 with ``digits`` 2 is 1-99), the operation
    ``op`` (+, -, *); ``disjoint``: the train and shots splits skip every pair of operands of the test split (in
    either order), so no held-out problem is ever trained on or shown."""
    num_problems: int = 1000
    digits: int = 2
    op: str = "+"
    min_digits: int | None = None
    disjoint: bool = False

    def __post_init__(self) -> None:
        if self.num_problems < 1:
            raise ValueError(f"arithmetic options: num_problems must be >= 1 (problems per generated split), got "
                             f"{self.num_problems}")
        if self.digits < 1:
            raise ValueError(f"arithmetic options: digits must be >= 1, got {self.digits}")
        if self.min_digits is not None and not 1 <= self.min_digits <= self.digits:
            raise ValueError(f"arithmetic options: min_digits must be in [1, digits={self.digits}], got "
                             f"{self.min_digits}")
        if self.op not in OPERATIONS:
            raise ValueError(f"arithmetic options: op {self.op!r} not in {sorted(OPERATIONS)}")


def load_arithmetic(source: str, role: str, options: ArithmeticOptions) -> list[dict]:
    """The generated split ``source`` (``train``, ``test`` or ``shots``: a seed each, not a file)."""
    if source not in SEEDS:
        raise ValueError(f"arithmetic problems are generated: the split must be one of {sorted(SEEDS)}, got "
                         f"{source!r} (no file is read)")
    o = options
    exclude = frozenset()
    if o.disjoint and source != "test":
        test = arithmetic_problems(o.num_problems, SEEDS["test"], o.digits, o.op, o.min_digits)
        exclude = frozenset(frozenset(map(int, p["problem"][len("What is "):-1].split(f" {o.op} "))) for p in test)
    return arithmetic_problems(o.num_problems, SEEDS[source], o.digits, o.op, o.min_digits, exclude)
