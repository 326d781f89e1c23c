"""Exact values of parsed answers (``tasks.math_parse`` trees) and the size guards that keep every later step cheap.

``value(tree)`` walks the whole tree bottom-up with ``fractions.Fraction`` and returns the exact rational value
when the answer is a rational number by construction (integers, decimals, fractions, integer powers, perfect
roots, factorials), ``INF``/``NEG_INF`` for a bare infinity, and None otherwise (symbols, pi, irrational roots,
functions), in which case the symbolic worker decides. Every subtree is checked, rational or not:

* any exact intermediate whose numerator or denominator exceeds ``MAX_BITS`` bits (about 3,900 digits, under
  Python's 4,300-digit ``int``/``str`` limit) raises ``TooBig``, so ``9^{9^9}`` or ``(10^{100})^{1000}`` is
  refused before anything is built;
* a non-rational base raised to a constant exponent over ``MAX_SYMBOLIC_EXP`` (``(x+1)^{10^6}``), a root of an
  index over ``MAX_SYMBOLIC_EXP``, or a factorial over ``MAX_FACTORIAL`` raises ``TooBig``;
* division by zero, ``0^{-1}``, a factorial of a negative or fractional number, and arithmetic with infinity
  raise ``Undefined``.
Both count as "not equal" in the grader.
"""

from __future__ import annotations

import math
from fractions import Fraction

MAX_BITS = 13000
MAX_SYMBOLIC_EXP = 1000
MAX_FACTORIAL = 1000
INF, NEG_INF = "oo", "-oo"


class TooBig(ValueError):
    """An intermediate value is over a size guard."""


class Undefined(ValueError):
    """The expression has no value (1/0, (-1)!, infinity - infinity)."""


def _checked(v: Fraction) -> Fraction:
    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
        raise TooBig(f"a value over {MAX_BITS} bits")
    return v


def _exact_root(v: Fraction, n: int) -> Fraction | None:
    """The rational n-th root of v when there is one (real root for odd n), else None."""
    if v < 0:
        if n % 2 == 0:
            return None
        r = _exact_root(-v, n)
        return -r if r is not None else None
    out = []
    for x in (v.numerator, v.denominator):
        r = round(x ** (1.0 / n)) if x.bit_length() < 1000 else _iroot(x, n)
        r = next((c for c in (r - 1, r, r + 1) if c >= 0 and c ** n == x), None)
        if r is None:
            return None
        out.append(r)
    return Fraction(out[0], out[1])


def _iroot(x: int, n: int) -> int:
    lo, hi = 0, 1 << (x.bit_length() // n + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if mid ** n <= x else (lo, mid - 1)
    return lo


def _pow(a: Fraction, b: Fraction) -> Fraction | None:
    if a == 0 and b < 0:
        raise Undefined("0 to a negative power")
    if a in (0, 1) or b == 0:
        return Fraction(1) if b == 0 else a
    if a == -1 and b.denominator == 1:
        return Fraction(-1 if b.numerator % 2 else 1)
    if abs(b.numerator) > MAX_BITS or b.denominator > MAX_SYMBOLIC_EXP:
        raise TooBig("an exponent over the size guard")
    size = max(a.numerator.bit_length(), a.denominator.bit_length())
    if (size - 1) * abs(b.numerator) / b.denominator > MAX_BITS:
        raise TooBig(f"a power over {MAX_BITS} bits")
    r = a if b.denominator == 1 else _exact_root(a, b.denominator)
    return None if r is None else _checked(r ** b.numerator)


def _arith(op: str, a, b):
    if a is None or b is None:
        return None
    if isinstance(a, str) or isinstance(b, str):
        raise Undefined("arithmetic with infinity")
    if op == "div":
        if b == 0:
            raise Undefined("division by zero")
        return _checked(a / b)
    return _checked(a + b if op == "add" else a - b if op == "sub" else a * b)


def value(node: tuple):
    """Exact value of a parse tree: Fraction, INF / NEG_INF, or None (not rational by construction)."""
    kind = node[0]
    if kind == "num":
        return _checked(node[1])
    if kind == "sym":
        return None
    if kind == "const":
        return INF if node[1] == "oo" else None
    if kind in ("add", "sub", "mul", "div"):
        return _arith(kind, value(node[1]), value(node[2]))
    if kind == "neg":
        v = value(node[1])
        return {INF: NEG_INF, NEG_INF: INF}[v] if isinstance(v, str) else (None if v is None else -v)
    if kind == "abs":
        v = value(node[1])
        return INF if isinstance(v, str) else (None if v is None else abs(v))
    if kind == "pow":
        a, b = value(node[1]), value(node[2])
        if isinstance(a, str) or isinstance(b, str):
            raise Undefined("a power of infinity")
        if a is not None and b is not None:
            return _pow(a, b)
        if b is not None and (abs(b.numerator) > MAX_SYMBOLIC_EXP or b.denominator > MAX_SYMBOLIC_EXP):
            raise TooBig(f"a constant exponent over {MAX_SYMBOLIC_EXP}")
        return None
    if kind == "root":
        a, n = value(node[1]), value(node[2])
        if isinstance(a, str) or isinstance(n, str):
            raise Undefined("a root of infinity")
        if n is not None:
            if n.denominator != 1 or not 1 <= n <= MAX_SYMBOLIC_EXP:
                raise TooBig(f"a root index that is not a whole number from 1 to {MAX_SYMBOLIC_EXP}")
            if a is not None:
                return _pow(a, Fraction(1, int(n))) if a >= 0 else _exact_root(a, int(n))
        return None
    if kind == "fact":
        a = value(node[1])
        if a is None:
            return None
        if isinstance(a, str) or a.denominator != 1 or a < 0:
            raise Undefined("a factorial of a negative, fractional or infinite number")
        if a > MAX_FACTORIAL:
            raise TooBig(f"a factorial over {MAX_FACTORIAL}!")
        return Fraction(math.factorial(int(a)))
    if kind == "fn":
        if isinstance(value(node[2]), str):
            raise Undefined("a function of infinity")
        return None
    if kind == "log":
        for sub in node[1:]:
            if sub is not None and isinstance(value(sub), str):
                raise Undefined("a logarithm of infinity")
        return None
    raise ValueError(f"unknown node {kind!r}")


def to_json(node: tuple) -> list:
    """The tree as JSON-ready lists for the symbolic worker (a number as its numerator/denominator strings)."""
    if node is None:
        return None
    if node[0] == "num":
        return ["num", str(node[1].numerator), str(node[1].denominator)]
    return [node[0]] + [to_json(x) if isinstance(x, tuple) else x for x in node[1:]]
