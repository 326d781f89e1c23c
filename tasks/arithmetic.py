"""A generated math task: "What is a <op> b?" with ``digits``-digit operands, easy enough for a 135M model to
solve part of the time (runs/half_solved.md), so SCoRe has something to learn from. Graded by ``math_reward``."""

from __future__ import annotations

import random
from dataclasses import dataclass

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# seeds of the generated splits (disjoint draws; a repeated question is possible, as in any sample)
SEEDS = {"test": 0, "train": 1, "shots": 2}


def arithmetic_problems(n: int, seed: int = 0, digits: int = 2, op: str = "+") -> list[dict]:
    """``n`` synthetic problems "What is a <op> b?" with ``digits``-digit operands drawn with ``seed``."""
    if op not in OPERATIONS:
        raise ValueError(f"arithmetic_problems: op {op!r} not in {sorted(OPERATIONS)}")
    if digits < 1:
        raise ValueError(f"arithmetic_problems: digits must be >= 1, got {digits}")
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    out = []
    for i in range(n):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        c = OPERATIONS[op](a, b)
        out.append({"id": f"arithmetic{digits}{op}/{seed}/{i}", "task": "arithmetic", "problem": f"What is {a} {op} {b}?",
                    "answer": str(c), "solution": f"{a} {op} {b} = {c}."})
    return out


@dataclass(frozen=True)
class ArithmeticOptions:
    """``num_problems`` per generated split (train, test and shots, each drawn with its own seed),
    ``digits``-digit operands, the operation ``op`` (+, -, *)."""
    num_problems: int = 1000
    digits: int = 2
    op: str = "+"

    def __post_init__(self) -> None:
        if self.num_problems < 1:
            raise ValueError(f"arithmetic options: num_problems must be >= 1 (problems per generated split), got "
                             f"{self.num_problems}")
        if self.digits < 1:
            raise ValueError(f"arithmetic options: digits must be >= 1, got {self.digits}")
        if self.op not in OPERATIONS:
            raise ValueError(f"arithmetic options: op {self.op!r} not in {sorted(OPERATIONS)}")


def load_arithmetic(source: str, role: str, options: ArithmeticOptions) -> list[dict]:
    """The generated split ``source`` (``train``, ``test`` or ``shots``: a seed each, not a file)."""
    if source not in SEEDS:
        raise ValueError(f"arithmetic problems are generated: the split must be one of {sorted(SEEDS)}, got "
                         f"{source!r} (no file is read)")
    return arithmetic_problems(options.num_problems, SEEDS[source], options.digits, options.op)
