"""Math answer checking: extract the final answer of a response and decide whether it equals the gold answer.

The reward and the evaluation metric are the same function (STYLE.md habit 3): ``math_reward`` is
``is_equiv(extract_answer_math(response), example["answer"])``. The equality rule, with examples (each one a
test), is in docs/math_grading.md. In short:

* both answers are normalised as MATH's grader does (``tasks.math_extract.normalize``); equal strings are equal;
* structure first: matrices elementwise, unions and sets order-free (``\\{1,2\\}`` equals the list ``1, 2``),
  tuples and intervals in order with the same brackets, ``a \\pm b`` as two answers, equations ``L = R`` as
  ``L - R`` up to sign, words case-free;
* each scalar is *parsed* (``tasks.math_parse``: a stated grammar, never ``eval``/``sympify``) into a tree and
  compared by ONE rule: **exact equality**, decimals read as exact fractions (``0.3333333333`` is
  3333333333/10^10, not 1/3), with one tolerance: when the gold is written as a decimal with k places, an
  answer that rounds to it (|a - g| <= 10^-k / 2) is equal. Rational trees are compared in this process with
  ``Fraction``; anything else (pi, roots, functions, variables) by a proof in a limited worker process
  (``tasks.math_pool``);
* size guards (``tasks.math_parse``, ``tasks.math_value``) refuse towers, huge numbers and deep nesting, and every
  check of one sample shares a deadline: over a guard or out of time is "not equal", never an exception.

``math_reward`` grades a batch in parallel (one thread per worker of the pool); any exception while grading a
sample makes its reward 0, counted in ``GRADING_ERRORS`` and logged.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

from tasks.math_extract import extract_answer_math, last_boxed, normalize  # noqa: F401 - the public names
from tasks.math_parse import MAX_CHARS, ParseError, parse
from tasks.math_pool import MathPool, default_pool
from tasks.math_value import TooBig, Undefined, to_json, value

log = logging.getLogger(__name__)
GRADING_ERRORS: collections.Counter = collections.Counter()  # exception type -> samples graded 0 because of it
# samples judged "not equal" because time ran out, by which limit: "sample_deadline" (``timeout``) or
# "batch_budget" (``math_reward``'s ``budget_s``). Such a reward depends on the machine's load: log these.
GRADING_TIMEOUTS: collections.Counter = collections.Counter()
DEFAULT_BUDGET_S = 60.0
_ERRORS_LOCK = threading.Lock()


class _OutOfTime(Exception):
    pass


class _Ctx:
    """One comparison's deadline, the batch's deadline (``math_reward``'s ``budget_s``; only symbolic checks use
    it) and the pool; ``reason`` says which one ran out (the result is then not cached)."""

    def __init__(self, timeout: float, pool: MathPool | None, batch_deadline: float | None = None):
        self.deadline, self.pool, self.batch_deadline = time.monotonic() + timeout, pool, batch_deadline
        self.reason: str | None = None

    def _out(self, reason: str):
        self.reason = reason
        raise _OutOfTime(reason)

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        return left if left > 0 else self._out("sample_deadline")

    def left_for_symbolic(self) -> tuple[float, str]:
        """Seconds a symbolic check may take now, and which limit that is."""
        left = self.left()
        if self.batch_deadline is not None:
            batch_left = self.batch_deadline - time.monotonic()
            if batch_left <= 0:
                self._out("batch_budget")
            if batch_left < left:
                return batch_left, "batch_budget"
        return left, "sample_deadline"


# -- structure --------------------------------------------------------------------------------------------------


def _split_top(s: str, seps: Sequence[str] = (",",)) -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        depth += c in "({["
        depth -= c in ")}]"
        sep = next((sep for sep in seps if s.startswith(sep, i)), None) if depth == 0 else None
        if sep is not None:
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _brackets(s: str) -> tuple[str, str, str] | None:
    """('(', inner, ']') when s is one bracketed group like (1,2] or \\{1,2\\}; None otherwise."""
    for open_, close_ in (("\\{", "\\}"), ("(", ")"), ("[", "]"), ("(", "]"), ("[", ")")):
        if s.startswith(open_) and s.endswith(close_) and len(s) >= len(open_) + len(close_):
            inner, depth = s[len(open_):len(s) - len(close_)], 0
            for c in inner:
                depth += c in "({["
                depth -= c in ")}]"
                if depth < 0:
                    return None
            if depth == 0:
                return open_, inner, close_
    return None


def _expand_pm(items: list[str]) -> list[str]:
    out = []
    for s in items:
        if s.count("\\pm") == 1:
            a, b = s.split("\\pm")
            out.extend([f"{a}+{b}", f"{a}-{b}"] if a else [b, f"-{b}"])
        else:
            out.append(s)
    return out


def _matrix(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", s)
    if not m:
        return None
    return [r.split("&") for r in re.split(r"\\\\", m.group(1)) if r != ""]


def _unordered_equal(a: list[str], b: list[str], ctx: _Ctx) -> bool:
    if len(a) != len(b):
        return False
    rest = list(b)
    for x in a:
        k = next((k for k, y in enumerate(rest) if _equiv_normal(x, y, ctx)), None)
        if k is None:
            return False
        rest.pop(k)
    return True


def _equiv_normal(a: str, b: str, ctx: _Ctx) -> bool:
    """``a`` (prediction) equals ``b`` (gold), both normalised: structure, then the scalar rule."""
    ctx.left()
    if a == b:
        return True
    if not a or not b:
        return False
    ma, mb = _matrix(a), _matrix(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(len(ra) == len(rb) and all(_equiv_normal(x, y, ctx) for x, y in zip(ra, rb))
                        for ra, rb in zip(ma, mb)))
    ua, ub = _split_top(a, ("\\cup",)), _split_top(b, ("\\cup",))
    if len(ua) > 1 or len(ub) > 1:  # unions of intervals / sets: the same pieces in any order
        return _unordered_equal(ua, ub, ctx)
    ba, bb = _brackets(a), _brackets(b)
    if ba is not None and ba[0] == "\\{" and (bb is None or bb[0] == "\\{"):  # a set: order-free, like a list
        return _unordered_equal(_expand_pm(_split_top(ba[1])), _expand_pm(_split_top(bb[1] if bb else b)), ctx)
    if bb is not None and bb[0] == "\\{" and ba is None:
        return _unordered_equal(_expand_pm(_split_top(a)), _expand_pm(_split_top(bb[1])), ctx)
    if ba is not None and bb is not None:
        ea, eb = _split_top(ba[1]), _split_top(bb[1])
        if len(ea) > 1 or len(eb) > 1:  # tuples / intervals: same brackets, elementwise in order
            return (ba[0], ba[2]) == (bb[0], bb[2]) and len(ea) == len(eb) \
                and all(_equiv_normal(x, y, ctx) for x, y in zip(ea, eb))
    ea, eb = _split_top(a), _split_top(b)
    if len(ea) > 1 or len(eb) > 1 or "\\pm" in a or "\\pm" in b:  # "1, -2": a list of solutions, order-free
        xa, xb = _expand_pm(ea), _expand_pm(eb)
        if any("\\pm" in x for x in xa + xb):  # two \pm in one item: not read (and no endless re-expansion)
            return False
        return _unordered_equal(xa, xb, ctx)
    return _scalar_equal(a, b, ctx)


# -- scalars ----------------------------------------------------------------------------------------------------


def _is_word(s: str) -> bool:
    """A word (``east``, ``Evelyn``, ``well-known``) or a choice letter; ``p-q`` or ``x`` is an expression."""
    return bool(re.fullmatch(r"[A-Za-z]{2,}(?:[-'][A-Za-z]{2,})*|[A-E]", s)) or s == "\\emptyset"


_PARSED: dict[str, tuple] = {}
_CACHED_CHARS = 200


def _parsed(s: str) -> tuple:
    """(tree, exact value) of a normalised scalar, or (None, reason) when it is not one (cached)."""
    out = _PARSED.get(s)
    if out is None:
        try:
            tree = parse(s)
            out = (tree, value(tree))
        except (ParseError, TooBig, Undefined, RecursionError) as e:
            out = (None, type(e).__name__)
        if len(s) <= _CACHED_CHARS:  # only short strings: a flood of long hostile answers must not fill memory
            if len(_PARSED) > 50_000:
                _PARSED.clear()
            _PARSED[s] = out
    return out


_DECIMAL = re.compile(r"-?\d*\.(\d+)")


def _scalar_equal(a: str, b: str, ctx: _Ctx) -> bool:
    if _is_word(a) or _is_word(b):
        return a.lower() == b.lower()
    sa, sb = _split_top(a, ("=",)), _split_top(b, ("=",))
    if len(sa) > 2 or len(sb) > 2 or len(sa) != len(sb):
        return False
    if len(sa) == 2:  # equations: L1 - R1 = +-(L2 - R2)
        (ta, _), (tb, _) = _parsed(f"({sa[0]})-({sa[1]})"), _parsed(f"({sb[0]})-({sb[1]})")
        if ta is None or tb is None:
            return False
        return _symbolic(ta, tb, ["exact"], ctx) or _symbolic(("neg", ta), tb, ["exact"], ctx)
    (ta, va), (tb, vb) = _parsed(a), _parsed(b)
    if ta is None or tb is None:
        return False
    places = _DECIMAL.fullmatch(b)
    if places:  # the gold is a decimal: an answer that rounds to it at the gold's precision is equal
        k = len(places.group(1))
        if isinstance(va, Fraction):
            return abs(va - vb) <= Fraction(1, 2 * 10 ** k)
        if va is not None:
            return False
        return _symbolic(ta, tb, ["round", k, str(vb.numerator), str(vb.denominator)], ctx)
    if va is not None and vb is not None:
        return va == vb  # exact: Fractions, or the same infinity
    if isinstance(va, str) or isinstance(vb, str):
        return False  # infinity against an expression that is not infinity
    return _symbolic(ta, tb, ["exact"], ctx)


def _symbolic(ta: tuple, tb: tuple, mode: list, ctx: _Ctx) -> bool:
    if ctx.pool is None:
        return False
    left, limit = ctx.left_for_symbolic()
    result = ctx.pool.equal(to_json(ta), to_json(tb), mode, left)
    if result is None:  # no answer in time
        ctx._out(limit)
    return result


# -- the check and the reward -----------------------------------------------------------------------------------

_CACHE: dict[tuple[str, str], bool] = {}


def is_equiv(pred: str | None, gold: str, timeout: float = 5.0, pool: MathPool | None = None,
             batch_deadline: float | None = None) -> bool:
    """True when the predicted final answer equals the gold one by the rule of docs/math_grading.md, decided
    within ``timeout`` seconds (all checks of this pair together; out of time is False, counted in
    ``GRADING_TIMEOUTS``). ``pool``: the symbolic workers (default: the process-wide
    ``tasks.math_pool.default_pool()``); ``batch_deadline``: a ``time.monotonic()`` after which no symbolic check
    starts or runs (``math_reward``'s budget)."""
    if pred is None:
        return False
    if not isinstance(gold, str):
        raise TypeError(f"gold answer must be a string, got {type(gold).__name__}")
    pred = str(pred)
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
        return False
    a, b = normalize(pred), normalize(gold)
    if (a, b) in _CACHE:
        return _CACHE[(a, b)]
    ctx = _Ctx(timeout, pool or default_pool(), batch_deadline)
    try:
        result = _equiv_normal(a, b, ctx)
    except _OutOfTime:
        with _ERRORS_LOCK:
            GRADING_TIMEOUTS[ctx.reason] += 1
        return False
    if ctx.reason is None and len(a) + len(b) <= 2 * _CACHED_CHARS:
        if len(_CACHE) > 50_000:
            _CACHE.clear()
        _CACHE[(a, b)] = result
    return result


def _grade_one(response, example: dict, fallback_last_number: bool, timeout: float, pool: MathPool,
               batch_deadline: float | None) -> float:
    try:
        pred = extract_answer_math(response, fallback_last_number=fallback_last_number)
        return 1.0 if is_equiv(pred, example["answer"], timeout, pool, batch_deadline) else 0.0
    except Exception as e:  # noqa: BLE001 - a sample must never raise into the trainer
        with _ERRORS_LOCK:
            GRADING_ERRORS[type(e).__name__] += 1
            total = sum(GRADING_ERRORS.values())
        if total <= 10 or total % 1000 == 0:  # the first ten, then every thousandth: a flood must not drown the log
            log.warning("math_reward: grading raised %s: %.200s (reward 0; %d so far)", type(e).__name__, e, total)
        return 0.0


def math_reward(responses: Sequence[str], examples: Sequence[dict], fallback_last_number: bool = True,
                timeout: float = 5.0, pool: MathPool | None = None,
                budget_s: float | None = DEFAULT_BUDGET_S) -> list[float]:
    """r = 1 if the response's final answer (``extract_answer_math``) is equivalent to ``example["answer"]``
    (``is_equiv``), else 0. The same check is the accuracy metric of evaluation.

    Time: each sample's checks share ``timeout`` seconds; the batch's symbolic checks share ``budget_s``
    seconds of wall time (None: no batch limit), after which the remaining symbolic checks count as not equal
    (exact checks still run). So a batch takes at most about ``budget_s`` + ``timeout``, whatever it holds;
    ``GRADING_TIMEOUTS`` counts the samples either limit decided. Samples are graded in parallel, one thread per
    worker of ``pool``."""
    if len(responses) != len(examples):
        raise ValueError(f"math_reward: {len(responses)} responses but {len(examples)} examples")
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("answer"), str):
            raise ValueError(f"math_reward: examples[{i}] needs a string 'answer', got {ex!r:.200}")
    pool = pool or default_pool()
    batch_deadline = None if budget_s is None else time.monotonic() + budget_s

    def grade(pair):
        return _grade_one(pair[0], pair[1], fallback_last_number, timeout, pool, batch_deadline)

    if len(responses) <= 1:
        return [grade(p) for p in zip(responses, examples)]
    with ThreadPoolExecutor(max_workers=pool.size) as ex_:
        return list(ex_.map(grade, zip(responses, examples)))
